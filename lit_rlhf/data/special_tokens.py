"""Special tokens written as text inside the parts of a row a model learns to produce.

A Hugging Face tokenizer turns the TEXT "</s>" (or "<|im_end|>", ...) into the special token itself, whatever
``add_special_tokens`` says. In a response that teaches the model to stop, or to open a new turn, in mid-answer;
in a chat message's content it forges a turn boundary. So responses, comparison responses and chat message
contents are screened: a hit is a DataError naming file, line and field (or a counted skip with
``on_error="skip"``). Raw ``prompt`` strings and pretraining ``text`` are taken as already rendered and may hold
special tokens (a chat template's markers, document separators): they are not screened.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from lit_rlhf.data.rows import (
    Comparison,
    DataError,
    Demonstration,
    ReadReport,
    Row,
    RuleLabel,
    record_skip,
    split_source,
)

SpecialTokens = Literal["error", "allow"]
SPECIAL_TOKEN_POLICIES: tuple[str, ...] = ("error", "allow")


def special_token_strings(tokenizer: Any) -> tuple[str, ...]:
    """The text of every special token of `tokenizer`, longest first (so "<|im_end|>" wins over "<|")."""
    found = set(getattr(tokenizer, "all_special_tokens", None) or [])
    for token in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values():
        if getattr(token, "special", False):
            found.add(str(token.content))
    return tuple(sorted((t for t in found if t), key=lambda t: (-len(t), t)))


def _screened_fields(row: Row) -> list[tuple[str, str]]:
    """(field name, text) of the parts of `row` that must not hold special tokens."""
    if isinstance(row, Demonstration):
        if row.messages is not None:
            return [(f"messages[{i}].content", content) for i, (_, content) in enumerate(row.messages)]
        return [("response", row.response or "")]
    if isinstance(row, Comparison):
        return [(f"responses[{i}]", r) for i, r in enumerate(row.responses)]
    if isinstance(row, RuleLabel):
        return [("response", row.response)]
    return []


def special_token_error(row: Row, specials: Sequence[str]) -> DataError | None:
    """The error for the first special token found in a screened field of `row`, or None."""
    for name, text in _screened_fields(row):
        for token in specials:
            at = text.find(token)
            if at >= 0:
                path, line = split_source(row.source or "<row>")
                return DataError(
                    path,
                    line,
                    name,
                    f"holds the special token {token!r} as text (at character {at}); the tokenizer would read "
                    "it as the token itself. Remove it, or set special_tokens: allow if it is meant",
                )
    return None


def screen_special_tokens(
    rows: list[Row],
    tokenizer: Any,
    report: ReadReport,
    on_error: Literal["raise", "skip"],
    policy: SpecialTokens = "error",
) -> list[Row]:
    """Rows without special-token text in screened fields; the others raise, or are counted into `report`."""
    if policy not in SPECIAL_TOKEN_POLICIES:
        raise ValueError(f"special_tokens must be 'error' or 'allow', got {policy!r}")
    specials = special_token_strings(tokenizer)
    if policy == "allow" or not specials:
        return rows
    kept = []
    for row in rows:
        err = special_token_error(row, specials)
        if err is None:
            kept.append(row)
        elif on_error == "raise":
            raise err
        else:
            record_skip(report, err)
    report.kept = len(kept)
    if not kept:
        raise DataError(report.path, None, None, f"no valid rows: {report.summary()}")
    return kept
