"""The built-in demo task world: a seeded instruction generator with checkable answers, a programmatic
labeler that plays the human (demonstrations, rankings, win rates), the word-level tokenizer and the
data-set writer. Pure Python apart from the tokenizer; nothing here imports torch.
"""

import importlib
from typing import Any

# Public name -> submodule. Imported on first use, so `lit-rlhf demo-data --help` (which reads write_demo_data's
# defaults) does not pull in the tokenizer's transformers import.
_HOME = {
    "write_demo_data": "datagen",
    **dict.fromkeys(("Judgement", "Labeler", "WinRate", "levenshtein", "win_rate"), "labeler"),
    "train_tokenizer": "tokenizer",
    **dict.fromkeys(
        (
            "BANNED",
            "DIGITS",
            "FAMILIES",
            "FILLERS",
            "LETTERS",
            "PROMPT_END",
            "VOCABULARY",
            "Task",
            "TaskGenerator",
            "extract_answer",
            "make_task",
            "parse_prompt",
        ),
        "world",
    ),
}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'lit_rlhf.demo' has no attribute {name!r}")
    return getattr(importlib.import_module(f"lit_rlhf.demo.{_HOME[name]}"), name)


__all__ = sorted(_HOME)
