"""The built-in demo task world: a seeded instruction generator with checkable answers, a programmatic
labeler that plays the human (demonstrations, rankings, win rates), the word-level tokenizer and the
data-set writer. Pure Python apart from the tokenizer; nothing here imports torch.
"""

from lit_rlhf.demo.datagen import write_demo_data
from lit_rlhf.demo.labeler import Judgement, Labeler, WinRate, levenshtein, win_rate
from lit_rlhf.demo.tokenizer import train_tokenizer
from lit_rlhf.demo.world import (
    BANNED,
    DIGITS,
    FAMILIES,
    FILLERS,
    LETTERS,
    PROMPT_END,
    VOCABULARY,
    Task,
    TaskGenerator,
    extract_answer,
    make_task,
    parse_prompt,
)

__all__ = [
    "BANNED",
    "DIGITS",
    "FAMILIES",
    "FILLERS",
    "LETTERS",
    "PROMPT_END",
    "VOCABULARY",
    "Judgement",
    "Labeler",
    "Task",
    "TaskGenerator",
    "WinRate",
    "extract_answer",
    "levenshtein",
    "make_task",
    "parse_prompt",
    "train_tokenizer",
    "win_rate",
    "write_demo_data",
]
