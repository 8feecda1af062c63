"""PPOModule: PPO-ptx against the reward model (InstructGPT step 3, eq. 2).

One training step = one rollout batch, in numbered steps:
  1. generate responses to the prompts with the policy (KV cache, left-padded prompts)
  2. score: RM at the last response token; per-token log-probs of policy and reference; critic values
  3. shape: per-token reward -beta*KL_t plus the (penalised, clipped, normalised) RM score at the last token
  4. GAE advantages and returns; whiten advantages over valid tokens
  5. several PPO epochs over shuffled minibatches: clipped policy loss + gamma_ptx * pretraining LM loss,
     clipped value loss, one optimizer step per minibatch (manual optimization)
  6. update the KL controller; log; every N steps evaluate against the SFT model on held-out prompts
The math lives in lit_rlhf.rl; this module only orchestrates.

Under data parallelism (DDP) every rank rolls out its own prompts, and everything that steers the run is global:
score normalisation moments and advantage whitening use all ranks' rollouts, the KL controller moves on the mean
KL of all of them (so beta stays the same everywhere), a non-finite loss skips the update on every rank, and the
logged statistics are over all ranks' sequences.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import lightning as L
import torch
from torch import Tensor

from lit_rlhf.backbone.config import LoraSettings, Quantization
from lit_rlhf.backbone.generate import Generation, SamplingConfig, generate
from lit_rlhf.data.io import append_jsonl
from lit_rlhf.data.padding import pad_right
from lit_rlhf.rl.advantages import gae
from lit_rlhf.rl.kl import kl_penalty
from lit_rlhf.rl.kl_control import AdaptiveKLController, FixedKLController
from lit_rlhf.rl.logprobs import entropy_from_logits, gather_logprobs
from lit_rlhf.rl.losses import lm_loss, ppo_policy_loss, value_loss
from lit_rlhf.rl.masked import masked_mean, whiten
from lit_rlhf.rl.minibatch import index_record, minibatch_indices
from lit_rlhf.rl.rewards import (
    RunningMoments,
    clip_scores,
    normalize_scores,
    shape_rewards,
    truncation_penalty,
)
from lit_rlhf.rl.stats import explained_variance
from lit_rlhf.runs import run_dir
from lit_rlhf.stages.common import StrategyCheck, computes_on_this_rank, gradient_vote, shard_if_fsdp2
from lit_rlhf.stages.guards import NumericalGuard, ppo_flags

# Two Lightning warnings that do not apply here, silenced so the real ones stand out:
# - every module is in eval mode on purpose (dropout off for the whole run: see configure_model);
# - checkpoints hold the state AFTER the step's updates, which is what an exact resume needs (tested).
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
warnings.filterwarnings(
    "ignore", message=r"Using ModelCheckpoint with manual optimization and every_n_train_steps"
)


@dataclass
class KLConfig:
    """The per-token KL penalty to the SFT reference.

    Attributes:
        init_coef: beta at the start (and always, when not adaptive).
        adaptive: Adapt beta toward ``target`` (Ziegler et al. 2019); its state is saved in checkpoints.
        target: Target KL per sequence (nats) for the adaptive controller.
        horizon: Controller horizon in sequences.
        estimator: Per-token KL estimator: k1 (log ratio, InstructGPT), k2, k3 or abs.
    """

    init_coef: float = 0.05
    adaptive: bool = False
    target: float = 6.0
    horizon: int = 10000
    estimator: Literal["k1", "k2", "k3", "abs"] = "k1"


@dataclass
class PPOConfig:
    """PPO hyperparameters.

    Attributes:
        ppo_epochs: Passes over each rollout batch.
        minibatch_size: Sequences per optimizer step.
        clip_range: Policy ratio clip epsilon.
        value_clip_range: Value clip around the rollout values.
        vf_coef: Weight of the value loss in the summed loss.
        gamma: Discount. lam: GAE lambda.
        whiten_advantages: Whiten advantages over valid tokens of the rollout batch.
        max_grad_norm: Gradient norm clip (0 = off).
        critic_lr: Critic learning rate (policy uses optim.lr).
        score_clip: Clip RM scores to [-c, c] (null = off).
        normalize_scores: Normalise RM scores by running mean/std.
        truncation_penalty: Score given to responses that hit max_new_tokens without EOS (null = keep RM score).
    """

    ppo_epochs: int = 2
    minibatch_size: int = 16
    clip_range: float = 0.2
    value_clip_range: float = 0.2
    vf_coef: float = 0.5
    gamma: float = 1.0
    lam: float = 0.95
    whiten_advantages: bool = True
    max_grad_norm: float = 1.0
    critic_lr: float = 1e-4
    score_clip: float | None = None
    normalize_scores: bool = False
    truncation_penalty: float | None = None


@dataclass
class EvalConfig:
    """Held-out evaluation against the SFT model (demo labeler) and the pretraining loss.

    Attributes:
        prompts: Held-out prompts JSONL (null = no evaluation).
        every_n_steps: Evaluate every N PPO iterations, i.e. rollout batches (and at the end).
        limit: At most this many prompts.
        sampling: Sampling of both the policy and the SFT reference for the win rate.
        labeler: ``demo`` judges with the demo labeler (win rate, labeler score); ``none`` skips those.
        samples_per_step: Rollout completions written to samples.jsonl per step.
    """

    prompts: str | None = None
    every_n_steps: int = 25
    limit: int = 200
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(max_new_tokens=24))
    labeler: Literal["demo", "none"] = "demo"
    samples_per_step: int = 4


class Rollout(NamedTuple):
    """One rollout batch. B sequences, P prompt columns, R response columns, L = P + R."""

    input_ids: Tensor  # (B, L) prompt (left-padded) + response (right-padded)
    attention_mask: Tensor  # (B, L)
    response_mask: Tensor  # (B, R) 1 on response tokens up to and including EOS
    logprobs: Tensor  # (B, R) log pi_old(a_t | s_t)
    ref_logprobs: Tensor  # (B, R) log pi_ref(a_t | s_t)
    values: Tensor  # (B, R) V_old(s_t)
    advantages: Tensor  # (B, R)
    returns: Tensor  # (B, R)


def response_logprobs(logits: Tensor, input_ids: Tensor, prompt_len: int) -> Tensor:
    """Log-probs of the response tokens: logits (B, L, V) at positions P-1..L-2 predict tokens P..L-1 -> (B, R)."""
    return gather_logprobs(logits[:, prompt_len - 1 : -1], input_ids[:, prompt_len:])


class PPOModule(StrategyCheck, L.LightningModule):
    """PPO-ptx from an SFT and a reward stage directory; writes a ``ppo`` stage directory.

    Args:
        policy_from: SFT stage directory (policy init and the frozen reference).
        reward_from: Reward stage directory (frozen reward model; the critic starts from it).
        lora: LoRA settings for the policy/critic adapters when the SFT stage trained full weights
            (default: the reward model's).
        quantization: Quantize the shared frozen base (``8bit``/``4bit``). Default: as stored.
        ptx_coef: gamma_ptx, the weight of the pretraining LM loss in the policy objective (0 = plain PPO).
        kl: KL penalty settings. ppo: PPO hyperparameters. sampling: rollout generation settings.
        lr: Policy learning rate. eval: held-out evaluation.
        max_nonfinite_updates: Stop after this many non-finite (skipped) updates in a row (0 = never).
    """

    STAGE = "ppo"

    def __init__(
        self,
        policy_from: str,
        reward_from: str,
        lora: LoraSettings | None = None,
        quantization: Quantization | None = None,
        ptx_coef: float = 0.0,
        kl: KLConfig | None = None,
        ppo: PPOConfig | None = None,
        sampling: SamplingConfig | None = None,
        lr: float = 1e-4,
        eval: EvalConfig | None = None,
        max_nonfinite_updates: int = 10,
    ) -> None:
        super().__init__()
        if ptx_coef < 0:
            raise ValueError("ptx_coef must be >= 0")
        self.policy_from, self.reward_from = policy_from, reward_from
        self.lora, self.quantization, self.ptx_coef, self.lr = lora, quantization, ptx_coef, lr
        self.kl_cfg, self.ppo_cfg = kl or KLConfig(), ppo or PPOConfig()
        self.sampling = sampling or SamplingConfig(max_new_tokens=24, do_sample=True, temperature=1.0)
        self.eval_cfg = eval or EvalConfig()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.roles = None
        self._tokenizer = None
        self.kl_ctl = (
            AdaptiveKLController(self.kl_cfg.init_coef, self.kl_cfg.target, self.kl_cfg.horizon)
            if self.kl_cfg.adaptive
            else FixedKLController(self.kl_cfg.init_coef)
        )
        self.score_moments = RunningMoments()
        self.parent_dir = policy_from
        self.stage_dir_written: Path | None = None
        self.final_metrics: dict[str, float] = {}
        self._sft_eval: list[str] | None = None
        # Manual optimization advances trainer.global_step once per optimizer step (every minibatch update);
        # this counts PPO iterations (rollout batches) and is saved in checkpoints.
        self.rollouts_done = 0
        self.guard = NumericalGuard(self.STAGE, max_nonfinite_updates)
        self._first_length: float | None = None

    @property
    def log_step(self) -> int:
        """The step written with metrics and samples: PPO iterations done - 1, as on Lightning's own rows."""
        return max(self.rollouts_done - 1, 0)

    # ---- building ---------------------------------------------------------------------------------------
    @property
    def tokenizer(self):
        if self.roles is not None:
            return self.roles.tokenizer
        if self._tokenizer is None:
            from lit_rlhf.backbone.build import load_tokenizer

            self._tokenizer = load_tokenizer(str(Path(self.policy_from) / "tokenizer"))
        return self._tokenizer

    def _target_device(self):
        # inside configure_model self.device can still be cpu; the strategy knows where the model will live
        return self.trainer.strategy.root_device if self._trainer is not None else self.device

    def configure_model(self) -> None:
        if self.roles is not None:
            return
        from lit_rlhf.stages.roles import Roles

        roles = Roles.load(
            self.policy_from, self.reward_from, self.lora, self.quantization, self._target_device()
        )
        # Dropout stays off for the whole run: with it, the first update's ratio pi/pi_old would not be 1.
        roles.eval()
        shard_if_fsdp2(self, *([roles.shared] if roles.is_shared else roles.separate.values()))
        self.roles = roles

    def configure_optimizers(self):
        groups = [
            {"params": self.roles.policy_parameters(), "lr": self.lr},
            {"params": self.roles.critic_parameters(), "lr": self.ppo_cfg.critic_lr},
        ]
        return torch.optim.AdamW(groups, betas=(0.9, 0.95), weight_decay=0.0)

    def on_fit_start(self) -> None:
        dm = self.trainer.datamodule
        if self.ptx_coef > 0 and not getattr(dm, "has_pretrain", False):
            raise ValueError(
                "ptx_coef > 0 needs pretraining data: set data.init_args.pretrain_path "
                "(or ptx_coef: 0 for plain PPO)"
            )

    # ---- 1-4: rollout -----------------------------------------------------------------------------------
    @torch.no_grad()
    def rollout(self, prompts: list[str]) -> tuple[Rollout, Generation, dict[str, Tensor]]:
        """Generate, score, shape rewards and compute advantages for one batch of prompts."""
        roles, cfg = self.roles, self.ppo_cfg
        t0 = time.perf_counter()
        gen = generate(roles.generation_model(), roles.tokenizer, prompts, self.sampling)  # 1. generate
        gen_time = time.perf_counter() - t0
        ids, mask, rmask = gen.input_ids, gen.attention_mask, gen.response_mask.float()
        p = gen.prompt_ids.shape[1]
        was_training = roles.training
        roles.eval()
        logp = response_logprobs(roles.logits("policy", ids, mask), ids, p)  # 2. score: (B, R)
        ref_logp = response_logprobs(roles.logits("reference", ids, mask), ids, p)
        values = roles.values(ids, mask)[:, p - 1 : -1] * rmask  # (B, R) V(s_t) before token t
        raw = roles.reward(ids, mask)  # (B,)
        roles.train(was_training)
        scores = truncation_penalty(raw, gen.ended, cfg.truncation_penalty)  # 3. shape
        scores = clip_scores(scores, cfg.score_clip)
        if cfg.normalize_scores:
            self.score_moments.update(
                self._gather(scores)
            )  # every rank's scores: the same moments everywhere
            scores = normalize_scores(scores, self.score_moments)
        parts = shape_rewards(scores, logp, ref_logp, rmask, self.kl_ctl.value, self.kl_cfg.estimator)
        adv, returns = gae(parts.rewards, values, rmask, cfg.gamma, cfg.lam)  # 4. advantages
        if cfg.whiten_advantages:
            adv = whiten(adv, rmask, all_reduce=self._sum_over_ranks if self._world > 1 else None)
        # per-sequence figures of all ranks: (W*B, 5) -> exact global means and std
        every = self._gather(
            torch.stack([raw, parts.rewards.sum(1), parts.kl.sum(1), rmask.sum(1), gen.ended.float()], 1)
        )
        stats = {
            "rm_score": every[:, 0].mean(),
            "reward_mean": every[:, 1].mean(),
            "reward_std": every[:, 1].std(),
            "kl": every[:, 2].mean(),
            "kl_coef": torch.tensor(self.kl_ctl.value),
            "response_length": every[:, 3].mean(),
            "ended_frac": every[:, 4].mean(),
            # the whole job's generation throughput: every rank generates at the same time
            "gen_tokens_per_s": self._sum_over_ranks(rmask.sum() / max(gen_time, 1e-9)),
            "gen_time": torch.tensor(gen_time),
        }
        return Rollout(ids, mask, rmask, logp, ref_logp, values, adv, returns), gen, stats

    # ---- 5: optimization --------------------------------------------------------------------------------
    def ptx_loss(self, batch: dict[str, Tensor]) -> Tensor:
        """Pretraining LM loss of the policy on a batch of text."""
        logits = self.roles.logits("policy", batch["input_ids"], batch["attention_mask"])
        return lm_loss(logits, batch["labels"])

    def ppo_update(self, mb: Rollout, ptx: dict[str, Tensor] | None) -> dict[str, Tensor]:
        """One optimizer step on a minibatch: clipped policy loss + ptx, clipped value loss."""
        cfg = self.ppo_cfg
        p = mb.input_ids.shape[1] - mb.response_mask.shape[1]
        logits = self.roles.logits("policy", mb.input_ids, mb.attention_mask)
        logp = response_logprobs(logits, mb.input_ids, p)  # (b, R)
        pg_loss, pstats = ppo_policy_loss(logp, mb.logprobs, mb.advantages, mb.response_mask, cfg.clip_range)
        values = self.roles.values(mb.input_ids, mb.attention_mask)[:, p - 1 : -1]
        vf_loss, vclip = value_loss(values, mb.values, mb.returns, mb.response_mask, cfg.value_clip_range)
        loss = pg_loss + cfg.vf_coef * vf_loss
        ptx_loss = self.ptx_loss(ptx) if ptx is not None else torch.zeros((), device=loss.device)
        if ptx is not None and self.ptx_coef > 0:
            loss = loss + self.ptx_coef * ptx_loss  # InstructGPT eq. 2: gamma * E_pretrain[log pi]
        opt = self.optimizers()
        opt.zero_grad()
        params = [q for g in opt.param_groups for q in g["params"]]
        if self.guard.loss_ok(loss, self.global_step, self.trainer.strategy.reduce_boolean_decision):
            self.manual_backward(loss)
            if self.guard.grads_ok(params, self.global_step, gradient_vote(self.trainer, self._policy_net)):
                if cfg.max_grad_norm > 0:
                    self.clip_gradients(
                        opt, gradient_clip_val=cfg.max_grad_norm, gradient_clip_algorithm="norm"
                    )
                opt.step()
        with torch.no_grad():
            ent = masked_mean(entropy_from_logits(logits[:, p - 1 : -1].detach()), mb.response_mask)
        return {
            "policy_loss": pg_loss.detach(),
            "value_loss": vf_loss.detach(),
            "clip_frac": pstats.clip_frac,
            "approx_kl": pstats.approx_kl,
            "value_clip_frac": vclip,
            "entropy": ent,
            "ptx_loss": ptx_loss.detach(),
        }

    @staticmethod
    def _ptx_chunks(ptx: dict[str, Tensor] | None, n: int) -> list[dict[str, Tensor] | None]:
        """Split the step's pretraining batch across its n updates (cycling when it has fewer rows)."""
        if ptx is None:
            return [None] * n
        rows = ptx["input_ids"].shape[0]
        size = max(1, rows // n)
        return [
            {k: v[(i * size) % rows : (i * size) % rows + size] for k, v in ptx.items()} for i in range(n)
        ]

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        prompts, ptx = batch["prompts"], batch.get("ptx")
        if self.ptx_coef == 0:
            ptx = None  # plain PPO: no pretraining forward at all
        t0 = time.perf_counter()
        ro, gen, stats = self.rollout(prompts)  # 1-4
        cfg, g = self.ppo_cfg, torch.Generator().manual_seed(int(self.global_step))
        plan = [
            idx
            for _ in range(cfg.ppo_epochs)
            for idx in minibatch_indices(len(prompts), cfg.minibatch_size, g)
        ]
        chunks = self._ptx_chunks(ptx, len(plan))
        updates = [
            self.ppo_update(index_record(ro, idx), chunk) for idx, chunk in zip(plan, chunks, strict=True)
        ]  # 5
        self.kl_ctl.update(float(stats["kl"]), n_steps=len(prompts) * self._world)  # 6: global KL and batch
        local = {k: torch.stack([u[k] for u in updates]).mean() for k in updates[0]}
        local["explained_variance"] = explained_variance(ro.values, ro.returns, ro.response_mask)
        stats.update(self._mean_over_ranks(local))
        stats["gen_share"] = stats.pop("gen_time") / (time.perf_counter() - t0)
        stats["step_time"] = torch.tensor(time.perf_counter() - t0)
        stats["skipped_updates"] = torch.tensor(float(self.guard.skipped))
        length = float(stats["response_length"])
        self._first_length = length if self._first_length is None else self._first_length
        target = self.kl_cfg.target if self.kl_cfg.adaptive else None
        stats.update(
            {
                k: torch.tensor(v)
                for k, v in ppo_flags(float(stats["kl"]), target, length, self._first_length).items()
            }
        )
        if ptx is None:
            stats.pop("ptx_loss")
        self.log_dict(
            {f"ppo/{k}": v.float() for k, v in stats.items() if torch.isfinite(v)},
            prog_bar=False,
            batch_size=len(prompts),
        )
        self.log("ppo/rm", stats["rm_score"], prog_bar=True, logger=False, batch_size=len(prompts))
        self.log("ppo/kl_seq", stats["kl"], prog_bar=True, logger=False, batch_size=len(prompts))
        self.rollouts_done += 1
        self.log("ppo/rollouts", float(self.rollouts_done), batch_size=len(prompts))
        self._write_samples(prompts, gen, ro)
        n = self.eval_cfg.every_n_steps
        if n and self.rollouts_done % n == 0:
            self.evaluate()

    # ---- data parallelism ---------------------------------------------------------------------------------
    @property
    def _world(self) -> int:
        return int(self.trainer.world_size) if self._trainer is not None else 1

    def _sum_over_ranks(self, x: Tensor) -> Tensor:
        """``x`` summed over all processes (``x`` itself on one)."""
        if self._world == 1:
            return x
        return self.trainer.strategy.reduce(x.clone(), reduce_op="sum")

    def _gather(self, x: Tensor) -> Tensor:
        """Rows of every process, rank order: ``(B, ...)`` -> ``(W*B, ...)`` (``x`` itself on one)."""
        if self._world == 1:
            return x
        gathered = self.trainer.strategy.all_gather(x.contiguous())  # (W, B, ...)
        return gathered.reshape(-1, *x.shape[1:])

    def _mean_over_ranks(self, stats: dict[str, Tensor]) -> dict[str, Tensor]:
        """Each scalar averaged over processes, in one all-reduce."""
        if self._world == 1 or not stats:
            return stats
        keys = sorted(stats)
        total = self._sum_over_ranks(torch.stack([stats[k].float().reshape(()) for k in keys]))
        return {k: v / self._world for k, v in zip(keys, total, strict=True)}

    def _write_samples(self, prompts: list[str], gen: Generation, ro: Rollout) -> None:
        k = self.eval_cfg.samples_per_step
        if not k or not computes_on_this_rank(self.trainer, self._policy_net) or not self.trainer.loggers:
            return
        kl = (ro.logprobs - ro.ref_logprobs) * ro.response_mask
        rewards = self.roles.reward(ro.input_ids[:k], ro.attention_mask[:k])  # all ranks when sharded
        if not self.trainer.is_global_zero:
            return
        for i in range(min(k, len(prompts))):
            append_jsonl(
                run_dir(self.trainer) / "samples.jsonl",
                {
                    "step": self.log_step,
                    "prompt": prompts[i],
                    "completion": gen.texts[i],
                    "mode": "rollout",
                    "rm_score": float(rewards[i]),
                    "kl": float(kl[i].sum()),
                },
            )

    # ---- evaluation -------------------------------------------------------------------------------------
    def _eval_prompts(self) -> list[str]:
        from lit_rlhf.stages.common import read_prompts

        return read_prompts(self.eval_cfg.prompts, limit=self.eval_cfg.limit) if self.eval_cfg.prompts else []

    def _complete(self, role: str, prompts: list[str]) -> list[str]:
        from lit_rlhf.stages.common import generate_batched

        roles = self.roles
        if role == "policy":
            return generate_batched(
                roles.generation_model(), roles.tokenizer, prompts, self.eval_cfg.sampling, 64, seed=1234
            )
        net = roles._net("reference")
        with net.use_adapter(roles._adapter("reference")) if roles.is_shared else contextlib.nullcontext():
            return generate_batched(
                net.model, roles.tokenizer, prompts, self.eval_cfg.sampling, 64, seed=1234
            )

    @torch.no_grad()
    def pretrain_loss(self) -> float | None:
        """Mean LM loss of the policy on the held-out pretraining rows (the alignment tax)."""
        dm = self.trainer.datamodule if self.trainer is not None else None
        batches = dm.ptx_eval_batches() if dm is not None and getattr(dm, "ptx_eval", None) else []
        if not batches:
            return None
        was = self.roles.training
        self.roles.eval()
        losses = [float(self.ptx_loss({k: v.to(self.device) for k, v in b.items()})) for b in batches]
        self.roles.train(was)
        return sum(losses) / len(losses)

    def evaluate(self) -> dict[str, float]:
        """Labeler score and win rate vs SFT on held-out prompts, KL to the reference, pretraining loss.

        Rank zero's figures; with FSDP2-sharded roles every rank computes them (each forward is a collective).
        """
        if not computes_on_this_rank(self.trainer, self._policy_net):
            return {}
        metrics: dict[str, float] = {}
        prompts = self._eval_prompts()
        if prompts and self.eval_cfg.labeler == "demo":
            from lit_rlhf.demo.labeler import Labeler, win_rate

            labeler = Labeler()
            if self._sft_eval is None:
                self._sft_eval = self._complete("reference", prompts)
            ours = self._complete("policy", prompts)
            scores = [labeler.score(p, r) for p, r in zip(prompts, ours, strict=True)]
            wr = win_rate(
                [labeler.compare(p, a, b) for p, a, b in zip(prompts, ours, self._sft_eval, strict=True)]
            )
            metrics.update(
                labeler_score=sum(scores) / len(scores),
                win_rate_vs_sft=wr.rate,
                win_rate_ci_low=wr.ci_low,
                win_rate_ci_high=wr.ci_high,
                sft_labeler_score=sum(
                    labeler.score(p, r) for p, r in zip(prompts, self._sft_eval, strict=True)
                )
                / len(prompts),
            )
            metrics["eval_kl"] = self._kl_of(prompts, ours)
        ptx = self.pretrain_loss()
        if ptx is not None:
            metrics["pretrain_loss"] = ptx
        if metrics and self.logger is not None:
            self.logger.log_metrics({f"ppo/{k}": v for k, v in metrics.items()}, step=self.log_step)
        return metrics

    @torch.no_grad()
    def _kl_of(self, prompts: list[str], responses: list[str]) -> float:
        """Mean over sequences of sum_t (log pi - log pi_ref) on the given completions (k1)."""
        from lit_rlhf.backbone.generate import encode_prompts

        tok, total = self.roles.tokenizer, 0.0
        was = self.roles.training
        self.roles.eval()
        for i in range(0, len(prompts), 64):
            pids, pmask = encode_prompts(tok, prompts[i : i + 64], self.device)
            resp = [
                tok(r, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
                for r in responses[i : i + 64]
            ]
            rids, rmask = (t.to(self.device) for t in pad_right(resp, tok.pad_token_id))
            ids, mask = torch.cat([pids, rids], 1), torch.cat([pmask, rmask], 1)
            p = pids.shape[1]
            logp = response_logprobs(self.roles.logits("policy", ids, mask), ids, p)
            ref = response_logprobs(self.roles.logits("reference", ids, mask), ids, p)
            total += float((kl_penalty(logp, ref, "k1") * rmask.float()).sum())
        self.roles.train(was)
        return total / len(prompts)

    # ---- checkpoint state and the stage directory -------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["lit_rlhf_ppo"] = {
            "guard": self.guard.state_dict(),
            "first_length": self._first_length,
            "kl_ctl": self.kl_ctl.state_dict(),
            "rollouts_done": self.rollouts_done,
            "score_moments": self.score_moments.state_dict(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("lit_rlhf_ppo", {})
        if "kl_ctl" in state:
            self.kl_ctl.load_state_dict(state["kl_ctl"])
        self.rollouts_done = int(state.get("rollouts_done", 0))
        self.guard.load_state_dict(state.get("guard", {}))
        self._first_length = state.get("first_length")
        if "score_moments" in state:
            self.score_moments.load_state_dict(state["score_moments"])

    @property
    def _policy_net(self):
        return self.roles._net("policy")

    def on_train_end(self) -> None:
        if not computes_on_this_rank(self.trainer, self._policy_net) or not self.trainer.loggers:
            return
        from lit_rlhf.backbone.build import CRITIC, POLICY
        from lit_rlhf.backbone.sharding import full_state
        from lit_rlhf.checkpoint.stage_dir import save_stage_dir

        metrics = self.evaluate()
        net = self._policy_net
        state = full_state(net) if net.sharded else None  # a collective: before the rank check
        if not self.trainer.is_global_zero:
            return
        if "eval_kl" in metrics:
            metrics["kl"] = metrics.pop("eval_kl")
        cm = self.trainer.callback_metrics
        if "kl" not in metrics and "ppo/kl" in cm:
            metrics["kl"] = float(cm["ppo/kl"])
        metrics["kl_coef"] = float(self.kl_ctl.value)
        self.final_metrics = {k: v for k, v in metrics.items() if math.isfinite(v)}
        root = run_dir(self.trainer)
        config = root / "config.yaml"
        roles = self.roles
        if roles.is_shared:
            kwargs = {"adapters": [POLICY, CRITIC], "heads": {"value": {"adapter": CRITIC, "bias": 0.0}}}
        else:
            kwargs = {"adapters": [], "heads": {}}
        out = root / "stage"
        save_stage_dir(
            out,
            net,
            stage=self.STAGE,
            step=self.global_step,
            metrics=self.final_metrics,
            parent=str(self.policy_from),
            config_text=config.read_text() if config.is_file() else None,
            extra={"reward_from": str(self.reward_from), "ptx_coef": self.ptx_coef},
            state=state,
            **kwargs,
        )
        self.stage_dir_written = out
