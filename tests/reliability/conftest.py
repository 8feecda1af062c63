"""Fixtures of the reliability tests: a tiny SFT stage, comparisons and a reward stage, built once."""

from __future__ import annotations

from pathlib import Path

import pytest

from .helpers import fit_command, run, sft_overrides


@pytest.fixture(scope="session")
def tiny_stages(demo_data, tmp_path_factory) -> dict[str, Path]:
    """SFT -> collected comparisons -> reward model, through `main.py fit` as a user runs them."""
    from lit_rlhf.backbone.generate import SamplingConfig
    from lit_rlhf.collect import collect_comparisons

    root = tmp_path_factory.mktemp("stages")
    run(fit_command("configs/tiny/sft.yaml", root / "runs", *sft_overrides(demo_data)), cwd=root)
    sft = root / "runs/sft/tiny/stage"
    sampling = SamplingConfig(max_new_tokens=8, do_sample=True, temperature=1.5)
    for split, prompts, seed in (("train", "sft_train.jsonl", 0), ("val", "sft_val.jsonl", 1)):
        out = root / f"cmp_{split}.jsonl"
        collect_comparisons(
            sft, demo_data / prompts, out, k=4, sampling=sampling, limit=48, seed=seed, judge="demo"
        )
    rm = [
        *("--model.init_args.init_from", str(sft)),
        *("--model.init_args.bias_from", str(demo_data / "sft_val.jsonl")),
        *("--data.init_args.train_path", str(root / "cmp_train.jsonl")),
        *("--data.init_args.val_path", str(root / "cmp_val.jsonl")),
    ]
    run(fit_command("configs/tiny/rm.yaml", root / "runs", *rm), cwd=root)
    return {
        "sft": sft,
        "reward": root / "runs/reward/tiny/stage",
        "demo": demo_data,
        "cmp_train": root / "cmp_train.jsonl",
        "cmp_val": root / "cmp_val.jsonl",
    }
