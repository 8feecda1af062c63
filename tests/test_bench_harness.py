"""bench/harness.py, the driver the subprocess-per-case benchmarks share: argument checks, the error row of a
child that fails, dies or overruns its timeout, and results written atomically.

The children here are tiny scripts the tests write; no model, no lightning. The slowest test waits out a
1-second timeout.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import sys
import textwrap
from pathlib import Path

import pytest

HARNESS = Path(__file__).resolve().parent.parent / "bench" / "harness.py"


@pytest.fixture(scope="module")
def harness():
    spec = importlib.util.spec_from_file_location("bench_harness", HARNESS)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def error_row(case: str, error: str) -> dict:
    return {"case": case, "value": None, "error": error}


# ---------------------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------------------


def test_csv_choices(harness):
    parse = harness.csv_choices(("a", "b", "c"))
    assert parse("c, a") == ["c", "a"]  # the order given, spaces dropped
    for text in ("a,x", "", " , "):
        with pytest.raises(argparse.ArgumentTypeError, match="choose from a, b, c"):
            parse(text)


def test_csv_ints(harness):
    parse = harness.csv_ints(2, "K")
    assert parse("4, 9") == [4, 9]
    with pytest.raises(argparse.ArgumentTypeError, match="comma-separated integers"):
        parse("4,x")
    with pytest.raises(argparse.ArgumentTypeError, match="every K must be >= 2, got '1,4'"):
        parse("1,4")
    with pytest.raises(argparse.ArgumentTypeError, match="every K must be >= 2"):
        parse("")


def _parser(harness, **one):
    p = harness.parser("Title line.\n\nMore text.")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=8)
    harness.add_child_flags(p, **one)
    return p


def test_child_flags_are_hidden_and_checked(harness, capsys):
    p = _parser(harness, choices=["x", "y"])
    assert p.description == "Title line."
    p.print_help()
    shown = capsys.readouterr().out
    assert "--steps" in shown and "--one" not in shown and "--row-out" not in shown
    assert harness.child_problems(p.parse_args([])) == []  # a parent run
    assert harness.child_problems(p.parse_args(["--one", "x"])) == ["--one needs --workdir and --row-out"]
    child = p.parse_args(["--one", "x", "--workdir", "w", "--row-out", "r"])
    assert harness.child_problems(child) == []
    child.precision = None
    assert harness.child_problems(child, also=("precision",)) == [
        "--one needs --precision, --workdir and --row-out"
    ]
    two = _parser(harness, nargs=2).parse_args(["--one", "4", "kwise", "--workdir", "w", "--row-out", "r"])
    assert two.one == ["4", "kwise"]


def test_check_exits_with_every_problem_once(harness, capsys):
    p = _parser(harness)
    harness.check(p, [])  # nothing wrong: returns
    with pytest.raises(SystemExit) as exit_:
        harness.check(p, ["first", "second", "first"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip().endswith("error: first; second")


def test_child_flags_and_pick(harness):
    args = argparse.Namespace(steps=3, batch_size=8, device="cpu")
    assert harness.child_flags(args, ("steps", "batch_size")) == ["--steps", "3", "--batch-size", "8"]
    assert list(harness.pick(args, ("device", "steps"))) == ["device", "steps"]


# ---------------------------------------------------------------------------------------------------------
# Records and tables
# ---------------------------------------------------------------------------------------------------------


def test_records(harness):
    env = harness.environment(2, "cpu")
    assert list(env)[: len(harness.LIBRARIES) + 1] == [*harness.LIBRARIES, "python"]
    assert list(env)[-6:] == ["host_cpu_count", "usable_cpus", "threads", "device", "load_avg_1m", "date"]
    assert list(harness.host(1)) == ["host_cpu_count", "threads", "load_avg_1m", "date"]
    assert harness.versions(["surely-not-installed-package"])["surely-not-installed-package"] is None
    assert harness.peak_rss_mb() > 1.0


def test_cells_and_tables(harness):
    fmt = harness.fmt_cell
    assert (fmt(None), fmt(True), fmt(False, yes="y", no="n"), fmt(1234567), fmt(1234.5678, 2)) == (
        "-",
        "PASS",
        "n",
        "1,234,567",
        "1,234.57",
    )
    assert harness.error_cell(None) == ""
    assert harness.error_cell("a | b\nc" + "x" * 300) == "a \\| b c" + "x" * 112
    assert harness.md_table(("a", "b"), [["1", "2"]]) == "| a | b |\n|---|---|\n| 1 | 2 |"
    assert harness.md_table(("a",), []) == "| a |\n|---|"


# ---------------------------------------------------------------------------------------------------------
# The subprocess driver
# ---------------------------------------------------------------------------------------------------------

CHILD = """
import argparse, sys, time
sys.path.insert(0, {bench!r})
import harness

p = argparse.ArgumentParser()
p.add_argument("--value", type=int)
harness.add_child_flags(p)
args = p.parse_args()
if args.one == "exit":
    print("about to fail", file=sys.stderr)
    sys.exit(1)
if args.one == "sleep":
    time.sleep(30)
def measure():
    if args.one == "raise":
        raise RuntimeError("no such mode")
    return {{"case": args.one, "value": args.value, "error": None}}
harness.run_child(args.row_out, measure, lambda e: {{"case": args.one, "value": None, "error": e}},
                  lambda: {{"value_given": args.value}})
"""


@pytest.fixture
def child(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(CHILD.format(bench=str(HARNESS.parent))))
    return script


def _case(harness, name: str):
    return harness.Case((name,), f"case {name}", functools.partial(error_row, name))


def test_run_cases_rows_and_error_rows(harness, child, tmp_path, capsys):
    cases = [_case(harness, name) for name in ("ok", "exit", "raise")]
    rows = harness.run_cases(
        child,
        cases,
        tmp_path,
        flags=["--value", "7"],
        threads=1,
        timeout_s=60,
        status=lambda row: f"value {row['value']}",
    )
    ok, died, raised = rows
    assert ok == {"case": "ok", "value": 7, "error": None, "value_given": 7}
    # exited without a row: the error row, with the exit status and the tail of its output
    assert died == error_row("exit", "subprocess exited 1: about to fail")
    # raised inside measure: the child wrote the error row itself, settings included
    assert raised == {"case": "raise", "value": None, "error": "RuntimeError: no such mode", "value_given": 7}
    shown = capsys.readouterr().out.splitlines()
    assert shown[:2] == ["running case ok ...", "  value 7"]
    assert shown[3] == "  subprocess exited 1: about to fail"


def test_run_case_timeout(harness, child, tmp_path):
    row = harness.run_case(
        child, _case(harness, "sleep"), tmp_path, [], harness.child_env(1), timeout_s=1, row_name="sleep"
    )
    assert row == error_row("sleep", "timed out after 1 s")


def test_child_env(harness):
    env = harness.child_env(3, {"HF_HUB_OFFLINE": "1"})
    assert (env["OMP_NUM_THREADS"], env["TOKENIZERS_PARALLELISM"], env["HF_HUB_OFFLINE"]) == (
        "3",
        "false",
        "1",
    )


# ---------------------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------------------


def test_write_results_json_and_markdown(harness, tmp_path, capsys):
    out = tmp_path / "res" / "bench.json"
    harness.write_results(out, [{"a": 1}], "| a |\n|---|", started=0.0, markdown=True)
    assert json.loads(out.read_text()) == [{"a": 1}]
    assert out.read_text().endswith("\n")
    assert out.with_suffix(".md").read_text() == "| a |\n|---|\n"
    printed = capsys.readouterr().out
    assert printed.startswith("\n| a |\n|---|\n\nwrote ")
    assert f"wrote {out} and {out.with_suffix('.md')} (" in printed
    assert sorted(p.name for p in out.parent.iterdir()) == ["bench.json", "bench.md"]  # no temporary left


def test_results_are_atomic(harness, tmp_path):
    out = tmp_path / "bench.json"
    harness.write_json(out, {"old": True})
    with pytest.raises(ValueError):  # NaN is not JSON: the old results stay whole
        harness.write_json(out, {"rate": float("nan")})
    assert json.loads(out.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["bench.json"]


def test_write_report(harness, tmp_path):
    harness.write_report(tmp_path, "ablations", {"x": [1, 2]}, "# table\n")
    assert (tmp_path / "ablations.json").read_text() == json.dumps({"x": [1, 2]}, indent=2)
    assert (tmp_path / "ablations.md").read_text() == "# table\n"
