"""Data for every stage: row formats and validation (`rows`), atomic JSONL files (`io`), SFT batches (`sft`).

`rows` and `io` are stdlib-only so readers such as the dashboard can import them without torch; the
names from `sft` (torch, Lightning, transformers) are therefore loaded only when first used.
"""

from __future__ import annotations

import importlib
from typing import Any

from lit_rlhf.data.io import append_jsonl, read_jsonl_tolerant, write_jsonl
from lit_rlhf.data.rows import (
    Comparison,
    DataError,
    Demonstration,
    Prompt,
    ReadReport,
    Row,
    RowKind,
    RuleLabel,
    Text,
    read_rows,
    row_to_dict,
    validate_row,
)

_LAZY_SFT = (
    "Example",
    "IGNORE_INDEX",
    "OverlengthError",
    "PackedExample",
    "SFTDataModule",
    "collate",
    "pack",
    "render_chat",
    "tokenize_example",
)


def __getattr__(name: str) -> Any:
    if name in _LAZY_SFT:
        return getattr(importlib.import_module("lit_rlhf.data.sft"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Comparison",
    "DataError",
    "Demonstration",
    "Prompt",
    "ReadReport",
    "Row",
    "RowKind",
    "RuleLabel",
    "Text",
    "append_jsonl",
    "read_jsonl_tolerant",
    "read_rows",
    "row_to_dict",
    "validate_row",
    "write_jsonl",
    *_LAZY_SFT,
]
