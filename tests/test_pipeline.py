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
    # data, sft, 2 collections, reward, ppo, the policy's held-out samples, 2 evaluations, the rounds report
    assert again.stdout.count("skipped") == 10 and "everything was already done" in again.stdout


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


def test_pipeline_config_checks_rounds(tmp_path):
    (tmp_path / "p.yaml").write_text("rounds: 0\n")
    with pytest.raises(ValueError, match="field 'rounds' must be an integer >= 1, got 0"):
        PipelineConfig.from_yaml(tmp_path / "p.yaml")


def _manifest_json(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def test_two_rounds_with_rules_run_and_resume_after_a_kill_between_rounds(tmp_path):
    """Round 1 finishes, the pipeline is SIGKILLed, the re-run skips round 1 and runs round 2: the reward model
    trains further on old + new comparisons and rule labels, PPO continues round 1's policy (KL to SFT) with the
    rule heads and the answer check in its reward; the rounds report has a row per round."""
    import signal
    import time

    cfg = (
        (ROOT / "configs/tiny/pipeline-rounds.yaml")
        .read_text()
        .replace("configs/tiny/", f"{ROOT}/configs/tiny/")
    )
    (tmp_path / "pipeline.yaml").write_text(cfg)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(ROOT / "main.py"), "pipeline", "--config", "pipeline.yaml"]
    runs = tmp_path / "runs"
    round1 = runs / "ppo/tiny/stage/manifest.json"
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(
            cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + 900
        while not round1.is_file() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)  # the pipeline and whatever stage it runs: between the rounds
        proc.wait()
    assert round1.is_file(), (tmp_path / "first.log").read_text()[-3000:]
    assert not (runs / "ppo/tiny-round-2/stage").exists()
    done = {s: (runs / s / "tiny/stage/manifest.json").stat().st_mtime_ns for s in ("sft", "reward", "ppo")}

    again = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    for stage in ("sft", "reward", "ppo"):
        assert f"[pipeline] {stage}: done" in again.stdout
        assert (runs / stage / "tiny/stage/manifest.json").stat().st_mtime_ns == done[
            stage
        ]  # round 1 untouched
    rm2, ppo2 = runs / "reward/tiny-round-2/stage", runs / "ppo/tiny-round-2/stage"
    assert read_manifest(rm2).parent == str(runs / "reward/tiny/stage")  # trained further
    assert read_manifest(rm2).heads["rules"]["outputs"] == ["answer_format", "banned_word"]
    m = read_manifest(ppo2)
    assert (m.parent, m.extra["reward_from"], m.extra["reference_from"]) == (
        str(runs / "ppo/tiny/stage"),
        str(rm2),
        str(runs / "sft/tiny/stage"),
    )
    data = tmp_path / "data/tiny"
    lines = lambda p: len(p.read_text().splitlines())  # noqa: E731
    merged = data / "comparisons_tiny-round-2_all_train.jsonl"
    assert lines(merged) == lines(data / "comparisons_tiny_train.jsonl") + lines(
        data / "comparisons_tiny-round-2_train.jsonl"
    )
    assert lines(data / "rules_tiny-round-2_all_train.jsonl") > lines(data / "rules_tiny_train.jsonl")
    metrics = set().union(
        *(json.loads(x) for x in (runs / "ppo/tiny-round-2/metrics.jsonl").read_text().splitlines())
    )
    assert {
        "ppo/reward/answer_is_correct",
        "ppo/reward/rule_banned_word",
        "ppo/rule/answer_format",
    } <= metrics
    report = json.loads((runs / "eval/tiny/rounds.json").read_text())
    assert [r["round"] for r in report["rounds"]] == [1, 2]
    second = report["rounds"][1]
    for key in (
        "rm_accuracy_sft_samples",
        "rm_accuracy_policy_samples",
        "win_rate_vs_sft",
        "win_rate_vs_previous",
    ):
        assert second[key] is not None and 0.0 <= second[key] <= 1.0, key
    assert second["kl"] is not None and second["banned_rate_red_team"] is not None
    assert set(report["rm_matrix"]["round-2"]) == {"sft", "round-1", "round-2"}
    assert "| 2 |" in (runs / "eval/tiny/rounds.md").read_text()


def test_a_file_output_older_than_its_checkpoint_is_made_again(tmp_path, monkeypatch, capsys):
    """Comparisons (and reports) are skipped only when newer than the stage directory they were made from:
    comparisons of an earlier SFT model, left in the data folder, are collected again after a retrained SFT."""
    from lit_rlhf.pipeline import Pipeline, PipelineConfig

    def touch_later(path, than):  # explicit times: a coarse file-system clock must not make them equal
        t = than.stat().st_mtime + 10
        os.utime(path, (t, t))

    pipe = Pipeline(
        PipelineConfig(name="t", data_dir=str(tmp_path / "data"), runs_root=str(tmp_path / "runs"))
    )
    ran: list[str] = []
    monkeypatch.setattr(pipe, "_run", lambda label, args: ran.append(label))
    sft = tmp_path / "runs/sft/t/stage"
    sft.mkdir(parents=True)
    (sft / "manifest.json").write_text("{}")
    out = tmp_path / "data/comparisons_t_train.jsonl"
    out.parent.mkdir(parents=True)
    out.write_text("{}\n")
    touch_later(out, sft / "manifest.json")  # newer than the manifest: skipped
    pipe.collect(sft, "t", ("train",))
    assert ran == [] and "done" in capsys.readouterr().out
    touch_later(sft / "manifest.json", out)  # the SFT stage was made again after the comparisons
    pipe.collect(sft, "t", ("train",))
    assert ran == ["collect-train"]
    assert "is older than" in capsys.readouterr().out
    # an evaluation report older than one of its checkpoints is made again too
    report = tmp_path / "runs/eval/t/report.json"
    report.parent.mkdir(parents=True)
    report.write_text("{}")
    touch_later(report, sft / "manifest.json")
    pipe.evaluate(report.parent, [sft], sft, sft)
    assert ran == ["collect-train"]
    touch_later(sft / "manifest.json", report)
    pipe.evaluate(report.parent, [sft], sft, sft)
    assert ran == ["collect-train", "evaluate"]
