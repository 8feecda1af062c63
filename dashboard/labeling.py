"""Saving a person's ranking of side-by-side completions as a comparison row (the Compare page).

The row is checked by the same validator the reward stage reads it with, then appended in one write, so a
file built from the dashboard is always readable with `read_rows(path, "comparison")`. No torch here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from dashboard.safety import labels_path
from lit_rlhf.data.io import append_jsonl
from lit_rlhf.data.rows import Comparison, PromptSpec, prompt_json, validate_row
from lit_rlhf.safe_io import open_regular


def _next_line(path: Path) -> int:
    """The line number a row appended to `path` will have (for error messages that name it)."""
    try:
        with open_regular(path) as f:  # a FIFO or folder raises UnreadableFile instead of blocking
            data = f.read()
    except FileNotFoundError:
        return 1
    # append_jsonl first ends a half-written last line, so the new row goes on the line after it.
    return data.count(b"\n") + (1 if data.endswith(b"\n") or not data else 2)


def save_ranking(
    path: str | os.PathLike,
    prompt: PromptSpec,
    responses: Sequence[str],
    ranking: Sequence[int],
    *,
    root: str | os.PathLike | None = None,
) -> Comparison:
    """Validate `{"prompt", "responses", "ranking"}` (ranking[i] is the rank of responses[i], 0 = best, ties
    allowed; a chat prompt is written as `"messages"`) and append it to the comparisons file at `path`, creating the file and its folder if needed.

    With `root`, `path` is relative to it (or absolute) and must resolve inside it: links leaving it are not
    followed and no folder is created elsewhere (safety.UnsafePath). Raises DataError (naming the file, the line
    the row would have had, and the field) without writing.
    """
    path = Path(path) if root is None else labels_path(str(path), root)
    row = {**prompt_json(prompt), "responses": list(responses), "ranking": list(ranking)}
    comparison = validate_row(row, "comparison", str(path), _next_line(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    append_jsonl(path, row)
    return comparison
