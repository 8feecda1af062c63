"""The rounds report's pair arithmetic, by hand."""

import pytest

from lit_rlhf.data.rows import Comparison
from lit_rlhf.rounds import PairAccuracy, pair_accuracy, render_markdown


def test_pair_accuracy_by_hand():
    rows = [
        Comparison("p", ("right", "wrong1", "wrong2"), (0, 1, 2)),  # pairs (0,1) (0,2) (1,2)
        Comparison("q", ("a", "b"), (1, 0)),  # pair (1,0)
    ]
    scores = [[2.0, 3.0, 1.0], [0.5, 0.5]]
    correct = [[True, False, False], [False, False]]
    # (0,1): 2 < 3 miss; (0,2): 2 > 1 hit; (1,2): 3 > 1 hit; (1,0) in q: tie in score, half
    # all pairs: (0 + 1 + 1 + 0.5) / 4 = 0.625; correct vs wrong: (0,1) and (0,2) -> 1/2
    assert pair_accuracy(rows, scores, correct) == PairAccuracy(0.625, 4, 0.5, 2)
    assert pair_accuracy(rows, scores) == PairAccuracy(0.625, 4, None, 0)
    with pytest.raises(ValueError, match="row 1: 1 scores for 2 responses"):
        pair_accuracy(rows, [[1.0, 2.0, 3.0], [1.0]])


def test_rounds_markdown_has_a_row_per_round_and_the_matrix():
    cell = {"accuracy": 0.75, "pairs": 4, "correct_vs_wrong": None, "cvw_pairs": 0}
    row = {
        "round": 1,
        "rm_accuracy_sft_samples": 0.8,
        "rm_accuracy_policy_samples": 0.7,
        "rm_correct_vs_wrong_sft_samples": 0.6,
        "rm_correct_vs_wrong_policy_samples": None,
        "win_rate_vs_sft": 0.65,
        "win_rate_ci": [0.6, 0.7],
        "win_rate_vs_previous": 0.65,
        "judge_score": 0.85,
        "exact_match": 0.8,
        "kl": 0.3,
        "banned_rate_red_team": 0.01,
    }
    report = {
        "rounds": [row, {**row, "round": 2}],
        "sft": {"judge_score": 0.77, "exact_match": 0.7, "banned_rate_red_team": 0.45},
        "rm_matrix": {"round-1": {"sft": cell, "round-1": cell}},
        "held_out_sets": {"sft": "a.jsonl", "round-1": "b.jsonl"},
    }
    md = render_markdown(report)
    assert (
        "| 1 | 0.800 | 0.700 | 0.600 / n/a | 0.650 [0.600, 0.700] | 0.650 | 0.850 | 0.800 | 0.300 | 0.010 |"
        in md
    )
    assert "| 2 |" in md and "| SFT |" in md and "0.450 |" in md
    assert "| round-1 | 0.750 (n/a) | 0.750 (n/a) |" in md
