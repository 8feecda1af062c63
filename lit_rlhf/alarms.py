"""Alarms while training: PPO going wrong, said while it happens instead of found after the fact.

Lives here: one pure check per alarm over a run's metric streams (each returns an `Alarm` or None), the settings
(`AlarmConfig`), and `AlarmMonitor`, which feeds the checks every PPO iteration, keeps what they need of the
history (first length and entropy, the explained-variance streak, the last evaluations), records what fired and
says whether the run should stop. Its state goes into checkpoints, so a resumed run fires as the uninterrupted
one would.
Must not live here: torch, Lightning, files. The PPO module hands the monitor its statistics and evaluations
and puts `AlarmMonitor.records()` into status.json (lit_rlhf.runs.RunStatus); the dashboard shows them.

The alarms (names as in status.json and `AlarmConfig.stop_on`):
    kl_high             rollout KL per sequence above kl_factor x the KL target
    proxy_up_gold_down  over the last `window` evaluations the reward-model score rose while the judge's fell
                        (Gao et al. 2022's over-optimization; needs a judge)
    length_collapse     mean response length under length_ratio x the first rollout's (or under 1 token)
    length_at_limit     more than limit_share of the rollouts hit max_new_tokens without ending
    entropy_collapse    policy entropy per token under entropy_ratio x the first step's
    value_ev_negative   the critic's explained variance below 0 for ev_patience iterations in a row
    clip_frac_high      more than clip_frac of the policy ratios clipped
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

ALARMS = (
    "kl_high",
    "proxy_up_gold_down",
    "length_collapse",
    "length_at_limit",
    "entropy_collapse",
    "value_ev_negative",
    "clip_frac_high",
)


@dataclass(frozen=True)
class Alarm:
    """One alarm firing: its name, the step, the numbers behind it and a sentence saying what they mean."""

    name: str
    step: int
    values: dict[str, float]
    message: str


@dataclass
class AlarmConfig:
    """When PPO raises an alarm. Checked every PPO iteration; fired alarms go to status.json and the Runs page.

    Attributes:
        kl_factor: ``kl_high`` when the rollout KL per sequence exceeds kl_factor x the KL target (``kl.target``,
            the adaptive controller's target; with a fixed coefficient it serves only this alarm).
        window: ``proxy_up_gold_down`` compares the last `window` evaluations (at least 2).
        gold_drop: ... and fires when, fitted over them, the judge's score fell by more than this while the reward
            model's rose.
        length_ratio: ``length_collapse`` when the mean response length is under this share of the first
            rollout's (or under 1 token).
        limit_share: ``length_at_limit`` when more than this share of the rollouts hit max_new_tokens.
        entropy_ratio: ``entropy_collapse`` when the policy's entropy per token is under this share of the first
            iteration's.
        ev_patience: ``value_ev_negative`` when the critic's explained variance is below 0 for this many
            iterations in a row (the critic starts from the reward model, so a few negative ones are normal).
        clip_frac: ``clip_frac_high`` when more than this share of the policy ratios were clipped.
        stop_on: Alarms that stop the run: training ends after the iteration that fired one, and the stage
            directory (and the best kept checkpoint) are written as at a normal end.
    """

    kl_factor: float = 2.0
    window: int = 3
    gold_drop: float = 0.02
    length_ratio: float = 0.3
    limit_share: float = 0.5
    entropy_ratio: float = 0.25
    ev_patience: int = 10
    clip_frac: float = 0.2
    stop_on: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        """Every invalid setting (empty when all are valid)."""
        out = []
        unknown = sorted(set(self.stop_on) - set(ALARMS))
        if unknown:
            out.append(f"alarms.stop_on: unknown alarm(s) {unknown}; known: {list(ALARMS)}")
        if self.window < 2:
            out.append(f"alarms.window must be >= 2 evaluations, got {self.window}")
        if self.ev_patience < 1:
            out.append(f"alarms.ev_patience must be >= 1, got {self.ev_patience}")
        for name in ("kl_factor", "gold_drop", "length_ratio", "limit_share", "entropy_ratio", "clip_frac"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                out.append(f"alarms.{name} must be a finite number >= 0, got {value}")
        return out


# ---- the checks: pure functions of the streams ----------------------------------------------------------
def kl_high(step: int, kl: float, target: float, factor: float) -> Alarm | None:
    """The rollout KL per sequence (nats) above `factor` x `target`, or not finite."""
    limit = factor * target
    if math.isfinite(kl) and kl <= limit:
        return None
    return Alarm(
        "kl_high",
        step,
        {"kl": kl, "target": target, "limit": limit},
        f"rollout KL {kl:.3g} nats/sequence is above {factor:g} x the target {target:g}",
    )


def slope(values: Sequence[float]) -> float:
    """Least-squares slope of `values` against 0, 1, 2, ... (0 for fewer than two values)."""
    n = len(values)
    if n < 2:
        return 0.0
    mx, my = (n - 1) / 2, sum(values) / n
    return sum((i - mx) * (v - my) for i, v in enumerate(values)) / sum((i - mx) ** 2 for i in range(n))


def proxy_up_gold_down(
    steps: Sequence[int], proxy: Sequence[float], gold: Sequence[float], window: int, gold_drop: float
) -> Alarm | None:
    """Over the last `window` evaluations, the proxy's fitted change is > 0 and the gold's is < -gold_drop.

    The fitted change (slope x (window - 1)) rather than last minus first: one noisy evaluation at either end
    should not decide it.
    """
    if len(proxy) < window or len(gold) < window:
        return None
    p, g = proxy[-window:], gold[-window:]
    proxy_change, gold_change = slope(p) * (window - 1), slope(g) * (window - 1)
    if not (proxy_change > 0 and gold_change < -gold_drop):
        return None
    return Alarm(
        "proxy_up_gold_down",
        steps[-1],
        {
            "proxy_change": proxy_change,
            "gold_change": gold_change,
            "proxy_first": p[0],
            "proxy_last": p[-1],
            "gold_first": g[0],
            "gold_last": g[-1],
            "since_step": float(steps[-window]),
        },
        f"over the last {window} evaluations the reward model's score rose by {proxy_change:.3g} while the "
        f"judge's fell by {-gold_change:.3g}: the policy is over-optimizing the reward model",
    )


def length_collapse(step: int, length: float, first_length: float, ratio: float) -> Alarm | None:
    """Mean response length (tokens) under `ratio` x the first rollout's, or under 1 token."""
    if length >= 1.0 and length >= ratio * first_length:
        return None
    return Alarm(
        "length_collapse",
        step,
        {"length": length, "first_length": first_length},
        f"mean response length {length:.3g} tokens, down from {first_length:.3g} at the first rollout",
    )


def length_at_limit(step: int, ended_frac: float, share: float) -> Alarm | None:
    """More than `share` of the rollouts reached max_new_tokens without a stop token."""
    at_limit = 1.0 - ended_frac
    if at_limit <= share:
        return None
    return Alarm(
        "length_at_limit",
        step,
        {"at_limit": at_limit},
        f"{at_limit:.0%} of the rollouts hit max_new_tokens without ending",
    )


def entropy_collapse(step: int, entropy: float, first_entropy: float, ratio: float) -> Alarm | None:
    """Policy entropy per token under `ratio` x the first iteration's."""
    if entropy >= ratio * first_entropy:
        return None
    return Alarm(
        "entropy_collapse",
        step,
        {"entropy": entropy, "first_entropy": first_entropy},
        f"policy entropy {entropy:.3g} nats/token, down from {first_entropy:.3g} at the first iteration",
    )


def value_ev_negative(step: int, explained_variance: Sequence[float], patience: int) -> Alarm | None:
    """The critic's explained variance below 0 at each of the last `patience` iterations."""
    last = explained_variance[-patience:]
    if len(last) < patience or any(ev >= 0 for ev in last):
        return None
    return Alarm(
        "value_ev_negative",
        step,
        {"explained_variance": last[-1], "iterations": float(patience)},
        f"the critic's explained variance has been negative for {patience} iterations (now {last[-1]:.3g}): "
        "its values predict the returns worse than their mean",
    )


def clip_frac_high(step: int, clip_frac: float, limit: float) -> Alarm | None:
    """More than `limit` of the policy ratios clipped in the iteration's updates."""
    if clip_frac <= limit:
        return None
    return Alarm(
        "clip_frac_high",
        step,
        {"clip_frac": clip_frac, "limit": limit},
        f"{clip_frac:.0%} of the policy ratios were clipped: the updates are too large for the trust region",
    )


# ---- the monitor ------------------------------------------------------------------------------------------
class AlarmMonitor:
    """Runs every check on a PPO run's streams, remembers what fired, and decides whether to stop.

    Args:
        cfg: The thresholds and which alarms stop the run.
        kl_target: The KL target `kl_high` multiplies (nats per sequence).
    """

    def __init__(self, cfg: AlarmConfig, kl_target: float) -> None:
        self.cfg, self.kl_target = cfg, kl_target
        self.first: dict[str, float] = {}  # response_length, entropy at the first iteration
        self.explained_variance: list[float] = []  # the last ev_patience values
        self.evals: list[tuple[int, float, float]] = []  # the last `window` (step, proxy, gold)
        self.fired: dict[str, dict[str, Any]] = {}  # name -> first_step, step, count, values, message

    def observe(
        self, step: int, stats: Mapping[str, float], evaluation: Mapping[str, float] | None = None
    ) -> list[Alarm]:
        """Check one iteration; returns the alarms that fire now (each also recorded).

        Args:
            step: The iteration's logging step.
            stats: The iteration's PPO statistics, named as logged without ``ppo/``: ``kl``, ``response_length``,
                ``ended_frac``, ``entropy``, ``explained_variance``, ``clip_frac`` (missing ones are not checked).
            evaluation: The held-out evaluation made at this iteration, if any: ``eval_rm_score`` (the proxy)
                and ``judge_score`` (the gold).
        """
        cfg, alarms = self.cfg, []

        def has(key: str) -> bool:
            return key in stats and stats[key] is not None and math.isfinite(stats[key])

        if "kl" in stats:  # a non-finite KL is itself an alarm
            alarms.append(kl_high(step, float(stats["kl"]), self.kl_target, cfg.kl_factor))
        for key in ("response_length", "entropy"):
            if has(key):
                self.first.setdefault(key, float(stats[key]))
        if has("response_length"):
            first = self.first["response_length"]
            alarms.append(length_collapse(step, stats["response_length"], first, cfg.length_ratio))
        if has("ended_frac"):
            alarms.append(length_at_limit(step, stats["ended_frac"], cfg.limit_share))
        if has("entropy"):
            alarms.append(entropy_collapse(step, stats["entropy"], self.first["entropy"], cfg.entropy_ratio))
        if has("explained_variance"):
            self.explained_variance = [*self.explained_variance, stats["explained_variance"]][
                -cfg.ev_patience :
            ]
            alarms.append(value_ev_negative(step, self.explained_variance, cfg.ev_patience))
        if has("clip_frac"):
            alarms.append(clip_frac_high(step, stats["clip_frac"], cfg.clip_frac))
        alarms.append(self._observe_eval(step, evaluation or {}))
        fired = [a for a in alarms if a is not None]
        for alarm in fired:
            self._record(alarm)
        return fired

    def _observe_eval(self, step: int, evaluation: Mapping[str, float]) -> Alarm | None:
        proxy, gold = evaluation.get("eval_rm_score"), evaluation.get("judge_score")
        if proxy is None or gold is None or not (math.isfinite(proxy) and math.isfinite(gold)):
            return None
        self.evals = [*self.evals, (step, float(proxy), float(gold))][-self.cfg.window :]
        steps, proxies, golds = zip(*self.evals, strict=True)
        return proxy_up_gold_down(steps, proxies, golds, self.cfg.window, self.cfg.gold_drop)

    def _record(self, alarm: Alarm) -> None:
        if alarm.name not in self.fired:
            log.warning("alarm %s at step %d: %s", alarm.name, alarm.step, alarm.message)
        previous = self.fired.get(alarm.name, {"first_step": alarm.step, "count": 0})
        self.fired[alarm.name] = {
            "name": alarm.name,
            "first_step": previous["first_step"],
            "step": alarm.step,
            "count": previous["count"] + 1,
            "values": {k: v for k, v in alarm.values.items() if math.isfinite(v)},  # status.json is JSON
            "message": alarm.message,
        }

    def stops(self, fired: Sequence[Alarm]) -> list[str]:
        """The names among `fired` that `stop_on` lists."""
        return [a.name for a in fired if a.name in self.cfg.stop_on]

    def records(self) -> list[dict[str, Any]]:
        """Every alarm fired so far, once per name, in the order they first fired: name, first_step, step (the
        latest), count, values and message of the latest firing."""
        return sorted(self.fired.values(), key=lambda r: (r["first_step"], r["name"]))

    def state_dict(self) -> dict[str, Any]:
        return {
            "first": dict(self.first),
            "explained_variance": list(self.explained_variance),
            "evals": [list(e) for e in self.evals],
            "fired": {k: dict(v) for k, v in self.fired.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.first = dict(state.get("first", {}))
        self.explained_variance = list(state.get("explained_variance", []))
        self.evals = [(int(s), float(p), float(g)) for s, p, g in state.get("evals", [])]
        self.fired = {k: dict(v) for k, v in state.get("fired", {}).items()}
