"""PPO while it runs: the gold-vs-proxy record (ppo/eval/*), alarms, kept checkpoints at evaluation points."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning as L
import pytest

from lit_rlhf.backbone.generate import SamplingConfig
from lit_rlhf.data.io import write_jsonl
from lit_rlhf.judges import load_judge
from lit_rlhf.runs import RunLogger, RunStatus
from lit_rlhf.stages.ppo import EvalConfig

from .test_ppo import _data, _module, _stages


def _eval_cfg(tmp: Path, every: int = 1, judge: str | None = "exact_match") -> EvalConfig:
    write_jsonl(tmp / "eval.jsonl", [{"prompt": f"{a} =", "reference": a} for a in "abcdefgh"])
    return EvalConfig(
        prompts=str(tmp / "eval.jsonl"),
        every_n_steps=every,
        sampling=SamplingConfig(max_new_tokens=4),
        judge=judge,
        samples_per_step=0,
        batch_size=4,
        seed=77,
    )


def _fit(module, tmp: Path, steps: int, run: Path) -> L.Trainer:
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=[RunLogger(run)],
        callbacks=[RunStatus("ppo", run.name)],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, _data(tmp))
    return trainer


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_each_evaluation_logs_gold_proxy_and_distance_with_the_sft_point(tiny_dir, tmp_path):
    """ppo/eval/* repeats the evaluation's own figures under one prefix, d = sqrt(KL), and the SFT model's gold
    and proxy on the same prompts and seeds are what `evaluate` measures for the SFT stage."""
    from lit_rlhf.evaluation.command import EvalSettings, evaluate_checkpoints

    sft, rm = _stages(tiny_dir, tmp_path)
    module = _module(sft, rm)
    module.eval_cfg, module.judge = _eval_cfg(tmp_path), load_judge("exact_match")
    run = tmp_path / "runs" / "ppo" / "t"
    _fit(module, tmp_path, 2, run)  # 2 iterations (4 prompts, minibatch 4, 1 epoch): evaluations at 1 and 2
    evals = [r for r in _rows(run) if "ppo/eval/gold" in r]
    assert [r["step"] for r in evals] == [0, 1, 1]  # the last iteration's, then on_train_end's own
    for r in evals:
        assert r["ppo/eval/kl"] == r["ppo/eval_kl"]
        assert r["ppo/eval/sqrt_kl"] == math.sqrt(max(r["ppo/eval_kl"], 0.0))
        assert r["ppo/eval/gold"] == r["ppo/judge_score"] and r["ppo/eval/proxy"] == r["ppo/eval_rm_score"]
        assert r["ppo/eval/initial_gold"] == r["ppo/sft_judge_score"]
    settings = EvalSettings(
        prompts=str(tmp_path / "eval.jsonl"), max_new_tokens=4, batch_size=4, seed=77, judge="exact_match"
    )
    report = evaluate_checkpoints([str(sft)], settings, rm=str(rm))["checkpoints"][str(sft)]
    assert evals[0]["ppo/eval/initial_proxy"] == pytest.approx(report["rm_score"], rel=1e-5)
    assert evals[0]["ppo/eval/initial_gold"] == pytest.approx(report["judge_score"])


def test_without_a_judge_the_record_has_proxy_and_distance_only(tiny_dir, tmp_path):
    sft, rm = _stages(tiny_dir, tmp_path)
    module = _module(sft, rm)
    module.eval_cfg, module.judge = _eval_cfg(tmp_path, every=0, judge=None), None
    run = tmp_path / "runs" / "ppo" / "t"
    _fit(module, tmp_path, 1, run)
    (last,) = [r for r in _rows(run) if "ppo/eval/proxy" in r]
    assert {k for k in last if k.startswith("ppo/eval/")} == {
        "ppo/eval/kl",
        "ppo/eval/sqrt_kl",
        "ppo/eval/proxy",
        "ppo/eval/initial_proxy",
    }


def test_a_fired_alarm_reaches_status_json_and_stop_on_ends_the_run_with_its_stage_directory(
    tiny_dir, tmp_path
):
    """kl_factor 0: any KL above 0 fires kl_high. The first iteration's KL is exactly 0 (policy = reference), so
    it fires at the second iteration, which ends the 4-iteration run; the stage directory is still written."""
    from lit_rlhf.alarms import AlarmConfig

    sft, rm = _stages(tiny_dir, tmp_path)
    # limit_share 1: the untrained tiny model rarely ends its responses, which is not what this test is about
    module = _module(sft, rm, alarms=AlarmConfig(kl_factor=0.0, limit_share=1.0, stop_on=["kl_high"]))
    run = tmp_path / "runs" / "ppo" / "t"
    trainer = _fit(module, tmp_path, 4, run)
    assert module.rollouts_done == 2 and trainer.global_step == 2
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "finished" and status["stopped_by"] == ["kl_high"]
    (alarm,) = status["alarms"]
    assert (alarm["name"], alarm["first_step"], alarm["step"], alarm["count"]) == ("kl_high", 1, 1, 1)
    assert alarm["values"]["kl"] > 0 and alarm["values"]["limit"] == 0.0
    assert (run / "stage" / "manifest.json").is_file()


def test_alarm_state_is_saved_in_checkpoints(tiny_dir, tmp_path):
    from lit_rlhf.alarms import AlarmConfig

    sft, rm = _stages(tiny_dir, tmp_path)
    module = _module(sft, rm, alarms=AlarmConfig(ev_patience=2))
    module.alarm_monitor.observe(0, {"explained_variance": -0.5, "entropy": 2.0, "clip_frac": 0.9})
    checkpoint: dict = {}
    module.on_save_checkpoint(checkpoint)
    resumed = _module(sft, rm, alarms=AlarmConfig(ev_patience=2))
    resumed.on_load_checkpoint(checkpoint)
    assert resumed.alarm_monitor.records() == module.alarm_monitor.records()
    assert [a.name for a in resumed.alarm_monitor.observe(1, {"explained_variance": -0.1})] == [
        "value_ev_negative"
    ]


def test_unknown_alarm_names_are_refused_before_anything_loads(tiny_dir, tmp_path):
    from lit_rlhf.alarms import AlarmConfig

    with pytest.raises(ValueError, match=r"alarms.stop_on: unknown alarm\(s\) \['kl'\]"):
        _module("nowhere", "nowhere", alarms=AlarmConfig(stop_on=["kl"]))


def test_evaluation_points_are_kept_the_best_marked_and_reachable_as_run_at_best(tiny_dir, tmp_path, capsys):
    """keep 2: the best evaluation point by the judge and the newest other one stay as stage directories;
    `evaluate` and `export` take RUN@best and measure exactly what the run measured there."""
    from lit_rlhf.checkpoint.kept import read_index
    from lit_rlhf.checkpoint.manifest import read_manifest
    from lit_rlhf.cli import main
    from lit_rlhf.evaluation.command import EvalSettings, evaluate_checkpoints

    sft, rm = _stages(tiny_dir, tmp_path)
    module = _module(sft, rm)
    module.eval_cfg, module.judge = _eval_cfg(tmp_path), load_judge("exact_match")
    module.eval_cfg.keep = 2
    run = tmp_path / "runs" / "ppo" / "t"
    _fit(module, tmp_path, 3, run)
    evals = {
        r["step"]: r for r in _rows(run) if "ppo/judge_score" in r
    }  # steps 0, 1, 2 (2 twice: same figures)
    entries, best = read_index(run / "kept" / "index.json")
    top = max(evals, key=lambda s: (evals[s]["ppo/judge_score"], -s))
    assert best == f"step-{top:06d}"
    assert [e.step for e in entries] == sorted({top, max(s for s in evals if s != top)})
    assert sorted(p.name for p in (run / "kept").iterdir()) == sorted(
        ["index.json", *(e.name for e in entries)]
    )
    manifest = read_manifest(run / "kept" / best)
    assert manifest.stage == "ppo" and manifest.metrics["judge_score"] == evals[top]["ppo/judge_score"]
    status = json.loads((run / "status.json").read_text())
    assert status["best"] == {
        "path": f"kept/{best}",
        "step": top,
        "judge_score": evals[top]["ppo/judge_score"],
    }

    settings = EvalSettings(
        prompts=str(tmp_path / "eval.jsonl"), max_new_tokens=4, batch_size=4, seed=77, judge="exact_match"
    )
    report = evaluate_checkpoints([f"{run}@best"], settings)["checkpoints"]
    assert list(report) == [str(run / "kept" / best)]
    assert report[str(run / "kept" / best)]["judge_score"] == pytest.approx(evals[top]["ppo/judge_score"])
    assert main(["export", "--ckpt", f"{run}@best", "--out", str(tmp_path / "hf")]) == 0
    assert f"exported {run / 'kept' / best} -> " in capsys.readouterr().out
    assert main(["export", "--ckpt", f"{run}@step-7", "--out", str(tmp_path / "hf2")]) == 2
    assert "keeps no step-7; kept: " in capsys.readouterr().err


def test_samples_carry_token_kl_and_the_judge_and_held_out_prompts_are_followed_across_steps(
    tiny_dir, tmp_path
):
    sft, rm = _stages(tiny_dir, tmp_path)
    module = _module(sft, rm)
    module.eval_cfg, module.judge = _eval_cfg(tmp_path), load_judge("exact_match")
    module.eval_cfg.samples_per_step, module.eval_cfg.keep = 2, 0
    run = tmp_path / "runs" / "ppo" / "t"
    _fit(module, tmp_path, 2, run)
    rows = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    rollouts = [r for r in rows if r["mode"] == "rollout"]
    assert len(rollouts) == 4  # 2 per iteration
    for r in rollouts:
        assert len(r["tokens"]) == len(r["token_kl"]) >= 1
        assert sum(r["token_kl"]) == pytest.approx(r["kl"], abs=1e-5)
        assert "score" not in r  # the rollout prompts carry no reference: exact_match cannot judge them
    sft_rows = [r for r in rows if r["mode"] == "eval_sft"]
    evals = [r for r in rows if r["mode"] == "eval"]
    assert [(r["step"], r["prompt"]) for r in sft_rows] == [(0, "a ="), (0, "b =")]  # once, at the first one
    assert [(r["step"], r["prompt"]) for r in evals] == [(s, p) for s in (0, 1, 1) for p in ("a =", "b =")]
    for r in evals + sft_rows:
        assert r["score"] == float(r["completion"] == r["prompt"][0]) and r["exact_match"] == r["score"]
        assert isinstance(r["rm_score"], float)
    assert all("kl" in r for r in evals) and not any("kl" in r for r in sft_rows)
