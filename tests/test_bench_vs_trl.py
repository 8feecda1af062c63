"""The pure helpers of bench/vs_trl.py: argument checks, token counting, ratios and the PPO time split.

The benchmark itself is run by hand (bench/README.md); these run in well under a second and need neither TRL
nor a model.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parent.parent / "bench" / "vs_trl.py"


@pytest.fixture(scope="module")
def vs_trl():
    spec = importlib.util.spec_from_file_location("bench_vs_trl", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_model_defaults_fill_flags_not_given(vs_trl):
    args = vs_trl.parse_args(["--model", "smollm2", "--sft-steps", "7"])
    smol = vs_trl.MODELS["smollm2"]
    assert args.sft_steps == 7  # given: kept
    assert args.batch_size == smol.defaults["batch_size"]
    assert args.only == list(smol.runs)
    assert args.out.name == "vs_trl_smollm2.json"
    demo = vs_trl.parse_args([])
    assert demo.model == "demo" and demo.out.name == "vs_trl.json"
    assert "lit-sft-packed" not in demo.only  # the demo's default runs are the original seven
    assert all(set(vs_trl.SIZES) <= set(m.defaults) for m in vs_trl.MODELS.values())
    assert all(set(m.runs) <= set(vs_trl.RUNS) for m in vs_trl.MODELS.values())


@pytest.mark.parametrize(
    "argv",
    [
        ["--model", "smollm2", "--sft-steps", "3", "--warmup", "3"],  # nothing left to time
        ["--rl-prompts", "6"],  # not a multiple of 2 x GROUP
        ["--batch-size", "0"],
        ["--only", "lit-sft,nope"],
        ["--model", "gpt5"],
    ],
)
def test_bad_arguments_exit(vs_trl, argv, capsys):
    with pytest.raises(SystemExit):
        vs_trl.parse_args(argv)
    assert "error" in capsys.readouterr().err


def test_non_pad_tokens_padded_and_padding_free(vs_trl):
    padded = {
        "input_ids": torch.zeros(2, 5, dtype=torch.long),
        "attention_mask": torch.tensor([[1] * 5, [1, 1, 0, 0, 0]]),
    }
    assert vs_trl.non_pad_tokens(padded) == 7
    flat = {
        "input_ids": torch.zeros(1, 9, dtype=torch.long),
        "position_ids": torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]]),
    }
    assert vs_trl.non_pad_tokens(flat) == 9  # padding-free: every position is a token


def test_extra_suffix(vs_trl):
    assert vs_trl.extra_suffix([1, 2, 3], [1, 2, 3]) == []
    assert vs_trl.extra_suffix([1, 2, 3], [1, 2, 3, 198]) == [198]
    assert vs_trl.extra_suffix([1, 2, 3], [1, 2, 4, 198]) is None
    assert vs_trl.extra_suffix([1, 2, 3], [1, 2]) is None


def rows_of(*specs):
    """Measured rows from (name, rate, step ms, work per step) tuples; a None rate is a failed run."""

    def row(name, rate, step_ms=100.0, work=10.0):
        times = {"step_time_ms": step_ms, "median_step_time_ms": step_ms}
        return {"name": name, "rate": rate, "work_per_step": work, "peak_rss_mb": 500.0} | times

    return [row(*spec) for spec in specs]


def test_ratio_uses_trl_best_and_skips_runs_not_made(vs_trl):
    rows = rows_of(("lit-sft", 100.0), ("trl-sft", 50.0), ("trl-sft-padfree", 80.0), ("trl-sft-packed", None))
    ratios = {r["comparison"]: r for r in vs_trl.ratio_rows(rows)}
    assert set(ratios) == {"SFT tokens/s"}  # no lit-sft-packed, rm or rl rows: those comparisons are left out
    sft = ratios["SFT tokens/s"]
    assert sft["trl"] == "trl-sft-padfree" and sft["ratio"] == 1.25 and sft["met"] is True
    assert vs_trl.best_run(rows, ("trl-sft-packed",)) is None  # failed runs have no rate


def test_failed_trl_side_gives_no_ratio(vs_trl):
    rows = rows_of(("lit-rm", 30.0), ("trl-rm", None))
    (rm,) = vs_trl.ratio_rows(rows)
    assert rm["trl"] == "trl-rm" and rm["ratio"] is None and rm["met"] is None


def test_gain_rows(vs_trl):
    rows = rows_of(("lit-sft", 100.0, 100.0, 10.0), ("lit-sft-packed", 150.0, 200.0, 30.0), ("trl-sft", 90.0))
    (gain,) = vs_trl.gain_rows(rows)
    assert gain["run"] == "lit-sft-packed"
    assert (gain["rate_ratio"], gain["step_time_ratio"], gain["work_per_step_ratio"]) == (1.5, 2.0, 3.0)


def test_ppo_time_split(vs_trl):
    split = vs_trl.ppo_time_split([9.0, 2.0, 4.0], [0.5, 0.25, 0.5], [5.0, 1.0, 3.0], warmup=1)
    # timed steps: (2 s, gen 0.5 s, rollout 1 s) and (4 s, gen 2 s, rollout 3 s)
    assert split == {"generate_ms": 1250.0, "score_ms": 750.0, "update_ms": 1000.0, "step_ms": 3000.0}
    with pytest.raises(ValueError, match="no timed PPO steps"):
        vs_trl.ppo_time_split([1.0], [0.5], [0.7], warmup=1)


def test_user_prompt_of_plain_and_chat_rows(vs_trl):
    assert vs_trl.user_prompt({"prompt": "sort b a ="}) == "sort b a ="
    chat = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "sort b a ="}]}
    assert vs_trl.user_prompt(chat) == "sort b a ="
