"""Hostile input (issue 16): files written by someone else, or by a careless user, must never run code, touch
anything outside their folder, hang a reader or take the dashboard down. One section per defect of the issue;
each test failed on the code before the fix.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path

import pytest

from lit_rlhf.data.io import read_jsonl_tolerant
from lit_rlhf.data.limits import MAX_RESPONSES, cap_responses, contradicting_pairs
from lit_rlhf.data.rows import Comparison, DataError, ReadReport, read_rows, validate_row
from lit_rlhf.demo.labeler import Labeler

BIG = 5_000_000  # characters: a value this long must never be quoted whole in a message


def _finishes(fn, timeout: float = 20.0):
    """Run `fn` in a daemon thread; fail (instead of hanging the suite) when it blocks past `timeout`."""
    box: dict = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # handed to the test, which asserts on it
            box["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"blocked for more than {timeout} s"
    return box


# ---- 8. data readers ---------------------------------------------------------------------------------------
def test_error_messages_quote_at_most_a_few_hundred_characters(tmp_path, caplog):
    path = tmp_path / "rows.jsonl"
    with open(path, "w") as f:
        f.write(json.dumps({"prompt": "p", "responses": ["a", "b"], "ranking": ["x" * BIG, 1]}) + "\n")
        f.write(json.dumps({"prompt": "p", "responses": ["a", "b"], "ranking": [0, 1]}) + "\n")
        key = "y" * BIG
        f.write('{"prompt": "p", "' + key + '": 1, "' + key + '": 2}\n')  # ... repeated
    with pytest.raises(DataError) as err:
        read_rows(path, "comparison")
    assert len(str(err.value)) < 1000
    with caplog.at_level(logging.WARNING):
        rows, report = read_rows(path, "comparison", on_error="skip")
    assert len(rows) == 1 and len(report.skipped) == 2
    assert all(len(str(e)) < 1000 for e in report.skipped)
    assert max(len(r.getMessage()) for r in caplog.records) < 1000
    assert "characters)" in str(report.skipped[1])  # says the value was cut


def _hostile_paths(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """name -> (path, words the error must contain)."""
    folder = tmp_path / "folder.jsonl"
    folder.mkdir()
    loop = tmp_path / "loop.jsonl"
    os.symlink(loop, loop)
    fifo = tmp_path / "fifo.jsonl"
    os.mkfifo(fifo)
    zero = tmp_path / "zero.jsonl"
    os.symlink("/dev/zero", zero)
    return {
        "folder": (folder, "a folder, not a regular file"),
        "loop": (loop, "a symbolic link loop"),
        "fifo": (fifo, "a FIFO (named pipe), not a regular file"),
        "device": (zero, "a device, not a regular file"),
    }


@pytest.mark.parametrize("name", ["folder", "loop", "fifo", "device"])
def test_a_data_path_that_is_not_a_file_is_a_clear_error_not_a_hang(tmp_path, name):
    path, words = _hostile_paths(tmp_path)[name]
    box = _finishes(lambda: read_rows(path, "prompt"))
    assert isinstance(box.get("error"), DataError), box
    assert str(box["error"]) == f"{path}: {words}"
    box = _finishes(lambda: read_jsonl_tolerant(path))
    assert isinstance(box.get("error"), OSError) and words in str(box["error"]), box


def _comparison(responses, ranking):
    return validate_row({"prompt": "p", "responses": responses, "ranking": ranking}, "comparison", "f", 1)


def test_contradictory_labels_are_refused_with_the_field():
    with pytest.raises(DataError, match=r"^f:1: field 'rejected': identical to 'chosen'"):
        validate_row({"prompt": "p", "chosen": "a", "rejected": "a"}, "comparison", "f", 1)
    with pytest.raises(
        DataError, match=r"^f:1: field 'ranking\[2\]': responses\[2\] repeats a response ranked 0"
    ):
        _comparison(["a", "b", "a"], [0, 1, 2])
    assert _comparison(["a", "b", "a"], [0, 1, 0]).ranking == (0, 1, 0)  # a repeat with its own rank is fine


def test_the_dashboard_does_not_write_contradictory_labels(tmp_path):
    from dashboard.labeling import save_ranking

    path = tmp_path / "labels.jsonl"
    with pytest.raises(DataError, match="contradictory labels"):
        save_ranking(path, "p", ["same", "same"], [0, 1])
    assert not path.exists()


def test_rank_noise_never_writes_a_contradictory_row():
    ranking = Labeler(seed=3, rank_noise=2.0).rank("reverse c a b =", ["x", "x", "y", "x"])
    _comparison(["x", "x", "y", "x"], ranking)  # raises when the repeats got different ranks


def _rows(ks: list[int]) -> list[Comparison]:
    return [
        Comparison("p", tuple(f"r{i}" for i in range(k)), tuple(range(k)), source=f"c.jsonl:{n + 1}")
        for n, k in enumerate(ks)
    ]


def test_k_is_capped_with_a_message_naming_the_row_and_the_setting():
    report = ReadReport("c.jsonl", "comparison", read=2, kept=2, skipped=[])
    with pytest.raises(
        DataError, match=r"^c.jsonl:2: field 'responses': 4000 responses is more than max_responses=16"
    ):
        cap_responses(_rows([4, 4000]), report, MAX_RESPONSES, "raise")
    kept = cap_responses(_rows([4, 4000]), report, MAX_RESPONSES, "skip")
    assert [r.k for r in kept] == [4] and report.kept == 1 and len(report.skipped) == 1
    assert [r.k for r in cap_responses(_rows([4, 40]), report, 64, "raise")] == [4, 40]  # configurable


def test_comparison_data_module_applies_the_cap_and_counts_contradictions(tmp_path, tiny_dir, caplog):
    from lit_rlhf.backbone.build import load_tokenizer
    from lit_rlhf.data.comparisons import ComparisonDataModule

    path = tmp_path / "c.jsonl"
    rows = [
        {"prompt": "a b =", "responses": ["a", "b"], "ranking": [0, 1]},
        {"prompt": "a b =", "responses": ["b", "a"], "ranking": [0, 1]},  # the other labeler disagrees
        {"prompt": "c =", "responses": [*"abcdefgh", "x", "y"], "ranking": list(range(10))},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tok = load_tokenizer(str(tiny_dir / "tokenizer"))
    with pytest.raises(
        DataError, match=r"c.jsonl:3: field 'responses': 10 responses is more than max_responses=8"
    ):
        ComparisonDataModule(str(path), tokenizer=tok, max_responses=8).setup("fit")
    with caplog.at_level(logging.WARNING):
        dm = ComparisonDataModule(str(path), tokenizer=tok, max_responses=10)
        dm.setup("fit")
    assert len(dm.data["train"]) == 3
    assert "1 response pairs are ranked one way in one row and the other way in another" in caplog.text
    assert contradicting_pairs(_rows([3, 3])) == 0
    with pytest.raises(ValueError, match="max_responses must be >= 2"):
        ComparisonDataModule(str(path), max_responses=1)
