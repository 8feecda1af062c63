"""dashboard.labeling.save_ranking: validated, appended, and readable by the reward stage's reader."""

from __future__ import annotations

import pytest

from dashboard.labeling import save_ranking
from lit_rlhf.data.rows import Comparison, DataError, read_rows


def test_saved_rankings_load_back_as_comparisons(tmp_path):
    path = tmp_path / "new" / "comparisons.jsonl"
    save_ranking(path, "sort b a =", ["a b", "b a", "a b"], [0, 2, 0])
    save_ranking(path, "add 1 1 =", ["2", "3"], [0, 1])
    rows, report = read_rows(path, "comparison")
    assert rows == [
        Comparison("sort b a =", ("a b", "b a", "a b"), (0, 2, 0)),
        Comparison("add 1 1 =", ("2", "3"), (0, 1)),
    ]
    assert report.kept == 2 and report.skipped == []


def test_an_invalid_ranking_is_not_written_and_the_error_names_line_and_field(tmp_path):
    path = tmp_path / "comparisons.jsonl"
    path.write_bytes(b'{"prompt": "p", "responses": ["a", "b"], "ranking": [1, 0]}\n')
    with pytest.raises(DataError) as err:
        save_ranking(path, "p", ["a", "b"], [1, 1])
    assert (
        str(err.value)
        == f"{path}:2: field 'ranking': all 2 responses tied (rank 1): the row holds no comparison"
    )
    with pytest.raises(DataError, match=r":2: field 'ranking\[1\]': rank 2 out of range \[0, 1\]"):
        save_ranking(path, "p", ["a", "b"], [0, 2])
    with pytest.raises(DataError, match=r":2: field 'responses\[0\]': must not be empty"):
        save_ranking(path, "p", [" ", "b"], [0, 1])
    assert path.read_bytes() == b'{"prompt": "p", "responses": ["a", "b"], "ranking": [1, 0]}\n'


def test_line_number_counts_a_half_written_last_line(tmp_path):
    path = tmp_path / "comparisons.jsonl"
    path.write_bytes(b'{"prompt": "p", "responses": ["a", "b"], "ranking": [1, 0]}\n{"prompt": "q", "resp')
    with pytest.raises(DataError, match=rf"^{path}:3: field 'prompt'"):
        save_ranking(path, "", ["a", "b"], [0, 1])
    assert not (tmp_path / "missing.jsonl").exists()
    with pytest.raises(DataError, match=r"missing\.jsonl:1: "):
        save_ranking(tmp_path / "missing.jsonl", "p", ["a"], [0])
    assert not (tmp_path / "missing.jsonl").exists()
