"""Judges: loading by name or import path, checked scores, ranks, and the exact-match judge on row references."""

from __future__ import annotations

import math

import pytest

from lit_rlhf.judges import ExactMatchJudge, JudgeError, compare_scores, judge_item, judge_rank, load_judge


def length_judge(prompt: str, response: str) -> float:
    """A plain scoring function is a judge too: shorter is better."""
    return 1.0 / (1 + len(response.split()))


class BrokenJudge:
    def __init__(self, value: float = math.nan) -> None:
        self.value = value

    def score(self, prompt: str, response: str, reference: str | None = None) -> float:
        return self.value


def test_judges_load_by_short_name_import_path_or_none():
    assert load_judge(None) is None and load_judge("none") is None
    assert type(load_judge("exact_match")).__name__ == "ExactMatchJudge"
    assert type(load_judge("demo")).__name__ == "DemoJudge"
    assert load_judge("demo", {"rank_noise": 0.5}).labeler.rank_noise == 0.5
    fn = load_judge("tests.test_judges:length_judge")
    assert judge_item(fn, "p", "a b c") == {"score": 0.25}
    assert type(load_judge("tests.test_judges:BrokenJudge")).__name__ == "BrokenJudge"


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        ("no_colon_here", "expected 'package.module:callable'"),
        ("tests.test_judges:missing", "cannot import tests.test_judges:missing"),
        ("no.such.module:x", "cannot import no.such.module:x"),
        ("math:pi", "has no score"),
    ],
)
def test_a_judge_that_cannot_load_names_itself(spec, why):
    with pytest.raises(JudgeError, match=why):
        load_judge(spec)


@pytest.mark.parametrize("value", [math.nan, 1.5, -0.1, "high", True])
def test_a_judge_score_outside_zero_one_or_not_a_number_stops_with_the_judge_named(value):
    with pytest.raises(JudgeError, match="BrokenJudge: score"):
        judge_item(BrokenJudge(value), "p", "r")


def test_exact_match_and_ranks_by_hand():
    judge = ExactMatchJudge()
    assert judge_item(judge, "2+2?", "  4 ", "4") == {"score": 1.0, "exact_match": 1.0}
    assert judge_item(judge, "2+2?", "5", "4") == {"score": 0.0, "exact_match": 0.0}
    assert judge_item(judge, "2+2?", "4") == {}  # no reference: not judged
    assert judge_item(ExactMatchJudge(case_sensitive=False), "q", "PARIS", "Paris")["score"] == 1.0
    assert judge_rank(judge, "2+2?", ["5", "4", "4 "], "4") == [1, 0, 0]  # dense ranks, ties share one
    assert judge_rank(judge, "2+2?", ["5", "4"]) is None
    assert judge_rank(load_judge("demo"), "sort b a =", ["a b", "a", "dang"]) == [0, 1, 2]
    assert (compare_scores(0.5, 0.2), compare_scores(0.2, 0.5), compare_scores(0.3, 0.3 + 1e-9)) == (
        1.0,
        0.0,
        0.5,
    )
