"""Pieces every stage module shares: optimizer settings and schedule, sample/eval settings, labeler hookup.

Stage modules orchestrate; the math they call lives in lit_rlhf.rl.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from lit_rlhf.backbone.generate import SamplingConfig, generate


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
        labeler: ``demo`` scores completions with the built-in demo labeler; ``none`` logs text only.
        eval_prompts: Held-out prompts JSONL evaluated once at the end of fit (figures go to the manifest).
        eval_limit: At most this many held-out prompts.
        eval_batch_size: Prompts per generate call.
    """

    every_n_steps: int = 200
    prompts: str | None = None
    num_prompts: int = 8
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(max_new_tokens=24))
    labeler: Literal["demo", "none"] = "none"
    eval_prompts: str | None = None
    eval_limit: int = 300
    eval_batch_size: int = 64


def read_prompts(path: str | Path, limit: int | None = None) -> list[str]:
    """Prompts of a prompts (or demonstrations) JSONL file, validated like any other rows."""
    from lit_rlhf.data.rows import read_rows

    rows, _ = read_rows(path, "prompt", limit=limit)
    return [r.prompt for r in rows]


class DemoScorer:
    """Wraps the demo labeler: scores prompts of the demo world, None for any other prompt."""

    def __init__(self) -> None:
        from lit_rlhf.demo.labeler import Labeler
        from lit_rlhf.demo.world import parse_prompt

        self._labeler, self._parse = Labeler(), parse_prompt

    def judge(self, prompt: str, response: str) -> dict[str, Any]:
        if self._parse(prompt) is None:
            return {}
        j = self._labeler.judge(prompt, response)
        return {"score": j.score, "exact_match": bool(j.correct)}


def make_scorer(kind: str) -> DemoScorer | None:
    return DemoScorer() if kind == "demo" else None


def generate_batched(
    model, tokenizer, prompts: list[str], sampling: SamplingConfig, batch_size: int, seed: int | None = None
) -> list[str]:
    """Generate for many prompts in batches; returns the decoded responses in order."""
    out: list[str] = []
    for i in range(0, len(prompts), batch_size):
        gen = generate(
            model,
            tokenizer,
            prompts[i : i + batch_size],
            sampling,
            generator_seed=None if seed is None else seed + i,
        )
        out.extend(gen.texts)
    return out


def summarize_judgements(judged: list[dict[str, Any]]) -> dict[str, float]:
    """Mean labeler score and exact-match rate over the judged completions that have them."""
    scored = [j for j in judged if "score" in j]
    if not scored:
        return {}
    return {
        "labeler_score": sum(j["score"] for j in scored) / len(scored),
        "exact_match": sum(j["exact_match"] for j in scored) / len(scored),
    }


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
    from lit_rlhf.backbone.sharding import check_data_parallel_only, shard_backbone, uses_fsdp2

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
