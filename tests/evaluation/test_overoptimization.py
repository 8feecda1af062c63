"""Over-optimization math (Gao et al. 2022) against hand-computed values and brute-force enumeration."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lit_rlhf.evaluation.overoptimization import (
    best_of_n_curve,
    best_of_n_expectation,
    best_of_n_kl,
    choice_weights,
    fit_gao,
    fit_run,
    gao_form,
    gold_proxy_points,
    sqrt_kl,
    subset_max_weights,
)


def test_best_of_n_kl_by_hand():
    assert best_of_n_kl(1) == 0.0
    assert best_of_n_kl(2) == pytest.approx(0.6931471805599453 - 0.5)
    assert best_of_n_kl(4) == pytest.approx(1.3862943611198906 - 0.75)
    assert best_of_n_kl(64) == pytest.approx(4.1588830833596715 - 63 / 64)
    with pytest.raises(ValueError, match="n >= 1"):
        best_of_n_kl(0)


def test_sqrt_kl_treats_a_slightly_negative_estimate_as_zero():
    assert sqrt_kl(0.25) == 0.5
    assert sqrt_kl(-0.01) == 0.0


def test_subset_max_weights_by_hand():
    # 4 samples, pairs: position i is the max of C(i, 1) of the C(4, 2) = 6 pairs
    assert subset_max_weights(4, 2) == pytest.approx([0.0, 1 / 6, 2 / 6, 3 / 6])
    assert subset_max_weights(3, 1) == pytest.approx([1 / 3] * 3)
    assert subset_max_weights(3, 3) == pytest.approx([0.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="1 <= n <= the 3 samples"):
        subset_max_weights(3, 4)


def test_choice_weights_share_ties_by_hand():
    # sorted: 0.0 (#3), 1 (#0), 1 (#1), 3 (#2); pairs {0,1} split the tie, so #0 and #1 get (0.5 + 1) / 6 each
    assert choice_weights([1.0, 1.0, 3.0, 0.0], 2) == pytest.approx([0.25, 0.25, 0.5, 0.0])


def _enumerated(proxy: list[float], n: int) -> list[float]:
    """P(pick j) by listing every n-subset and splitting ties evenly: independent of the closed form."""
    out = [0.0] * len(proxy)
    subsets = list(itertools.combinations(range(len(proxy)), n))
    for subset in subsets:
        top = max(proxy[j] for j in subset)
        tied = [j for j in subset if proxy[j] == top]
        for j in tied:
            out[j] += 1 / len(tied) / len(subsets)
    return out


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 4).map(float), min_size=1, max_size=7), st.data())
def test_choice_weights_equal_brute_force_enumeration(proxy, data):
    n = data.draw(st.integers(1, len(proxy)))
    assert choice_weights(proxy, n) == pytest.approx(_enumerated(proxy, n), abs=1e-12)


def test_best_of_n_expectation_by_hand():
    # pairs of [0.1, 0.5, 0.9] by proxy: {0,1} -> 1, {0,2} -> 2, {1,2} -> 2: values 20, 30, 30
    assert best_of_n_expectation([0.1, 0.5, 0.9], [10.0, 20.0, 30.0], 2) == pytest.approx(80 / 3)
    assert best_of_n_expectation([0.1, 0.5, 0.9], [10.0, 20.0, 30.0], 1) == pytest.approx(20.0)
    with pytest.raises(ValueError, match="3 proxy scores but 2 values"):
        best_of_n_expectation([0.1, 0.5, 0.9], [1.0, 2.0], 1)


def test_best_of_n_curve_by_hand():
    # one prompt, two samples: the proxy prefers the one the gold dislikes
    points = best_of_n_curve([[0.2, 0.9]], [[1.0, 0.0]], [1, 2], baseline_gold=[0.5])
    one, two = points
    assert (one.n, one.kl, one.d) == (1, 0.0, 0.0)
    assert (one.proxy, one.gold, one.win_rate) == pytest.approx((0.55, 0.5, 0.5))
    assert (two.proxy, two.gold, two.win_rate) == pytest.approx((0.9, 0.0, 0.0))
    assert two.d == pytest.approx(math.sqrt(math.log(2) - 0.5))
    assert (two.oracle_gold, two.oracle_win_rate) == pytest.approx((1.0, 1.0))
    assert best_of_n_curve([[0.2, 0.9]], [[1.0, 0.0]], [2])[0].win_rate is None


def test_gao_rl_fit_recovers_its_coefficients_and_peak_by_hand():
    # alpha 1, beta 0.5: R(1) = 1, R(e) = e (1 - 0.5); the peak is at d = exp(alpha / beta - 1) = e, R = beta e
    fit = fit_gao("rl", [0.0, 1.0, math.e], [0.0, 1.0, math.e / 2])
    assert (fit.alpha, fit.beta, fit.r2, fit.points) == pytest.approx((1.0, 0.5, 1.0, 3))
    assert (fit.peak_d, fit.peak_r) == pytest.approx((math.e, math.e / 2))
    assert fit.predict(1.0) == pytest.approx(1.0)


def test_gao_bon_fit_by_hand():
    # regressors (d, -d^2) at d = 1, 2, 3 and R = 1, 1, 0.5: normal equations give alpha 99/76, beta 29/76;
    # residuals 6/76, -6/76, 2/76, SS_res = 1/76, SS_tot = 1/6
    fit = fit_gao("bon", [1.0, 2.0, 3.0], [1.0, 1.0, 0.5])
    assert (fit.alpha, fit.beta) == pytest.approx((99 / 76, 29 / 76))
    assert fit.r2 == pytest.approx(1 - 6 / 76)
    assert (fit.peak_d, fit.peak_r) == pytest.approx((99 / 58, 9801 / 8816))


def test_gao_fit_refuses_points_that_cannot_determine_it():
    with pytest.raises(ValueError, match="need 2\\+ distinct d > 0"):
        fit_gao("rl", [0.0, 1.0, 1.0], [0.0, 0.3, 0.4])
    with pytest.raises(ValueError, match="non-finite"):
        fit_gao("rl", [1.0, 2.0], [0.1, float("nan")])


def test_a_curve_that_never_turns_down_has_no_peak():
    fit = fit_gao("rl", [1.0, 2.0, 4.0], [1.0, 2.0 + 2 * 0.1 * math.log(2), 4.0 + 4 * 0.1 * math.log(4)])
    assert fit.beta == pytest.approx(-0.1) and fit.peak_d is None and fit.peak_r is None


def test_gao_form_at_zero_is_zero():
    assert gao_form("rl", 0.0, 3.0, 1.0) == 0.0
    with pytest.raises(ValueError, match=">= 0"):
        gao_form("bon", -1.0, 1.0, 1.0)


def test_gold_proxy_points_and_run_fit_are_relative_to_the_initial_policy():
    # gold = 0.5 + d (1 - 0.5 log d) at d = 1 and e (KL 1 and e^2); a step without KL is left out
    points = gold_proxy_points(
        [24, 49, 74],
        [1.0, math.e**2, float("nan")],
        [1.5, 0.5 + math.e / 2, 0.9],
        [2.0, 3.0, 4.0],
        initial=(0.5, 1.0),
    )
    assert [p.step for p in points] == [-1, 24, 49]
    assert [p.d for p in points] == pytest.approx([0.0, 1.0, math.e])
    assert [p.proxy for p in points] == [1.0, 2.0, 3.0]
    fit = fit_run(points)
    assert (fit.alpha, fit.beta, fit.r2) == pytest.approx((1.0, 0.5, 1.0))
    with pytest.raises(ValueError, match="initial policy's gold score"):
        fit_run(points[1:])


def test_gold_proxy_metrics_names_and_leaves_out_what_was_not_measured():
    from lit_rlhf.evaluation.overoptimization import gold_proxy_metrics

    assert gold_proxy_metrics(0.25, 0.8, 1.5, 0.7, 1.0) == {
        "eval/kl": 0.25,
        "eval/sqrt_kl": 0.5,
        "eval/gold": 0.8,
        "eval/proxy": 1.5,
        "eval/initial_gold": 0.7,
        "eval/initial_proxy": 1.0,
    }
    assert gold_proxy_metrics(-0.01, None, 2.0, None, float("nan")) == {
        "eval/kl": -0.01,
        "eval/sqrt_kl": 0.0,
        "eval/proxy": 2.0,
    }


def test_points_from_metrics_rows_take_the_later_row_of_a_step_and_the_initial_point():
    from lit_rlhf.evaluation.overoptimization import points_from_metrics

    rows = [
        {"step": 7, "ppo/kl": 0.3},  # a training row: not an evaluation
        {
            "step": 24,
            "ppo/eval/kl": 0.25,
            "ppo/eval/gold": 0.8,
            "ppo/eval/proxy": 1.2,
            "ppo/eval/initial_gold": 0.7,
        },
        {
            "step": 49,
            "ppo/eval/kl": 1.0,
            "ppo/eval/gold": 0.9,
            "ppo/eval/proxy": 1.5,
            "ppo/eval/initial_gold": 0.7,
        },
        {"step": 49, "ppo/eval/kl": 1.0, "ppo/eval/gold": 0.91, "ppo/eval/proxy": 1.5},
        {"step": 1.5, "ppo/eval/kl": 9.0},  # not an integer step
    ]
    points = points_from_metrics(rows)
    assert [(p.step, p.d, p.gold, p.proxy) for p in points] == [
        (-1, 0.0, 0.7, None),
        (24, 0.5, 0.8, 1.2),
        (49, 1.0, 0.91, 1.5),
    ]
    assert points_from_metrics([{"step": 3, "ppo/kl": 1.0}]) == []
