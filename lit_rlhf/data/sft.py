"""Supervised fine-tuning data: render chat rows, tokenize with the prompt masked, pad or pack, and serve.

Lives here: `render_chat`, `tokenize_example` (+ `OverlengthError`), `collate`, `pack` and
`SFTDataModule`. Row formats and file reading live in `rows.py`, prompt rendering and the token format of a
(prompt, response) pair in `formatting.py`; models, losses and anything that imports peft/bitsandbytes do not
belong here. Labels are NOT shifted: they line up with `input_ids`
and the model's loss shifts them, as Hugging Face causal LMs do.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from lit_rlhf.data.formatting import (
    UNKNOWN_ERROR,
    UNKNOWN_WARN,
    PromptSpec,
    TextFormat,
    check_unknown_tokens,
    data_format,
)
from lit_rlhf.data.resumable import (
    BatchPlan,
    PositionedBatches,
    ResumablePosition,
    Source,
    positioned_loader,
    window_total,
)
from lit_rlhf.data.rows import DataError, Demonstration, ReadReport, read_rows, split_source
from lit_rlhf.data.sources import DataSource, as_spec
from lit_rlhf.data.special_tokens import SPECIAL_TOKEN_POLICIES, SpecialTokens, screen_special_tokens
from lit_rlhf.distributed import eval_sampler

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100  # the label torch's cross_entropy (and HF's loss) skips
Truncation = Literal["error", "skip", "truncate"]
TRUNCATIONS: tuple[str, ...] = ("error", "skip", "truncate")


class Example(NamedTuple):
    input_ids: list[int]  # (T,) prompt ids, then response ids, then end-of-turn
    labels: list[int]  # (T,) IGNORE_INDEX over the prompt, the token ids over response + end-of-turn


class PackedExample(NamedTuple):
    input_ids: list[int]  # (T,) several examples back to back
    labels: list[int]  # (T,) IGNORE_INDEX at the first token of every example
    position_ids: list[int]  # (T,) restart at 0 at every example


class OverlengthError(DataError):
    """An example longer than max_length with truncation="error"."""

    summary_key = "length"

    def __init__(self, source: str, prompt_tokens: int, response_tokens: int, max_length: int) -> None:
        path, line = split_source(source or "<example>")
        total = prompt_tokens + response_tokens
        reason = (
            f"example is {total} tokens (prompt {prompt_tokens} + response with eos {response_tokens}), "
            f"over max_length {max_length}; raise max_length or set truncation to 'truncate' or 'skip'"
        )
        super().__init__(path, line, None, reason)
        self.prompt_tokens, self.response_tokens, self.max_length = prompt_tokens, response_tokens, max_length


# ---------------------------------------------------------------------------------------------------------
# Rendering and tokenizing one example
# ---------------------------------------------------------------------------------------------------------


def as_format(tokenizer: Any) -> TextFormat:
    """A TextFormat as it is, or a tokenizer wrapped with the default prompt format."""
    return tokenizer if isinstance(tokenizer, TextFormat) else TextFormat(tokenizer)


def render_chat(messages: Sequence[Any], tokenizer: Any) -> tuple[str, str]:
    """Split a chat ending in an assistant message into (prompt text, response text), as SFT tokenizes them.

    With a chat template (``tokenizer.chat_template``, or a TextFormat that uses one) the prompt is the
    template applied to every message but the last, with the generation prompt; the response is the last
    message's content. Without one, the plain template: "{role}: {content}\\n" per message, then "assistant:";
    the response is " " + content.
    """
    from lit_rlhf.data.formatting import as_messages

    pairs = as_messages(messages)
    if len(pairs) < 2 or pairs[-1][0] != "assistant":
        raise ValueError("a chat to render needs at least one message before a final assistant message")
    fmt = as_format(tokenizer)
    context = pairs[:-1]
    return fmt.render_prompt(context), fmt.response_text(context, pairs[-1][1])


def _fit(
    prompt_ids: list[int],
    response_ids: list[int],
    max_length: int,
    truncation: Truncation,
    bos_id: int | None,
    source: str,
) -> Example | None:
    """Join prompt and response ids into an Example no longer than max_length, per the truncation policy.

    "truncate" drops prompt tokens from the left (the context nearest the response matters most),
    keeping a leading BOS; if response + eos alone is too long, it also cuts the response's end,
    keeping eos last.
    """
    if len(prompt_ids) + len(response_ids) > max_length:
        if truncation == "error":
            raise OverlengthError(source, len(prompt_ids), len(response_ids), max_length)
        if truncation == "skip":
            return None
        head = prompt_ids[:1] if prompt_ids and bos_id is not None and prompt_ids[0] == bos_id else []
        room = max_length - len(head)
        if len(response_ids) <= room:
            keep = room - len(response_ids)
            prompt_ids = head + (prompt_ids[len(head) :][-keep:] if keep else [])
        else:
            prompt_ids, response_ids = head, response_ids[: room - 1] + response_ids[-1:]
    labels = [IGNORE_INDEX] * len(prompt_ids) + list(response_ids)
    return Example(list(prompt_ids) + list(response_ids), labels)


def _check_fit_args(max_length: int, truncation: str) -> None:
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2 (a BOS or prompt token, and eos), got {max_length}")
    if truncation not in TRUNCATIONS:
        raise ValueError(f"truncation must be one of {', '.join(TRUNCATIONS)}, got {truncation!r}")


def tokenize_example(
    prompt: PromptSpec,
    response: str,
    tokenizer: Any,
    max_length: int,
    truncation: Truncation,
    *,
    source: str = "",
) -> Example | None:
    """Tokenize one (prompt, response) pair with the prompt masked out of the labels.

    The ids are `TextFormat.sequence`: the rendered prompt's ids, then the response's ids and the end-of-turn
    token (eos without a chat template). `tokenizer` is a TextFormat, or a tokenizer used with the default
    prompt format. Over max_length: "error" raises OverlengthError naming `source` ("file:line"), "skip" returns
    None, "truncate" fits it (see `_fit`).
    """
    _check_fit_args(max_length, truncation)
    fmt = as_format(tokenizer)
    prompt_ids, response_ids = fmt.sequence(prompt, response)
    return _fit(
        prompt_ids, response_ids, max_length, truncation, getattr(fmt.tokenizer, "bos_token_id", None), source
    )


# ---------------------------------------------------------------------------------------------------------
# Batching
# ---------------------------------------------------------------------------------------------------------


def pack(examples: Sequence[Example], max_length: int) -> list[PackedExample]:
    """Concatenate examples, in order, into rows of at most max_length tokens (next-fit greedy).

    position_ids restart at 0 for each example and the first token of each example gets no label, so no
    example is trained to predict the start of the next. Given those position_ids and no attention mask (as
    SFTModule passes packed batches), transformers masks attention per example, so no example attends to another.
    """
    rows: list[PackedExample] = []
    ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    for i, ex in enumerate(examples):
        n = len(ex.input_ids)
        if n > max_length:
            raise ValueError(
                f"example {i} has {n} tokens, over max_length {max_length}: fit it before packing"
            )
        if ids and len(ids) + n > max_length:
            rows.append(PackedExample(ids, labels, positions))
            ids, labels, positions = [], [], []
        ids += ex.input_ids
        labels += [IGNORE_INDEX] + list(ex.labels[1:])
        positions += range(n)
    if ids:
        rows.append(PackedExample(ids, labels, positions))
    return rows


def count_targets(example: Example | PackedExample) -> int:
    """Tokens an example is trained to predict: labels after the first (the loss shifts) that are not ignored."""
    return sum(label != IGNORE_INDEX for label in example.labels[1:])


def collate(examples: Sequence[Example | PackedExample], pad_id: int) -> dict[str, Tensor]:
    """Right-pad a batch: input_ids, attention_mask, labels (IGNORE_INDEX on padding), all (B, T) long.

    Packed rows also get position_ids (B, T), padded with 0 (masked out, so the value is irrelevant).
    """
    if not examples:
        raise ValueError("collate needs at least one example")
    packed = [isinstance(ex, PackedExample) for ex in examples]
    if any(packed) and not all(packed):
        raise ValueError("a batch mixes packed and unpacked examples")
    width = max(len(ex.input_ids) for ex in examples)
    batch = {
        "input_ids": torch.full((len(examples), width), pad_id, dtype=torch.long),  # (B, T)
        "attention_mask": torch.zeros((len(examples), width), dtype=torch.long),  # (B, T)
        "labels": torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long),  # (B, T)
    }
    if all(packed):
        batch["position_ids"] = torch.zeros((len(examples), width), dtype=torch.long)  # (B, T)
    for b, ex in enumerate(examples):
        n = len(ex.input_ids)
        batch["input_ids"][b, :n] = torch.tensor(ex.input_ids, dtype=torch.long)
        batch["attention_mask"][b, :n] = 1
        batch["labels"][b, :n] = torch.tensor(ex.labels, dtype=torch.long)
        if "position_ids" in batch:
            batch["position_ids"][b, :n] = torch.tensor(ex.position_ids, dtype=torch.long)
    return batch


# ---------------------------------------------------------------------------------------------------------
# The data module
# ---------------------------------------------------------------------------------------------------------


def build_examples(
    rows: Sequence[Demonstration],
    fmt: TextFormat,
    max_length: int,
    truncation: Truncation,
    report: ReadReport,
) -> list[Example]:
    """Tokenize demonstrations; rows skipped or truncated for length are counted into `report`."""
    _check_fit_args(max_length, truncation)
    bos = getattr(fmt.tokenizer, "bos_token_id", None)
    examples = []
    for row in rows:
        p, r = fmt.sequence(row.prompt_spec, row.answer)
        too_long = len(p) + len(r) > max_length
        if too_long and truncation == "skip":
            report.skipped.append(OverlengthError(row.source, len(p), len(r), max_length))
            continue
        examples.append(_fit(p, r, max_length, truncation, bos, row.source))
        report.truncated += int(too_long)
    report.kept = len(examples)
    if not examples:
        raise DataError(
            report.path, None, None, f"no example fits max_length {max_length}: {report.summary()}"
        )
    return examples


class SFTDataModule(ResumablePosition, L.LightningDataModule):
    """Demonstrations (.jsonl/.parquet, or a Hugging Face dataset) -> tokenized, prompt-masked batches for
    supervised fine-tuning.

    The tokenizer is taken from the LightningModule at setup (it loads it lazily) unless one is given.
    After setup, `reports` holds a ReadReport per split ("train", "val") with the rows skipped for bad
    data or length and the number truncated. Training batches resume mid-epoch (see `resumable`).
    """

    def __init__(
        self,
        train_path: str | DataSource,
        val_path: str | DataSource | None = None,
        batch_size: int = 32,
        max_length: int = 256,
        packing: bool = False,
        on_error: Literal["raise", "skip"] = "raise",
        truncation: Truncation = "error",
        num_workers: int = 0,
        seed: int = 0,
        tokenizer: Any = None,
        special_tokens: SpecialTokens = "error",
        unknown_tokens_warn: float = UNKNOWN_WARN,
        unknown_tokens_error: float = UNKNOWN_ERROR,
    ) -> None:
        """
        Args:
            train_path: demonstrations file (.jsonl or .parquet), or a Hugging Face dataset: a `DataSource` or its
                ``hf:PATH?split=...`` string, with a column mapping (docs/data-formats.md).
            val_path: optional validation demonstrations (the same forms); no validation when None.
            batch_size: rows per batch (packed rows when packing).
            max_length: most tokens per example (per packed row when packing).
            packing: concatenate examples into full rows (see `pack` for the attention trade-off).
            on_error: "raise" stops at the first bad row; "skip" logs, counts and drops bad rows.
            truncation: what to do with an example over max_length: "error", "skip" or "truncate".
            num_workers: DataLoader worker processes.
            seed: seeds the training shuffle.
            tokenizer: a Hugging Face tokenizer; None takes the LightningModule's at setup.
            special_tokens: "error" rejects responses and chat message contents that hold a special token as
                text (a row error: raised, or counted under on_error="skip"); "allow" tokenizes them as tokens.
            unknown_tokens_warn: warn when more than this share of a file's tokens are the tokenizer's unknown
                token (the tokenizer does not cover the data).
            unknown_tokens_error: stop with an error naming the file above this share.
        """
        super().__init__()
        problems = []
        if batch_size < 1:
            problems.append(f"batch_size must be >= 1, got {batch_size}")
        if max_length < 2:
            problems.append(f"max_length must be >= 2, got {max_length}")
        if on_error not in ("raise", "skip"):
            problems.append(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if truncation not in TRUNCATIONS:
            problems.append(f"truncation must be 'error', 'skip' or 'truncate', got {truncation!r}")
        if num_workers < 0:
            problems.append(f"num_workers must be >= 0, got {num_workers}")
        if special_tokens not in SPECIAL_TOKEN_POLICIES:
            problems.append(f"special_tokens must be 'error' or 'allow', got {special_tokens!r}")
        if problems:
            raise ValueError("SFTDataModule: " + "; ".join(problems))
        # hparams (hparams.yaml, checkpoints) record a DataSource as its hf: string: plain data, no class to unpickle
        train_path, val_path = as_spec(train_path), as_spec(val_path)
        self.save_hyperparameters(ignore=["tokenizer"])
        self.train_path, self.val_path = train_path, val_path
        self.batch_size, self.max_length, self.packing = batch_size, max_length, packing
        self.on_error, self.truncation = on_error, truncation
        self.num_workers, self.seed = num_workers, seed
        self.tokenizer, self.special_tokens = tokenizer, special_tokens
        self.unknown_limits = (unknown_tokens_warn, unknown_tokens_error)
        self.unknown_share: dict[str, float] = {}
        self.fmt: TextFormat | None = None
        self.reports: dict[str, ReadReport] = {}
        self._data: dict[str, list[Example] | list[PackedExample]] = {}
        self._val_prompts: list[PromptSpec] | None = None
        self._val_references: list[str] = []

    def setup(self, stage: str | None = None) -> None:
        if self.fmt is None:
            self.fmt = data_format(self.tokenizer, self.trainer, "SFTDataModule")
            self.tokenizer = self.fmt.tokenizer
            logger.info("SFT data: %s", self.fmt.describe())
        wanted = {"val": self.val_path}
        if stage in ("fit", None):
            wanted["train"] = self.train_path
        for split, path in wanted.items():
            if path is not None and split not in self._data:  # setup runs once per stage; read once
                self._data[split] = self._load(split, path)

    def _load(self, split: str, path: str | DataSource) -> list[Example] | list[PackedExample]:
        rows, report = read_rows(path, "demonstration", on_error=self.on_error)
        rows = screen_special_tokens(rows, self.tokenizer, report, self.on_error, self.special_tokens)
        examples = build_examples(rows, self.fmt, self.max_length, self.truncation, report)
        self.unknown_share[split] = check_unknown_tokens(
            report.path, [ex.input_ids for ex in examples], self.tokenizer, *self.unknown_limits
        )
        self.reports[split] = report
        logger.info("%s: %s", split, report.summary())
        if report.truncated:
            logger.warning(
                "%s: %d examples truncated to max_length %d", split, report.truncated, self.max_length
            )
        if split == "val":
            self._val_prompts = [row.prompt_spec for row in rows]
            self._val_references = [row.answer for row in rows]
        return pack(examples, self.max_length) if self.packing else examples

    def _pad_id(self) -> int:
        # Padding is masked out of attention and labels, so any id works.
        return self.fmt.pad_id

    def _require(self, split: str) -> list[Example] | list[PackedExample]:
        if split not in self._data:
            raise RuntimeError(f"SFTDataModule.{split}_dataloader() called before setup()")
        return self._data[split]

    def train_dataloader(self) -> DataLoader:
        """Training batches; each also carries ``num_targets``: the label tokens of its whole optimizer step
        (every micro-batch of the gradient-accumulation window, every rank), so the loss can weigh every token
        the same however the step is split (see `SFTModule`)."""
        rows = self._require("train")
        world, rank = self.world()
        plan = BatchPlan(len(rows), self.batch_size, self.seed, world_size=world, rank=rank)
        source = Source(rows, plan, functools.partial(collate, pad_id=self._pad_id()))
        accumulate = int(getattr(self.trainer, "accumulate_grad_batches", 1) or 1) if self.trainer else 1
        targets = [count_targets(ex) for ex in rows]

        def num_targets(position: int) -> dict[str, Any]:
            return {"num_targets": torch.tensor(window_total(plan, targets, position, accumulate))}

        batches = PositionedBatches({"": source}, self.resume_position, extra=num_targets)
        return positioned_loader(batches, self.num_workers)

    def val_dataloader(self) -> DataLoader | list:
        if self.val_path is None:
            return []
        rows = self._require("val")
        return DataLoader(
            rows,
            batch_size=self.batch_size,
            sampler=eval_sampler(rows, self.trainer),
            collate_fn=functools.partial(collate, pad_id=self._pad_id()),
            num_workers=self.num_workers,
        )

    def val_prompts(self, n: int) -> list[PromptSpec]:
        """The first n validation prompts (strings or chat messages; generation renders them)."""
        if self.val_path is None:
            return []
        if self._val_prompts is None:
            raise RuntimeError("SFTDataModule.val_prompts() called before setup()")
        return self._val_prompts[:n]

    def val_references(self, n: int) -> list[str | None]:
        """The demonstrated answers of the first n validation prompts (reference answers for judges)."""
        return list(self._val_references[:n])
