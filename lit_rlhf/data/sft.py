"""Supervised fine-tuning data: render chat rows, tokenize with the prompt masked, pad or pack, and serve.

Lives here: `render_chat`, `tokenize_example` (+ `OverlengthError`), `collate`, `pack` and
`SFTDataModule`. Row formats and file reading live in `rows.py`; models, losses and anything that
imports peft/bitsandbytes do not belong here. Labels are NOT shifted: they line up with `input_ids`
and the model's loss shifts them, as Hugging Face causal LMs do.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Literal, NamedTuple

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from lit_rlhf.data.distributed import eval_sampler
from lit_rlhf.data.resumable import BatchPlan, PositionedBatches, ResumablePosition, Source, positioned_loader
from lit_rlhf.data.rows import DataError, Demonstration, ReadReport, read_rows, split_source
from lit_rlhf.data.special_tokens import SPECIAL_TOKEN_POLICIES, SpecialTokens, screen_special_tokens

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100  # the label torch's cross_entropy (and HF's loss) skips
Truncation = Literal["error", "skip", "truncate"]
TRUNCATIONS: tuple[str, ...] = ("error", "skip", "truncate")

# The plain chat template used when a tokenizer has none: one "role: content" line per message, then
# "assistant:" as the generation prompt. The response starts with a space so its first word tokenizes
# the same as it would mid-line.
PLAIN_ROLE_LINE = "{role}: {content}\n"
PLAIN_GENERATION_PROMPT = "assistant:"


class Example(NamedTuple):
    input_ids: list[int]  # (T,) prompt ids, then response ids, then eos
    labels: list[int]  # (T,) IGNORE_INDEX over the prompt, the token ids over response + eos


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


def _as_pairs(messages: Sequence[Any]) -> list[tuple[str, str]]:
    """Accept (role, content) pairs or {"role", "content"} mappings."""
    return [(m["role"], m["content"]) if isinstance(m, Mapping) else (m[0], m[1]) for m in messages]


def render_chat(messages: Sequence[Any], tokenizer: Any) -> tuple[str, str]:
    """Split a chat ending in an assistant message into (prompt text, response text).

    With `tokenizer.chat_template` set, the prompt is the template applied to every message but the
    last, with the generation prompt; the response is the last message's content. Without one, the
    plain template: "{role}: {content}\\n" per message, then "assistant:"; the response is " " + content.
    """
    pairs = _as_pairs(messages)
    if len(pairs) < 2 or pairs[-1][0] != "assistant":
        raise ValueError("a chat to render needs at least one message before a final assistant message")
    context, (_, answer) = pairs[:-1], pairs[-1]
    if getattr(tokenizer, "chat_template", None):
        prompt = tokenizer.apply_chat_template(
            [{"role": role, "content": content} for role, content in context],
            tokenize=False,
            add_generation_prompt=True,
        )
        return prompt, answer
    lines = "".join(PLAIN_ROLE_LINE.format(role=role, content=content) for role, content in context)
    return lines + PLAIN_GENERATION_PROMPT, " " + answer


def _eos_id(tokenizer: Any) -> int:
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise ValueError(
            "the tokenizer has no eos_token: SFT appends eos to every response so the model learns to "
            "stop; set tokenizer.eos_token (or add one) before building the data"
        )
    return eos


def _encode(
    prompts: list[str], responses: list[str], tokenizer: Any
) -> tuple[list[list[int]], list[list[int]]]:
    """Token ids of each prompt (special tokens on) and of each response + eos (special tokens off)."""
    eos = _eos_id(tokenizer)
    bos = getattr(tokenizer, "bos_token_id", None)
    prompt_ids = tokenizer(prompts)["input_ids"]
    response_ids = [ids + [eos] for ids in tokenizer(responses, add_special_tokens=False)["input_ids"]]
    if bos is not None:
        # Chat templates often write the BOS text themselves and the tokenizer adds another: keep one.
        prompt_ids = [ids[1:] if ids[:2] == [bos, bos] else ids for ids in prompt_ids]
    return prompt_ids, response_ids


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
    prompt: str,
    response: str,
    tokenizer: Any,
    max_length: int,
    truncation: Truncation,
    *,
    source: str = "",
) -> Example | None:
    """Tokenize one (prompt, response) pair with the prompt masked out of the labels.

    input_ids = tokenizer(prompt) (special tokens on) + tokenizer(response, no special tokens) + [eos];
    labels = IGNORE_INDEX over the prompt, ids over response + eos. Over max_length: "error" raises
    OverlengthError naming `source` ("file:line"), "skip" returns None, "truncate" fits it (see `_fit`).
    """
    _check_fit_args(max_length, truncation)
    (prompt_ids,), (response_ids,) = _encode([prompt], [response], tokenizer)
    return _fit(
        prompt_ids, response_ids, max_length, truncation, getattr(tokenizer, "bos_token_id", None), source
    )


# ---------------------------------------------------------------------------------------------------------
# Batching
# ---------------------------------------------------------------------------------------------------------


def pack(examples: Sequence[Example], max_length: int) -> list[PackedExample]:
    """Concatenate examples, in order, into rows of at most max_length tokens (next-fit greedy).

    position_ids restart at 0 for each example and the first token of each example gets no label, so no
    example is trained to predict the start of the next. The usual packing trade-off remains: attention
    (eager/SDPA with a plain 0/1 mask) still sees earlier examples in the row; only attention kernels that
    split on position_ids resets (flash-attention varlen) isolate them. Off by default for that reason.
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


def _prompt_response(row: Demonstration, tokenizer: Any) -> tuple[str, str]:
    if row.messages is not None:
        return render_chat(row.messages, tokenizer)
    return row.prompt, row.response


def build_examples(
    rows: Sequence[Demonstration],
    tokenizer: Any,
    max_length: int,
    truncation: Truncation,
    report: ReadReport,
) -> list[Example]:
    """Tokenize demonstrations; rows skipped or truncated for length are counted into `report`."""
    _check_fit_args(max_length, truncation)
    texts = [_prompt_response(row, tokenizer) for row in rows]
    prompt_ids, response_ids = _encode([p for p, _ in texts], [r for _, r in texts], tokenizer)
    bos = getattr(tokenizer, "bos_token_id", None)
    examples = []
    for row, p, r in zip(rows, prompt_ids, response_ids, strict=True):
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
    """Demonstrations (.jsonl/.parquet) -> tokenized, prompt-masked batches for supervised fine-tuning.

    The tokenizer is taken from the LightningModule at setup (it loads it lazily) unless one is given.
    After setup, `reports` holds a ReadReport per split ("train", "val") with the rows skipped for bad
    data or length and the number truncated. Training batches resume mid-epoch (see `resumable`).
    """

    def __init__(
        self,
        train_path: str,
        val_path: str | None = None,
        batch_size: int = 32,
        max_length: int = 256,
        packing: bool = False,
        on_error: Literal["raise", "skip"] = "raise",
        truncation: Truncation = "error",
        num_workers: int = 0,
        seed: int = 0,
        tokenizer: Any = None,
        special_tokens: SpecialTokens = "error",
    ) -> None:
        """
        Args:
            train_path: demonstrations file (.jsonl or .parquet).
            val_path: optional validation demonstrations; no validation when None.
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
        self.save_hyperparameters(ignore=["tokenizer"])
        self.train_path, self.val_path = train_path, val_path
        self.batch_size, self.max_length, self.packing = batch_size, max_length, packing
        self.on_error, self.truncation = on_error, truncation
        self.num_workers, self.seed = num_workers, seed
        self.tokenizer, self.special_tokens = tokenizer, special_tokens
        self.reports: dict[str, ReadReport] = {}
        self._data: dict[str, list[Example] | list[PackedExample]] = {}
        self._val_prompts: list[str] | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.tokenizer is None:
            # Lightning runs this hook BEFORE LightningModule.setup/configure_model, so the module's
            # tokenizer must already be an attribute or a lazily loading property by now.
            module = self.trainer.lightning_module if self.trainer is not None else None
            self.tokenizer = getattr(module, "tokenizer", None)
            if self.tokenizer is None:
                raise RuntimeError(
                    "SFTDataModule has no tokenizer: pass tokenizer=..., or give the LightningModule a "
                    "`tokenizer` attribute (or lazy property) usable before its setup()/configure_model()"
                )
        wanted = {"val": self.val_path}
        if stage in ("fit", None):
            wanted["train"] = self.train_path
        for split, path in wanted.items():
            if path is not None and split not in self._data:  # setup runs once per stage; read once
                self._data[split] = self._load(split, path)

    def _load(self, split: str, path: str) -> list[Example] | list[PackedExample]:
        rows, report = read_rows(path, "demonstration", on_error=self.on_error)
        rows = screen_special_tokens(rows, self.tokenizer, report, self.on_error, self.special_tokens)
        examples = build_examples(rows, self.tokenizer, self.max_length, self.truncation, report)
        self.reports[split] = report
        logger.info("%s: %s", split, report.summary())
        if report.truncated:
            logger.warning(
                "%s: %d examples truncated to max_length %d", split, report.truncated, self.max_length
            )
        if split == "val":
            self._val_prompts = [_prompt_response(row, self.tokenizer)[0] for row in rows]
        return pack(examples, self.max_length) if self.packing else examples

    def _pad_id(self) -> int:
        pad_id = self.tokenizer.pad_token_id
        # Padding is masked out of attention and labels, so any id works; eos is always present.
        return _eos_id(self.tokenizer) if pad_id is None else pad_id

    def _require(self, split: str) -> list[Example] | list[PackedExample]:
        if split not in self._data:
            raise RuntimeError(f"SFTDataModule.{split}_dataloader() called before setup()")
        return self._data[split]

    def train_dataloader(self) -> DataLoader:
        rows = self._require("train")
        world, rank = self.world()
        plan = BatchPlan(len(rows), self.batch_size, self.seed, world_size=world, rank=rank)
        source = Source(rows, plan, functools.partial(collate, pad_id=self._pad_id()))
        return positioned_loader(PositionedBatches({"": source}, self.resume_position), self.num_workers)

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

    def val_prompts(self, n: int) -> list[str]:
        """The first n validation prompts, rendered as the model sees them (for sample logging)."""
        if self.val_path is None:
            return []
        if self._val_prompts is None:
            raise RuntimeError("SFTDataModule.val_prompts() called before setup()")
        return self._val_prompts[:n]
