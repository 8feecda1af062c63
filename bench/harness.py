"""What the bench/ scripts share: a fresh subprocess per measured case, argument checks, host records, tables.

Imported by the scripts as a sibling module (they are run as ``python bench/<name>.py``, which puts bench/ on
``sys.path``). Standard library only at import, so a parent process stays light and tests need no model.

The subprocess-per-case protocol: a script's `main` hands its parsed arguments to `serve`. In the parent,
the script prepares a work directory once (`temp_workdir`) and runs each `Case` with `run_cases`, which
re-invokes the script as ``--one VALUE... --workdir DIR --row-out FILE`` plus the shared flags
(`child_flags`), under a timeout; `serve` then writes the results (`write_results`: JSON, and .md where
asked, atomically) and prints the tables. In the child, `serve` calls the script's measurement, which runs
in its own interpreter (so its peak RSS belongs to that case alone) and writes one row through `run_child`.
A child that raises, dies or times out becomes the case's error row with the cause in ``error``, and the
other cases carry on.

Lives here: that protocol; `add_child_flags` / `child_problems` / `check` (the internal flags and the
argument checks), `csv_choices` / `csv_ints` (comma-separated arguments), `pick`; `versions` /
`environment` / `host` and `peak_rss_mb` (what rows record about the machine); `trainer` (a Lightning
Trainer that only measures); `fmt_cell` / `error_cell` / `md_row` / `md_table` (markdown); `write_report`
and `run_main` for the scripts that drive whole `main.py` runs. Must not live here: what a benchmark
measures, its rows' fields, its tables' columns.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

ERROR_CHARS = 600  # keep the JSON small when a case fails with a long message
ERROR_CELL_CHARS = 120  # an error in a markdown table: enough to recognise it, the JSON has the rest
LIBRARIES = ("torch", "transformers", "bitsandbytes", "lightning", "peft")
MAIN = Path(__file__).resolve().parents[1] / "main.py"  # the project's command line

Row = dict[str, Any]


# ---------------------------------------------------------------------------------------------------------
# Records: library versions, host facts, memory
# ---------------------------------------------------------------------------------------------------------


def version(package: str) -> str | None:
    """The installed version of `package`, or None when it is not installed."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def versions(packages: Iterable[str] = LIBRARIES) -> dict[str, str | None]:
    """The versions of `packages` and of Python, keyed by name (None: not installed)."""
    return {name: version(name) for name in packages} | {"python": platform.python_version()}


def _load_avg_1m() -> float:
    # Other processes share these cores: the 1-minute load average says how busy the machine was.
    return round(os.getloadavg()[0], 2)


def _utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def host(threads: int) -> dict[str, Any]:
    """Host facts without library versions: CPU count, the thread count used, the load, the UTC date."""
    return {
        "host_cpu_count": os.cpu_count(),
        "threads": threads,
        "load_avg_1m": _load_avg_1m(),
        "date": _utc_now(),
    }


def environment(threads: int, device: str) -> dict[str, Any]:
    """Library versions (LIBRARIES) and host facts: what sft_throughput, ppo_memory, rm_kwise record."""
    return versions() | {
        "host_cpu_count": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "threads": threads,
        "device": device,
        "load_avg_1m": _load_avg_1m(),
        "date": _utc_now(),
    }


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ---------------------------------------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------------------------------------


def fmt_cell(value: Any, digits: int = 0, yes: str = "PASS", no: str = "FAIL") -> str:
    """One markdown table cell: None as '-', thousands separators, and a verdict word for booleans."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return yes if value else no
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def error_cell(error: str | None) -> str:
    """A row's error as one table cell: pipes escaped, on one line, cut short."""
    return (error or "").replace("|", "\\|").replace("\n", " ")[:ERROR_CELL_CHARS]


def md_row(cells: Sequence[str]) -> str:
    """One GitHub markdown table line."""
    return "| " + " | ".join(cells) + " |"


def md_table(columns: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A GitHub markdown table: the header, the separator, one line per row of already formatted cells."""
    return "\n".join([md_row(columns), "|" + "---|" * len(columns), *(md_row(r) for r in rows)])


# ---------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------


def parser(doc: str) -> argparse.ArgumentParser:
    """An argument parser described by the first paragraph of a script's docstring."""
    return argparse.ArgumentParser(description=doc.split("\n\n")[0])


def csv_choices(choices: Sequence[str]) -> Callable[[str], list[str]]:
    """An argparse type: a non-empty comma-separated subset of `choices`, in the order given."""

    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items or any(t not in choices for t in items):
            raise argparse.ArgumentTypeError(f"choose from {', '.join(choices)}; got {text!r}")
        return items

    return parse


def csv_ints(minimum: int, name: str) -> Callable[[str], list[int]]:
    """An argparse type: non-empty comma-separated integers, each >= `minimum` (`name` says what they are)."""

    def parse(text: str) -> list[int]:
        try:
            items = [int(t) for t in text.split(",") if t.strip()]
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from e
        if not items or min(items) < minimum:
            raise argparse.ArgumentTypeError(f"every {name} must be >= {minimum}, got {text!r}")
        return items

    return parse


def add_child_flags(p: argparse.ArgumentParser, **one: Any) -> None:
    """The internal flags the parent re-invokes a script with to measure one case in a fresh process.

    `one` are add_argument options of ``--one`` (its choices, or ``nargs`` for a case of several values).
    Hidden from --help: they are the protocol between parent and child, not for users.
    """
    p.add_argument("--one", help=argparse.SUPPRESS, **one)
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    p.add_argument("--row-out", help=argparse.SUPPRESS)


def child_problems(args: argparse.Namespace, also: Sequence[str] = ()) -> list[str]:
    """What a child invocation lacks: ``--one`` needs --workdir, --row-out and the options `also` (dests)."""
    needed = [*also, "workdir", "row_out"]
    if args.one is None or all(getattr(args, name) is not None for name in needed):
        return []
    flags = [f"--{name.replace('_', '-')}" for name in needed]
    return [f"--one needs {', '.join(flags[:-1])} and {flags[-1]}"]


def check(p: argparse.ArgumentParser, problems: Iterable[str]) -> None:
    """Exit through `p.error` (usage, status 2) naming every problem once; return when there is none."""
    unique = list(dict.fromkeys(problems))
    if unique:
        p.error("; ".join(unique))


def pick(args: argparse.Namespace, names: Iterable[str]) -> dict[str, Any]:
    """The values of the dest names `names` in `args`, in that order: settings a row records."""
    return {name: getattr(args, name) for name in names}


def child_flags(args: argparse.Namespace, names: Iterable[str]) -> list[str]:
    """``--flag value`` for each dest name in `names`: the settings a child shares with its parent."""
    return [f for name in names for f in (f"--{name.replace('_', '-')}", str(getattr(args, name)))]


# ---------------------------------------------------------------------------------------------------------
# Parent: one fresh subprocess per case
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One measurement, run in its own subprocess.

    Attributes:
        one: the values after ``--one`` (what the child measures).
        label: the case in the progress lines.
        error_row: the case's row with every measured field null and ``error`` set to the message given.
        flags: further per-case flags for the child (e.g. ``("--precision", "bf16-mixed")``).
    """

    one: tuple[str, ...]
    label: str
    error_row: Callable[[str], Row]
    flags: tuple[str, ...] = ()


@contextlib.contextmanager
def temp_workdir(prefix: str, what: str) -> Iterator[Path]:
    """A temporary work directory for the shared inputs (`what` goes in the progress line); removed after."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        print(f"preparing {what} in {tmp} ...", flush=True)
        yield Path(tmp)


def child_env(threads: int, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The child's environment: this one, with OpenMP held to `threads` and tokenizers' own pool off."""
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false", **(extra or {})}


def run_case(
    script: str | os.PathLike,
    case: Case,
    work: Path,
    flags: Sequence[str],
    env: dict[str, str],
    timeout_s: float,
    row_name: str,
) -> Row:
    """Run `script` for one case in a fresh interpreter and return the row it wrote (an error row if none).

    A child that exits without a row gives ``subprocess exited N: <its output's tail>``; one still running
    after `timeout_s` is killed and gives ``timed out after T s``.
    """
    row_path = work / f"row-{row_name}.json"
    cmd = [sys.executable, str(Path(script).resolve()), "--one", *case.one]
    cmd += ["--workdir", str(work), "--row-out", str(row_path), *case.flags, *flags]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return case.error_row(f"timed out after {timeout_s} s")
    if row_path.is_file():
        return json.loads(row_path.read_text())
    tail = (proc.stderr or proc.stdout).strip()[-ERROR_CHARS:]
    return case.error_row(f"subprocess exited {proc.returncode}: {tail}")


def run_cases(
    script: str | os.PathLike,
    cases: Iterable[Case],
    work: Path,
    *,
    flags: Sequence[str],
    threads: int,
    timeout_s: float,
    status: Callable[[Row], str],
    env: dict[str, str] | None = None,
    show_load: bool = False,
) -> list[Row]:
    """Every case in turn, each in its own subprocess (`run_case`), printing progress; the rows in order.

    Args:
        flags: the flags every child gets (`child_flags`).
        threads: OMP_NUM_THREADS of every child.
        status: the line printed for a measured row (an error row prints its error).
        env: further environment variables for the children.
        show_load: say the 1-minute load average as each case starts.
    """
    rows = []
    environ = child_env(threads, env)
    for i, case in enumerate(cases):
        load = f" (load {os.getloadavg()[0]:.2f})" if show_load else ""
        print(f"running {case.label}{load} ...", flush=True)
        row = run_case(script, case, work, flags, environ, timeout_s, f"{i}-{'-'.join(case.one)}")
        print(f"  {row.get('error') or status(row)}", flush=True)
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------------------
# Results, and the entry point
# ---------------------------------------------------------------------------------------------------------


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write `obj` as indented JSON with a final newline, atomically (lit_rlhf.atomic; no NaN)."""
    from lit_rlhf.atomic import write_json as atomic_write_json

    atomic_write_json(path, obj, newline=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` atomically (lit_rlhf.atomic)."""
    from lit_rlhf.atomic import write_text as atomic_write_text

    atomic_write_text(path, text)


def write_results(out: Path, payload: Any, text: str, started: float, markdown: bool = False) -> None:
    """Write the results JSON (with `markdown`, the text beside it as .md); print the text and the files.

    Args:
        out: the JSON file.
        payload: what goes in it.
        text: the tables (and anything else) printed, and written as the .md.
        started: time.perf_counter() when the run began, for the closing line's seconds.
    """
    write_json(out, payload)
    written = str(out)
    if markdown:
        write_text(out.with_suffix(".md"), text + "\n")
        written += f" and {out.with_suffix('.md')}"
    print()
    print(text)
    print(f"\nwrote {written} ({time.perf_counter() - started:.0f} s)")


def write_report(out: Path, stem: str, result: Any, text: str) -> None:
    """`out/stem.json` (indented JSON, no final newline) and `out/stem.md`, each written atomically.

    For the scripts that drive whole training runs (ablations, rules_rounds); NaN stays writable there, as
    a run that diverged reports it.
    """
    write_text(out / f"{stem}.json", json.dumps(result, indent=2))
    write_text(out / f"{stem}.md", text)


def serve(
    args: argparse.Namespace,
    child: Callable[[argparse.Namespace], None],
    parent: Callable[[argparse.Namespace], tuple[Any, str]],
    markdown: bool = False,
) -> Any:
    """A benchmark's entry point once its arguments are parsed: measure one case, or run them all.

    With ``--one`` this is a child: `child(args)` measures and writes its row; returns None. Otherwise
    `parent(args)` runs every case and returns (what args.out gets, the text printed); both are written
    (`write_results`) and the payload is returned for a verdict.
    """
    if args.one is not None:
        child(args)
        return None
    started = time.perf_counter()
    payload, text = parent(args)
    write_results(args.out, payload, text, started, markdown)
    return payload


# ---------------------------------------------------------------------------------------------------------
# Whole training runs (ablations, overoptimization): the project's own command line
# ---------------------------------------------------------------------------------------------------------


def run_main(args: Sequence[str], tag: str, cwd: str | os.PathLike | None = None) -> float:
    """Run the repository's ``python main.py ARGS`` (a whole training or evaluation), printing the command
    after ``[tag]``; fail loudly (CalledProcessError); return the wall seconds."""
    print(f"[{tag}] python main.py {' '.join(args)}", flush=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, str(MAIN), *args], check=True, env=os.environ.copy(), cwd=cwd)
    return time.perf_counter() - start


# ---------------------------------------------------------------------------------------------------------
# Child: measure one case, write its row
# ---------------------------------------------------------------------------------------------------------


def trainer(**kwargs: Any) -> Any:
    """A Lightning Trainer that only measures: one device, no logger, checkpoints, progress bar, model
    summary, sanity check or validation; `kwargs` (accelerator, precision, max_steps, callbacks, ...) add or
    override."""
    import lightning as L  # here, not at the top: a parent process never needs lightning

    quiet = {"devices": 1, "logger": False, "enable_checkpointing": False, "enable_progress_bar": False}
    quiet |= {"enable_model_summary": False, "num_sanity_val_steps": 0, "limit_val_batches": 0}
    return L.Trainer(**(quiet | kwargs))


def run_child(
    row_out: str | os.PathLike,
    measure: Callable[[], Row],
    error_row: Callable[[str], Row],
    extra: Callable[[], dict[str, Any]] = dict,
) -> Row:
    """Measure in this process and write the row, updated with `extra()`, to `row_out` atomically.

    An exception in `measure` (a mode the stack does not support, say) becomes `error_row` with its type and
    message, its traceback on stderr: one failing case must not sink the whole run.
    """
    try:
        row = measure()
    except Exception as exc:
        traceback.print_exc()
        row = error_row(f"{type(exc).__name__}: {exc}"[:ERROR_CHARS])
    row.update(extra())
    write_json(row_out, row)
    return row


def shown_path(path: Path) -> str:
    """`path` relative to the repository when it lies inside it: results name no machine's directories."""
    root = Path(__file__).resolve().parent.parent
    try:
        return str(Path(path).resolve().relative_to(root))
    except ValueError:
        return Path(path).name
