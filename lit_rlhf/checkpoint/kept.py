"""Checkpoints kept at evaluation points, the best one marked, and names that reach them (``RUN@best``).

A PPO run keeps its policy as a stage directory at each evaluation point, a bounded number of them:

    runs/ppo/<name>/kept/step-000049/   a complete stage directory (lit_rlhf.checkpoint.stage_dir), written atomically
    runs/ppo/<name>/kept/index.json     what is kept, each point's figures, and which is best; rewritten atomically

AlpacaFarm found the best PPO checkpoint early (after 20-80 steps), with quality decaying after it: the best by the
judge's score (the gold), or by the reward model's when there is no judge, is kept whatever its age.

Lives here: which points to keep (`select`, pure), the index, adding a point (`Kept.add`), and `resolve_stage_ref`,
which turns ``runs/ppo/demo@best`` or ``...@step-49`` into the kept stage directory for `evaluate` and `export`.
Must not live here: how a stage directory is written (the caller passes a writer) and torch. Standard library only.
"""

from __future__ import annotations

import math
import os
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lit_rlhf.atomic import write_json
from lit_rlhf.checkpoint.manifest import KEPT, MANIFEST, ManifestError
from lit_rlhf.safe_io import StrictJSONError, UnreadableFile, clip, read_bounded, strict_json

INDEX = "index.json"
INDEX_VERSION = 1
MAX_INDEX_BYTES = 4 * 1024 * 1024
_REF = re.compile(r"^(?P<base>.+)@(?P<which>best|latest|step-\d+|\d+)$")


class KeptError(ManifestError):
    """A kept checkpoint that cannot be found or an index that cannot be read; the message names the file."""


@dataclass(frozen=True)
class KeptEntry:
    """One kept evaluation point.

    Attributes:
        name: Its folder under ``kept/`` (``step-000049``).
        step: The run's logging step (PPO iteration - 1) it was evaluated at.
        metric: What `score` is: ``judge_score`` (the gold) or ``eval_rm_score`` (without a judge).
        score: The value that decides the best.
        metrics: Every figure of that evaluation (judge score, win rate, KL, reward, ...).
    """

    name: str
    step: int
    metric: str
    score: float
    metrics: dict[str, float] = field(default_factory=dict)


def entry_name(step: int) -> str:
    """The folder of the point evaluated at `step`."""
    return f"step-{step:06d}"


def best_of(entries: Sequence[KeptEntry]) -> KeptEntry | None:
    """The highest score among the entries measured like the newest one (earliest on a tie: less drift)."""
    if not entries:
        return None
    metric = max(entries, key=lambda e: e.step).metric
    same = [e for e in entries if e.metric == metric]
    return max(same, key=lambda e: (e.score, -e.step))


def select(entries: Sequence[KeptEntry], keep: int) -> list[KeptEntry]:
    """Which entries to keep, by step: the best, then the newest others until there are `keep` (0: none)."""
    if keep <= 0 or not entries:
        return []
    best = best_of(entries)
    newest = sorted((e for e in entries if e is not best), key=lambda e: e.step, reverse=True)
    return sorted([best, *newest[: keep - 1]], key=lambda e: e.step)


class Kept:
    """The ``kept/`` folder of one run.

    Args:
        folder: ``<run dir>/kept``.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)

    @property
    def index_path(self) -> Path:
        return self.folder / INDEX

    def entries(self) -> list[KeptEntry]:
        """The kept points as the index lists them (none when there is no index yet)."""
        return read_index(self.index_path)[0]

    def add(
        self,
        step: int,
        metric: str,
        score: float,
        metrics: Mapping[str, float],
        keep: int,
        write: Callable[[Path], Any],
    ) -> KeptEntry | None:
        """Keep the point evaluated at `step`: `write(path)` writes its stage directory (atomically), then the index
        is rewritten and the points no longer kept are removed. Returns the best entry.

        A point at a step already kept replaces it (a resumed run evaluates the same steps again).
        """
        if keep <= 0:
            return None
        entry = KeptEntry(
            entry_name(step), int(step), metric, float(score), {k: float(v) for k, v in metrics.items()}
        )
        others = [e for e in self.entries() if e.step != entry.step]
        kept = select([*others, entry], keep)
        if entry in kept:
            write(self.folder / entry.name)
        best = best_of(kept)
        write_index(self.index_path, kept, best)
        self._remove_unlisted({e.name for e in kept})
        return best

    def _remove_unlisted(self, names: set[str]) -> None:
        """Delete point folders the index does not list (evicted now, or left by a run killed mid-way)."""
        for path in self.folder.glob("step-*"):
            if path.name not in names and path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)


def write_index(path: Path, entries: Sequence[KeptEntry], best: KeptEntry | None) -> None:
    """index.json, atomically: a reader sees the old index or the new one."""
    body = {
        "format_version": INDEX_VERSION,
        "best": best.name if best else None,
        "kept": [asdict(e) for e in entries],
    }
    write_json(path, body)


def read_index(path: Path) -> tuple[list[KeptEntry], str | None]:
    """(entries, best name) of an index.json; ([], None) when it does not exist. KeptError names the file and the
    field when it cannot be used."""
    try:
        raw = strict_json(read_bounded(path, MAX_INDEX_BYTES))
    except FileNotFoundError:
        return [], None
    except (UnreadableFile, OSError, StrictJSONError) as e:
        raise KeptError(f"{path}: cannot be read ({e})") from e
    if not isinstance(raw, dict) or not isinstance(raw.get("kept"), list):
        raise KeptError(f"{path}: field 'kept': expected an array")
    entries = [_entry(item, f"{path}: field 'kept[{i}]") for i, item in enumerate(raw["kept"])]
    best = raw.get("best")
    if best is not None and best not in {e.name for e in entries}:
        raise KeptError(f"{path}: field 'best': {clip(repr(best))} is not among the kept points")
    return entries, best


def _entry(item: Any, where: str) -> KeptEntry:
    """One index row, each field checked: a name must be a folder under kept/ and nothing else."""
    if not isinstance(item, dict):
        raise KeptError(f"{where}': expected an object")
    name, step, metric, score, metrics = (item.get(k) for k in ("name", "step", "metric", "score", "metrics"))
    if not isinstance(name, str) or not re.fullmatch(r"step-\d+", name):
        raise KeptError(f"{where}.name': expected step-<digits>, got {clip(repr(name))}")
    if not isinstance(step, int) or isinstance(step, bool):
        raise KeptError(f"{where}.step': expected an integer")
    if not isinstance(metric, str) or not _finite(score):
        raise KeptError(f"{where}': expected a metric name and a finite score")
    if not isinstance(metrics, dict) or not all(_finite(v) for v in metrics.values()):
        raise KeptError(f"{where}.metrics': expected an object of finite numbers")
    return KeptEntry(name, step, metric, float(score), {str(k): float(v) for k, v in metrics.items()})


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _kept_folder(base: Path) -> Path:
    """The kept/ folder of a run directory, or of the run whose final stage directory `base` is."""
    if (base / KEPT).is_dir() or not (base / MANIFEST).is_file():
        return base / KEPT
    return base.parent / KEPT


def resolve_stage_ref(text: str) -> str:
    """`text` unchanged when it is a path that exists (or no reference); else ``RUN@best``, ``RUN@latest``,
    ``RUN@step-49`` or ``RUN@49`` as the kept stage directory it names (RUN: the run directory or its ``stage``).

    Raises KeptError naming the index when the run keeps no such point.
    """
    match = _REF.match(text)
    if match is None or os.path.exists(text):
        return text
    folder = _kept_folder(Path(match["base"]))
    entries, best = read_index(folder / INDEX)
    if not entries:
        raise KeptError(
            f"{text}: {folder / INDEX} lists no kept checkpoints (PPO keeps them at evaluation points)"
        )
    which = match["which"]
    if which == "best":
        name = best
    elif which == "latest":
        name = max(entries, key=lambda e: e.step).name
    else:
        name = entry_name(int(which.removeprefix("step-")))
    if name not in {e.name for e in entries}:
        available = ", ".join(e.name for e in entries)
        raise KeptError(f"{text}: {folder / INDEX} keeps no {which}; kept: {available} (and @best, @latest)")
    return str(folder / name)
