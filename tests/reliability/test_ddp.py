"""DDP on CPU (2 processes, gloo) through `scripts/ddp_check.py`, which the tests run in a subprocess.

Under pytest, Lightning's ddp strategy re-launches pytest itself in the child; the script runs the DDP
fits and validations as its own subprocesses and writes a JSON report that these tests read.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .helpers import ENV, ROOT

pytestmark = pytest.mark.slow  # 2 processes per run, and several runs: 15-90 s per stage on 2 cores

# Regressions guarded here: rank-0-only writers once read Trainer.log_dir (a DDP collective) and deadlocked;
# Lightning's DistributedSampler pads validation with duplicates, which biased the reduced RM accuracy.


def _ddp_check(stage: str, out: Path) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts/ddp_check.py"), "--stage", stage, "--out", str(out)],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=480,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / f"ddp_{stage}.json").read_text())
    print(f"\nddp_check --stage {stage}: {json.dumps(report, indent=1)}")
    return report


@pytest.fixture(scope="module")
def sft_report(tmp_path_factory) -> dict[str, Any]:
    return _ddp_check("sft", tmp_path_factory.mktemp("ddp_sft"))


@pytest.fixture(scope="module")
def reward_report(tmp_path_factory) -> dict[str, Any]:
    return _ddp_check("reward", tmp_path_factory.mktemp("ddp_reward"))


def _assert_fit_finished(fit: dict[str, Any]) -> None:
    assert fit["returncode"] == 0 and fit["killed"] is None, Path(fit["log"]).read_text()[-3000:]
    assert fit["status"] == "finished" and fit["step"] == fit["max_steps"]
    assert fit["stage_error"] is None and fit["manifest_step"] == fit["max_steps"]


def test_ddp_sft_fit_finishes_with_a_loadable_stage_dir(sft_report):
    _assert_fit_finished(sft_report["fit"])


def test_ddp_reward_fit_finishes_with_a_loadable_stage_dir(reward_report):
    _assert_fit_finished(reward_report["fit"])


def test_ddp_val_accuracy_equals_single_process(reward_report):
    val = reward_report["validation"]
    assert val["accuracy_2proc"] == pytest.approx(val["accuracy_1proc"])


@pytest.fixture(scope="module")
def ppo_report(tmp_path_factory) -> dict[str, Any]:
    return _ddp_check("ppo", tmp_path_factory.mktemp("ddp_ppo"))


def test_ddp_ppo_fit_finishes_with_a_loadable_stage_dir(ppo_report):
    _assert_fit_finished(ppo_report["fit"])


def test_ddp_ppo_rollouts_are_per_rank_and_statistics_global(ppo_report):
    r0, r1 = ppo_report["ranks"]
    assert (r0["rank"], r1["rank"]) == (0, 1)
    assert not set(r0["first_prompts"]) & set(r1["first_prompts"])  # each rank rolled out its own prompts
    # the KL controller moved on the mean KL of both ranks: the same beta everywhere, away from its start
    assert r0["kl_coef"] == r1["kl_coef"] != pytest.approx(0.05)
    # score moments saw every rank's scores: 2 rollouts x 8 prompts x 2 ranks, identical on both
    assert r0["score_moments"] == r1["score_moments"]
    assert r0["score_moments"]["count"] == r0["rollouts_done"] * 8 * 2
    # gradients were all-reduced: both ranks hold the same trainable weights after 8 updates
    assert r0["trainable_checksum"] == pytest.approx(r1["trainable_checksum"], rel=1e-9)
