"""Rule-label rows -> batches for the reward model's rule heads (Sparrow's rule-violation classifiers).

Lives here: reading and screening rule rows, tokenizing each (prompt, response) with the one token format the
reward model reads (`tokenize_example`, as `reward_inputs` builds them), and collating labels into dense
``(N, R)`` tensors with a mask for the entries a row does not label.
Must not live here: the loss (lit_rlhf.rl.losses.rule_loss), the held-out figures (lit_rlhf.evaluation.rules).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch

from lit_rlhf.data.formatting import PromptSpec, TextFormat, check_unknown_tokens
from lit_rlhf.data.padding import pad_right
from lit_rlhf.data.resumable import BatchPlan
from lit_rlhf.data.rows import DataError, ReadReport, RuleLabel, read_rows, split_source
from lit_rlhf.data.sft import Truncation, tokenize_example
from lit_rlhf.data.sources import DataSource
from lit_rlhf.data.special_tokens import SpecialTokens, screen_special_tokens

logger = logging.getLogger(__name__)


class EncodedRule(NamedTuple):
    """One labeled response, tokenized: `TextFormat.sequence` (prompt, response, end-of-turn)."""

    prompt: PromptSpec
    response: str
    rules: dict[str, bool | None]
    input_ids: list[int]


def rule_names(rows: Sequence[RuleLabel | EncodedRule]) -> list[str]:
    """Every rule some row labels (true or false), sorted: the columns of the rule head."""
    return sorted({name for r in rows for name, v in r.rules.items() if v is not None})


def load_rules(
    path: str | DataSource,
    fmt: TextFormat,
    max_length: int,
    truncation: Truncation,
    on_error: Literal["raise", "skip"] = "raise",
    special_tokens: SpecialTokens = "error",
    unknown_limits: tuple[float, float] = (0.001, 0.05),
) -> tuple[list[EncodedRule], ReadReport]:
    """Read, screen and tokenize rule-label rows (a file or a dataset); every dropped row is counted in the report."""
    rows, report = read_rows(path, "rule", on_error=on_error)
    rows = screen_special_tokens(rows, fmt.tokenizer, report, on_error, special_tokens)
    encoded = []
    for row in rows:
        ex = tokenize_example(row.prompt, row.response, fmt, max_length, truncation, source=row.source)
        if ex is None:  # over-long under "skip"
            file, line = split_source(row.source)
            report.skipped.append(DataError(file, line, "response", f"exceeds max_length {max_length}"))
            continue
        prompt_ids, response_ids = fmt.sequence(row.prompt, row.response)
        report.truncated += int(len(prompt_ids) + len(response_ids) > len(ex.input_ids))
        encoded.append(EncodedRule(row.prompt, row.response, row.rules, ex.input_ids))
    report.kept = len(encoded)
    if not encoded:
        raise DataError(
            report.path, None, None, f"no rule row fits max_length {max_length}: {report.summary()}"
        )
    check_unknown_tokens(report.path, [e.input_ids for e in encoded], fmt.tokenizer, *unknown_limits)
    logger.info("%s; rules %s", report.summary(), rule_names(encoded))
    return encoded, report


def collate_rules(items: list[EncodedRule], names: Sequence[str], pad_id: int) -> dict[str, Any]:
    """A batch of labeled responses.

    Returns:
        input_ids (N, T) and attention_mask (N, T) right-padded; labels (N, R) float, 1 where the response breaks
        rule names[r]; mask (N, R) float, 1 where the row labels that rule (0 for null or a rule it does not name).
    """
    input_ids, attention_mask = pad_right([item.input_ids for item in items], pad_id)
    values = [[item.rules.get(name) for name in names] for item in items]
    labels = torch.tensor([[1.0 if v else 0.0 for v in row] for row in values])
    mask = torch.tensor([[0.0 if v is None else 1.0 for v in row] for row in values])
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, "mask": mask}


@dataclass(frozen=True)
class RuleBatches:
    """position -> ``{"rules": batch}`` for the training loader: the rule rows cycle with epochs of their own, a
    pure function of the position like the comparisons, so a resumed run sees the rule rows it would have seen.
    (A class, not a closure, so DataLoader workers can pickle it.)"""

    rows: Sequence[EncodedRule]
    plan: BatchPlan
    names: tuple[str, ...]
    pad_id: int

    def __call__(self, position: int) -> dict[str, Any]:
        return {
            "rules": collate_rules(
                [self.rows[i] for i in self.plan.indices(position)], self.names, self.pad_id
            )
        }
