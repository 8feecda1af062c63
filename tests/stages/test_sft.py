"""SFTModule: the loss falls on a tiny set, only response tokens count, and `main.py fit` runs end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch

from lit_rlhf.backbone.config import BackboneConfig, LoraSettings
from lit_rlhf.checkpoint.manifest import read_manifest
from lit_rlhf.data.sft import SFTDataModule
from lit_rlhf.stages.common import OptimConfig, SampleConfig, warmup_cosine
from lit_rlhf.stages.sft import SFTModule

ROOT = Path(__file__).resolve().parents[2]


class _LossRecorder(L.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


def test_sft_loss_falls_well_below_start(demo_data, tmp_path):
    """On a tiny fixed set (32 demonstrations) the response loss falls far below its start."""
    torch.manual_seed(0)
    lines = (demo_data / "sft_train.jsonl").read_text().splitlines()[:32]
    (tmp_path / "fixed.jsonl").write_text("\n".join(lines) + "\n")
    module = SFTModule(
        backbone=BackboneConfig(
            model_config={"model_type": "gpt2", "n_layer": 2, "n_embd": 64, "n_head": 2, "n_positions": 64},
            tokenizer=str(demo_data / "tokenizer"),
        ),
        optim=OptimConfig(lr=3e-3, warmup_steps=5),
        samples=SampleConfig(every_n_steps=0),
    )
    data = SFTDataModule(str(tmp_path / "fixed.jsonl"), batch_size=16, max_length=64)
    rec = _LossRecorder()
    trainer = L.Trainer(
        max_steps=150,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[rec],
    )
    trainer.fit(module, data)
    start, end = sum(rec.losses[:3]) / 3, sum(rec.losses[-10:]) / 10
    assert end < 0.3 * start, (start, end)


def test_sft_with_lora_trains_only_the_adapter(tiny_dir, demo_data, tmp_path):
    """LoRA SFT on a pretrained base: the base is bit-identical afterwards, the adapter moved."""
    module = SFTModule(
        backbone=BackboneConfig(
            name_or_path=str(tiny_dir / "llama"), lora=LoraSettings(r=4, alpha=8, dropout=0.0)
        ),
        optim=OptimConfig(lr=1e-2, warmup_steps=0),
        samples=SampleConfig(every_n_steps=0),
    )
    module.configure_model()
    base = {n: p.detach().clone() for n, p in module.net.base_named_parameters()}
    lora = {n: p.detach().clone() for n, p in module.net.named_parameters() if "lora_" in n}
    rows = [json.dumps({"prompt": "a b =", "response": "b a"})] * 16
    (tmp_path / "d.jsonl").write_text("\n".join(rows) + "\n")
    data = SFTDataModule(str(tmp_path / "d.jsonl"), batch_size=4, max_length=32)
    L.Trainer(
        max_steps=4,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    ).fit(module, data)
    assert all(torch.equal(p, base[n]) for n, p in module.net.base_named_parameters())
    assert any(not torch.equal(p, lora[n]) for n, p in module.net.named_parameters() if "lora_" in n)


class _GradRecorder(L.Callback):
    """The summed gradient of the first optimizer step."""

    def __init__(self) -> None:
        self.grads: dict[str, torch.Tensor] | None = None

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self.grads is None:
            self.grads = {
                n: p.grad.detach().clone() for n, p in pl_module.named_parameters() if p.grad is not None
            }


def _first_step_grads(demo_data, path: Path, batch_size: int, accumulate: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    module = SFTModule(
        backbone=BackboneConfig(
            model_config={
                "model_type": "gpt2",
                **{"n_layer": 1, "n_embd": 32, "n_head": 2, "n_positions": 64},
                **{"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0},  # no dropout: same forward
            },
            tokenizer=str(demo_data / "tokenizer"),
        ),
        samples=SampleConfig(every_n_steps=0),
    )
    rec = _GradRecorder()
    L.Trainer(
        max_steps=1,
        accumulate_grad_batches=accumulate,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[rec],
    ).fit(module, SFTDataModule(str(path), batch_size=batch_size, max_length=64, seed=1))
    return rec.grads


def test_quantization_is_spelled_as_in_the_reward_and_ppo_stages(tiny_dir):
    """`quantization:` beside `backbone` (as RewardModule/PPOModule take it) quantizes the base; a contradiction
    with backbone.quantization is refused at construction, before any weights load."""
    lora = LoraSettings(r=4, alpha=8, dropout=0.0)
    module = SFTModule(
        backbone=BackboneConfig(name_or_path=str(tiny_dir / "gpt2"), lora=lora),
        quantization="4bit",
        samples=SampleConfig(every_n_steps=0),
    )
    assert module.backbone_cfg.quantization == "4bit"
    module.configure_model()
    assert module.net.cfg.quantization == "4bit" and module.net.hf_model.is_quantized
    with pytest.raises(ValueError, match="contradicts backbone.quantization=8bit"):
        SFTModule(
            backbone=BackboneConfig(name_or_path=str(tiny_dir / "gpt2"), lora=lora, quantization="8bit"),
            quantization="4bit",
        )
    with pytest.raises(ValueError, match="freezes the base"):
        SFTModule(backbone=BackboneConfig(name_or_path=str(tiny_dir / "gpt2")), quantization="4bit")


def test_accumulated_micro_batches_of_unequal_length_give_the_one_batch_gradient(demo_data, tmp_path):
    """Every token weighs the same in an optimizer step however it is split: 1 batch of 4 == 4 accumulated
    micro-batches of 1 (responses of 1 to 7 tokens). Averaging per-micro-batch means would overweight the
    tokens of short responses."""
    rows = [
        {"prompt": "count a =", "response": "1"},
        {"prompt": "reverse a b c d e f g =", "response": "g f e d c b a"},
        {"prompt": "copy a b =", "response": "a b"},
        {"prompt": "sort c b a d =", "response": "a b c d"},
    ]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    whole = _first_step_grads(demo_data, tmp_path / "d.jsonl", batch_size=4, accumulate=1)
    split = _first_step_grads(demo_data, tmp_path / "d.jsonl", batch_size=1, accumulate=4)
    assert whole.keys() == split.keys() and whole
    for name in whole:
        torch.testing.assert_close(split[name], whole[name], rtol=1e-4, atol=1e-6)


def test_warmup_cosine_schedule_by_hand():
    # warmup 4: steps 0..3 -> 1/4, 2/4, 3/4, 4/4; then cosine from 1 to 0.1 over steps 4..14
    assert [warmup_cosine(s, 4, 14, 0.1) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert warmup_cosine(4, 4, 14, 0.1) == 1.0
    assert abs(warmup_cosine(9, 4, 14, 0.1) - 0.55) < 1e-12  # halfway: 0.1 + 0.9 * 0.5
    assert abs(warmup_cosine(14, 4, 14, 0.1) - 0.1) < 1e-12


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def test_main_fit_runs_tiny_sft_config(demo_data, tmp_path):
    """`python main.py fit --config configs/tiny/sft.yaml` writes the whole run directory contract."""
    d = str(demo_data)
    cmd = [
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
    proc = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "runs" / "sft" / "tiny"
    assert "sft stage directory written" in proc.stdout
    # Lightning's per-run notices that say nothing about the run are quiet (cli.quiet_third_party_noise)
    assert "litlogger" not in proc.stdout + proc.stderr and "LeafSpec" not in proc.stderr
    assert "GPU available" in proc.stdout + proc.stderr  # Lightning's own log lines still show
    assert {
        "status.json",
        "metrics.jsonl",
        "samples.jsonl",
        "hparams.yaml",
        "config.yaml",
        "stage",
        "checkpoints",
    } <= {p.name for p in run.iterdir()}
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "finished" and status["step"] == 12
    assert status["stage_dir"] == str(run / "stage")
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    keys = set().union(*metrics)
    assert {
        "sft/loss",
        "sft/val_loss",
        "sft/val_ppl",
        "sft/lr",
        "sft/exact_match",
        "sft/judge_score",
    } <= keys
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    # samples carry the same 0-based step as the metric rows (optimizer steps done - 1)
    assert {s["mode"] for s in samples} == {"greedy", "sampled"} and {s["step"] for s in samples} >= {5, 11}
    assert all(0.0 <= s["score"] <= 1.0 for s in samples)
    manifest = read_manifest(run / "stage")
    assert manifest.stage == "sft" and manifest.step == 12
    assert {"exact_match", "judge_score", "val_loss"} <= set(manifest.metrics)
    assert (run / "checkpoints" / "last.ckpt").is_file()
    # the stage directory exports to a plain transformers model
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "main.py"),
            "export",
            "--ckpt",
            str(run / "stage"),
            "--out",
            str(tmp_path / "hf"),
        ],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "hf" / "model.safetensors").is_file()


def test_help_and_print_config_are_fast_and_load_no_weights(tmp_path):
    start = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "main.py"),
            "fit",
            "--config",
            str(ROOT / "configs/sft.yaml"),
            "--print_config",
        ],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "EleutherAI/pythia-410m" in proc.stdout and "quantization: 4bit" in proc.stdout
    assert elapsed < 60  # no model download or weight load (the name is not even reachable here)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), "fit", "--help"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and "--run.name" in proc.stdout and "--model" in proc.stdout


def test_packed_examples_do_not_attend_to_each_other(demo_data, tmp_path):
    """packing: the loss of a packed batch equals the unpacked one: every example sees only its own tokens."""
    rows = [
        {"prompt": "count a =", "response": "1"},
        {"prompt": "reverse a b c d e f g =", "response": "g f e d c b a"},
        {"prompt": "copy a b =", "response": "a b"},
    ]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    torch.manual_seed(0)
    module = SFTModule(
        backbone=BackboneConfig(
            model_config={"model_type": "gpt2", "n_layer": 2, "n_embd": 32, "n_head": 2, "n_positions": 64},
            tokenizer=str(demo_data / "tokenizer"),
        ),
        samples=SampleConfig(every_n_steps=0),
    )
    module.configure_model()
    module.net.eval()
    losses = []
    for packing in (False, True):
        dm = SFTDataModule(str(tmp_path / "d.jsonl"), batch_size=3, max_length=64, packing=packing, seed=1)
        dm.tokenizer = module.text_format
        dm.setup("fit")
        (batch,) = [{k: v for k, v in b.items() if k != "num_targets"} for b in dm.train_dataloader()]
        assert ("position_ids" in batch) is packing and batch["input_ids"].shape[0] == (1 if packing else 3)
        with torch.no_grad():
            losses.append(float(module._loss(batch)))
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
