"""Reward stage: K-wise batches keep prompts whole, the RM learns a preference, round trips, end to end."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from lit_rlhf.backbone.build import Backbone
from lit_rlhf.backbone.config import BackboneConfig
from lit_rlhf.checkpoint.manifest import read_manifest
from lit_rlhf.checkpoint.stage_dir import save_stage_dir
from lit_rlhf.data.comparisons import ComparisonDataModule, collate_comparisons, tie_share
from lit_rlhf.data.io import write_jsonl
from lit_rlhf.evaluation.reward_model import RewardScorer, score_texts
from lit_rlhf.stages.common import OptimConfig
from lit_rlhf.stages.reward import RewardModule, per_prompt_kendall_tau

ROOT = Path(__file__).resolve().parents[2]


def _sft_stage(tiny_dir, out: Path) -> Path:
    """A full-weights 'SFT' stage directory from the tiny GPT-2 (the RM starts from it)."""
    bb = Backbone.build(BackboneConfig(name_or_path=str(tiny_dir / "gpt2")))
    save_stage_dir(out, bb, stage="sft")
    return out


def _marker_rows(n: int, k: int, seed: int) -> list[dict]:
    """Synthetic preference: responses containing the marker 'x' beat those without (ties among equals)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        prompt = " ".join(rng.choices("abcdefgh", k=3)) + " ="
        marked = rng.randint(1, k - 1)
        responses = []
        for i in range(k):
            words = rng.choices("abcdefgh", k=rng.randint(2, 5))
            if i < marked:
                words.insert(rng.randrange(len(words) + 1), "x")
            responses.append(" ".join(words))
        rows.append(
            {"prompt": prompt, "responses": responses, "ranking": [0 if i < marked else 1 for i in range(k)]}
        )
    return rows


def test_batches_never_split_a_prompt(tiny_dir, tmp_path):
    from lit_rlhf.backbone.build import load_tokenizer

    rows = _marker_rows(10, 3, 0) + [{"prompt": "a =", "chosen": "a x", "rejected": "b"}]  # K=3 and K=2 mixed
    write_jsonl(tmp_path / "c.jsonl", rows)
    dm = ComparisonDataModule(
        str(tmp_path / "c.jsonl"),
        batch_size=4,
        max_length=32,
        tokenizer=load_tokenizer(str(tiny_dir / "tokenizer")),
    )
    dm.setup("fit")
    seen = []
    for batch in dm.train_dataloader():
        groups = batch["group"].tolist()
        assert groups == sorted(groups)  # contiguous groups
        for g, responses in enumerate(batch["responses"]):
            assert groups.count(g) == len(responses)  # every response of the prompt is here
        seen += batch["prompts"]
    assert sorted(seen) == sorted(r["prompt"] for r in rows)  # each prompt exactly once per epoch


def test_pairs_layout_expands_every_pair(tiny_dir, tmp_path):
    from lit_rlhf.backbone.build import load_tokenizer

    write_jsonl(tmp_path / "c.jsonl", [{"prompt": "a =", "responses": ["a", "b", "c"], "ranking": [0, 1, 1]}])
    dm = ComparisonDataModule(
        str(tmp_path / "c.jsonl"),
        batch_size=8,
        layout="pairs",
        tokenizer=load_tokenizer(str(tiny_dir / "tokenizer")),
    )
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    # ranking [0, 1, 1]: pairs (a > b), (a > c); the tie b = c forms none
    assert sorted(map(tuple, batch["responses"])) == [("a", "b"), ("a", "c")]
    assert batch["ranks"].tolist() == [0, 1, 0, 1]


def test_collate_by_hand():
    from lit_rlhf.data.comparisons import EncodedComparison

    items = [
        EncodedComparison("p", ("x", "y"), (1, 0), ([5, 6, 7], [5, 8])),
        EncodedComparison("q", ("z", "w", "v"), (0, 0, 1), ([9], [9, 9], [4, 4, 4, 4])),
    ]
    b = collate_comparisons(items, pad_id=0)
    assert b["input_ids"].tolist() == [[5, 6, 7, 0], [5, 8, 0, 0], [9, 0, 0, 0], [9, 9, 0, 0], [4, 4, 4, 4]]
    assert b["attention_mask"].sum(1).tolist() == [3, 2, 1, 2, 4]
    assert b["ranks"].tolist() == [1, 0, 0, 0, 1] and b["group"].tolist() == [0, 0, 1, 1, 1]


def test_tie_share_by_hand():
    from lit_rlhf.data.rows import Comparison

    rows = [Comparison("p", ("a", "b", "c"), (0, 1, 1)), Comparison("q", ("a", "b"), (0, 1))]
    assert tie_share(rows) == 1 / 4  # 3 + 1 pairs, one tied


def test_kendall_tau_per_prompt_by_hand():
    scores = torch.tensor([3.0, 2.0, 1.0, 1.0, 2.0, 3.0, 5.0, 5.0])
    ranks = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    group = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2])
    # group 0 agrees fully, group 1 is reversed, group 2's scores tie (tau-b undefined)
    assert per_prompt_kendall_tau(scores, ranks, group) == [1.0, -1.0, None]


def _fit_rm(sft_dir, train, val, steps, tmp_path, lora=None):
    module = RewardModule(
        init_from=str(sft_dir), lora=lora, optim=OptimConfig(lr=2e-3, warmup_steps=5), max_length=32
    )
    dm = ComparisonDataModule(str(train), str(val), batch_size=8, max_length=32)
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        val_check_interval=steps,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, dm)
    return module, trainer


def test_synthetic_marker_preference_is_learned(tiny_dir, tmp_path):
    """Acceptance: an easy synthetic preference reaches > 95% held-out pairwise accuracy."""
    torch.manual_seed(0)
    sft = _sft_stage(tiny_dir, tmp_path / "sft")
    write_jsonl(tmp_path / "train.jsonl", _marker_rows(400, 3, seed=1))
    write_jsonl(tmp_path / "val.jsonl", _marker_rows(100, 3, seed=2))
    module, trainer = _fit_rm(sft, tmp_path / "train.jsonl", tmp_path / "val.jsonl", 150, tmp_path)
    acc = float(trainer.callback_metrics["reward/val_accuracy"])
    assert acc > 0.95, acc
    assert float(trainer.callback_metrics["reward/val_kendall_tau"]) > 0.8


def test_rm_round_trip_gives_identical_scores(tiny_dir, tmp_path):
    from lit_rlhf.backbone.config import LoraSettings

    sft = _sft_stage(tiny_dir, tmp_path / "sft")
    write_jsonl(tmp_path / "train.jsonl", _marker_rows(16, 3, seed=1))
    module, _ = _fit_rm(
        sft,
        tmp_path / "train.jsonl",
        tmp_path / "train.jsonl",
        4,
        tmp_path,
        lora=LoraSettings(r=4, alpha=8, dropout=0.0),
    )
    base_before = {
        n: p.detach().clone()
        for n, p in Backbone.build(
            BackboneConfig(name_or_path=str(tiny_dir / "gpt2"))
        ).model.named_parameters()
    }
    assert all(
        torch.equal(p, base_before[n])
        for n, p in module.net.hf_model.named_parameters()
        if "lora_" not in n and n in base_before
    )  # the shared base stayed frozen
    save_stage_dir(
        tmp_path / "rm",
        module.net,
        stage="reward",
        adapters=["reward"],
        heads={"reward": {"adapter": "reward", "bias": 0.5}},
    )
    prompts, responses = ["a b =", "c ="], ["a x b", "d"]
    expected = score_texts(module.net, "reward", "reward", 0.5, prompts, responses)
    assert RewardScorer(tmp_path / "rm").score(prompts, responses) == expected


def test_main_fit_tiny_pipeline_end_to_end(demo_data, tmp_path):
    """`main.py`: SFT -> collect-comparisons -> reward model -> PPO-ptx -> export, each from the last stage dir."""
    env = {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    d = str(demo_data)
    sft = [
        sys.executable,
        str(ROOT / "main.py"),
        "fit",
        "--config",
        str(ROOT / "configs/tiny/sft.yaml"),
        "--run.root",
        str(tmp_path / "runs"),
        "--model.init_args.backbone.tokenizer",
        f"{d}/tokenizer",
        "--model.init_args.samples.eval_prompts",
        f"{d}/eval_prompts.jsonl",
        "--data.init_args.train_path",
        f"{d}/sft_train.jsonl",
        "--data.init_args.val_path",
        f"{d}/sft_val.jsonl",
    ]
    assert subprocess.run(sft, cwd=tmp_path, env=env, capture_output=True, timeout=300).returncode == 0
    sft_dir = tmp_path / "runs/sft/tiny/stage"
    for split, prompts, seed in (("train", "sft_train.jsonl", "0"), ("val", "sft_val.jsonl", "1")):
        proc = subprocess.run(
            [
                sys.executable,
                str(ROOT / "main.py"),
                "collect-comparisons",
                "--ckpt",
                str(sft_dir),
                "--prompts",
                f"{d}/{prompts}",
                "--limit",
                "48",
                "--k",
                "4",
                "--seed",
                seed,
                "--temperature",
                "1.5",
                "--max-new-tokens",
                "8",
                "--judge",
                "demo",
                "--out",
                str(tmp_path / f"cmp_{split}.jsonl"),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "comparisons from 48 prompts" in proc.stdout
    rows = [json.loads(x) for x in (tmp_path / "cmp_train.jsonl").read_text().splitlines()]
    assert rows and all(
        len(r["responses"]) == len(r["ranking"]) >= 2 and len(set(r["ranking"])) >= 2 for r in rows
    )
    rm = [
        sys.executable,
        str(ROOT / "main.py"),
        "fit",
        "--config",
        str(ROOT / "configs/tiny/rm.yaml"),
        "--run.root",
        str(tmp_path / "runs"),
        "--model.init_args.init_from",
        str(sft_dir),
        "--model.init_args.bias_from",
        f"{d}/sft_val.jsonl",
        "--data.init_args.train_path",
        str(tmp_path / "cmp_train.jsonl"),
        "--data.init_args.val_path",
        str(tmp_path / "cmp_val.jsonl"),
    ]
    proc = subprocess.run(rm, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "runs/reward/tiny"
    manifest = read_manifest(run / "stage")
    assert manifest.stage == "reward" and manifest.parent == str(sft_dir)
    assert {"val_accuracy", "val_kendall_tau", "bias", "train_tied_pair_share"} <= set(manifest.metrics)
    assert manifest.heads["reward"]["adapter"] == "reward" and list(manifest.adapters) == ["reward"]
    ranking_rows = [json.loads(x) for x in (run / "rankings.jsonl").read_text().splitlines()]
    assert ranking_rows and {"prompt", "responses", "labeled_rank", "scores", "kendall_tau"} <= set(
        ranking_rows[0]
    )
    # the stored bias centres the SFT demonstrations' rewards at 0
    demos = [json.loads(x) for x in Path(f"{d}/sft_val.jsonl").read_text().splitlines()]
    scores = RewardScorer(run / "stage").score([r["prompt"] for r in demos], [r["response"] for r in demos])
    assert abs(sum(scores) / len(scores)) < 1e-4
    # ... and PPO-ptx from the SFT and reward stage directories (configs/tiny/ppo.yaml)
    ppo = [
        sys.executable,
        str(ROOT / "main.py"),
        "fit",
        "--config",
        str(ROOT / "configs/tiny/ppo.yaml"),
        "--run.root",
        str(tmp_path / "runs"),
        "--model.init_args.policy_from",
        str(sft_dir),
        "--model.init_args.reward_from",
        str(run / "stage"),
        "--model.init_args.eval.prompts",
        f"{d}/eval_prompts.jsonl",
        "--data.init_args.prompts_path",
        f"{d}/rl_prompts.jsonl",
        "--data.init_args.pretrain_path",
        f"{d}/pretrain.jsonl",
    ]
    proc = subprocess.run(ppo, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ppo_run = tmp_path / "runs/ppo/tiny"
    m = read_manifest(ppo_run / "stage")
    assert m.stage == "ppo" and set(m.adapters) == {"policy", "critic"}
    assert {
        "judge_score",
        "win_rate_vs_sft",
        "win_rate_ci_low",
        "win_rate_ci_high",
        "kl",
        "pretrain_loss",
    } <= set(m.metrics)
    keys = set().union(*[json.loads(x) for x in (ppo_run / "metrics.jsonl").read_text().splitlines()])
    assert {
        "ppo/reward_mean",
        "ppo/rm_score",
        "ppo/kl",
        "ppo/kl_coef",
        "ppo/policy_loss",
        "ppo/value_loss",
        "ppo/clip_frac",
        "ppo/approx_kl",
        "ppo/entropy",
        "ppo/ptx_loss",
        "ppo/response_length",
        "ppo/gen_tokens_per_s",
        "ppo/win_rate_vs_sft",
        "ppo/judge_score",
    } <= keys
    rollouts = [json.loads(x) for x in (ppo_run / "samples.jsonl").read_text().splitlines()]
    assert rollouts and {"rm_score", "kl", "completion"} <= set(rollouts[0])
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "main.py"),
            "export",
            "--ckpt",
            str(ppo_run / "stage"),
            "--out",
            str(tmp_path / "ppo_hf"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_reported_accuracy_is_the_final_weights_even_between_validation_intervals(tiny_dir, tmp_path):
    """val_check_interval 3 with 4 steps: the last weights were never validated by Lightning; the stage validates
    them at the end, and the manifest says at which step each figure was measured."""
    from lit_rlhf.runs import RunLogger

    torch.manual_seed(0)
    sft = _sft_stage(tiny_dir, tmp_path / "sft")
    write_jsonl(tmp_path / "train.jsonl", _marker_rows(64, 3, seed=1))
    write_jsonl(tmp_path / "val.jsonl", _marker_rows(24, 3, seed=2))
    module = RewardModule(init_from=str(sft), optim=OptimConfig(lr=3e-3, warmup_steps=0), max_length=32)
    dm = ComparisonDataModule(
        str(tmp_path / "train.jsonl"), str(tmp_path / "val.jsonl"), batch_size=8, max_length=32
    )
    trainer = L.Trainer(
        max_steps=4,
        accelerator="cpu",
        logger=RunLogger(tmp_path / "run"),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        val_check_interval=3,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, dm)
    manifest = read_manifest(tmp_path / "run" / "stage")
    assert manifest.step == 4
    assert manifest.metric_steps["val_accuracy"] == manifest.metric_steps["val_kendall_tau"] == 4
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "reward/val_accuracy" in r] == [
        2,
        3,
    ]  # after step 3, and the final one
    trainer.validate(module, dm)  # the final weights, validated again by Lightning itself
    for key in ("val_accuracy", "val_kendall_tau", "val_margin"):
        assert manifest.metrics[key] == pytest.approx(
            float(trainer.callback_metrics[f"reward/{key}"]), abs=1e-6
        )
