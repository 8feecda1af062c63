"""dashboard.tail.JsonlTail (issue 16, defect 6): a live run's appends are parsed once, one entry per file, all
entries under a byte budget; the rows are what loaders.read_jsonl reads."""

from __future__ import annotations

import json
import os

from dashboard import loaders
from dashboard.tail import JsonlTail


def _append(path, row: dict | str) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write((row if isinstance(row, str) else json.dumps(row)) + "\n")


def test_appends_are_read_once_and_one_entry_per_file_is_kept(tmp_path):
    path = tmp_path / "metrics.jsonl"
    tail = JsonlTail()
    for step in range(300):
        _append(path, {"step": step, "sft/loss": 1.0 / (step + 1), "pad": "x" * 100})
        read = tail.read(path)
        assert len(read.rows) == step + 1
    size = path.stat().st_size
    assert len(tail) == 1 and tail.bytes_held == size
    assert tail.bytes_read == size  # each appended byte parsed once, not once per rerun
    assert tail.read(path) == loaders.read_jsonl(path)


def test_the_budget_evicts_the_least_recently_read_file(tmp_path):
    files = [tmp_path / f"{i}.jsonl" for i in range(3)]
    for f in files:
        for step in range(50):
            _append(f, {"step": step, "pad": "y" * 200})
    one = files[0].stat().st_size
    tail = JsonlTail(max_bytes=2 * one + 10)
    for f in files:
        tail.read(f)
    assert len(tail) == 2 and tail.bytes_held <= tail.max_bytes
    assert len(tail.read(files[0]).rows) == 50  # evicted, read again from disk


def test_half_lines_bad_lines_rewrites_and_replacements(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 1}\n{"step": NaN}\n{"step": 3', encoding="utf-8")
    tail = JsonlTail()
    read = tail.read(path)
    assert [r["step"] for r in read.rows] == [1] and read.partial_tail and len(read.problems) == 1
    _append(path, "}")  # the half-written row completes
    read = tail.read(path)
    assert [r["step"] for r in read.rows] == [1, 3] and read.lines == (1, 3) and not read.partial_tail
    path.write_text('{"step": 7}\n{"step": 8}\n{"step": 9}\n', encoding="utf-8")  # rewritten in place, longer
    assert [r["step"] for r in tail.read(path).rows] == [7, 8, 9]
    replacement = tmp_path / "new.jsonl"
    replacement.write_text('{"step": 10}\n', encoding="utf-8")
    os.replace(replacement, path)
    assert [r["step"] for r in tail.read(path).rows] == [10]
    path.unlink()
    assert tail.read(path) == loaders.JsonlRows(str(path)) and len(tail) == 0


def test_derived_values_are_recomputed_only_after_an_append(tmp_path):
    path = tmp_path / "m.jsonl"
    _append(path, {"step": 1, "a": 1.0})
    tail, calls = JsonlTail(), []

    def frame(read):
        calls.append(len(read.rows))
        return loaders.metrics_frame(read.rows)

    for _ in range(3):
        tail.derived(path, "metrics", frame)
    _append(path, {"step": 2, "a": 2.0})
    assert tail.derived(path, "metrics", frame)["a"].tolist() == [1.0, 2.0]
    assert calls == [1, 2]
