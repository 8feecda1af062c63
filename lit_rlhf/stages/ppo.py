"""PPOModule: PPO-ptx against the reward model (InstructGPT step 3, eq. 2).

One training step = one rollout batch, in numbered steps:
  1. generate responses to the prompts with the policy (KV cache, left-padded prompts)
  2. score: RM at the last response token; per-token log-probs of policy and reference; critic values
  3. shape: per-token reward -beta*KL_t plus the combined score at the last token: RM score + rule terms + length
     penalty + programmatic reward functions (lit_rlhf.rewards), each normalised alike, then penalised and clipped
  4. GAE advantages and returns; whiten advantages over valid tokens
  5. several PPO epochs over shuffled minibatches: clipped policy loss + gamma_ptx * pretraining LM loss,
     clipped value loss, one optimizer step per minibatch (manual optimization)
  6. update the KL controller; log; every N steps evaluate against the SFT model on held-out prompts
  7. check the alarms (lit_rlhf.alarms) on the step's statistics and evaluation: status.json; some stop the run
The math lives in lit_rlhf.rl; this module only orchestrates.

Under data parallelism (DDP) every rank rolls out its own prompts, and everything that steers the run is global:
score normalisation moments and advantage whitening use all ranks' rollouts, the KL controller moves on the mean
KL of all of them (so beta stays the same everywhere), a non-finite loss skips the update on every rank, and the
logged statistics are over all ranks' sequences.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor

from lit_rlhf.alarms import AlarmConfig, AlarmMonitor
from lit_rlhf.backbone.config import LoraSettings, Quantization
from lit_rlhf.backbone.generate import Generation, SamplingConfig, generate, generate_batches
from lit_rlhf.backbone.trunk import closing_column
from lit_rlhf.checkpoint.manifest import KEPT
from lit_rlhf.data.formatting import prompt_to_json
from lit_rlhf.evaluation.metrics import judge_metrics, kl_k1_per_sequence, mean_or_none, weighted_mean
from lit_rlhf.evaluation.overoptimization import gold_proxy_metrics
from lit_rlhf.evaluation.samples import eval_rows, judge_fields, token_fields
from lit_rlhf.judges import load_judge
from lit_rlhf.rewards import PREFERENCE, CombinedReward, CombinedRewardConfig
from lit_rlhf.rl.advantages import gae
from lit_rlhf.rl.combined import combine_components
from lit_rlhf.rl.kl_control import AdaptiveKLController, FixedKLController
from lit_rlhf.rl.logprobs import entropy_from_logits, response_logprobs
from lit_rlhf.rl.losses import lm_loss, ppo_policy_loss, value_loss
from lit_rlhf.rl.masked import masked_mean, whiten
from lit_rlhf.rl.minibatch import index_record, micro_batches, minibatch_indices, token_shares
from lit_rlhf.rl.rewards import (
    RunningMoments,
    clip_scores,
    leave_one_out_baseline,
    shape_rewards,
    truncation_penalty,
)
from lit_rlhf.rl.stats import explained_variance
from lit_rlhf.run_files import SAMPLES
from lit_rlhf.runs import log_rows, run_dir
from lit_rlhf.stages.base import StageModule
from lit_rlhf.stages.common import (
    OptimConfig,
    computes_on_this_rank,
    gradient_vote,
    read_prompts,
    shard_if_fsdp2,
)
from lit_rlhf.stages.guards import ppo_flags

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
        max_grad_norm: Gradient norm clip (0 = off), applied to the policy's and the critic's gradients
            separately: one joint norm would let a large value-loss gradient shrink the policy's step.
        critic_lr: Critic learning rate (policy uses optim.lr).
        score_clip: Clip the combined score to [-c, c] (null = off).
        normalize_scores: Normalise each component of the combined score (the RM score, each rule term, the length
            penalty, each reward function) by its own running mean/std before weighting.
        truncation_penalty: Combined score given to responses that hit max_new_tokens without EOS (null = keep
            it).
        update_micro_batch_size: Sequences per backward pass inside a minibatch (0 = the whole minibatch). The
            micro-batches' losses are weighted by their share of the minibatch's response tokens, so the gradient
            is the whole minibatch's; only the activations alive at once shrink. The pretraining (ptx) loss joins
            the last micro-batch's backward.
        samples_per_prompt: Responses sampled per prompt in each rollout: the data module's ``batch_size`` counts
            prompts, so a rollout has ``batch_size * samples_per_prompt`` sequences (``minibatch_size`` counts
            sequences).
        group_baseline: Subtract from each response's score the mean score of the other responses to its prompt
            (RLOO's leave-one-out baseline, ``rl.rewards.leave_one_out_baseline``; needs ``samples_per_prompt >=
            2``). A reward model trained on comparisons scores answers only relative to other answers to the same
            prompt, so the baseline pays exactly what it was trained to tell apart; the critic still learns the
            KL part of the return.
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
    update_micro_batch_size: int = 0
    samples_per_prompt: int = 1
    group_baseline: bool = False

    def problems(self) -> list[str]:
        """What is wrong with these settings (empty when nothing is)."""
        out = []
        n = self.samples_per_prompt
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            out.append(f"samples_per_prompt must be an integer >= 1, got {n!r}")
        elif self.group_baseline and n < 2:
            out.append(
                f"group_baseline needs samples_per_prompt >= 2 (the other samples of a prompt are its baseline), "
                f"got {n}"
            )
        return out


@dataclass
class EvalConfig:
    """Held-out evaluation against the SFT model (judge score, win rate), KL to it, and the pretraining loss.

    Attributes:
        prompts: Held-out prompts JSONL (null = no evaluation).
        every_n_steps: Evaluate every N PPO iterations, i.e. rollout batches (and at the end).
        limit: At most this many prompts.
        sampling: Sampling of both the policy and the SFT reference for the win rate.
        judge: Judges the held-out completions (judge score, win rate vs SFT): ``demo``, ``exact_match``, a
            ``package.module:callable``, or null (KL, reward and pretraining loss only). See lit_rlhf.judges.
        samples_per_step: Rollout completions written to samples.jsonl per step.
        batch_size: Prompts per generate call (it also picks the sampling seeds, as in ``evaluate``).
        seed: Prompt batch i samples with seed + i, for the policy and the SFT reference alike.
        keep: Stage directories kept at evaluation points under ``<run dir>/kept/`` (0 = none): the best by the
            judge's score (by the reward model's without a judge) and the newest others
            (lit_rlhf.checkpoint.kept); ``evaluate`` and ``export`` reach them as ``RUN@best``.
    """

    prompts: str | None = None
    every_n_steps: int = 25
    limit: int = 200
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(max_new_tokens=24))
    judge: str | None = None
    samples_per_step: int = 4
    batch_size: int = 32
    seed: int = 1234
    keep: int = 3


def rollout_sampling_problems(sampling: SamplingConfig) -> list[str]:
    """Why `sampling` cannot drive PPO rollouts (empty when it can).

    PPO's ratio, KL penalty and gradient use log-probabilities of the policy's own distribution at temperature
    1. Samples drawn at another temperature or truncated by top-k/top-p come from a different distribution:
    the rollouts would be off-policy and the KL biased (it can even turn negative).
    """
    out = []
    if not sampling.do_sample:
        out.append("do_sample must be true (greedy rollouts explore nothing and have no valid ratio)")
    if sampling.temperature != 1.0:
        out.append(f"temperature must be 1.0, got {sampling.temperature}")
    if sampling.top_k not in (0, None):
        out.append(f"top_k must be 0 (off), got {sampling.top_k}")
    if sampling.top_p != 1.0:
        out.append(f"top_p must be 1.0 (off), got {sampling.top_p}")
    return out


@dataclass
class PPOOptimConfig(OptimConfig):
    """The policy's AdamW settings (the critic's learning rate is ``ppo.critic_lr``).

    PPO steps its optimizer by hand, once per minibatch update, and keeps the learning rate constant: the schedule
    fields must stay at their defaults here (no warmup, no decay).
    """

    lr: float = 1e-4
    warmup_steps: int = 0
    min_lr_ratio: float = 1.0

    def problems(self) -> list[str]:
        """Why PPO cannot use these settings (empty when it can)."""
        out = []
        if self.warmup_steps != 0:
            out.append(
                f"warmup_steps must be 0 (PPO keeps the learning rate constant), got {self.warmup_steps}"
            )
        if self.min_lr_ratio != 1.0:
            out.append(
                f"min_lr_ratio must be 1.0 (PPO keeps the learning rate constant), got {self.min_lr_ratio}"
            )
        return out


def ppo_optim(optim: OptimConfig | None, lr: float | None) -> PPOOptimConfig:
    """PPO's optimizer settings from ``optim`` and the deprecated ``lr`` argument (``optim.lr`` now).

    Raises ValueError when both set a learning rate and they differ, or when a schedule is asked for.
    """
    if optim is None:
        optim = PPOOptimConfig()
    elif not isinstance(optim, PPOOptimConfig):  # a plain OptimConfig: its fields as given
        optim = PPOOptimConfig(**{f.name: getattr(optim, f.name) for f in dataclasses.fields(OptimConfig)})
    if lr is not None:
        warnings.warn("PPOModule(lr=...) is deprecated: set optim.lr", DeprecationWarning, stacklevel=3)
        if optim.lr != PPOOptimConfig.lr and optim.lr != lr:
            raise ValueError(f"PPOModule: lr ({lr}) and optim.lr ({optim.lr}) disagree; set optim.lr only")
        optim = dataclasses.replace(optim, lr=lr)
    if optim.problems():
        raise ValueError("PPOModule.optim: " + "; ".join(optim.problems()))
    return optim


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
    # (B, L, H) the frozen lower layers' output with a shared trunk (backbone.top_layers), else None: the lower
    # layers are frozen and every role runs in eval mode, so the update's minibatches reuse the rollout's rows
    # instead of recomputing them once per minibatch and epoch
    trunk: Tensor | None = None


class PPOModule(StageModule):
    """PPO-ptx from an SFT and a reward stage directory; writes a ``ppo`` stage directory.

    Args:
        policy_from: SFT stage directory (policy init and the frozen reference).
        reward_from: Reward stage directory (frozen reward model; the critic starts from it).
        lora: LoRA settings for the policy/critic adapters when the SFT stage trained full weights
            (default: the reward model's).
        quantization: Quantize the shared frozen base (``8bit``/``4bit``). Default: as stored.
        ptx_coef: gamma_ptx, the weight of the pretraining LM loss in the policy objective (0 = plain PPO). The
            loss is a mean per pretraining token and the PPO loss a mean per response token; InstructGPT's
            gamma = 27.8 weighs a differently normalised expectation, so 0.1-1 is the useful range here.
        kl: KL penalty settings. ppo: PPO hyperparameters. sampling: rollout generation settings.
        optim: The policy's AdamW settings (learning rate, weight decay, betas; the learning rate stays constant).
        lr: Deprecated: the policy learning rate, now ``optim.lr``. eval: held-out evaluation.
        max_nonfinite_updates: Stop after this many non-finite (skipped) updates in a row (0 = never).
        alarms: When to raise alarms (KL, over-optimization, length, entropy, critic, clipping) and which stop
            the run.
        reward: What the policy optimises besides the RM score: rule-head terms, a length penalty, programmatic
            reward functions (``package.module:callable``), with their weights (``lit_rlhf.rewards``).
        reference_from: The SFT stage directory of the KL reference (and of the win rate's SFT baseline) when
            ``policy_from`` is a PPO stage to continue (InstructGPT's iterated rounds: the policy goes on from where
            it is, the KL still keeps it near the SFT model); default ``policy_from``.
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
        lr: float | None = None,
        eval: EvalConfig | None = None,
        max_nonfinite_updates: int = 10,
        alarms: AlarmConfig | None = None,
        reward: CombinedRewardConfig | None = None,
        reference_from: str | None = None,
        optim: PPOOptimConfig | None = None,
    ) -> None:
        super().__init__(policy_from, ppo_optim(optim, lr), max_nonfinite_updates)
        if ptx_coef < 0:
            raise ValueError("ptx_coef must be >= 0")
        self.policy_from, self.reward_from, self.reference_from = policy_from, reward_from, reference_from
        self.lora, self.quantization, self.ptx_coef = lora, quantization, ptx_coef
        self.kl_cfg, self.ppo_cfg = kl or KLConfig(), ppo or PPOConfig()
        self.sampling = sampling or SamplingConfig(max_new_tokens=24, do_sample=True, temperature=1.0)
        problems = rollout_sampling_problems(self.sampling)
        if problems:
            raise ValueError(
                "PPOModule.sampling: rollouts must sample the policy's own distribution: "
                + "; ".join(problems)
                + " (eval.sampling may use any settings)"
            )
        self.eval_cfg = eval or EvalConfig()
        self.alarm_cfg = alarms or AlarmConfig()
        if self.alarm_cfg.problems():
            raise ValueError("PPOModule: " + "; ".join(self.alarm_cfg.problems()))
        if self.ppo_cfg.problems():
            raise ValueError("PPOModule.ppo: " + "; ".join(self.ppo_cfg.problems()))
        self.judge = load_judge(self.eval_cfg.judge)  # a bad judge name fails here, before weights load
        self.combined = CombinedReward(reward)  # so does a reward function that cannot be imported
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.roles = None
        self.kl_ctl = (
            AdaptiveKLController(self.kl_cfg.init_coef, self.kl_cfg.target, self.kl_cfg.horizon)
            if self.kl_cfg.adaptive
            else FixedKLController(self.kl_cfg.init_coef)
        )
        self.score_moments = RunningMoments()  # the RM score's (the "preference" component's)
        self.component_moments: dict[str, RunningMoments] = {}  # every other component's
        self.final_metrics: dict[str, float] = {}
        self._sft_eval: list[str] | None = None
        self._sft_proxy: float | None = None
        self._eval_set: tuple[list[Any], list[str | None]] | None = None
        # Manual optimization advances trainer.global_step once per optimizer step (every minibatch update);
        # this counts PPO iterations (rollout batches) and is saved in checkpoints.
        self.rollouts_done = 0
        self._first_length: float | None = None
        self.alarm_monitor = AlarmMonitor(self.alarm_cfg, self.kl_cfg.target)
        self.stopped_by: list[str] = []

    @property
    def log_step(self) -> int:
        """The step written with metrics and samples: PPO iterations done - 1, as on Lightning's own rows."""
        return max(self.rollouts_done - 1, 0)

    # ---- building ---------------------------------------------------------------------------------------
    def built_text_format(self):
        return self.roles.text_format if self.roles is not None else None

    @property
    def trained_net(self):
        """The policy's backbone (the critic's too when the roles share one)."""
        return self.roles._net("policy")

    def configure_model(self) -> None:
        if self.roles is not None:
            return
        from lit_rlhf.stages.roles import Roles

        roles = Roles.load(
            self.policy_from,
            self.reward_from,
            self.lora,
            self.quantization,
            self._target_device(),
            reference_from=self.reference_from,
        )
        # Dropout stays off for the whole run: with it, the first update's ratio pi/pi_old would not be 1.
        roles.eval()
        shard_if_fsdp2(self, *([roles.shared] if roles.is_shared else roles.separate.values()))
        self.roles = roles
        self.combined.bind(roles.rule_names)  # rule weights must name rule heads the reward stage has

    def configure_optimizers(self):
        groups = [
            {"params": self.roles.policy_parameters(), "lr": self.optim_cfg.lr},
            {"params": self.roles.critic_parameters(), "lr": self.ppo_cfg.critic_lr},
        ]
        cfg = self.optim_cfg
        return torch.optim.AdamW(groups, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)

    def on_fit_start(self) -> None:
        dm = self.trainer.datamodule
        if self.ptx_coef > 0 and not getattr(dm, "has_pretrain", False):
            raise ValueError(
                "ptx_coef > 0 needs pretraining data: set data.init_args.pretrain_path "
                "(or ptx_coef: 0 for plain PPO)"
            )
        self.combined.probe(list(getattr(dm, "prompts", []))[:4])  # a bad reward function stops here

    # ---- 1-4: rollout -----------------------------------------------------------------------------------
    @torch.no_grad()
    def rollout(self, prompts: list[Any]) -> tuple[Rollout, Generation, dict[str, Tensor]]:
        """Generate, score, shape rewards and compute advantages for one batch of prompts."""
        roles, cfg = self.roles, self.ppo_cfg
        t0 = time.perf_counter()
        gen = generate(roles.generation_model(), roles.text_format, prompts, self.sampling)  # 1. generate
        gen_time = time.perf_counter() - t0
        ids, mask, rmask = gen.input_ids, gen.attention_mask, gen.response_mask.float()
        p, r = gen.prompt_ids.shape[1], rmask.shape[1]
        # top_layers: the scoring passes read the sequences with the end-of-turn token closing the rows that hit
        # max_new_tokens, the reward model's layout, so one lower pass serves all four roles (causal: the column
        # changes nothing before it; the slices below drop it)
        fmt = roles.text_format
        s_ids, s_mask = (
            closing_column(ids, mask, gen.ended, fmt.end_of_turn_id, fmt.pad_id)
            if roles.has_shared_trunk
            else (ids, mask)
        )
        was_training = roles.training
        roles.eval()
        with roles.shared_trunk(s_ids, s_mask) as shared:  # top_layers: the lower layers once for every pass
            logp = response_logprobs(
                roles.response_logits("policy", s_ids, s_mask, p)[:, :r], ids, p
            )  # 2. score: (B, R)
            ref_logp = response_logprobs(roles.response_logits("reference", s_ids, s_mask, p)[:, :r], ids, p)
            values = roles.values(s_ids, s_mask)[:, p - 1 : p - 1 + r] * rmask  # (B, R) V(s_t) before token t
            trunk = roles.trunk_hidden()
            trunk = (
                None if trunk is None else trunk[:, : ids.shape[1]]
            )  # the update's rows: without the column
            # (B,), (B, R) on the text, as trained
            raw, rule_logits = roles.reward_and_rules(prompts, gen.texts, (s_ids, s_mask) if shared else None)
        roles.train(was_training)
        scores, reward_stats = self._combined_score(prompts, gen, raw, rule_logits, rmask)  # 3. shape
        n = cfg.samples_per_prompt
        if n > 1:  # how far apart the score puts the answers to one prompt: the signal a group baseline keeps
            reward_stats["group_score_std"] = self._gather(scores.view(-1, n).std(1)).mean()
        if cfg.group_baseline:
            scores = leave_one_out_baseline(scores, n)
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
            **reward_stats,
        }
        return Rollout(ids, mask, rmask, logp, ref_logp, values, adv, returns, trunk), gen, stats

    def _combined_score(
        self, prompts: list[Any], gen: Generation, raw: Tensor, rule_logits: Tensor | None, rmask: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The sequence score PPO pays at the last token, (B,), and its logged parts: each component's term
        (``reward/<name>``, normalised and weighted: they add up to the score before the truncation penalty and
        the clip), its raw mean (``reward_raw/<name>``; the RM score's is ``rm_score``) and each rule head's mean
        violation probability (``rule/<rule>``)."""
        cfg, combined = self.ppo_cfg, self.combined
        components = combined.components(prompts, gen.texts, raw, rule_logits, rmask.sum(1))
        moments = None
        if cfg.normalize_scores:  # every rank's values: the same moments everywhere
            moments = {
                k: self.score_moments
                if k == PREFERENCE
                else self.component_moments.setdefault(k, RunningMoments())
                for k in components
            }
        out = combine_components(components, combined.weights, moments, self._gather)
        scores = truncation_penalty(out.total, gen.ended, cfg.truncation_penalty)
        scores = clip_scores(scores, cfg.score_clip)
        names, others = list(components), [k for k in components if k != PREFERENCE]
        parts = [out.terms[k] for k in names] + [components[k] for k in others]
        keys = [f"reward/{k}" for k in names] + [f"reward_raw/{k}" for k in others]
        if rule_logits is not None:
            parts += list(torch.sigmoid(rule_logits.float()).T)
            keys += [f"rule/{r}" for r in combined.rules]
        means = self._gather(torch.stack(parts, 1)).mean(0)  # every rank's sequences
        return scores, dict(zip(keys, means, strict=True))

    # ---- 5: optimization --------------------------------------------------------------------------------
    def ptx_loss(self, batch: dict[str, Tensor]) -> Tensor:
        """Pretraining LM loss of the policy on a batch of text."""
        ids, mask = batch["input_ids"], batch["attention_mask"]
        with self.roles.shared_trunk(ids, mask):  # top_layers: no backward through the frozen lower layers
            logits = self.roles.logits("policy", ids, mask)
        return lm_loss(logits, batch["labels"])

    def ppo_update(self, mb: Rollout, ptx: dict[str, Tensor] | None) -> dict[str, Tensor]:
        """One optimizer step on a minibatch: clipped policy loss + ptx, clipped value loss.

        The policy and critic losses run one backward per micro-batch (``ppo.update_micro_batch_size``), each
        weighted by its share of the response tokens, the ptx loss with the last one: the gradient is that of the
        summed loss on the whole minibatch, while only one micro-batch's activations are alive at a time.
        """
        cfg = self.ppo_cfg
        p = mb.input_ids.shape[1] - mb.response_mask.shape[1]
        parts = micro_batches(mb.input_ids.shape[0], cfg.update_micro_batch_size)
        shares = token_shares(mb.response_mask, parts).to(mb.advantages.device)
        opt = self.optimizers()
        opt.zero_grad()
        params = [q for g in opt.param_groups for q in g["params"]]
        all_ranks = self.trainer.strategy.reduce_boolean_decision
        names = ("policy_loss", "value_loss", "clip_frac", "approx_kl", "value_clip_frac", "entropy")
        stats = dict.fromkeys(names, torch.zeros((), device=mb.advantages.device))
        ok = True
        ptx_loss = torch.zeros((), device=mb.advantages.device)
        for k, (part, share) in enumerate(zip(parts, shares, strict=True)):
            sub = index_record(mb, part)  # type: ignore[arg-type]  (a slice indexes like an index tensor)
            # top_layers: the rollout's lower-layer output, no lower pass here
            with self.roles.shared_trunk(sub.input_ids, sub.attention_mask, sub.trunk):
                logits = self.roles.response_logits(
                    "policy", sub.input_ids, sub.attention_mask, p
                )  # (b, R, V)
                values = self.roles.values(sub.input_ids, sub.attention_mask)[:, p - 1 : -1]
            logp = response_logprobs(logits, sub.input_ids, p)  # (b, R)
            pg_loss, pstats = ppo_policy_loss(
                logp, sub.logprobs, sub.advantages, sub.response_mask, cfg.clip_range
            )
            vf_loss, vclip = value_loss(
                values, sub.values, sub.returns, sub.response_mask, cfg.value_clip_range
            )
            with torch.no_grad():
                ent = masked_mean(entropy_from_logits(logits.detach()), sub.response_mask)
            parts_stats = (pg_loss, vf_loss, pstats.clip_frac, pstats.approx_kl, vclip, ent)
            for name, value in zip(names, parts_stats, strict=True):
                stats[name] = stats[name] + share * value.detach()
            loss = share * (pg_loss + cfg.vf_coef * vf_loss)
            if k == len(parts) - 1 and ptx is not None:
                # with the last part, not in a backward of its own: under DDP every backward must reach every
                # trained parameter, and the pretraining loss reaches only the policy's
                ptx_loss = self.ptx_loss(ptx)
                loss = loss + self.ptx_coef * ptx_loss  # InstructGPT eq. 2: gamma * E_pretrain[log pi]
            ok = self.guard.finite(loss, all_ranks)
            if not ok:
                break
            self.manual_backward(loss)
            del logits, values, logp, loss  # this part's graph is gone before the next part's forward
        norms = {}
        if self.guard.record_loss(ok, self.global_step):
            if self.guard.grads_ok(params, self.global_step, gradient_vote(self.trainer, self.trained_net)):
                scaler = getattr(self.trainer.precision_plugin, "scaler", None)
                if scaler is not None:  # fp16 AMP: clip the true gradients, not the loss-scaled ones
                    scaler.unscale_(opt.optimizer if hasattr(opt, "optimizer") else opt)
                norms = self._clip_each_role(opt, cfg.max_grad_norm)
                opt.step()
        else:
            opt.zero_grad()  # a part's backward may have run: this update leaves no gradient behind
        return {**norms, **stats, "ptx_loss": ptx_loss.detach()}

    @staticmethod
    def _clip_each_role(opt: torch.optim.Optimizer, max_norm: float) -> dict[str, Tensor]:
        """Clip the policy's and the critic's gradients to `max_norm` each (0 = measure only); their norms.

        The optimizer's first group is the policy, the second the critic (configure_optimizers). Each is clipped
        on its own: a joint norm would let the value loss's (often much larger) gradient shrink the policy step.
        """
        out = {}
        for name, group in zip(("policy_grad_norm", "critic_grad_norm"), opt.param_groups, strict=False):
            params = [q for q in group["params"] if q.grad is not None]
            if not params:
                continue
            norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
            out[name] = (norm.full_tensor() if hasattr(norm, "full_tensor") else norm).detach().float()
        return out

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
        n = self.ppo_cfg.samples_per_prompt
        if n > 1:  # each prompt n times, adjacent: rows g*n .. g*n + n - 1 are prompt g's samples
            prompts = [p for p in prompts for _ in range(n)]
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
        ro = ro._replace(trunk=None)  # the kept lower-layer output is not needed past the updates
        self.kl_ctl.update(float(stats["kl"]), n_steps=len(prompts) * self._world)  # 6: global KL and batch
        keys = dict.fromkeys(k for u in updates for k in u)  # grad norms are absent from skipped updates
        local = {k: torch.stack([u[k] for u in updates if k in u]).mean() for k in keys}
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
        self.rollouts_done += 1
        logged = {f"ppo/{k}": v.float() for k, v in stats.items() if torch.isfinite(v)}
        logged["ppo/rollouts"] = torch.tensor(float(self.rollouts_done))
        # callback_metrics and the progress bar only: the run's logger gets one row per PPO iteration below, so
        # trainer.log_every_n_steps (which would count iterations while max_steps counts optimizer steps) does
        # not thin them out
        self.log_dict(logged, prog_bar=False, logger=False, batch_size=len(prompts))
        self.log("ppo/rm", stats["rm_score"], prog_bar=True, logger=False, batch_size=len(prompts))
        self.log("ppo/kl_seq", stats["kl"], prog_bar=True, logger=False, batch_size=len(prompts))
        for logger in self.trainer.loggers:
            logger.log_metrics({k: float(v) for k, v in logged.items()}, step=self.log_step)
        self._write_samples(prompts, gen, ro)
        n = self.eval_cfg.every_n_steps
        evaluated = self.evaluate() if n and self.rollouts_done % n == 0 else None
        self._check_alarms(stats, evaluated)  # 7

    def _check_alarms(self, stats: dict[str, Tensor], evaluated: dict[str, float] | None) -> None:
        """7. Fired alarms go to status.json (through RunStatus); one listed in alarms.stop_on ends fit after this
        iteration. The statistics are global but evaluations are rank zero's, so the stop is agreed by all ranks."""
        fired = self.alarm_monitor.observe(self.log_step, {k: float(v) for k, v in stats.items()}, evaluated)
        stop = self.alarm_monitor.stops(fired)
        if self.alarm_cfg.stop_on and self._world > 1:
            agreed = self.trainer.strategy.reduce_boolean_decision(bool(stop), all=False)
            stop = stop or (["(another rank)"] if agreed else [])
        if stop:
            self.stopped_by = stop
            self.trainer.should_stop = True
        self.status_fields = {
            **self.status_fields,
            "alarms": self.alarm_monitor.records(),
            "stopped_by": self.stopped_by,
        }

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

    def _write_samples(self, prompts: list[Any], gen: Generation, ro: Rollout) -> None:
        k = self.eval_cfg.samples_per_step
        if not k or not computes_on_this_rank(self.trainer, self.trained_net) or not self.trainer.loggers:
            return
        kl = (ro.logprobs - ro.ref_logprobs) * ro.response_mask
        # One sample of each of k prompts: with samples_per_prompt a prompt's samples are adjacent rows, and the
        # first k rows would show one prompt k times.
        picked = list(range(0, len(prompts), self.ppo_cfg.samples_per_prompt))[:k]
        texts = [gen.texts[i] for i in picked]
        rewards = self.roles.reward_of([prompts[i] for i in picked], texts)  # all ranks when sharded
        if not self.trainer.is_global_zero:
            return
        rows = [
            {
                "step": self.log_step,
                "prompt": prompt_to_json(prompts[i]),
                "completion": gen.texts[i],
                "mode": "rollout",
                "rm_score": float(rewards[j]),
                "kl": float(kl[i].sum()),
                **token_fields(self.tokenizer, gen.response_ids[i], ro.response_mask[i], kl[i]),
                **judge_fields(self.judge, prompts[i], gen.texts[i]),
            }
            for j, i in enumerate(picked)
        ]
        log_rows(self.trainer, SAMPLES, rows, self.log_step)

    def _write_eval_samples(
        self,
        mode: str,
        prompts: list[Any],
        refs: list[str | None],
        texts: list[str],
        rm_scores: list[float],
        kls: list[float] | None,
    ) -> None:
        """The first `samples_per_step` held-out prompts' completions: the same prompts at every evaluation."""
        k, root = self.eval_cfg.samples_per_step, run_dir(self.trainer)
        if not k or root is None or not self.trainer.is_global_zero:
            return
        part = slice(0, k)
        kls = None if kls is None else kls[part]
        args = (prompts[part], refs[part], texts[part], rm_scores[part], kls, self.judge)
        log_rows(self.trainer, SAMPLES, list(eval_rows(self.log_step, mode, *args)), self.log_step)

    # ---- evaluation -------------------------------------------------------------------------------------
    def _eval_prompts(self) -> tuple[list[Any], list[str | None]]:
        """The held-out prompts and their reference answers (read once)."""
        if self._eval_set is None:
            cfg = self.eval_cfg
            self._eval_set = read_prompts(cfg.prompts, limit=cfg.limit) if cfg.prompts else ([], [])
        return self._eval_set

    def _complete(self, role: str, prompts: list[Any]) -> list[Generation]:
        """The policy's or the SFT reference's completions, sampled as `evaluate` samples them (same seeds)."""
        roles, cfg = self.roles, self.eval_cfg
        net = roles._net(role)
        if role == "policy":
            model = roles.generation_model()
            context = contextlib.nullcontext()
        else:
            model = net.model
            context = (
                net.use_adapter(roles._adapter("reference")) if roles.is_shared else contextlib.nullcontext()
            )
        with context:
            return generate_batches(model, roles.text_format, prompts, cfg.sampling, cfg.batch_size, cfg.seed)

    @torch.no_grad()
    def _kl_to_reference(self, gens: list[Generation]) -> list[float]:
        """Per sequence, sum_t log pi - log pi_ref over the policy's own SAMPLED tokens and their mask (k1)."""
        out: list[float] = []
        was = self.roles.training
        self.roles.eval()
        for g in gens:
            ids, mask = g.input_ids.to(self.device), g.attention_mask.to(self.device)
            p = g.prompt_ids.shape[1]
            with self.roles.shared_trunk(ids, mask):
                logp = response_logprobs(self.roles.response_logits("policy", ids, mask, p), ids, p)
                ref = response_logprobs(self.roles.response_logits("reference", ids, mask, p), ids, p)
            out += kl_k1_per_sequence(logp, ref, g.response_mask.to(self.device).float())
        self.roles.train(was)
        return out

    @torch.no_grad()
    def pretrain_loss(self) -> float | None:
        """LM loss per token of the policy on the held-out pretraining rows (the alignment tax), weighted by
        the tokens of each batch as `evaluate` weights them."""
        dm = self.trainer.datamodule if self.trainer is not None else None
        batches = dm.ptx_eval_batches() if dm is not None and getattr(dm, "ptx_eval", None) else []
        if not batches:
            return None
        was = self.roles.training
        self.roles.eval()
        losses = [float(self.ptx_loss({k: v.to(self.device) for k, v in b.items()})) for b in batches]
        self.roles.train(was)
        return weighted_mean(losses, [int((b["labels"][:, 1:] != -100).sum()) for b in batches])

    def evaluate(self) -> dict[str, float]:
        """On held-out prompts: judge score and win rate vs SFT (with a judge), KL to the reference, reward and
        length of the policy's samples; and the pretraining loss. The same functions as `evaluate` compute them.

        Rank zero's figures; with FSDP2-sharded roles every rank computes them (each forward is a collective).
        """
        if not computes_on_this_rank(self.trainer, self.trained_net):
            return {}
        metrics: dict[str, float] = {}
        prompts, refs = self._eval_prompts()
        if prompts:
            ours = self._complete("policy", prompts)
            texts = [t for g in ours for t in g.texts]
            kls, rm_scores = self._kl_to_reference(ours), self.roles.reward_of(prompts, texts).tolist()
            metrics["eval_kl"], metrics["eval_rm_score"] = mean_or_none(kls), mean_or_none(rm_scores)
            metrics["eval_length"] = mean_or_none([float(n) for g in ours for n in g.response_mask.sum(1)])
            # the SFT model's own samples: the win-rate baseline and the over-optimization plot's d = 0 point
            if self._sft_eval is None:
                self._sft_eval = [t for g in self._complete("reference", prompts) for t in g.texts]
                sft_scores = self.roles.reward_of(prompts, self._sft_eval).tolist()
                self._sft_proxy = mean_or_none(sft_scores)
                self._write_eval_samples("eval_sft", prompts, refs, self._sft_eval, sft_scores, None)
            self._write_eval_samples("eval", prompts, refs, texts, rm_scores, kls)
            if self.judge is not None:
                figures = judge_metrics(self.judge, prompts, texts, refs, baseline=self._sft_eval)
                metrics.update({k: v for k, v in figures.items() if k != "judged"})
                sft = judge_metrics(self.judge, prompts, self._sft_eval, refs)
                if "judge_score" in sft:
                    metrics["sft_judge_score"] = sft["judge_score"]
        ptx = self.pretrain_loss()
        if ptx is not None:
            metrics["pretrain_loss"] = ptx
        metrics = {k: v for k, v in metrics.items() if v is not None}
        curve = gold_proxy_metrics(  # ppo/eval/*: the gold-vs-proxy plot's points
            *(metrics.get(k) for k in ("eval_kl", "judge_score", "eval_rm_score", "sft_judge_score")),
            self._sft_proxy,
        )
        if metrics and self.logger is not None:
            logged = {**metrics, **curve}
            for lg in self.trainer.loggers:  # the run directory's and every configured tracker
                lg.log_metrics({f"ppo/{k}": v for k, v in logged.items()}, step=self.log_step)
        self._keep(metrics)
        return metrics

    def _keep(self, metrics: dict[str, float]) -> None:
        """Keep the policy of this evaluation point as a stage directory; mark the best by the judge's score (or
        the reward model's). Every computing rank gathers a sharded policy; rank zero writes."""
        key = "judge_score" if "judge_score" in metrics else "eval_rm_score"
        root = run_dir(self.trainer)
        if not self.eval_cfg.keep or key not in metrics or root is None:
            return
        from lit_rlhf.checkpoint.kept import Kept

        state = self.gathered_state(self.trained_net)  # a collective: before the rank check
        if not self.trainer.is_global_zero:
            return
        kept = Kept(root / KEPT)
        best = kept.add(
            self.log_step,
            key,
            metrics[key],
            metrics,
            self.eval_cfg.keep,
            lambda out: self.write_stage_dir(out, self.trained_net, state, **self._manifest(metrics)),
        )
        self.status_fields = {
            **self.status_fields,
            "best": {"path": f"{KEPT}/{best.name}", "step": best.step, best.metric: best.score},
        }

    # ---- checkpoint state and the stage directory -------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["lit_rlhf_ppo"] = {
            "alarms": self.alarm_monitor.state_dict(),
            "guard": self.guard.state_dict(),
            "first_length": self._first_length,
            "kl_ctl": self.kl_ctl.state_dict(),
            "rollouts_done": self.rollouts_done,
            "score_moments": self.score_moments.state_dict(),
            "component_moments": {k: m.state_dict() for k, m in self.component_moments.items()},
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("lit_rlhf_ppo", {})
        if "kl_ctl" in state:
            self.kl_ctl.load_state_dict(state["kl_ctl"])
        self.rollouts_done = int(state.get("rollouts_done", 0))
        self.guard.load_state_dict(state.get("guard", {}))
        self._first_length = state.get("first_length")
        self.alarm_monitor.load_state_dict(state.get("alarms", {}))
        if "score_moments" in state:
            self.score_moments.load_state_dict(state["score_moments"])
        for name, moments in state.get("component_moments", {}).items():
            self.component_moments.setdefault(name, RunningMoments()).load_state_dict(moments)

    def on_train_end(self) -> None:
        if not computes_on_this_rank(self.trainer, self.trained_net) or not self.trainer.loggers:
            return
        metrics = self.evaluate()
        state = self.gathered_state(self.trained_net)  # a collective: before the rank check
        if not self.trainer.is_global_zero:
            return
        if "eval_kl" in metrics:
            metrics["kl"] = metrics.pop("eval_kl")
        cm = self.trainer.callback_metrics
        if "kl" not in metrics and "ppo/kl" in cm:
            metrics["kl"] = float(cm["ppo/kl"])
        metrics["kl_coef"] = float(self.kl_ctl.value)
        self.final_metrics = {k: v for k, v in metrics.items() if math.isfinite(v)}
        self.export_stage_dir(self.trained_net, state, **self._manifest(self.final_metrics))

    def _manifest(self, metrics: dict[str, float]) -> dict[str, Any]:
        """The ``ppo`` stage directory's own manifest fields: the policy (and critic) adapters and the value head,
        the finite metrics, and where the reward model and the KL reference came from."""
        from lit_rlhf.backbone.build import CRITIC, POLICY

        if self.roles.is_shared:
            kwargs = {"adapters": [POLICY, CRITIC], "heads": {"value": {"adapter": CRITIC, "bias": 0.0}}}
        else:
            kwargs = {"adapters": [], "heads": {}}
        return {
            **kwargs,
            "metrics": {k: v for k, v in metrics.items() if math.isfinite(v)},
            "extra": {
                "reward_from": str(self.reward_from),
                "ptx_coef": self.ptx_coef,
                "reference_from": str(self.reference_from or self.policy_from),
            },
        }
