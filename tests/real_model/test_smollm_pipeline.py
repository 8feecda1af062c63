"""configs/smollm2/pipeline.yaml end to end at toy sizes: the real chat model through every stage and the report
(base model zero-shot, SFT, PPO-ptx), with its own tokenizer and chat template."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lit_rlhf.checkpoint.manifest import read_manifest

pytestmark = pytest.mark.real_model
ROOT = Path(__file__).resolve().parents[2]

TOY = {  # every stage for a few steps; the figures are not the point here, the path through the stages is
    "sft": [
        "--trainer.max_steps",
        "3",
        "--trainer.val_check_interval",
        "3",
        "--data.init_args.batch_size",
        "4",
    ]
    + ["--model.init_args.samples.every_n_steps", "0", "--model.init_args.samples.eval_limit", "4"],
    "reward": [
        "--trainer.max_steps",
        "2",
        "--trainer.val_check_interval",
        "2",
        "--data.init_args.batch_size",
        "2",
    ]
    + ["--model.init_args.bias_limit", "4"],
    "ppo": [
        "--trainer.max_steps",
        "2",
        "--data.init_args.batch_size",
        "4",
        "--data.init_args.ptx_batch_size",
        "4",
    ]
    + ["--data.init_args.ptx_holdout", "8", "--model.init_args.ppo.minibatch_size", "2"]
    + ["--model.init_args.ppo.ppo_epochs", "1", "--model.init_args.eval.limit", "4"]
    + ["--model.init_args.eval.every_n_steps", "1", "--model.init_args.sampling.max_new_tokens", "6"],
}


def test_smollm_pipeline_config_runs_every_stage_at_toy_sizes(smollm_folder, tmp_path):
    cfg = yaml.safe_load((ROOT / "configs/smollm2/pipeline.yaml").read_text())
    for key in ("sft_config", "rm_config", "ppo_config"):
        cfg[key] = str(ROOT / cfg[key])
    cfg["demo_data"].update(n_train=48, n_val=8, n_rl=16, n_eval=6, n_pretrain=24)
    cfg["collect"].update(train_limit=16, val_limit=8, max_new_tokens=6)
    cfg.update(eval_limit=4, eval_max_new_tokens=6, extra_args=TOY)
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(ROOT / "main.py"), "pipeline", "--config", "pipeline.yaml"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = tmp_path / "runs"
    sft = read_manifest(runs / "sft/smollm2/stage")
    assert sft.base == {
        "kind": "pretrained",
        "name_or_path": "bundled:smollm2-135m-instruct",
        "revision": None,
    }
    assert sft.prompt_format["system_prompt"] == "Solve the task. Answer with the result only."
    assert (
        read_manifest(runs / "ppo/smollm2/stage").prompt_format == sft.prompt_format
    )  # inherited, not re-set
    rows = [json.loads(line) for line in (tmp_path / "data/smollm2/comparisons_smollm2_train.jsonl").open()]
    assert rows and all("messages" in r and "ranking" in r for r in rows)  # chat prompts, ranked by the judge
    report = json.loads((runs / "eval/smollm2/report.json").read_text())
    assert [r["stage"] for r in report["checkpoints"].values()] == ["base", "sft", "ppo"]
    assert all(r["judge_score"] is not None and r["judged"] == 4 for r in report["checkpoints"].values())
