"""`python main.py evaluate`: SFT and PPO stage directories side by side on held-out prompts, as a report.

Lives here: which SFT baseline and reward model a set of checkpoints is compared against (read from their
manifests), the thin model passes (sample, log-probs of sampled tokens, pretraining loss, reward) and the
command line. Must not live here: a judge's scoring rule (lit_rlhf.judges), the metric functions every
evaluation path shares (lit_rlhf.evaluation.metrics), the report files (lit_rlhf.evaluation.report), the reward
model as a scorer (lit_rlhf.evaluation.reward_model), KL estimators and losses (lit_rlhf.rl), training.

One model is in memory at a time, in this order:
  1. each checkpoint: its completions, the log-probs of its own sampled tokens, its pretraining loss
  2. the SFT model: its completions (the win-rate baseline), its log-probs of every checkpoint's tokens
  3. the reward model (if any): the score of every checkpoint's completions
  4. the judge (if any) and the pure metrics; then the report files
Every model samples with the same seeds, so the SFT model evaluated against itself is an exact tie.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lit_rlhf.backbone.generate import Generation, SamplingConfig, generate_batches
from lit_rlhf.checkpoint.kept import resolve_stage_ref
from lit_rlhf.checkpoint.manifest import MANIFEST, Manifest, ManifestError, read_manifest
from lit_rlhf.evaluation.metrics import judge_metrics, kl_k1_per_sequence, mean_or_none, weighted_mean
from lit_rlhf.evaluation.report import METRICS
from lit_rlhf.judges import JudgeError, load_judge

log = logging.getLogger(__name__)

POLICY_STAGES = ("sft", "ppo")
# PPODataModule's default ptx_max_length: the alignment tax is measured on rows cut as training cut them.
PRETRAIN_MAX_LENGTH = 128
BASE_ROW = "base (adapters off)"


class EvalError(ValueError):
    """A request that cannot be evaluated as asked; the message names the path or flag at fault."""


@dataclass
class EvalSettings:
    """How every checkpoint is evaluated; recorded in the report.

    Attributes:
        prompts: Held-out prompts JSONL ({"prompt"} rows).
        limit: At most this many prompts (the first ones).
        max_new_tokens: Longest response sampled.
        temperature: Sampling temperature; 0 = greedy.
        seed: Batch i of the prompts samples with seed + i, for every model alike.
        batch_size: Prompts per generate call and sequences per forward pass (it also picks the seeds).
        pretrain: Pretraining text JSONL ({"text"} rows) for the alignment tax; None = no pretrain_loss.
        pretrain_limit: The last this many rows of ``pretrain`` (PPO-ptx holds the last rows out of training).
        device: Where the models run.
        judge: Judges the completions (``demo``, ``exact_match``, ``package.module:callable``; null = no judge
            figures). See lit_rlhf.judges.
        base: Also evaluate the SFT stage's base model with its adapters off (the pretrained model, zero-shot),
            as the first row (``BASE_ROW``). Needs a LoRA SFT stage.
        trust_remote_code: Let code shipped in a stage directory run (--trust-remote-code); never read from a
            manifest.
    """

    prompts: str
    limit: int | None = 300
    max_new_tokens: int = 24
    temperature: float = 1.0
    seed: int = 1234
    batch_size: int = 32
    pretrain: str | None = None
    pretrain_limit: int = 256
    device: str = "cpu"
    judge: str | None = None
    base: bool = False
    trust_remote_code: bool = False

    def problems(self) -> list[str]:
        """Every invalid setting (empty when all are valid)."""
        out = []
        if self.limit is not None and self.limit < 1:
            out.append(f"--limit must be >= 1, got {self.limit}")
        if self.max_new_tokens < 1:
            out.append(f"--max-new-tokens must be >= 1, got {self.max_new_tokens}")
        if not self.temperature >= 0:
            out.append(f"--temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.batch_size < 1:
            out.append(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.pretrain_limit < 1:
            out.append(f"--pretrain-limit must be >= 1, got {self.pretrain_limit}")
        return out

    def sampling(self) -> SamplingConfig:
        if self.temperature == 0:
            return SamplingConfig(max_new_tokens=self.max_new_tokens, do_sample=False)
        return SamplingConfig(
            max_new_tokens=self.max_new_tokens, do_sample=True, temperature=self.temperature
        )


@dataclass
class PolicyPass:
    """What one checkpoint's own pass measured (all tensors on the CPU).

    Attributes:
        batches: Its completions, as generated batch by batch.
        logprobs: Per batch (B, R): log pi of its own response tokens, 0 off the response mask.
        pretrain_loss: Token-weighted LM loss on the pretraining rows, or None.
    """

    batches: list[Generation]
    logprobs: list[Tensor]
    pretrain_loss: float | None

    @property
    def texts(self) -> list[str]:
        return [t for g in self.batches for t in g.texts]


# ---- pure: resolving what to compare against ------------------------------------------------------------
def check_policy_stage(path: str, manifest: Manifest, flag: str) -> None:
    """Refuse a stage that does not generate text (a reward model), naming the path and the flag."""
    if manifest.stage in POLICY_STAGES:
        return
    hint = "; pass a reward stage directory as --rm" if manifest.stage == "reward" else ""
    raise EvalError(
        f"{path}: {flag} takes an sft or ppo stage directory, but {MANIFEST} says stage "
        f"{manifest.stage!r}{hint}"
    )


def resolve_sft(ckpts: dict[str, Manifest], sft: str | None) -> str:
    """The win-rate/KL baseline: --sft, else the first sft checkpoint, else the first ppo checkpoint's parent."""
    if sft is not None:
        return sft
    for path, m in ckpts.items():
        if m.stage == "sft":
            return path
    for m in ckpts.values():
        if m.stage == "ppo" and m.parent:
            return m.parent
    raise EvalError(
        "no SFT baseline: no --ckpt is an sft stage and no ppo manifest names a 'parent'; pass --sft"
    )


def resolve_rm(ckpts: dict[str, Manifest], rm: str | None) -> str | None:
    """The reward model: --rm, else the first ppo checkpoint's extra.reward_from, else None."""
    if rm is not None:
        return rm
    for m in ckpts.values():
        if m.stage == "ppo" and m.extra.get("reward_from"):
            return str(m.extra["reward_from"])
    return None


def _origin(ckpts: dict[str, Manifest], path: str, field: str) -> str:
    """Which manifest field named `path` (for errors), or '' when the user passed it."""
    for ckpt, m in ckpts.items():
        if (m.parent if field == "parent" else m.extra.get("reward_from")) == path:
            return f" (named by {Path(ckpt) / MANIFEST} field '{field}'; pass it explicitly if it moved)"
    return ""


def read_stage(path: str, origin: str = "") -> Manifest:
    """read_manifest with a hint for the common mistake of passing a run directory."""
    if not (Path(path) / MANIFEST).is_file() and (Path(path) / "stage" / MANIFEST).is_file():
        raise EvalError(
            f"{path}: a run directory, not a stage directory; did you mean {Path(path) / 'stage'}?"
        )
    try:
        return read_manifest(path)
    except ManifestError as e:
        raise EvalError(f"{e}{origin}") from e


# ---- pure: metrics -------------------------------------------------------------------------------------
def response_lengths(batches: Sequence[Generation]) -> list[int]:
    """Tokens of each response, EOS included (as PPO's ppo/response_length counts them)."""
    return [int(n) for g in batches for n in g.response_mask.sum(1)]


def checkpoint_metrics(
    judged: dict[str, float] | None,
    rm_scores: Sequence[float] | None,
    kl: Sequence[float],
    pretrain_loss: float | None,
    lengths: Sequence[int],
) -> dict[str, float | None]:
    """One report row's metrics, every key of METRICS present (None where not measured)."""
    row: dict[str, float | None] = dict.fromkeys(METRICS)
    row.update(judged or {})
    row["rm_score"] = mean_or_none(rm_scores)
    row["kl"] = mean_or_none(kl)
    row["pretrain_loss"] = (
        pretrain_loss if pretrain_loss is not None and math.isfinite(pretrain_loss) else None
    )
    row["mean_length"] = mean_or_none(lengths)
    return row


# ---- model passes (thin wrappers) ----------------------------------------------------------------------
def _cpu(g: Generation) -> Generation:
    return dataclasses.replace(
        g, **{f.name: v.cpu() for f in dataclasses.fields(g) if isinstance(v := getattr(g, f.name), Tensor)}
    )


def _release() -> None:
    """Return a freed model's memory before the next one loads."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@torch.no_grad()
def sample(
    backbone: Any, prompts: list[Any], sampling: SamplingConfig, batch_size: int, seed: int
) -> list[Generation]:
    """Completions of `prompts` in the model's own prompt format, batch i seeded with seed + i (as PPO's in-run
    evaluation samples them)."""
    gens = generate_batches(backbone.model, backbone.text_format, prompts, sampling, batch_size, seed)
    return [_cpu(g) for g in gens]


@torch.no_grad()
def response_token_logprobs(backbone: Any, batches: Sequence[Generation]) -> list[Tensor]:
    """log p of each batch's SAMPLED response tokens under `backbone` (its active adapter): per batch (B, R), CPU."""
    device = next(backbone.parameters()).device
    out = []
    for g in batches:
        ids, mask = g.input_ids.to(device), g.attention_mask.to(device)
        logp = backbone.response_logprobs(ids, mask, g.prompt_ids.shape[1])  # (B, R) float32
        out.append((logp * g.response_mask.to(device)).cpu())
    return out


@torch.no_grad()
def pretrain_loss(backbone: Any, texts: list[str], batch_size: int) -> float:
    """Mean next-token loss per predicted token on `texts` (each cut to PRETRAIN_MAX_LENGTH tokens)."""
    from lit_rlhf.backbone.build import position_ids_from_mask
    from lit_rlhf.data.prompts import collate_lm, encode_texts
    from lit_rlhf.rl.losses import lm_loss

    tok, device = backbone.tokenizer, next(backbone.parameters()).device
    rows, _ = encode_texts(texts, tok, PRETRAIN_MAX_LENGTH)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    losses, counts = [], []
    for i in range(0, len(rows), batch_size):
        b = {k: v.to(device) for k, v in collate_lm(rows[i : i + batch_size], pad).items()}
        logits = backbone(b["input_ids"], b["attention_mask"], position_ids_from_mask(b["attention_mask"]))
        losses.append(float(lm_loss(logits, b["labels"])))
        counts.append(int((b["labels"][:, 1:] != -100).sum()))  # the tokens lm_loss averaged over
    return weighted_mean(losses, counts)


def load_policy(path: str, device: str, trust_remote_code: bool = False) -> Any:
    """A stage directory's backbone in eval mode, its policy adapter (if any) active."""
    from lit_rlhf.checkpoint.stage_dir import load_stage_dir

    backbone, _ = load_stage_dir(path, device=device, trust_remote_code=trust_remote_code)
    return backbone.eval()


def policy_pass(
    path: str, prompts: list[Any], texts: list[str] | None, s: EvalSettings, adapters_off: bool = False
) -> PolicyPass:
    """Step 1 for one checkpoint: sample, score its own tokens, measure the pretraining loss.

    `adapters_off` evaluates the stage's base model with every adapter off (the pretrained model, zero-shot).
    """
    log.info(
        "evaluate: sampling %d completions from %s%s", len(prompts), path, " (base)" if adapters_off else ""
    )
    backbone = load_policy(path, s.device, s.trust_remote_code)
    if adapters_off and not backbone.adapters:
        raise EvalError(
            f"{path}: --base needs a LoRA SFT stage (its base is the pretrained model); this one has none"
        )
    with backbone.use_adapter(None) if adapters_off else contextlib.nullcontext():
        batches = sample(backbone, prompts, s.sampling(), s.batch_size, s.seed)
        logprobs = response_token_logprobs(backbone, batches)
        ptx = pretrain_loss(backbone, texts, s.batch_size) if texts else None
    return PolicyPass(batches, logprobs, ptx)


def sft_pass(
    sft: str, runs: dict[str, PolicyPass], prompts: list[str], s: EvalSettings
) -> tuple[list[str], dict[str, list[float]]]:
    """Step 2: the SFT completions, and each checkpoint's per-prompt KL to the SFT model on its own tokens."""
    log.info("evaluate: SFT baseline %s", sft)
    backbone = load_policy(sft, s.device, s.trust_remote_code)
    baseline = [t for g in sample(backbone, prompts, s.sampling(), s.batch_size, s.seed) for t in g.texts]
    kl: dict[str, list[float]] = {}
    for path, run in runs.items():
        ref = response_token_logprobs(backbone, run.batches)
        kl[path] = [
            v
            for g, lp, rp in zip(run.batches, run.logprobs, ref, strict=True)
            for v in kl_k1_per_sequence(lp, rp, g.response_mask)
        ]
    return baseline, kl


def rm_pass(
    rm: str, runs: dict[str, PolicyPass], prompts: list[str], s: EvalSettings
) -> dict[str, list[float]]:
    """Step 3: the reward model's score (bias applied) of every checkpoint's completions."""
    from lit_rlhf.evaluation.reward_model import RewardScorer

    log.info("evaluate: reward model %s", rm)
    try:
        scorer = RewardScorer(rm, device=s.device, trust_remote_code=s.trust_remote_code)
    except ValueError as e:
        raise EvalError(str(e)) from e
    return {path: scorer.score(prompts, run.texts, s.batch_size) for path, run in runs.items()}


# ---- orchestration -------------------------------------------------------------------------------------
def _vocab_fingerprint(path: str, manifest: Manifest, trust_remote_code: bool = False) -> str:
    from lit_rlhf.backbone.build import load_tokenizer
    from lit_rlhf.checkpoint.safety import check_code

    # the user's flag, never the manifest's own trust_remote_code: a copied stage directory must not run code
    check_code(path, manifest, trust_remote_code)
    tok = load_tokenizer(str(Path(path) / manifest.tokenizer), trust_remote_code=trust_remote_code)
    return hashlib.sha256(json.dumps(sorted(tok.get_vocab().items())).encode()).hexdigest()


def check_same_tokenizer(
    manifests: dict[str, Manifest], sft: str, sft_manifest: Manifest, trust_remote_code: bool = False
) -> None:
    """KL compares log-probs of the same token ids: every checkpoint must share the SFT model's vocabulary."""
    want = _vocab_fingerprint(sft, sft_manifest, trust_remote_code)
    for path, m in manifests.items():
        if _vocab_fingerprint(path, m, trust_remote_code) != want:
            raise EvalError(f"{path}: its tokenizer's vocabulary differs from the SFT baseline {sft}'s")


def _read_inputs(s: EvalSettings) -> tuple[list[Any], list[str | None], list[str] | None]:
    """The prompts, their reference answers (None where a row has none) and the pretraining texts (or None)."""
    from lit_rlhf.data.rows import read_rows

    rows, _ = read_rows(s.prompts, "prompt", limit=s.limit)
    prompts, refs = [r.prompt for r in rows], [r.reference for r in rows]
    if s.pretrain is None:
        return prompts, refs, None
    # The LAST rows: PPODataModule holds them out of ptx training (ptx_holdout), so the loss is a real held-out
    # alignment-tax figure for PPO-ptx, not a training loss.
    texts, _ = read_rows(s.pretrain, "text")
    return prompts, refs, [r.text for r in texts[-s.pretrain_limit :]]


def _resolve(
    ckpts: Sequence[str], sft: str | None, rm: str | None, trust_remote_code: bool = False
) -> tuple[dict[str, Manifest], str, Manifest, str | None]:
    """Read every manifest up front: a wrong directory fails before any model loads."""
    if len(set(ckpts)) != len(ckpts):
        raise EvalError(
            f"--ckpt lists a directory twice: {sorted(c for c in set(ckpts) if ckpts.count(c) > 1)}"
        )
    manifests = {str(c): read_stage(str(c)) for c in ckpts}
    for path, m in manifests.items():
        check_policy_stage(path, m, "--ckpt")
    sft_path = resolve_sft(manifests, sft)
    sft_manifest = read_stage(sft_path, "" if sft else _origin(manifests, sft_path, "parent"))
    check_policy_stage(sft_path, sft_manifest, "--sft")
    check_same_tokenizer(manifests, sft_path, sft_manifest, trust_remote_code)
    rm_path = resolve_rm(manifests, rm)
    if rm_path is not None:
        rm_manifest = read_stage(rm_path, "" if rm else _origin(manifests, rm_path, "reward_from"))
        if "reward" not in rm_manifest.heads:
            raise EvalError(
                f"{rm_path}: stage {rm_manifest.stage!r} has no reward head; --rm takes a reward stage"
            )
    return manifests, sft_path, sft_manifest, rm_path


def _notes(
    judged: dict[str, dict[str, float]], prompts: list[Any], rm: str | None, s: EvalSettings
) -> list[str]:
    notes = []
    if s.judge is None:
        notes.append(
            "judge_score and win_rate_vs_sft are null: no --judge (e.g. --judge demo or exact_match)"
        )
    else:
        counts = {int(j.get("judged", 0)) for j in judged.values()}
        if counts != {len(prompts)}:
            notes.append(
                f"the judge {s.judge!r} judged {sorted(counts)} of {len(prompts)} prompts (the others it cannot "
                "judge, e.g. no reference answer); its figures are over those"
            )
    if rm is None:
        notes.append("rm_score is null: no --rm, and no ppo manifest names extra.reward_from")
    if s.pretrain is None:
        notes.append("pretrain_loss is null: no --pretrain")
    return notes


def evaluate_checkpoints(
    ckpts: Sequence[str], settings: EvalSettings, sft: str | None = None, rm: str | None = None
) -> dict[str, Any]:
    """Evaluate each checkpoint on the held-out prompts; returns the report (see write_report)."""
    if settings.problems():
        raise EvalError("; ".join(settings.problems()))
    if not ckpts:
        raise EvalError("give at least one --ckpt")
    ckpts = [resolve_stage_ref(str(c)) for c in ckpts]  # RUN@best: a PPO run's best kept checkpoint
    try:
        judge = load_judge(settings.judge)
    except JudgeError as e:
        raise EvalError(str(e)) from e
    manifests, sft_path, sft_manifest, rm_path = _resolve(ckpts, sft, rm, settings.trust_remote_code)
    prompts, refs, texts = _read_inputs(settings)
    runs: dict[str, PolicyPass] = {}
    if settings.base:  # the pretrained model under the SFT stage, zero-shot: the first row
        runs[BASE_ROW] = policy_pass(sft_path, prompts, texts, settings, adapters_off=True)
        _release()
    for path in manifests:  # 1
        runs[path] = policy_pass(path, prompts, texts, settings)
        _release()
    baseline, kl = sft_pass(sft_path, runs, prompts, settings)  # 2
    _release()
    rewards = rm_pass(rm_path, runs, prompts, settings) if rm_path else {}  # 3
    _release()
    judged = {  # 4
        path: judge_metrics(judge, prompts, run.texts, refs, baseline=baseline) if judge else {}
        for path, run in runs.items()
    }
    rows = {
        path: _row(manifests.get(path), run, judged[path], kl[path], rewards.get(path))
        for path, run in runs.items()
    }
    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "prompts": {"path": str(settings.prompts), "count": len(prompts)},
        "settings": {
            **dataclasses.asdict(settings),
            "sft": sft_path,
            "sft_stage": sft_manifest.stage,
            "rm": rm_path,
            "pretrain_rows": len(texts) if texts else 0,
            "pretrain_max_length": PRETRAIN_MAX_LENGTH,
        },
        "notes": _notes(judged, prompts, rm_path, settings),
        "checkpoints": rows,
    }


def _row(
    manifest: Manifest | None,
    run: PolicyPass,
    judged: dict[str, float],
    kl: list[float],
    rm_scores: list[float] | None,
) -> dict[str, Any]:
    """One checkpoint's report entry: METRICS, plus the judge's own details (e.g. exact_match) when it has some.
    No manifest: the base model row (`--base`)."""
    lengths = response_lengths(run.batches)
    metrics = checkpoint_metrics(judged, rm_scores, kl, run.pretrain_loss, lengths)
    stage, step = ("base", 0) if manifest is None else (manifest.stage, manifest.step)
    return {"stage": stage, "step": step, **metrics}
