"""Pure readers of the run directory (lit_rlhf/runs.py, docs/run-directory.md) for the dashboard pages.

Lives here: finding runs and stage directories under a runs root, reading `metrics.jsonl`, `samples.jsonl`
and `rankings.jsonl` while training may still be appending to them, and shaping them for the pages (metric
groups by prefix, EMA smoothing, ranking disagreement, sample filters, the latest evaluation report).
Must not live here: Streamlit (the cached wrappers are in `ui.py`) and torch: a test imports this module in
a fresh interpreter and checks that torch stayed out. Every function takes paths or plain data.

A bad row never stops a page: it comes back as a problem string naming the file, the line and the field.
A bad file neither: a folder, FIFO or device where a file should be, a link leading out of the runs root, JSON
nested too deeply or too large, each reads as empty with a problem naming the file (readers given `root`
refuse paths that resolve outside it).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from dashboard.safety import inside
from lit_rlhf.checkpoint.manifest import (
    MANIFEST,
    ManifestError,
    ManifestUnreadable,
    manifest_link,
    read_manifest_json,
)
from lit_rlhf.checkpoint.safety import external_base
from lit_rlhf.data.rows import DataError, parse_json_line
from lit_rlhf.run_files import METRICS, STAGE_DIR, STAGES, STATUS
from lit_rlhf.safe_io import (
    StrictJSONError,
    UnreadableFile,
    check_regular,
    clip,
    open_regular,
    read_bounded,
    strict_json,
)

# The curves the Curves page opens on, per stage: what tells whether each stage works.
HEADLINE = {
    "sft": ("sft/loss", "sft/val_loss", "sft/exact_match", "sft/judge_score"),
    "reward": ("reward/loss", "reward/accuracy", "reward/val_accuracy"),
    "ppo": ("ppo/reward_mean", "ppo/kl", "ppo/judge_score", "ppo/win_rate_vs_sft"),
}
# The figures the Runs table shows for each stage (the last logged value of each).
KEY_METRICS = {
    "sft": ("sft/loss", "sft/val_loss", "sft/exact_match"),
    "reward": ("reward/loss", "reward/val_accuracy", "reward/val_kendall_tau"),
    "ppo": ("ppo/reward_mean", "ppo/kl", "ppo/win_rate_vs_sft"),
}
SAMPLE_SCORES = ("score", "exact_match", "reward", "rm_score", "kl")
# length: response tokens (words without a `tokens` field); flags: the 0/1 details set (e.g. the judge's banned,
# filler) and the rules a `rules` object says are broken; tokens/token_kl: PPO rollouts' per-token KL
SAMPLE_COLUMNS = (
    "run",
    "step",
    "mode",
    "prompt",
    "completion",
    *SAMPLE_SCORES,
    "length",
    "flags",
    "tokens",
    "token_kl",
)
_NOT_FLAGS = {"step", "time", *SAMPLE_SCORES}
MAX_SAMPLE_TOKENS = 4096
FIRST_RUN_COMMAND = "python main.py fit --config configs/demo/sft.yaml"
# status.json is rewritten at least every 10 optimizer steps; this long without one, a run is likely dead.
STALE_AFTER_S = 15 * 60
MAX_JSON_BYTES = 16 * 1024 * 1024  # status.json is a few KB; past this it is not ours
MAX_REPORT_BYTES = 16 * 1024 * 1024


# ---------------------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------------------


def file_key(path: str | os.PathLike) -> tuple[str, int, int] | None:
    """`(path, mtime_ns, size)` of a file, or None when it is absent: the cache key of what is read from it.

    Size is in the key because an append can land within the filesystem's mtime resolution.
    """
    try:
        st = os.stat(path)
    except OSError:
        return None
    return os.fspath(path), st.st_mtime_ns, st.st_size


@dataclass(frozen=True)
class JsonlRows:
    """What one JSONL file held: its rows, each row's line number, and the lines that could not be read."""

    path: str
    rows: tuple[dict[str, Any], ...] = ()
    lines: tuple[int, ...] = ()
    problems: tuple[str, ...] = ()
    partial_tail: bool = False  # a last line without its newline: a row still being written


def read_problem(path: str | os.PathLike, root: str | os.PathLike | None = None) -> str | None:
    """Why `path` must not be read, or None: it exists but is no regular file, or it resolves outside `root`.

    A missing file is no problem (it reads as empty).
    """
    try:
        check_regular(path)
    except FileNotFoundError:
        return None
    except UnreadableFile as e:
        return str(e)
    if root is not None and inside(root, path) is None:
        return f"{path}: leads outside the runs root {root}; not read"
    return None


def read_jsonl(path: str | os.PathLike, root: str | os.PathLike | None = None) -> JsonlRows:
    """Read a JSONL file another process may be appending to; a missing file reads as empty.

    The trailing half-written line is left out (it is normal while training, not an error); a bad complete
    line is reported in `problems` and skipped, so one corrupt row does not hide a whole run. A path that is
    not a readable regular file (or leaves `root`) reads as empty with one problem.
    """
    path = os.fspath(path)
    problem = read_problem(path, root)
    if problem is not None:
        return JsonlRows(path, problems=(problem,))
    try:
        with open_regular(path) as f:
            data = f.read()
    except FileNotFoundError:
        return JsonlRows(path)
    except OSError as e:  # UnreadableFile (swapped since the check), PermissionError
        return JsonlRows(path, problems=(f"{path}: cannot be read ({e})",))
    *complete, tail = data.split(b"\n")
    rows, lines, problems = [], [], []
    for line_no, raw in enumerate(complete, start=1):
        if not raw.strip():
            continue
        try:
            rows.append(parse_json_line(raw, path, line_no))
            lines.append(line_no)
        except DataError as err:
            problems.append(str(err))
    return JsonlRows(path, tuple(rows), tuple(lines), tuple(problems), bool(tail.strip()))


def _read_json_object(path: Path, root: str | os.PathLike | None = None) -> tuple[dict[str, Any], str | None]:
    """A small JSON object file (status.json, manifest.json): (object, None) or ({}, problem).

    Strict (no NaN, repeated keys or deep nesting) and bounded: nothing in it can hang or crash a page.
    """
    problem = read_problem(path, root)
    if problem is not None:
        return {}, problem
    try:
        obj = strict_json(read_bounded(path, MAX_JSON_BYTES))
    except FileNotFoundError:
        return {}, None
    except UnreadableFile as e:
        return {}, f"{path}: cannot be read ({e.reason})"
    except (OSError, StrictJSONError) as e:
        return {}, f"{path}: cannot be read ({e})"
    if not isinstance(obj, dict):
        return {}, f"{path}: expected a JSON object"
    return obj, None


def _read_manifest(
    stage_dir: Path, root: str | os.PathLike | None = None
) -> tuple[dict[str, Any], str | None]:
    """A stage directory's raw manifest, read by the checkpoint module: (object, None), ({}, None) when there
    is none, or ({}, problem). Not validated: the pages only show what it says; loading a model checks it all."""
    problem = read_problem(stage_dir / MANIFEST, root)
    if problem is not None:
        return {}, problem
    try:
        return read_manifest_json(stage_dir), None
    except FileNotFoundError:
        return {}, None
    except ManifestUnreadable as e:
        return {}, f"{e.path}: cannot be read ({e.reason})"
    except ManifestError as e:
        return {}, str(e)


def _int(value: Any) -> int | None:
    # bool is an int subclass; `true` as a step is a writer bug, not step 1.
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _number(value: Any) -> float | None:
    """A finite float from a JSON number (booleans count as 0/1), else None."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


# ---------------------------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------------------------


MAX_ALARMS = 64  # lit_rlhf.alarms has 7; a status.json with more was not written by it


@dataclass(frozen=True)
class AlarmRecord:
    """One alarm a PPO run fired: `lit_rlhf.alarms.AlarmMonitor.records()` as status.json holds it."""

    name: str
    first_step: int
    step: int  # the latest firing
    count: int
    values: tuple[tuple[str, float], ...]  # the numbers behind the latest firing
    message: str


def parse_alarms(
    status: Mapping[str, Any], path: str
) -> tuple[tuple[AlarmRecord, ...], tuple[str, ...], str | None]:
    """status.json's ``alarms`` and ``stopped_by`` (both optional), or a problem naming the file and the field."""
    raw, stopped = status.get("alarms", []), status.get("stopped_by", [])
    if not isinstance(stopped, list) or not all(isinstance(x, str) for x in stopped):
        return (), (), f"{path}: field 'stopped_by': expected an array of alarm names"
    if not isinstance(raw, list) or len(raw) > MAX_ALARMS:
        return (), (), f"{path}: field 'alarms': expected an array of at most {MAX_ALARMS} objects"
    out = []
    for i, item in enumerate(raw):
        where = f"{path}: field 'alarms[{i}]"
        if not isinstance(item, dict):
            return (), (), f"{where}': expected an object"
        for key, check, what in (
            ("name", _text, "a non-empty string"),
            ("message", lambda v: v if isinstance(v, str) else None, "a string"),
            ("first_step", _int, "an integer"),
            ("step", _int, "an integer"),
            ("count", _int, "an integer"),
        ):
            if check(item.get(key)) is None:
                return (), (), f"{where}.{key}': expected {what}"
        values = item.get("values", {})
        if not isinstance(values, dict) or any(
            _number(v) is None or isinstance(v, bool) for v in values.values()
        ):
            return (), (), f"{where}.values': expected an object of finite numbers"
        numbers = tuple((str(k), float(v)) for k, v in values.items())
        out.append(
            AlarmRecord(
                item["name"], item["first_step"], item["step"], item["count"], numbers, item["message"]
            )
        )
    return tuple(out), tuple(stopped), None


@dataclass(frozen=True)
class Run:
    """One run directory `<root>/<stage>/<name>/` as its status.json describes it."""

    stage: str
    name: str
    path: str
    status: str  # running | finished | failed | unknown (status.json missing or unreadable)
    step: int | None  # as of the last status write; metrics.jsonl may be a few steps further
    parent: str | None  # the stage directory the run started from
    parent_stage: str | None
    updated: float | None  # unix time of the last status write
    error: str | None
    problem: str | None = None  # why status.json could not be read
    alarms: tuple[AlarmRecord, ...] = ()  # PPO: what lit_rlhf.alarms fired (status.json "alarms")
    stopped_by: tuple[str, ...] = ()  # PPO: the alarms that ended the run

    @property
    def id(self) -> str:
        return f"{self.stage}/{self.name}"

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)


def infer_parent_stage(parent: str | None, root: str | os.PathLike | None = None) -> str | None:
    """The stage of a parent stage directory: its manifest's "stage", else `<stage>/<name>/stage` in the path.

    With `root`, a parent outside it is judged by its path alone (its manifest is not opened).
    """
    if not parent:
        return None
    path = Path(parent)
    manifest = {}
    if root is None or inside(root, path) is not None:
        manifest, _ = _read_manifest(path, root)
    if manifest.get("stage") in STAGES:
        return manifest["stage"]
    parts = path.parts
    if len(parts) >= 3 and parts[-1] == STAGE_DIR and parts[-3] in STAGES:
        return parts[-3]
    return None


def _run_from_dir(stage: str, run_dir: Path, root: str | os.PathLike | None = None) -> Run:
    if root is not None and inside(root, run_dir) is None:
        status, problem = {}, f"{run_dir}: leads outside the runs root {root}; not read"
    else:
        status, problem = _read_json_object(run_dir / STATUS, root)
    parent = _text(status.get("parent"))
    # a status predating the field: the stage directory's manifest knows
    if parent is None and problem is None:
        manifest, _ = _read_manifest(run_dir / STAGE_DIR, root)
        parent = manifest_link(run_dir / STAGE_DIR, manifest, "parent")
    state = status.get("status")
    alarms, stopped_by, alarm_problem = parse_alarms(status, str(run_dir / STATUS))
    return Run(
        stage=stage,
        name=run_dir.name,
        path=str(run_dir),
        status=state if state in ("running", "finished", "failed") else "unknown",
        step=_int(status.get("step")),
        parent=parent,
        parent_stage=infer_parent_stage(parent, root),
        updated=_number(status.get("updated")),
        error=_text(status.get("error")),
        problem=problem or alarm_problem,
        alarms=alarms,
        stopped_by=stopped_by,
    )


def discover_runs(root: str | os.PathLike) -> list[Run]:
    """Every run under `root`, sorted by stage (sft, reward, ppo) then name.

    A directory is a run once it has status.json or metrics.jsonl (whatever they turn out to be: a FIFO or a
    folder is shown as the run's problem); hidden directories (atomic-write temporaries) are skipped. A run
    directory that is a link out of `root` is listed with that problem and none of its files is read.
    """
    runs = []
    for stage in STAGES:
        stage_root = Path(root) / stage
        if not stage_root.is_dir() or inside(root, stage_root) is None:
            continue
        for d in sorted(stage_root.iterdir()):
            if (
                d.is_dir()
                and not d.name.startswith(".")
                and any(os.path.lexists(d / f) for f in (STATUS, METRICS))
            ):
                runs.append(_run_from_dir(stage, d, root))
    return runs


def shown_status(run: Run, now: float, stale_after: float = STALE_AFTER_S) -> str:
    """The run's status, with "running" marked stale when status.json has not been refreshed for a while.

    A run killed with SIGKILL cannot write "failed"; its status stays "running" with an old `updated`.
    """
    if run.status == "running" and run.updated is not None and now - run.updated > stale_after:
        return f"running (no update for {int((now - run.updated) // 60)} min)"
    if run.stopped_by:
        return f"{run.status} (stopped by {', '.join(run.stopped_by)})"
    return run.status


def _run_record(run: Run, frame: pd.DataFrame, now: float) -> dict[str, Any]:
    steps = [s for s in (run.step, int(frame.index.max()) if len(frame.index) else None) if s is not None]
    updated = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run.updated)) if run.updated else None
    return {
        "run": run.id,
        "stage": run.stage,
        "name": run.name,
        "status": shown_status(run, now),
        "step": max(steps) if steps else None,
        "parent_stage": run.parent_stage,
        "parent": run.parent,
        "updated": updated,
        "error": run.error or run.problem,
        "alarms": ", ".join(a.name for a in run.alarms) or None,
        **last_values(frame, KEY_METRICS.get(run.stage, ())),
    }


def runs_table(
    runs: Sequence[Run], frames: Mapping[str, pd.DataFrame], now: float | None = None
) -> pd.DataFrame:
    """One row per run: identity, status, last step, parent and the stage's key metrics (last values).

    `frames` maps run id to its `metrics_frame`; the last step is the larger of status.json's and the
    metrics' (status.json is rewritten only every few steps).
    """
    now = time.time() if now is None else now
    empty = pd.DataFrame()
    return pd.DataFrame.from_records([_run_record(run, frames.get(run.id, empty), now) for run in runs])


def _format_number(value: float) -> str:
    return f"{value:.4g}"


def alarms_table(runs: Sequence[Run]) -> pd.DataFrame:
    """One line per (run, alarm): when it first and last fired, how often, the numbers behind it, what it means."""
    records = [
        {
            "run": run.id,
            "alarm": a.name,
            "first_step": a.first_step,
            "step": a.step,
            "count": a.count,
            "numbers": ", ".join(f"{k} {_format_number(v)}" for k, v in a.values),
            "message": a.message,
        }
        for run in runs
        for a in run.alarms
    ]
    return pd.DataFrame.from_records(
        records, columns=["run", "alarm", "first_step", "step", "count", "numbers", "message"]
    )


# ---------------------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------------------


def metrics_frame(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Metric values by step: index "step" (ascending), one float column per metric key, NaN where unlogged.

    Rows carry different subsets of keys and may repeat a step (validation and training rows, a resumed run
    logging a step again): per key, the last non-null value written for a step wins. "time" is dropped and
    non-numeric values read as missing.
    """
    records = []
    for row in rows:
        step = _int(row.get("step"))
        if step is not None:
            values = {k: _number(v) for k, v in row.items() if k not in ("step", "time")}
            records.append({"step": step, **values})
    if not records:
        return pd.DataFrame(index=pd.Index([], dtype="int64", name="step"))
    frame = pd.DataFrame.from_records(records).groupby("step", sort=True).last().astype("float64")
    return frame[sorted(frame.columns)]


def metrics_frame_and_problems(read: JsonlRows) -> tuple[pd.DataFrame, list[str]]:
    """`metrics_frame` of a metrics.jsonl, and every line it could not use (file:line: field: why).

    Unusable: lines that do not parse (NaN, repeated keys, bad JSON: `read.problems`) and rows whose step is
    missing or not an integer (a float or boolean step would put the value at a made-up step).
    """
    problems = list(read.problems)
    for row, line in zip(read.rows, read.lines, strict=True):
        if _int(row.get("step")) is None:
            got = "missing" if "step" not in row else f"{_json_type(row['step'])} {clip(repr(row['step']))}"
            problems.append(f"{read.path}:{line}: field 'step': expected an integer step, got {got}")
    return metrics_frame(read.rows), problems


def _json_type(value: Any) -> str:
    names = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def headline_keys(keys: Iterable[str]) -> list[str]:
    """The HEADLINE metrics among `keys`, stage by stage (sft, reward, ppo), in HEADLINE's order."""
    present = set(keys)
    return [k for stage in STAGES for k in HEADLINE[stage] if k in present]


def group_by_prefix(keys: Iterable[str]) -> dict[str, list[str]]:
    """Metric keys grouped by the part before "/": sft, reward, ppo first, then others; keys without one under "other"."""
    groups: dict[str, list[str]] = {}
    for key in sorted(set(keys)):
        prefix = key.split("/", 1)[0] if "/" in key else "other"
        groups.setdefault(prefix, []).append(key)
    order = [*(s for s in STAGES if s in groups), *sorted(g for g in groups if g not in STAGES)]
    return {g: groups[g] for g in order}


def ema(values: Sequence[float | None], weight: float) -> list[float | None]:
    """Exponential moving average: s_0 = x_0, s_t = weight * s_{t-1} + (1 - weight) * x_t.

    `weight` in [0, 1): 0 returns the values unchanged. Missing values (None, NaN) stay missing and do not
    move the average.
    """
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"smoothing weight must be in [0, 1), got {weight}")
    out: list[float | None] = []
    smoothed: float | None = None
    for x in values:
        if x is None or math.isnan(x):
            out.append(None)
            continue
        smoothed = x if smoothed is None else weight * smoothed + (1.0 - weight) * x
        out.append(smoothed)
    return out


def overlay(frames: Mapping[str, pd.DataFrame], key: str, weight: float = 0.0) -> pd.DataFrame:
    """Metric `key` of several runs in long form (step, run, value), each run EMA-smoothed on its own.

    Long form lets a line chart draw each run's points joined even where runs logged at different steps.
    """
    parts = []
    for run_id, frame in frames.items():
        if key not in frame.columns:
            continue
        series = frame[key].dropna()
        if series.empty:
            continue
        smoothed = ema(series.tolist(), weight)
        parts.append(pd.DataFrame({"step": series.index.astype("int64"), "run": run_id, "value": smoothed}))
    if not parts:
        return pd.DataFrame(
            {"step": pd.Series(dtype="int64"), "run": [], "value": pd.Series(dtype="float64")}
        )
    return pd.concat(parts, ignore_index=True)


def metrics_long(frame: pd.DataFrame, keys: Iterable[str]) -> pd.DataFrame:
    """Several metrics of one run in long form (step, metric, value), unlogged steps dropped."""
    parts = [
        pd.DataFrame({"step": s.index.astype("int64"), "metric": key, "value": s.to_numpy()})
        for key in keys
        if key in frame.columns and not (s := frame[key].dropna()).empty
    ]
    if not parts:
        return pd.DataFrame(
            {"step": pd.Series(dtype="int64"), "metric": [], "value": pd.Series(dtype="float64")}
        )
    return pd.concat(parts, ignore_index=True)


def last_values(frame: pd.DataFrame, keys: Iterable[str]) -> dict[str, float | None]:
    """The last non-null value of each key (None if never logged)."""
    out: dict[str, float | None] = {}
    for key in keys:
        series = frame[key].dropna() if key in frame.columns else pd.Series(dtype="float64")
        out[key] = float(series.iloc[-1]) if len(series) else None
    return out


# ---------------------------------------------------------------------------------------------------------
# Rankings (reward runs)
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RankingRow:
    """One validation prompt of a reward run: K responses, the labeler's ranks and the RM's scores."""

    step: int
    prompt: str
    responses: tuple[str, ...]  # (K,)
    labeled_rank: tuple[int, ...]  # (K,) 0 = best, ties allowed
    scores: tuple[float, ...]  # (K,) reward-model scores
    kendall_tau: float | None
    pairs_correct: int | None
    pairs: int | None
    source: str  # "file:line"


def _ranking_row(obj: Mapping[str, Any], path: str, line: int) -> RankingRow:
    def bad(field: str, reason: str) -> DataError:
        return DataError(path, line, field, reason)

    step, prompt = _int(obj.get("step")), obj.get("prompt")
    if step is None:
        raise bad("step", "expected an integer")
    if not isinstance(prompt, str):
        raise bad("prompt", "expected a string")
    responses, ranks, scores = obj.get("responses"), obj.get("labeled_rank"), obj.get("scores")
    if not isinstance(responses, list) or not all(isinstance(r, str) for r in responses):
        raise bad("responses", "expected an array of strings")
    k = len(responses)
    if not isinstance(ranks, list) or len(ranks) != k or any(_int(r) is None for r in ranks):
        raise bad("labeled_rank", f"expected {k} integer ranks (one per response)")
    if not isinstance(scores, list) or len(scores) != k or any(_number(s) is None for s in scores):
        raise bad("scores", f"expected {k} finite numbers (one per response)")
    return RankingRow(
        step=step,
        prompt=prompt,
        responses=tuple(responses),
        labeled_rank=tuple(ranks),
        scores=tuple(float(s) for s in scores),
        kendall_tau=_number(obj.get("kendall_tau")),
        pairs_correct=_int(obj.get("pairs_correct")),
        pairs=_int(obj.get("pairs")),
        source=f"{path}:{line}",
    )


def parse_rankings(read: JsonlRows) -> tuple[list[RankingRow], list[str]]:
    """Typed rows of a rankings.jsonl, and a problem (file:line: field) for each row that does not fit."""
    rows, problems = [], list(read.problems)
    for obj, line in zip(read.rows, read.lines, strict=True):
        try:
            rows.append(_ranking_row(obj, read.path, line))
        except DataError as err:
            problems.append(str(err))
    return rows, problems


def rm_ranks(scores: Sequence[float]) -> list[int]:
    """The reward model's ranking of its own scores: 0 = highest; equal scores share the better rank."""
    return [sum(other > s for other in scores) for s in scores]


def ranking_table(rows: Sequence[RankingRow], step: int | None = None) -> pd.DataFrame:
    """One line per prompt (of `step`, or every step), most disagreement first.

    Sorted by Kendall tau ascending (rows without a tau last), then by pairwise agreement ascending; the
    "row" column indexes `rows`, for `ranking_detail`.
    """
    records = [
        {
            "row": i,
            "step": r.step,
            "kendall_tau": r.kendall_tau,
            "agreement": r.pairs_correct / r.pairs if r.pairs and r.pairs_correct is not None else None,
            "pairs_correct": r.pairs_correct,
            "pairs": r.pairs,
            "prompt": r.prompt,
        }
        for i, r in enumerate(rows)
        if step is None or r.step == step
    ]
    columns = ["row", "step", "kendall_tau", "agreement", "pairs_correct", "pairs", "prompt"]
    table = pd.DataFrame.from_records(records, columns=columns)
    table[["kendall_tau", "agreement"]] = table[["kendall_tau", "agreement"]].astype("float64")
    return table.sort_values(
        ["kendall_tau", "agreement"], na_position="last", kind="stable", ignore_index=True
    )


def ranking_detail(row: RankingRow) -> pd.DataFrame:
    """The K responses of one prompt: labeled rank, RM score, the RM's own rank, and whether the ranks agree."""
    ranks = rm_ranks(row.scores)
    return pd.DataFrame(
        {
            "labeled_rank": list(row.labeled_rank),
            "rm_score": list(row.scores),
            "rm_rank": ranks,
            "agrees": [a == b for a, b in zip(row.labeled_rank, ranks, strict=True)],
            "response": list(row.responses),
        }
    )


# ---------------------------------------------------------------------------------------------------------
# Samples
# ---------------------------------------------------------------------------------------------------------


def _sample_record(run_id: str, obj: Mapping[str, Any], path: str, line: int) -> dict[str, Any]:
    step = _int(obj.get("step"))
    if step is None:
        raise DataError(path, line, "step", "expected an integer")
    for field in ("prompt", "completion", "mode"):
        if not isinstance(obj.get(field), str):
            raise DataError(path, line, field, "expected a string")
    record = {"run": run_id, "step": step, **{f: obj[f] for f in ("mode", "prompt", "completion")}}
    record.update({k: _number(obj.get(k)) for k in SAMPLE_SCORES})
    tokens, token_kl = _token_kl(obj, path, line)
    record.update(
        length=len(tokens) if tokens is not None else len(obj["completion"].split()),
        flags=sample_flags(obj),
        tokens=tokens,
        token_kl=token_kl,
    )
    return record


def _token_kl(obj: Mapping[str, Any], path: str, line: int) -> tuple[tuple | None, tuple | None]:
    """(tokens, token_kl) of a row that has them: equally long, strings and finite numbers; else (None, None)."""
    tokens, kl = obj.get("tokens"), obj.get("token_kl")
    if tokens is None and kl is None:
        return None, None
    if (
        not isinstance(tokens, list)
        or len(tokens) > MAX_SAMPLE_TOKENS
        or not all(isinstance(t, str) for t in tokens)
    ):
        raise DataError(path, line, "tokens", f"expected an array of at most {MAX_SAMPLE_TOKENS} strings")
    if not isinstance(kl, list) or len(kl) != len(tokens) or any(_number(v) is None for v in kl):
        raise DataError(path, line, "token_kl", f"expected {len(tokens)} finite numbers (one per token)")
    return tuple(tokens), tuple(float(v) for v in kl)


def sample_flags(obj: Mapping[str, Any]) -> tuple[str, ...]:
    """What a sample breaks: its 0/1 details that are set (other than the scores, e.g. a judge's ``banned``,
    ``filler``), and ``rule:<name>`` for each rule its ``rules`` object marks true (the rule-label format)."""
    flags = [
        k
        for k, v in obj.items()
        if k not in _NOT_FLAGS
        and (v is True or (isinstance(v, int | float) and not isinstance(v, bool) and v == 1))
    ]
    rules = obj.get("rules")
    if isinstance(rules, dict):
        flags += [f"rule:{k}" for k, v in rules.items() if v is True]
    return tuple(sorted(flags))


def samples_frame(by_run: Mapping[str, JsonlRows]) -> tuple[pd.DataFrame, list[str]]:
    """Every run's samples.jsonl as one frame (columns SAMPLE_COLUMNS), and the rows that could not be used.

    Exact repeats of a row (same run, step, mode, prompt, completion and scores) are kept once.
    """
    records, problems = [], []
    for run_id, read in by_run.items():
        problems.extend(read.problems)
        for obj, line in zip(read.rows, read.lines, strict=True):
            try:
                records.append(_sample_record(run_id, obj, read.path, line))
            except DataError as err:
                problems.append(str(err))
    frame = pd.DataFrame.from_records(records, columns=list(SAMPLE_COLUMNS))
    # The last step's samples are written twice when it is a multiple of every_n_steps: keep one copy.
    frame = frame.drop_duplicates(keep="last", ignore_index=True)
    frame["step"] = frame["step"].astype("int64")
    frame["length"] = frame["length"].astype("int64")
    frame[list(SAMPLE_SCORES)] = frame[list(SAMPLE_SCORES)].astype("float64")
    return frame, problems


def sample_reward(frame: pd.DataFrame) -> pd.Series:
    """Each sample's reward-model score: ``rm_score`` (PPO), else ``reward``."""
    return frame["rm_score"].fillna(frame["reward"])


def filter_samples(
    frame: pd.DataFrame,
    runs: Iterable[str] | None = None,
    modes: Iterable[str] | None = None,
    steps: tuple[int, int] | None = None,
    text: str = "",
    reward: tuple[float, float] | None = None,
    score: tuple[float, float] | None = None,
    length: tuple[int, int] | None = None,
    flags: Iterable[str] | None = None,
) -> pd.DataFrame:
    """Samples of the given runs and modes, steps within [lo, hi], whose prompt or completion contains `text`;
    reward-model score (`sample_reward`), judge score and length within their ranges; carrying any of `flags`.

    None keeps everything for that filter (a range filter drops the samples without that figure); the text match
    is a case-insensitive substring, not a regex.
    """
    keep = pd.Series(True, index=frame.index)
    for values, bounds in (
        (sample_reward(frame), reward),
        (frame["score"], score),
        (frame["length"], length),
    ):
        if bounds is not None:
            keep &= values.between(bounds[0], bounds[1])  # NaN is never between
    if flags is not None:
        wanted = set(flags)
        keep &= frame["flags"].map(lambda f: bool(wanted & set(f)))
    if runs is not None:
        keep &= frame["run"].isin(list(runs))
    if modes is not None:
        keep &= frame["mode"].isin(list(modes))
    if steps is not None:
        keep &= frame["step"].between(steps[0], steps[1])
    if text:
        needle = text.casefold()
        found = frame["prompt"].str.casefold().str.contains(needle, regex=False)
        keep &= found | frame["completion"].str.casefold().str.contains(needle, regex=False)
    return frame[keep]


def sample_heading(record: Mapping[str, Any]) -> str:
    """One line naming a sample and its scores, e.g. "step 30 · sft/a · greedy · score 0.5, kl 0.012"."""
    parts = [f"step {record['step']}", str(record["run"]), str(record["mode"])]
    scores = [f"{k} {record[k]:.3g}" for k in SAMPLE_SCORES if _number(record.get(k)) is not None]
    return " · ".join(parts + ([", ".join(scores)] if scores else []))


def word_diff(a: str, b: str) -> list[tuple[str, str]]:
    """How completion `b` differs from `a`, word by word: ("=", words) kept, ("-", words) only in a, ("+", words)
    only in b, in reading order (difflib's longest matching blocks)."""
    import difflib

    left, right = a.split(), b.split()
    out: list[tuple[str, str]] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=left, b=right, autojunk=False).get_opcodes():
        if op == "equal":
            out.append(("=", " ".join(left[i1:i2])))
            continue
        if i2 > i1:
            out.append(("-", " ".join(left[i1:i2])))
        if j2 > j1:
            out.append(("+", " ".join(right[j1:j2])))
    return out


def prompt_history(frame: pd.DataFrame, prompt: str) -> pd.DataFrame:
    """Every completion of one prompt, by step, then run, then mode."""
    rows = frame[frame["prompt"] == prompt]
    return rows.sort_values(["step", "run", "mode"], kind="stable", ignore_index=True)


# ---------------------------------------------------------------------------------------------------------
# Stage directories and reports
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StageDirInfo:
    """A stage directory found under the runs root (`<stage>/<name>/stage/` with a manifest)."""

    path: str
    label: str  # "<stage>/<name>" of the run that wrote it
    stage: str  # from the manifest
    step: int | None
    parent: str | None
    manifest_mtime_ns: int  # with `path`, the cache key of a loaded model
    external_base: str | None = None  # where the base comes from when not from the directory itself
    reward_from: str | None = None  # a ppo stage's reward model (its manifest's extra.reward_from)


def find_stage_dirs(root: str | os.PathLike) -> tuple[list[StageDirInfo], list[str]]:
    """Stage directories under `root`, sorted by label, and the manifests that could not be read.

    Only the manifest is read (no weights, no file-size checks: loading does those); one reached through a
    link out of `root` is a problem, not read.
    """
    found, problems = [], []
    for manifest_path in sorted(Path(root).glob(f"*/*/{STAGE_DIR}/{MANIFEST}")):
        manifest, problem = _read_manifest(manifest_path.parent, root)
        if problem is None and inside(root, manifest_path.parent) is None:
            problem = f"{manifest_path.parent}: leads outside the runs root {root}; not read"
        if problem is not None:
            problems.append(problem)
            continue
        if manifest.get("stage") not in STAGES:
            problems.append(f"{manifest_path}: field 'stage': expected one of {', '.join(STAGES)}")
            continue
        stage_dir = manifest_path.parent
        found.append(
            StageDirInfo(
                path=str(stage_dir),
                label=f"{stage_dir.parent.parent.name}/{stage_dir.parent.name}",
                stage=manifest["stage"],
                step=_int(manifest.get("step")),
                parent=manifest_link(stage_dir, manifest, "parent"),
                manifest_mtime_ns=manifest_path.stat().st_mtime_ns,
                external_base=external_base(manifest.get("base")),
                reward_from=manifest_link(stage_dir, manifest, "reward_from"),
            )
        )
    return found, problems


def _same_dir(a: str | None, b: str | None) -> bool:
    return (
        bool(a) and bool(b) and os.path.normpath(os.path.abspath(a)) == os.path.normpath(os.path.abspath(b))
    )


@dataclass(frozen=True)
class CompareDefaults:
    """What the Compare page starts with."""

    chosen: list[StageDirInfo]  # the models to generate with
    reference: StageDirInfo | None  # the KL reference
    reward: StageDirInfo | None  # the reward model scoring the completions


def compare_defaults(found: Sequence[StageDirInfo]) -> CompareDefaults:
    """The newest PPO stage and its SFT parent, KL to that SFT stage, scored by the PPO run's reward model.

    Without a PPO stage: the two newest SFT stages, KL to the newest, scored by a reward model trained from it.
    A reward stage is never preselected as a model to generate with.
    """

    def newest(dirs: Iterable[StageDirInfo]) -> StageDirInfo | None:
        return max(dirs, key=lambda d: (d.manifest_mtime_ns, d.label), default=None)

    def find(path: str | None, stage: str) -> StageDirInfo | None:
        return next((d for d in found if d.stage == stage and _same_dir(d.path, path)), None)

    sfts = sorted((d for d in found if d.stage == "sft"), key=lambda d: (-d.manifest_mtime_ns, d.label))
    ppo = newest(d for d in found if d.stage == "ppo")
    if ppo is not None:
        sft = find(ppo.parent, "sft") or (sfts[0] if sfts else None)
        return CompareDefaults([ppo, *([sft] if sft else [])], sft or ppo, find(ppo.reward_from, "reward"))
    chosen = sfts[:2]
    reference = chosen[0] if chosen else None
    rewards = (d for d in found if d.stage == "reward" and reference and _same_dir(d.parent, reference.path))
    return CompareDefaults(chosen, reference, newest(rewards))


def latest_report(root: str | os.PathLike) -> tuple[str, str] | None:
    """(path, text) of the newest `<root>/eval/*/report.md`, or None when there is none.

    Reports reached through a link out of `root` are ignored: a `report.md` linked to a private key is not shown.
    """
    reports = [p for p in Path(root).glob("eval/*/report.md") if p.is_file() and inside(root, p) is not None]
    if not reports:
        return None
    newest = max(reports, key=lambda p: (p.stat().st_mtime_ns, str(p)))
    try:
        return str(newest), read_bounded(newest, MAX_REPORT_BYTES).decode("utf-8", errors="replace")
    except OSError:
        return None


def report_table(
    report_path: str | os.PathLike, root: str | os.PathLike
) -> tuple[pd.DataFrame | None, list[str]]:
    """The `report.json` next to a report.md as a table, one row per checkpoint (its metrics as `evaluate` wrote
    them), and the report's notes; (None, [problem]) when it is missing or cannot be used."""
    path = Path(report_path).with_name("report.json")
    obj, problem = _read_json_object(path, root)
    if problem is not None or not obj:
        return None, [problem] if problem else []
    rows, notes = obj.get("checkpoints"), obj.get("notes", [])
    if not isinstance(rows, dict) or not all(isinstance(r, dict) for r in rows.values()):
        return None, [f"{path}: field 'checkpoints': expected an object of objects"]
    records = []
    for ckpt, row in rows.items():
        cells = {
            k: v if isinstance(v, str | int | float) or v is None else clip(repr(v)) for k, v in row.items()
        }
        records.append({"checkpoint": _short_label(ckpt), **cells})
    notes = [n for n in notes if isinstance(n, str)] if isinstance(notes, list) else []
    return pd.DataFrame.from_records(records), notes


def _short_label(path: str) -> str:
    """The last two path parts, skipping a trailing `stage` (runs/ppo/x/stage -> ppo/x), as report.png labels."""
    parts = [p for p in Path(path).parts if p not in ("/", "")]
    if parts and parts[-1] == STAGE_DIR:
        parts = parts[:-1]
    return "/".join(parts[-2:]) or path


def report_figure(report_path: str | os.PathLike, root: str | os.PathLike) -> str | None:
    """The `report.png` next to a report, when it is a regular file inside `root`."""
    png = Path(report_path).with_name("report.png")
    return str(png) if png.is_file() and read_problem(png, root) is None else None


# ---------------------------------------------------------------------------------------------------------
# Over-optimization: gold vs proxy against d = sqrt(KL) (the Over-optimization page)
# ---------------------------------------------------------------------------------------------------------

BEST_OF_N = "best_of_n.json"  # <root>/eval/<name>/best_of_n.json, written by bench/overoptimization.py
BEST_OF_N_FIELDS = ("n", "kl", "d", "proxy", "gold", "win_rate", "oracle_gold", "oracle_win_rate")
MAX_BEST_OF_N_POINTS = 64


@dataclass(frozen=True)
class BestOfN:
    """A best-of-n curve from an SFT model (`lit_rlhf.evaluation.overoptimization.best_of_n_curve`)."""

    label: str  # "eval/<name>"
    path: str
    points: pd.DataFrame  # one row per n: BEST_OF_N_FIELDS


def _best_of_n(path: Path, root: str | os.PathLike) -> tuple[BestOfN | None, str | None]:
    obj, problem = _read_json_object(path, root)
    if problem is not None:
        return None, problem
    points = obj.get("points")
    if not isinstance(points, list) or not 0 < len(points) <= MAX_BEST_OF_N_POINTS:
        return None, f"{path}: field 'points': expected an array of 1 to {MAX_BEST_OF_N_POINTS} objects"
    records = []
    for i, point in enumerate(points):
        if not isinstance(point, dict):
            return None, f"{path}: field 'points[{i}]': expected an object"
        record = {k: _number(point.get(k)) if point.get(k) is not None else None for k in BEST_OF_N_FIELDS}
        bad = [k for k in ("n", "d", "proxy", "gold") if record[k] is None]
        if bad:
            return None, f"{path}: field 'points[{i}].{bad[0]}': expected a finite number"
        records.append(record)
    frame = pd.DataFrame.from_records(records, columns=list(BEST_OF_N_FIELDS)).astype("float64")
    return BestOfN(f"eval/{path.parent.name}", str(path), frame), None


def find_best_of_n(root: str | os.PathLike) -> tuple[list[BestOfN], list[str]]:
    """Every `<root>/eval/*/best_of_n.json`, and a problem naming each file that cannot be used."""
    found, problems = [], []
    for path in sorted(Path(root).glob(f"eval/*/{BEST_OF_N}")):
        curve, problem = _best_of_n(path, root)
        if curve is not None:
            found.append(curve)
        else:
            problems.append(problem)
    return found, problems


def gold_proxy_points(frame: pd.DataFrame) -> list[Any]:
    """A PPO run's gold-vs-proxy points (`lit_rlhf.evaluation.overoptimization.GoldProxyPoint`) from its metrics
    frame: every step with ``ppo/eval/kl``, the SFT model's own point (d = 0) first when it was logged."""
    from lit_rlhf.evaluation.overoptimization import points_from_metrics

    keys = [k for k in frame.columns if k.startswith("ppo/eval/")]
    if "ppo/eval/kl" not in keys:
        return []
    rows = [
        {"step": int(step), **{k: float(v) for k, v in values.items() if not math.isnan(v)}}
        for step, values in frame[keys].dropna(subset=["ppo/eval/kl"]).iterrows()
    ]
    return points_from_metrics(rows)


def overoptimization_long(
    runs: Mapping[str, Sequence[Any]], curves: Sequence[BestOfN], fit_points: int = 40
) -> pd.DataFrame:
    """Long-form data for the gold and proxy panels: d, value, measure (gold | proxy), series, kind (point | fit)
    and label (the step or n).

    Each PPO run (run id -> its points) gives its points and its fitted RL curve (gold only, through the SFT
    point); each best-of-n curve gives the reward model's pick (gold and proxy) and the judge's pick (gold).
    """
    from lit_rlhf.evaluation.overoptimization import fit_run

    parts: list[dict[str, Any]] = []
    for run_id, points in runs.items():
        for p in points:
            label = "SFT" if p.step < 0 else f"step {p.step}"
            for measure, value in (("gold", p.gold), ("proxy", p.proxy)):
                if value is not None:
                    parts.append(
                        {
                            "d": p.d,
                            "value": value,
                            "measure": measure,
                            "series": run_id,
                            "kind": "point",
                            "label": label,
                        }
                    )
        try:
            fit = fit_run(points)
        except ValueError:  # fewer than two evaluations, or no judge: no curve to draw
            continue
        top = max(p.d for p in points)
        for i in range(fit_points + 1):
            d = top * i / fit_points
            value = points[0].gold + fit.predict(d)
            parts.append(
                {
                    "d": d,
                    "value": value,
                    "measure": "gold",
                    "series": f"{run_id} (fit)",
                    "kind": "fit",
                    "label": "",
                }
            )
    for curve in curves:
        for row in curve.points.to_dict("records"):
            label = f"n={int(row['n'])}"
            for measure, series, value in (
                ("gold", f"{curve.label} best-of-n (RM picks)", row["gold"]),
                ("proxy", f"{curve.label} best-of-n (RM picks)", row["proxy"]),
                ("gold", f"{curve.label} best-of-n (judge picks)", row["oracle_gold"]),
            ):
                if value is not None and not math.isnan(value):
                    parts.append(
                        {
                            "d": row["d"],
                            "value": value,
                            "measure": measure,
                            "series": series,
                            "kind": "point",
                            "label": label,
                        }
                    )
    columns = ["d", "value", "measure", "series", "kind", "label"]
    return pd.DataFrame.from_records(parts, columns=columns)


def fits_table(runs: Mapping[str, Sequence[Any]], curves: Sequence[BestOfN]) -> pd.DataFrame:
    """Gao et al.'s fits: the RL form for each PPO run, the best-of-n form for each curve (gold relative to SFT)."""
    from lit_rlhf.evaluation.overoptimization import fit_gao, fit_run

    records = []
    for run_id, points in runs.items():
        try:
            records.append({"series": run_id, **_fit_record(fit_run(points))})
        except ValueError as err:
            records.append({"series": run_id, "note": str(err)})
    for curve in curves:
        p = curve.points
        try:
            fit = fit_gao("bon", p["d"].tolist(), (p["gold"] - p["gold"].iloc[0]).tolist())
            records.append({"series": f"{curve.label} best-of-n", **_fit_record(fit)})
        except ValueError as err:
            records.append({"series": f"{curve.label} best-of-n", "note": str(err)})
    columns = ["series", "form", "alpha", "beta", "r2", "points", "peak_d", "peak_gain", "note"]
    return pd.DataFrame.from_records(records, columns=columns)


def _fit_record(fit: Any) -> dict[str, Any]:
    return {
        "form": "d(α − β log d)" if fit.form == "rl" else "d(α − β d)",
        "alpha": fit.alpha,
        "beta": fit.beta,
        "r2": fit.r2,
        "points": fit.points,
        "peak_d": fit.peak_d,
        "peak_gain": fit.peak_r,
        "note": None,
    }
