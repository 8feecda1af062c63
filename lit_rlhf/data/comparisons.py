"""Comparisons -> reward-model batches in which a prompt's K responses always travel together.

A batch holds whole prompts: each response is scored once (K forward passes per prompt) and the loss forms every
pair of unequal rank inside the prompt (InstructGPT eq. 1). The `pairs` layout expands each prompt into its
C(K,2) pairs as independent K=2 rows and shuffles them: that is the scheme InstructGPT found to overfit, kept
for the ablation and the benchmark.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Literal, NamedTuple

import lightning as L
import torch
from torch.utils.data import DataLoader

from lit_rlhf.data.formatting import (
    UNKNOWN_ERROR,
    UNKNOWN_WARN,
    PromptSpec,
    TextFormat,
    check_unknown_tokens,
    data_format,
)
from lit_rlhf.data.limits import MAX_RESPONSES, screen_comparisons
from lit_rlhf.data.padding import pad_right
from lit_rlhf.data.resumable import BatchPlan, PositionedBatches, ResumablePosition, Source, positioned_loader
from lit_rlhf.data.rows import Comparison, DataError, ReadReport, read_rows, split_source
from lit_rlhf.data.rules import EncodedRule, RuleBatches, collate_rules, load_rules, rule_names
from lit_rlhf.data.sft import TRUNCATIONS, Truncation, as_format, tokenize_example
from lit_rlhf.data.sources import DataSource, as_spec
from lit_rlhf.data.special_tokens import SPECIAL_TOKEN_POLICIES, SpecialTokens, screen_special_tokens
from lit_rlhf.distributed import eval_sampler

logger = logging.getLogger(__name__)

Layout = Literal["kwise", "pairs"]


class EncodedComparison(NamedTuple):
    """One prompt with its K tokenized responses (`TextFormat.sequence` each: prompt, response, end-of-turn)."""

    prompt: PromptSpec
    responses: tuple[str, ...]
    ranking: tuple[int, ...]
    input_ids: tuple[list[int], ...]


def encode_comparison(
    row: Comparison, tokenizer: TextFormat | Any, max_length: int, truncation: Truncation
) -> tuple[EncodedComparison | None, int]:
    """Tokenize every (prompt, response) of a comparison with the one (prompt, response) token format.

    Returns the encoded comparison (None when a response is over-long under ``skip``) and how many of its
    sequences were truncated. A comparison is kept or dropped whole: dropping one response would change what
    the ranking means. Under ``error`` an over-long sequence raises OverlengthError naming the row.
    """
    fmt = as_format(tokenizer)
    ids, truncated = [], 0
    for response in row.responses:
        ex = tokenize_example(row.prompt, response, fmt, max_length, truncation, source=row.source)
        if ex is None:
            return None, 0
        prompt_ids, response_ids = fmt.sequence(row.prompt, response)
        truncated += int(len(prompt_ids) + len(response_ids) > len(ex.input_ids))
        ids.append(ex.input_ids)
    return EncodedComparison(row.prompt, row.responses, row.ranking, tuple(ids)), truncated


def reward_inputs(
    fmt: TextFormat, prompts: list[PromptSpec], responses: list[str], max_length: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (prompt, response) sequences exactly as the reward model is trained on them.

    Every path that asks the reward model for a score (its own validation, the bias, PPO rollouts, `evaluate`,
    the dashboard) builds its input here: `TextFormat.sequence` (rendered prompt, response text, end-of-turn),
    cut to `max_length` the way training's ``truncation="truncate"`` cuts (prompt tokens dropped from the left).
    A response that stopped at max_new_tokens is scored as the text it is, closed with end-of-turn like every
    training response; PPO's truncation penalty, not the reward model, judges the missing end.

    Returns:
        input_ids (B, T) long and attention_mask (B, T) long.
    """
    rows = []
    for prompt, response in zip(prompts, responses, strict=True):
        if max_length is None:
            p, r = fmt.sequence(prompt, response)
            rows.append(p + r)
        else:
            rows.append(tokenize_example(prompt, response, fmt, max_length, "truncate").input_ids)
    return pad_right(rows, fmt.pad_id)


def expand_to_pairs(rows: list[EncodedComparison]) -> list[EncodedComparison]:
    """Every (better, worse) pair of every prompt as its own K=2 item (the ablation layout)."""
    out = []
    for r in rows:
        for i, j in Comparison(r.prompt, r.responses, r.ranking).pairs():
            out.append(
                EncodedComparison(
                    r.prompt, (r.responses[i], r.responses[j]), (0, 1), (r.input_ids[i], r.input_ids[j])
                )
            )
    return out


def collate_comparisons(items: list[EncodedComparison], pad_id: int) -> dict[str, Any]:
    """Flatten a batch of prompts into N = sum(K_i) right-padded sequences.

    Returns:
        input_ids (N, T), attention_mask (N, T), ranks (N,) labeled rank (0 = best), group (N,) index of the
        prompt within the batch; and the text lists ``prompts`` (P,) and ``responses`` (P, K_i) for tables.
    """
    seqs = [ids for item in items for ids in item.input_ids]
    input_ids, mask = pad_right(seqs, pad_id)
    ranks = torch.tensor([r for item in items for r in item.ranking], dtype=torch.long)
    group = torch.tensor([g for g, item in enumerate(items) for _ in item.ranking], dtype=torch.long)
    return {
        "input_ids": input_ids,
        "attention_mask": mask,
        "ranks": ranks,
        "group": group,
        "prompts": [i.prompt for i in items],
        "responses": [list(i.responses) for i in items],
    }


def tie_share(rows: list[Comparison] | list[EncodedComparison]) -> float:
    """Share of the C(K,2) response pairs that the labeler tied (tied pairs carry no comparison)."""
    total = tied = 0
    for r in rows:
        k = len(r.ranking)
        total += k * (k - 1) // 2
        tied += sum(1 for i in range(k) for j in range(i + 1, k) if r.ranking[i] == r.ranking[j])
    return tied / total if total else 0.0


class ComparisonDataModule(ResumablePosition, L.LightningDataModule):
    """Ranked comparisons (.jsonl/.parquet, or a Hugging Face dataset) -> batches of whole prompts for the reward
    model.

    Args:
        train_path: comparisons file (K-wise rows, or pairwise rows as K=2), or a Hugging Face dataset: a
            `DataSource` or its ``hf:PATH?split=...`` string, with a column mapping (docs/data-formats.md).
        val_path: optional held-out comparisons (the same forms).
        batch_size: PROMPTS per batch (each brings its K responses).
        max_length: most tokens per prompt+response sequence.
        layout: ``kwise`` (default, a prompt's responses together) or ``pairs`` (each pair an independent,
            shuffled K=2 row: the ablation). Validation always uses ``kwise``.
        on_error: ``raise`` at the first bad row, or ``skip`` (counted and reported).
        truncation: over-long sequences: ``error``, ``skip`` (the whole comparison) or ``truncate``.
        seed: seeds the shuffle.
        tokenizer: None takes the LightningModule's at setup.
        special_tokens: ``error`` rejects responses holding a special token as text (raised, or counted under
            ``skip``); ``allow`` tokenizes them as tokens.
        unknown_tokens_warn: warn when more than this share of a file's tokens are the unknown token.
        unknown_tokens_error: stop with an error naming the file above this share.
        max_responses: most responses (K) per prompt; a row with more is refused (raised, or counted under
            ``skip``): the pairs a prompt brings grow as K^2.
        rules_train_path: rule-label rows (``docs/data-formats.md``) for the reward model's rule heads (Sparrow):
            every training batch then also carries ``rules``, ``rules_batch_size`` labeled responses cycling with
            their own epochs. The rules it labels are the head's outputs (``rule_names``).
        rules_val_path: held-out rule-label rows (a second validation loader; needs ``val_path``).
        rules_batch_size: labeled responses per training batch.
    """

    def __init__(
        self,
        train_path: str | DataSource,
        val_path: str | DataSource | None = None,
        batch_size: int = 8,
        max_length: int = 256,
        layout: Layout = "kwise",
        on_error: Literal["raise", "skip"] = "raise",
        truncation: Truncation = "error",
        num_workers: int = 0,
        seed: int = 0,
        tokenizer: Any = None,
        special_tokens: SpecialTokens = "error",
        unknown_tokens_warn: float = UNKNOWN_WARN,
        unknown_tokens_error: float = UNKNOWN_ERROR,
        max_responses: int = MAX_RESPONSES,
        rules_train_path: str | DataSource | None = None,
        rules_val_path: str | DataSource | None = None,
        rules_batch_size: int = 16,
    ) -> None:
        super().__init__()
        problems = []
        if rules_val_path is not None and val_path is None:
            problems.append("rules_val_path needs val_path (the comparisons are the first validation loader)")
        if rules_val_path is not None and rules_train_path is None:
            problems.append("rules_val_path needs rules_train_path (it names the rules the head learns)")
        if rules_batch_size < 1:
            problems.append(f"rules_batch_size must be >= 1, got {rules_batch_size}")
        if batch_size < 1:
            problems.append(f"batch_size must be >= 1, got {batch_size}")
        if layout not in ("kwise", "pairs"):
            problems.append(f"layout must be 'kwise' or 'pairs', got {layout!r}")
        if truncation not in TRUNCATIONS:
            problems.append(f"truncation must be one of {TRUNCATIONS}, got {truncation!r}")
        if special_tokens not in SPECIAL_TOKEN_POLICIES:
            problems.append(f"special_tokens must be 'error' or 'allow', got {special_tokens!r}")
        if max_responses < 2:
            problems.append(f"max_responses must be >= 2, got {max_responses}")
        if problems:
            raise ValueError("ComparisonDataModule: " + "; ".join(problems))
        # hparams (hparams.yaml, checkpoints) record a DataSource as its hf: string: plain data, no class to unpickle
        train_path, val_path = as_spec(train_path), as_spec(val_path)
        rules_train_path, rules_val_path = as_spec(rules_train_path), as_spec(rules_val_path)
        self.save_hyperparameters(ignore=["tokenizer"])
        self.train_path, self.val_path = train_path, val_path
        self.batch_size, self.max_length, self.layout = batch_size, max_length, layout
        self.on_error, self.truncation, self.num_workers, self.seed = on_error, truncation, num_workers, seed
        self.tokenizer, self.special_tokens = tokenizer, special_tokens
        self.unknown_limits = (unknown_tokens_warn, unknown_tokens_error)
        self.fmt: TextFormat | None = None
        self.max_responses = max_responses
        self.reports: dict[str, ReadReport] = {}
        self.data: dict[str, list[EncodedComparison]] = {}
        self.rules_paths = {"train": rules_train_path, "val": rules_val_path}
        self.rules_batch_size = rules_batch_size
        self.rules: dict[str, list[EncodedRule]] = {}
        self.rule_names: list[str] = []  # the rules the training file labels: the rule head's outputs

    def setup(self, stage: str | None = None) -> None:
        if self.fmt is None:
            self.fmt = data_format(self.tokenizer, self.trainer, "ComparisonDataModule")
            self.tokenizer = self.fmt.tokenizer
            logger.info("comparisons: %s", self.fmt.describe())
        wanted = {"val": self.val_path, **({"train": self.train_path} if stage in ("fit", None) else {})}
        for split, path in wanted.items():
            if path is not None and split not in self.data:
                self.data[split] = self._load(split, path)
        for split, path in self.rules_paths.items():
            if path is not None and split not in self.rules:
                self.rules[split], self.reports[f"rules_{split}"] = load_rules(
                    path,
                    self.fmt,
                    self.max_length,
                    self.truncation,
                    self.on_error,
                    self.special_tokens,
                    self.unknown_limits,
                )
                if split == "train":
                    self.rule_names = rule_names(self.rules["train"])

    def _load(self, split: str, path: str | DataSource) -> list[EncodedComparison]:
        rows, report = read_rows(path, "comparison", on_error=self.on_error)
        rows = screen_comparisons(rows, report, self.max_responses, self.on_error)
        rows = screen_special_tokens(rows, self.tokenizer, report, self.on_error, self.special_tokens)
        encoded = []
        for row in rows:
            enc, n_truncated = encode_comparison(row, self.fmt, self.max_length, self.truncation)
            report.truncated += n_truncated
            if enc is None:  # over-long under "skip": counted in the report, never silently dropped
                path_, line = split_source(row.source)
                report.skipped.append(
                    DataError(path_, line, "responses", f"a sequence exceeds max_length {self.max_length}")
                )
                continue
            encoded.append(enc)
        report.kept = len(encoded)
        ids = [seq for enc in encoded for seq in enc.input_ids]
        check_unknown_tokens(report.path, ids, self.tokenizer, *self.unknown_limits)
        self.reports[split] = report
        logger.info(
            "%s: %s; %d comparisons, %.1f%% tied pairs",
            split,
            report.summary(),
            len(encoded),
            100 * tie_share(encoded),
        )
        if not encoded:
            raise DataError(
                report.path,
                None,
                None,
                f"no comparison fits max_length {self.max_length}: {report.summary()}",
            )
        return encoded

    def _collate(self) -> functools.partial:
        return functools.partial(collate_comparisons, pad_id=self.fmt.pad_id)

    def train_dataloader(self) -> DataLoader:
        items = self.data["train"]
        if self.layout == "pairs":
            items = expand_to_pairs(items)
        world, rank = self.world()
        plan = BatchPlan(len(items), self.batch_size, self.seed, world_size=world, rank=rank)
        extra = self._rule_batches(world, rank) if "train" in self.rules else None
        batches = PositionedBatches({"": Source(items, plan, self._collate())}, self.resume_position, extra)
        return positioned_loader(batches, self.num_workers)

    def _rule_batches(self, world: int, rank: int) -> RuleBatches:
        rows = self.rules["train"]
        plan = BatchPlan(
            len(rows),
            self.rules_batch_size,
            self.seed + 1,
            drop_last=len(rows) >= self.rules_batch_size * world,
            world_size=world,
            rank=rank,
        )
        return RuleBatches(rows, plan, tuple(self.rule_names), self.fmt.pad_id)

    def val_dataloader(self) -> DataLoader | list:
        """The held-out comparisons; with held-out rule rows, ``[comparisons, rules]`` (dataloader_idx 0, 1)."""
        if not self.val_path:
            return []
        items = self.data["val"]
        comparisons = DataLoader(
            items,
            batch_size=self.batch_size,
            sampler=eval_sampler(items, self.trainer),
            collate_fn=self._collate(),
            num_workers=self.num_workers,
        )
        if "val" not in self.rules:
            return comparisons
        rules = self.rules["val"]
        return [
            comparisons,
            DataLoader(
                rules,
                batch_size=self.rules_batch_size,
                sampler=eval_sampler(rules, self.trainer),
                collate_fn=functools.partial(
                    collate_rules, names=list(self.rule_names), pad_id=self.fmt.pad_id
                ),
                num_workers=self.num_workers,
            ),
        ]

    def demonstrations(self) -> list[tuple[str, str]]:
        """(prompt, best response) of the training comparisons: a fallback set for the reward bias."""
        out = []
        for r in self.data.get("train", []):
            out.append((r.prompt, r.responses[r.ranking.index(min(r.ranking))]))
        return out
