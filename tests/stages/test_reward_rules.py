"""Rule heads in the reward stage (Sparrow): rule rows batch beside the comparisons, the head learns a rule on the
reward model's trunk, held-out per-rule figures reach the manifest, and the stage directory names the rules."""

from __future__ import annotations

import random
from pathlib import Path

import lightning as L
import pytest
import torch

from lit_rlhf.backbone.build import Backbone, load_tokenizer
from lit_rlhf.backbone.config import BackboneConfig, LoraSettings
from lit_rlhf.checkpoint.manifest import read_manifest
from lit_rlhf.checkpoint.stage_dir import load_stage_dir, save_stage_dir
from lit_rlhf.data.comparisons import ComparisonDataModule
from lit_rlhf.data.io import write_jsonl
from lit_rlhf.data.rules import collate_rules
from lit_rlhf.stages.common import OptimConfig
from lit_rlhf.stages.reward import RULES, RewardModule

from .test_reward import _marker_rows


def _rule_rows(n: int, seed: int) -> list[dict]:
    """has_x: the response holds the marker 'x' (broken); short: fewer than 3 words, labeled only sometimes."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = rng.choices("abcdefgh", k=rng.randint(1, 5))
        if rng.random() < 0.5:
            words.insert(rng.randrange(len(words) + 1), "x")
        short = len(words) < 3 if rng.random() < 0.5 else None
        prompt = " ".join(rng.choices("abcdefgh", k=3)) + " ="
        rows.append(
            {"prompt": prompt, "response": " ".join(words), "rules": {"has_x": "x" in words, "short": short}}
        )
    return rows


def _files(tmp: Path) -> dict[str, Path]:
    paths = {name: tmp / f"{name}.jsonl" for name in ("cmp_train", "cmp_val", "rules_train", "rules_val")}
    write_jsonl(paths["cmp_train"], _marker_rows(64, 3, seed=1))
    write_jsonl(paths["cmp_val"], _marker_rows(16, 3, seed=2))
    write_jsonl(paths["rules_train"], _rule_rows(400, seed=3))
    write_jsonl(paths["rules_val"], _rule_rows(100, seed=4))
    return paths


def _dm(paths, **kw) -> ComparisonDataModule:
    return ComparisonDataModule(
        str(paths["cmp_train"]),
        str(paths["cmp_val"]),
        batch_size=8,
        max_length=32,
        rules_train_path=str(paths["rules_train"]),
        rules_val_path=str(paths["rules_val"]),
        rules_batch_size=16,
        **kw,
    )


def test_collate_rules_by_hand():
    from lit_rlhf.data.rules import EncodedRule

    items = [
        EncodedRule("p", "a", {"x": True, "y": None}, [5, 6]),
        EncodedRule("q", "b", {"y": False}, [7]),
    ]
    b = collate_rules(items, ["x", "y"], pad_id=0)
    assert b["input_ids"].tolist() == [[5, 6], [7, 0]] and b["attention_mask"].tolist() == [[1, 1], [1, 0]]
    assert b["labels"].tolist() == [[1.0, 0.0], [0.0, 0.0]]
    assert b["mask"].tolist() == [[1.0, 0.0], [0.0, 1.0]]  # null and an unnamed rule are unlabeled


def test_rule_batches_ride_along_with_the_comparisons_and_resume_by_position(tiny_dir, tmp_path):
    paths = _files(tmp_path)
    dm = _dm(paths, tokenizer=load_tokenizer(str(tiny_dir / "tokenizer")))
    with pytest.raises(ValueError, match="rules_val_path needs val_path"):
        ComparisonDataModule("c.jsonl", rules_train_path="r.jsonl", rules_val_path="v.jsonl")
    dm.setup("fit")
    assert dm.rule_names == ["has_x", "short"]
    batches = list(dm.train_dataloader())
    assert all(b["rules"]["labels"].shape == (16, 2) for b in batches)
    dm.consumed = 3  # as a checkpoint after 3 batches restores it
    again = next(iter(dm.train_dataloader()))
    assert torch.equal(again["rules"]["input_ids"], batches[3]["rules"]["input_ids"])
    comparisons, rules = dm.val_dataloader()
    assert next(iter(rules))["labels"].shape[1] == 2


def _fit(sft: Path, paths, steps: int, **module_kw) -> tuple[RewardModule, L.Trainer]:
    module = RewardModule(
        init_from=str(sft),
        lora=LoraSettings(r=4, alpha=8, dropout=0.0),
        optim=OptimConfig(lr=3e-3, warmup_steps=5),
        max_length=32,
        **module_kw,
    )
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
    trainer.fit(module, _dm(paths))
    return module, trainer


def test_rule_head_learns_a_rule_on_the_reward_trunk(tiny_dir, tmp_path):
    torch.manual_seed(0)
    sft = tmp_path / "sft"
    save_stage_dir(sft, Backbone.build(BackboneConfig(name_or_path=str(tiny_dir / "gpt2"))), stage="sft")
    paths = _files(tmp_path)
    module, trainer = _fit(sft, paths, 80)
    cm = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert cm["reward/val_rule/has_x/accuracy"] > 0.9 and cm["reward/val_rule/has_x/auroc"] > 0.95, cm
    assert 0.0 <= cm["reward/val_rule/has_x/ece"] <= 1.0 and "reward/val_rule/short/auroc" in cm
    assert cm["reward/val_accuracy"] > 0.7  # the preference is still learned beside the rules
    assert module.net.heads[RULES].outputs == module.rule_names == ["has_x", "short"]


def test_rule_coef_changes_the_update(tiny_dir, tmp_path):
    """The rule loss reaches the shared trunk: with rule_coef 0 the reward adapter trains as without rules."""
    sft = tmp_path / "sft"
    save_stage_dir(sft, Backbone.build(BackboneConfig(name_or_path=str(tiny_dir / "gpt2"))), stage="sft")
    paths = _files(tmp_path)
    states = []
    for coef in (0.0, 1.0):
        L.seed_everything(0)
        module, _ = _fit(sft, paths, 2, rule_coef=coef)
        states.append({n: p.detach().clone() for n, p in module.net.named_parameters() if ".reward." in n})
    assert any(not torch.equal(states[0][n], states[1][n]) for n in states[0])


def test_stage_directory_names_the_rules_and_carries_their_figures(tiny_dir, tmp_path):
    """The rules head is saved beside the reward head (same adapter)
    with its rule names, and the manifest holds the held-out per-rule figures."""
    from lit_rlhf.runs import RunLogger

    sft = tmp_path / "sft"
    save_stage_dir(sft, Backbone.build(BackboneConfig(name_or_path=str(tiny_dir / "gpt2"))), stage="sft")
    paths = _files(tmp_path)
    module = RewardModule(
        init_from=str(sft),
        lora=LoraSettings(r=4, alpha=8, dropout=0.0),
        optim=OptimConfig(lr=3e-3, warmup_steps=2),
        max_length=32,
        rules=["has_x"],  # a subset of what the data labels
    )
    trainer = L.Trainer(
        max_steps=6,
        accelerator="cpu",
        logger=RunLogger(tmp_path / "runs/reward/x"),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        val_check_interval=4,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, _dm(paths))
    stage = tmp_path / "runs/reward/x/stage"
    manifest = read_manifest(stage)
    assert manifest.heads[RULES] == {
        "path": "heads/rules.safetensors",
        "adapter": "reward",
        "bias": 0.0,
        "outputs": ["has_x"],
    }
    assert {"val_rule_loss", "val_rule/has_x/accuracy", "val_rule/has_x/auroc", "val_rule/has_x/ece"} <= set(
        manifest.metrics
    )
    assert manifest.metric_steps["val_rule/has_x/auroc"] == 6  # final weights, validated again at the end
    net, _ = load_stage_dir(stage)
    assert net.heads[RULES].outputs == ["has_x"]


def test_rules_the_data_does_not_label_are_refused_naming_them(tiny_dir, tmp_path):
    sft = tmp_path / "sft"
    save_stage_dir(sft, Backbone.build(BackboneConfig(name_or_path=str(tiny_dir / "gpt2"))), stage="sft")
    with pytest.raises(ValueError, match=r"RewardModule.rules names \['tone'\], which no row"):
        _fit(sft, _files(tmp_path), 1, rules=["tone", "has_x"])
