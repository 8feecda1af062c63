"""Pieces every stage module shares: optimizer settings and schedule, sample/eval settings, judge hookup.

Stage modules orchestrate; the math they call lives in lit_rlhf.rl.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lit_rlhf.backbone.generate import SamplingConfig


@dataclass
class OptimConfig:
    """AdamW with linear warmup then cosine decay.

    Attributes:
        lr: Peak learning rate.
        weight_decay: Decoupled weight decay (not applied to biases, norms and heads' biases).
        betas: Adam betas.
        warmup_steps: Linear warmup from 0 to ``lr``.
        min_lr_ratio: The cosine decays to ``lr * min_lr_ratio`` at the last step.
    """

    lr: float = 5e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """LR multiplier at `step`: linear 0->1 over `warmup`, then cosine 1->min_ratio at `total`."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_optimizer(params: list[tuple[str, torch.nn.Parameter]], cfg: OptimConfig, total_steps: int):
    """AdamW over trainable params (no decay on 1-D tensors) and its per-step LambdaLR schedule."""
    decay = [p for n, p in params if p.requires_grad and p.ndim >= 2]
    no_decay = [p for n, p in params if p.requires_grad and p.ndim < 2]
    if not decay and not no_decay:
        raise ValueError("no trainable parameters: check backbone.lora / the frozen roles")
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=tuple(cfg.betas))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: warmup_cosine(s, cfg.warmup_steps, total_steps, cfg.min_lr_ratio)
    )
    return opt, sched


@dataclass
class SampleConfig:
    """Completions logged during training, and the held-out evaluation at the end.

    Attributes:
        every_n_steps: Log greedy and sampled completions every N optimizer steps (0 = never).
        prompts: Prompts JSONL for the fixed sample set; default: the first validation prompts.
        num_prompts: How many fixed prompts to sample.
        sampling: Settings of the sampled completions (greedy ones use the same max_new_tokens).
        judge: Scores completions: ``demo`` (the demo world's labeler), ``exact_match`` (equals the reference
            answer a row carries: ``reference``, or ``response`` in a demonstrations file), a
            ``package.module:callable`` of your own, or null (text only). See lit_rlhf.judges.
        eval_prompts: Held-out prompts JSONL evaluated once at the end of fit (figures go to the manifest).
        eval_limit: At most this many held-out prompts.
        eval_batch_size: Prompts per generate call.
    """

    every_n_steps: int = 200
    prompts: str | None = None
    num_prompts: int = 8
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(max_new_tokens=24))
    judge: str | None = None
    eval_prompts: str | None = None
    eval_limit: int = 300
    eval_batch_size: int = 64


def read_prompts(path: str | Path, limit: int | None = None) -> tuple[list[Any], list[str | None]]:
    """Prompts of a prompts (or demonstrations) file, validated like any other rows, and their reference
    answers (None where a row has none)."""
    from lit_rlhf.data.rows import read_rows

    rows, _ = read_rows(path, "prompt", limit=limit)
    return [r.prompt for r in rows], [r.reference for r in rows]


def stage_text_format(stage_dir: str | Path, trust_remote_code: bool = False) -> Any:
    """A stage directory's tokenizer with its recorded prompt format, without loading any weights.

    Later stages render prompts exactly as the stage they start from (the SFT model) was trained to read them.
    `trust_remote_code` is the caller's own setting, never the manifest's.
    """
    from lit_rlhf.backbone.build import load_tokenizer
    from lit_rlhf.checkpoint.manifest import read_manifest
    from lit_rlhf.data.formatting import PromptFormat, TextFormat

    manifest = read_manifest(stage_dir)
    tokenizer = load_tokenizer(str(Path(stage_dir) / manifest.tokenizer), None, trust_remote_code)
    return TextFormat(tokenizer, PromptFormat.from_dict(manifest.prompt_format))


@torch.no_grad()
def run_validation(module: Any, loader: Any, dataloader_idx: int | None = None) -> None:
    """Run `module.validation_step` over every batch of `loader` now, outside Lightning's loop (eval mode).

    `dataloader_idx` is passed on when the module validates on several loaders (as Lightning passes it).

    Used at the end of fit when the last validation happened before the last optimizer step, so the figures a
    stage directory reports are the final weights'. The caller computes and resets its metrics afterwards.
    """
    was_training = module.training
    module.eval()
    try:
        for i, batch in enumerate(loader):
            batch = module.trainer.strategy.batch_to_device(batch)
            if dataloader_idx is None:
                module.validation_step(batch, i)
            else:
                module.validation_step(batch, i, dataloader_idx)
    finally:
        module.train(was_training)


def check_strategy(strategy: Any, stage: str) -> None:
    """Refuse, before any weights load, the sharding strategies lit-rlhf does not drive.

    DDP and DeepSpeed ZeRO stages 1-2 keep every parameter whole on every rank. FSDP2 (``strategy: fsdp2``, or
    ModelParallelStrategy without tensor parallelism) is supported: the stage modules shard the backbone in
    ``configure_model`` and make generation and stage-directory writing collective. Lightning's FSDP1 strategy and
    ZeRO-3 wrap or partition the model behind our back, so rank-zero generation and writing would hang or save
    shards; failing here beats that at the end of a long run.
    """
    from lightning.pytorch.strategies import FSDPStrategy

    if isinstance(strategy, FSDPStrategy):
        raise ValueError(
            f"{stage}: strategy {type(strategy).__name__} (FSDP1) is not supported. Use strategy: fsdp2 "
            "(parameters sharded with torch's fully_shard), ddp, or deepspeed_stage_2 (see docs/backbone.md)"
        )
    if getattr(strategy, "zero_stage_3", False):
        raise ValueError(
            f"{stage}: DeepSpeed ZeRO stage 3 partitions parameters, which lit-rlhf does not drive. Use strategy: "
            "fsdp2 for sharded parameters, or deepspeed_stage_2 (see docs/backbone.md)"
        )


def shard_if_fsdp2(module: Any, *nets: Any) -> None:
    """Shard each backbone in `nets` when the trainer runs FSDP2 (call at the end of ``configure_model``)."""
    trainer = module._trainer
    if trainer is None:
        return
    from lit_rlhf.distributed import check_data_parallel_only, shard_backbone, uses_fsdp2

    strategy = trainer.strategy
    if not uses_fsdp2(strategy):
        return
    check_data_parallel_only(strategy, module.STAGE)
    mesh = strategy.device_mesh["data_parallel"]
    for net in nets:
        shard_backbone(net, mesh, gather_for_generation=getattr(strategy, "gather_for_generation", True))


def computes_on_this_rank(trainer: Any, net: Any) -> bool:
    """Whether this rank runs the forward passes of rank-zero work (samples, evaluation, the stage directory).

    Rank zero alone when parameters are whole; every rank when they are FSDP2 shards, since each forward then
    gathers from all ranks (the files are still written by rank zero only).
    """
    return bool(trainer.is_global_zero or getattr(net, "sharded", False))


def gradient_vote(trainer: Any, net: Any):
    """The cross-rank vote for skipping a non-finite gradient, or None where none is needed.

    Under FSDP2 each rank sees only its shard of each gradient, so the ranks must agree; DDP ranks hold the same
    all-reduced gradients already, and one collective per optimizer step would buy nothing.
    """
    return trainer.strategy.reduce_boolean_decision if getattr(net, "sharded", False) else None


class StrategyCheck:
    """Mixin for the stage modules: refuse unsupported sharding strategies in ``setup`` (before weights load)."""

    STAGE = "stage"

    def setup(self, stage: str) -> None:
        check_strategy(self.trainer.strategy, self.STAGE)
