"""`main.py pipeline`: every stage in order, each from the last stage directory; a re-run skips finished work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lit_rlhf.checkpoint.manifest import read_manifest
from lit_rlhf.pipeline import PipelineConfig

ROOT = Path(__file__).resolve().parents[1]


def test_pipeline_config_rejects_unknown_fields(tmp_path):
    (tmp_path / "p.yaml").write_text("name: x\nsft_confg: a.yaml\n")
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['sft_confg'\]"):
        PipelineConfig.from_yaml(tmp_path / "p.yaml")


def test_tiny_pipeline_runs_then_skips(tmp_path):
    cfg = (ROOT / "configs/tiny/pipeline.yaml").read_text()
    cfg = cfg.replace("configs/tiny/", f"{ROOT}/configs/tiny/")
    (tmp_path / "pipeline.yaml").write_text(cfg)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(ROOT / "main.py"), "pipeline", "--config", "pipeline.yaml"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    runs = tmp_path / "runs"
    stages = {s: read_manifest(runs / s / "tiny" / "stage") for s in ("sft", "reward", "ppo")}
    assert stages["reward"].parent == str(runs / "sft/tiny/stage")
    assert stages["ppo"].parent == str(runs / "sft/tiny/stage")
    assert stages["ppo"].extra["reward_from"] == str(runs / "reward/tiny/stage")
    raw = json.loads((runs / "ppo/tiny/stage/manifest.json").read_text())  # on disk: relative, no user paths
    assert (raw["parent"], raw["extra"]["reward_from"]) == (
        "../../../sft/tiny/stage",
        "../../../reward/tiny/stage",
    )
    report = json.loads((runs / "eval/tiny/report.json").read_text())
    assert len(report["checkpoints"]) == 2
    ppo_row = next(v for v in report["checkpoints"].values() if v["stage"] == "ppo")
    assert {"judge_score", "win_rate_vs_sft", "rm_score", "kl", "pretrain_loss", "mean_length"} <= set(
        ppo_row
    )
    assert "report: runs/eval/tiny/report.md" in proc.stdout and "python main.py dashboard" in proc.stdout
    # a re-run finds every stage finished and runs nothing
    again = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("skipped") == 7 and "everything was already done" in again.stdout


def test_interrupted_stage_resumes_from_its_last_checkpoint(tmp_path, monkeypatch):
    """A stage with checkpoints/last.ckpt but no stage directory is re-run with --ckpt_path; a finished one is not."""
    from lit_rlhf.pipeline import Pipeline

    cfg = PipelineConfig(name="x", runs_root=str(tmp_path / "runs"))
    pipe = Pipeline(cfg)
    calls: list[list[str]] = []
    monkeypatch.setattr(pipe, "_run", lambda label, args: calls.append(args))
    ckpt = tmp_path / "runs/sft/x/checkpoints/last.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"lightning checkpoint")
    pipe._fit("sft", "configs/demo/sft.yaml", ["--data.init_args.train_path", "t.jsonl"])
    assert calls[-1][-2:] == ["--ckpt_path", str(ckpt)]
    pipe._fit("reward", "configs/demo/rm.yaml", [])  # never started: no resume flag
    assert "--ckpt_path" not in calls[-1] and calls[-1][:3] == ["fit", "--config", "configs/demo/rm.yaml"]


def test_demo_data_of_an_older_format_is_refused_not_reused(tmp_path):
    from lit_rlhf.pipeline import Pipeline

    (tmp_path / "data").mkdir()
    (tmp_path / "data/world.json").write_text('{"format_version": 1}')
    pipe = Pipeline(PipelineConfig(data_dir=str(tmp_path / "data")))
    with pytest.raises(SystemExit, match="format 1, this lit-rlhf writes 2"):
        pipe.demo_data()
