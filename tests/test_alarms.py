"""Alarms on synthetic metric streams: each fires at the step its threshold says, with the numbers behind it."""

from __future__ import annotations

import pytest

from lit_rlhf.alarms import (
    ALARMS,
    AlarmConfig,
    AlarmMonitor,
    clip_frac_high,
    entropy_collapse,
    kl_high,
    length_at_limit,
    length_collapse,
    proxy_up_gold_down,
    slope,
    value_ev_negative,
)


def _stream(monitor: AlarmMonitor, key: str, values: list[float]) -> list[tuple[int, str]]:
    """Feed one statistic step by step; the (step, name) of every alarm that fired."""
    return [(step, a.name) for step, v in enumerate(values) for a in monitor.observe(step, {key: v})]


def test_kl_high_fires_above_factor_times_target():
    monitor = AlarmMonitor(AlarmConfig(kl_factor=2.0), kl_target=1.0)
    assert _stream(monitor, "kl", [0.5, 1.0, 2.0, 2.5]) == [(3, "kl_high")]  # 2.0 is the limit itself
    assert monitor.records()[0]["values"] == {"kl": 2.5, "target": 1.0, "limit": 2.0}
    assert kl_high(7, float("nan"), 1.0, 2.0).values["limit"] == 2.0  # a NaN KL is an alarm too


def test_slope_by_hand():
    assert slope([0.80, 0.82, 0.79]) == pytest.approx(-0.005)
    assert slope([1.0]) == 0.0


def test_proxy_up_gold_down_fires_on_the_fitted_changes():
    monitor = AlarmMonitor(AlarmConfig(window=3, gold_drop=0.02), kl_target=1.0)
    evals = [(1.0, 0.80), (1.2, 0.82), (1.4, 0.79), (1.6, 0.76)]
    fired = [
        (a.step, a.name)
        for i, (proxy, gold) in enumerate(evals)
        for a in monitor.observe(i * 25, {}, {"eval_rm_score": proxy, "judge_score": gold})
    ]
    # at the third evaluation the gold's fitted change is -0.01 (not below -0.02); at the fourth -0.06
    assert fired == [(75, "proxy_up_gold_down")]
    values = monitor.records()[0]["values"]
    assert values["gold_change"] == pytest.approx(-0.06) and values["proxy_change"] == pytest.approx(0.4)
    assert values["since_step"] == 25.0
    # without a judge there is no gold: never fires
    blind = AlarmMonitor(AlarmConfig(window=2), kl_target=1.0)
    assert not [a for p in (1.0, 2.0, 3.0) for a in blind.observe(0, {}, {"eval_rm_score": p})]


def test_proxy_and_gold_rising_together_is_no_alarm():
    assert proxy_up_gold_down([0, 1, 2], [1.0, 1.1, 1.2], [0.7, 0.75, 0.8], 3, 0.0) is None
    assert proxy_up_gold_down([0, 1], [1.0, 1.1], [0.7, 0.6], 3, 0.0) is None  # fewer than `window`


def test_length_collapse_is_relative_to_the_first_rollout():
    monitor = AlarmMonitor(AlarmConfig(length_ratio=0.3), kl_target=1.0)
    assert _stream(monitor, "response_length", [6.0, 4.0, 2.0, 1.7]) == [(3, "length_collapse")]
    assert length_collapse(0, 0.9, 0.9, 0.3) is not None  # under one token is a collapse whatever the start


def test_length_at_limit_counts_rollouts_that_did_not_end():
    monitor = AlarmMonitor(AlarmConfig(limit_share=0.5), kl_target=1.0)
    assert _stream(monitor, "ended_frac", [1.0, 0.6, 0.4]) == [(2, "length_at_limit")]
    assert length_at_limit(2, 0.4, 0.5).values == {"at_limit": pytest.approx(0.6)}


def test_entropy_collapse_is_relative_to_the_first_iteration():
    monitor = AlarmMonitor(AlarmConfig(entropy_ratio=0.25), kl_target=1.0)
    assert _stream(monitor, "entropy", [0.8, 0.3, 0.19]) == [(2, "entropy_collapse")]
    assert entropy_collapse(2, 0.19, 0.8, 0.25).values == {"entropy": 0.19, "first_entropy": 0.8}


def test_negative_explained_variance_must_last_ev_patience_iterations():
    monitor = AlarmMonitor(AlarmConfig(ev_patience=3), kl_target=1.0)
    stream = [-0.5, -0.2, 0.1, -0.1, -0.2, -0.3, -0.4]
    assert _stream(monitor, "explained_variance", stream) == [
        (5, "value_ev_negative"),
        (6, "value_ev_negative"),
    ]
    assert value_ev_negative(0, [-0.1, -0.2], 3) is None


def test_clip_frac_high():
    monitor = AlarmMonitor(AlarmConfig(clip_frac=0.2), kl_target=1.0)
    assert _stream(monitor, "clip_frac", [0.1, 0.2, 0.25]) == [(2, "clip_frac_high")]
    assert clip_frac_high(2, 0.25, 0.2).message.startswith("25% of the policy ratios")


def test_records_keep_first_and_latest_firing_and_stop_on_selects():
    monitor = AlarmMonitor(AlarmConfig(clip_frac=0.2, stop_on=["kl_high"]), kl_target=1.0)
    monitor.observe(0, {"clip_frac": 0.3, "kl": 0.1})
    fired = monitor.observe(1, {"clip_frac": 0.4, "kl": 5.0})
    assert monitor.stops(fired) == ["kl_high"]
    clip, kl = monitor.records()
    assert (clip["name"], clip["first_step"], clip["step"], clip["count"]) == ("clip_frac_high", 0, 1, 2)
    assert clip["values"]["clip_frac"] == 0.4 and kl["first_step"] == 1


def test_state_round_trip_fires_as_the_uninterrupted_monitor():
    cfg = AlarmConfig(ev_patience=2, window=2, gold_drop=0.0)
    stream = [
        ({"explained_variance": -0.1, "entropy": 1.0}, {"eval_rm_score": 1.0, "judge_score": 0.8}),
        ({"explained_variance": -0.2, "entropy": 0.2}, {"eval_rm_score": 1.5, "judge_score": 0.7}),
    ]
    whole = AlarmMonitor(cfg, 1.0)
    expected = [[a.name for a in whole.observe(i, *s)] for i, s in enumerate(stream)]
    first = AlarmMonitor(cfg, 1.0)
    first.observe(0, *stream[0])
    resumed = AlarmMonitor(cfg, 1.0)
    resumed.load_state_dict(first.state_dict())
    assert [a.name for a in resumed.observe(1, *stream[1])] == expected[1]
    assert sorted(expected[1]) == ["entropy_collapse", "proxy_up_gold_down", "value_ev_negative"]
    assert resumed.records() == whole.records()


def test_config_problems_are_collected():
    problems = AlarmConfig(stop_on=["kl_high", "nope"], window=1, clip_frac=float("nan")).problems()
    assert problems == [
        f"alarms.stop_on: unknown alarm(s) ['nope']; known: {list(ALARMS)}",
        "alarms.window must be >= 2 evaluations, got 1",
        "alarms.clip_frac must be a finite number >= 0, got nan",
    ]
    assert AlarmConfig().problems() == []
