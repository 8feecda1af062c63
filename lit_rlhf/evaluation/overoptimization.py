"""Reward-model over-optimization (Gao, Schulman and Hilton 2022, "Scaling Laws for Reward Model
Overoptimization"): how the gold score and the proxy (reward-model) score move as a policy moves away from the
initial one, for RL and for best-of-n sampling.

Distances are d = sqrt(KL(pi || pi_init)) in nats^(1/2). Gao et al.'s functional forms, for the gold score
relative to the initial policy's (R(0) = 0):

    RL:          R(d) = d (alpha - beta log d)        (eq. 2)
    best-of-n:   R(d) = d (alpha - beta d)            (eq. 1), with KL_bon(n) = log n - (n - 1) / n

Lives here: the analytic KL of best-of-n, the exact expectation of a best-of-n outcome from N >= n samples per
prompt (over every n-subset, as Gao et al. estimate it), the two forms' least-squares fits with R^2 and their
peaks, and the (d, gold, proxy) points of a PPO run's evaluations.
Must not live here: models, sampling, files (lit_rlhf/evaluation/best_of_n.py, bench/overoptimization.py),
torch. Plain Python, so the dashboard fits curves without importing torch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from lit_rlhf.judges import compare_scores

Form = Literal["rl", "bon"]


def best_of_n_kl(n: int) -> float:
    """KL(best-of-n || base) = log n - (n - 1) / n nats: the analytic value for a continuous proxy (Stiennon et
    al. 2020, appendix G.3; Gao et al. 2022 eq. 1). 0 for n = 1."""
    if n < 1:
        raise ValueError(f"best-of-n needs n >= 1, got {n}")
    return math.log(n) - (n - 1) / n


def sqrt_kl(kl: float) -> float:
    """d = sqrt(KL). A sampled k1 estimate of a KL near 0 can come out slightly negative: that is distance 0."""
    return math.sqrt(max(kl, 0.0))


def subset_max_weights(big_n: int, n: int) -> list[float]:
    """P(the sample at ascending position i is the highest of a uniformly random n-subset of big_n samples).

    Position i (0-based, ascending) is the maximum exactly when it is in the subset and the other n - 1 members
    come from the i below it: C(i, n - 1) / C(big_n, n). The weights sum to 1.
    """
    if not 1 <= n <= big_n:
        raise ValueError(f"best-of-{n} needs 1 <= n <= the {big_n} samples drawn")
    total = math.comb(big_n, n)
    return [math.comb(i, n - 1) / total for i in range(big_n)]


def choice_weights(proxy: Sequence[float], n: int) -> list[float]:
    """P(sample j is the one the proxy picks from a uniformly random n-subset), for each of the N samples.

    Ties in the proxy are broken uniformly at random, so tied samples share their positions' weights equally.
    """
    order = sorted(range(len(proxy)), key=lambda j: proxy[j])
    by_position = subset_max_weights(len(proxy), n)
    out = [0.0] * len(proxy)
    start = 0
    while start < len(order):  # runs of equal proxy values: each member gets the run's mean weight
        end = start
        while end + 1 < len(order) and proxy[order[end + 1]] == proxy[order[start]]:
            end += 1
        share = sum(by_position[start : end + 1]) / (end + 1 - start)
        for pos in range(start, end + 1):
            out[order[pos]] = share
        start = end + 1
    return out


def best_of_n_expectation(proxy: Sequence[float], values: Sequence[float], n: int) -> float:
    """E[values[j*]] where j* is the sample with the highest proxy among a uniformly random n of the N samples.

    The unbiased estimate from N draws of what best-of-n gives: sum_j P(j picked) values[j] (`choice_weights`).
    """
    if len(proxy) != len(values):
        raise ValueError(f"{len(proxy)} proxy scores but {len(values)} values")
    return sum(w * v for w, v in zip(choice_weights(proxy, n), values, strict=True))


@dataclass(frozen=True)
class BestOfNPoint:
    """Best-of-n from the initial policy, averaged over prompts.

    Attributes:
        n: Samples the proxy chooses among.
        kl: The analytic KL to the initial policy, log n - (n - 1) / n nats. d: sqrt(kl).
        proxy: Mean proxy (reward-model) score of the chosen sample.
        gold: Mean gold (judge) score of the chosen sample.
        win_rate: Mean outcome of the chosen sample against the baseline sample of the same prompt (1 win,
            0.5 tie, 0 loss, by the gold score); None without baselines.
        oracle_gold: Mean gold score when the gold itself chooses (the ceiling of re-ranking n samples).
        oracle_win_rate: The win rate of that choice; None without baselines.
    """

    n: int
    kl: float
    d: float
    proxy: float
    gold: float
    win_rate: float | None
    oracle_gold: float
    oracle_win_rate: float | None


def best_of_n_curve(
    proxy: Sequence[Sequence[float]],
    gold: Sequence[Sequence[float]],
    ns: Sequence[int],
    baseline_gold: Sequence[float] | None = None,
) -> list[BestOfNPoint]:
    """Best-of-n for each n in `ns` from P prompts x N samples.

    Args:
        proxy: (P, N) proxy scores of each prompt's N samples. gold: (P, N) their gold scores.
        ns: The n to report, each at most N.
        baseline_gold: (P,) the gold score of an independent baseline sample per prompt (the initial policy's
            own sample, as a win rate vs SFT compares against), or None.
    """
    if len(proxy) != len(gold) or not proxy:
        raise ValueError(f"need the same P > 0 prompts in proxy ({len(proxy)}) and gold ({len(gold)})")
    if baseline_gold is not None and len(baseline_gold) != len(proxy):
        raise ValueError(f"{len(baseline_gold)} baseline scores for {len(proxy)} prompts")

    wins = None
    if baseline_gold is not None:  # each sample's outcome against its prompt's baseline sample
        wins = [[compare_scores(g, b) for g in row] for row, b in zip(gold, baseline_gold, strict=True)]
    return [_best_of_n_point(proxy, gold, wins, n) for n in ns]


def _best_of_n_point(
    proxy: Sequence[Sequence[float]],
    gold: Sequence[Sequence[float]],
    wins: Sequence[Sequence[float]] | None,
    n: int,
) -> BestOfNPoint:
    """One n of `best_of_n_curve`: each expectation averaged over the P prompts."""

    def mean(chooser: Sequence[Sequence[float]], values: Sequence[Sequence[float]]) -> float:
        return sum(best_of_n_expectation(c, v, n) for c, v in zip(chooser, values, strict=True)) / len(proxy)

    kl = best_of_n_kl(n)
    return BestOfNPoint(
        n=n,
        kl=kl,
        d=math.sqrt(kl),
        proxy=mean(proxy, proxy),
        gold=mean(proxy, gold),
        win_rate=None if wins is None else mean(proxy, wins),
        oracle_gold=mean(gold, gold),
        oracle_win_rate=None if wins is None else mean(gold, wins),
    )


@dataclass(frozen=True)
class GaoFit:
    """A least-squares fit of one of Gao et al.'s forms to (d, R) points.

    Attributes:
        form: ``rl`` (R = d (alpha - beta log d)) or ``bon`` (R = d (alpha - beta d)).
        alpha, beta: The coefficients. r2: 1 - SS_res / SS_tot (SS_tot about the mean of R). points: how many.
        peak_d: Where the fitted R is highest (None when it never turns down: beta <= 0).
        peak_r: The fitted R there.
    """

    form: Form
    alpha: float
    beta: float
    r2: float
    points: int
    peak_d: float | None
    peak_r: float | None

    def predict(self, d: float) -> float:
        return gao_form(self.form, d, self.alpha, self.beta)


def gao_form(form: Form, d: float, alpha: float, beta: float) -> float:
    """R(d) of the form; R(0) = 0 (d log d -> 0)."""
    if d < 0:
        raise ValueError(f"d = sqrt(KL) must be >= 0, got {d}")
    if d == 0:
        return 0.0
    return d * (alpha - beta * (math.log(d) if form == "rl" else d))


def _basis(form: Form, d: float) -> tuple[float, float]:
    """R = alpha * x1 + beta * x2: the two regressors at d."""
    if d == 0:
        return 0.0, 0.0
    return d, -d * (math.log(d) if form == "rl" else d)


def fit_gao(form: Form, d: Sequence[float], r: Sequence[float]) -> GaoFit:
    """Least-squares alpha and beta of `form` through (d, R) points, no intercept (R(0) = 0 by definition).

    R must be relative to the initial policy (its score subtracted). Raises ValueError when the points cannot
    determine two coefficients (fewer than two distinct d > 0, or collinear regressors) or hold non-finite values.
    """
    if len(d) != len(r):
        raise ValueError(f"{len(d)} distances but {len(r)} scores")
    if not all(math.isfinite(v) for v in (*d, *r)):
        raise ValueError("fit_gao: non-finite distance or score")
    xs = [_basis(form, di) for di in d]
    s11 = sum(a * a for a, _ in xs)
    s12 = sum(a * b for a, b in xs)
    s22 = sum(b * b for _, b in xs)
    t1 = sum(a * y for (a, _), y in zip(xs, r, strict=True))
    t2 = sum(b * y for (_, b), y in zip(xs, r, strict=True))
    det = s11 * s22 - s12 * s12
    if len({di for di in d if di > 0}) < 2 or abs(det) <= 1e-12 * max(s11 * s22, 1e-300):
        raise ValueError(f"fit_gao: {len(d)} points do not determine alpha and beta (need 2+ distinct d > 0)")
    alpha = (t1 * s22 - t2 * s12) / det
    beta = (s11 * t2 - s12 * t1) / det
    mean = sum(r) / len(r)
    ss_tot = sum((y - mean) ** 2 for y in r)
    ss_res = sum((y - gao_form(form, di, alpha, beta)) ** 2 for di, y in zip(d, r, strict=True))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else (1.0 if ss_res == 0 else 0.0)
    peak_d, peak_r = _peak(form, alpha, beta)
    return GaoFit(form, alpha, beta, r2, len(d), peak_d, peak_r)


def _peak(form: Form, alpha: float, beta: float) -> tuple[float | None, float | None]:
    """The maximum of R(d) for d > 0: dR/dd = 0."""
    if beta <= 0:
        return None, None
    if form == "rl":  # alpha - beta log d - beta = 0  ->  R = beta d
        d = math.exp(alpha / beta - 1.0)
        return d, beta * d
    d = alpha / (2.0 * beta)  # alpha - 2 beta d = 0
    return (d, alpha * alpha / (4.0 * beta)) if d > 0 else (None, None)


@dataclass(frozen=True)
class GoldProxyPoint:
    """One evaluation of a policy: its distance from the initial policy and both scores.

    Attributes:
        step: When it was measured (the run's logging step; -1 for the initial policy itself).
        kl: Mean KL to the initial policy per sequence (nats). d: sqrt(max(kl, 0)).
        gold: Judge score. proxy: Reward-model score.
    """

    step: int
    kl: float
    d: float
    gold: float | None
    proxy: float | None


def gold_proxy_points(
    steps: Sequence[int],
    kl: Sequence[float],
    gold: Sequence[float | None],
    proxy: Sequence[float | None],
    initial: tuple[float | None, float | None] | None = None,
) -> list[GoldProxyPoint]:
    """A run's evaluations as points by distance, the initial policy first (d = 0) when `initial` = (gold, proxy)
    of its own samples is given. Points without a finite KL are left out."""
    out = [GoldProxyPoint(-1, 0.0, 0.0, *initial)] if initial is not None else []
    for s, k, g, p in zip(steps, kl, gold, proxy, strict=True):
        if k is not None and math.isfinite(k):
            out.append(GoldProxyPoint(int(s), float(k), sqrt_kl(k), g, p))
    return out


def fit_run(points: Sequence[GoldProxyPoint]) -> GaoFit:
    """Gao et al.'s RL form fitted to a run's gold score relative to the initial policy (the d = 0 point, which
    must be first)."""
    if not points or points[0].d != 0 or points[0].gold is None:
        raise ValueError("fit_run needs the initial policy's gold score as the first point (d = 0)")
    base = points[0].gold
    kept = [p for p in points if p.gold is not None]
    return fit_gao("rl", [p.d for p in kept], [p.gold - base for p in kept])


def gold_proxy_metrics(
    kl: float | None,
    gold: float | None,
    proxy: float | None,
    initial_gold: float | None,
    initial_proxy: float | None,
) -> dict[str, float]:
    """One evaluation's gold-vs-proxy record, keyed as PPO logs it under ``ppo/eval/``.

    ``eval/kl`` (mean KL to the initial policy per sequence, nats), ``eval/sqrt_kl`` (d), ``eval/gold`` (judge
    score), ``eval/proxy`` (reward-model score), and the initial policy's own ``eval/initial_gold`` and
    ``eval/initial_proxy`` on the same prompts and seeds (the d = 0 point). Figures not measured are left out.
    """
    out = {
        "eval/kl": kl,
        "eval/sqrt_kl": None if kl is None else sqrt_kl(kl),
        "eval/gold": gold,
        "eval/proxy": proxy,
        "eval/initial_gold": initial_gold,
        "eval/initial_proxy": initial_proxy,
    }
    return {k: float(v) for k, v in out.items() if v is not None and math.isfinite(v)}


def points_from_metrics(rows: Iterable[Mapping[str, Any]], prefix: str = "ppo/") -> list[GoldProxyPoint]:
    """A run's gold-vs-proxy points from its metrics.jsonl rows (the ``<prefix>eval/*`` keys), by step, the
    initial policy first when the run logged it. A step logged twice (the final evaluation repeats the last one)
    keeps its later row; rows are taken in the order written."""
    by_step: dict[int, Mapping[str, Any]] = {}
    initial: tuple[float | None, float | None] | None = None
    for row in rows:
        step = row.get("step")
        if f"{prefix}eval/kl" not in row or not isinstance(step, int) or isinstance(step, bool):
            continue
        by_step[step] = row
        gold, proxy = row.get(f"{prefix}eval/initial_gold"), row.get(f"{prefix}eval/initial_proxy")
        if gold is not None or proxy is not None:
            initial = (gold, proxy)
    steps = sorted(by_step)
    return gold_proxy_points(
        steps,
        [by_step[s][f"{prefix}eval/kl"] for s in steps],
        [by_step[s].get(f"{prefix}eval/gold") for s in steps],
        [by_step[s].get(f"{prefix}eval/proxy") for s in steps],
        initial=initial,
    )
