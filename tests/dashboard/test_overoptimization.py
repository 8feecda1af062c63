"""The Over-optimization page: a PPO run's gold and proxy against sqrt(KL), its Gao et al. fit, best-of-n files."""

from __future__ import annotations

import json
import math

import pytest

from dashboard import loaders

from .helpers import status, write_json, write_jsonl
from .test_app import chart_frames, open_page

PAGE = "pages/overoptimization.py"
E = math.e
# gold = 0.5 + d (0.2 - 0.1 log d) at d = 1, e, e^2 (KL = d^2): the RL form with alpha 0.2, beta 0.1
EVALS = [(24, 1.0, 0.7, 1.3), (49, E**2, 0.5 + E * 0.1, 1.6), (74, E**4, 0.5, 2.0)]
BEST_OF_N = {
    "format_version": 1,
    "points": [
        {
            "n": 1,
            "kl": 0.0,
            "d": 0.0,
            "proxy": 1.0,
            "gold": 0.5,
            "win_rate": 0.5,
            "oracle_gold": 0.5,
            "oracle_win_rate": 0.5,
        },
        {
            "n": 2,
            "kl": 0.25,
            "d": 0.5,
            "proxy": 1.4,
            "gold": 0.575,
            "win_rate": 0.55,
            "oracle_gold": 0.6,
            "oracle_win_rate": 0.6,
        },
        {
            "n": 4,
            "kl": 1.0,
            "d": 1.0,
            "proxy": 1.7,
            "gold": 0.6,
            "win_rate": 0.56,
            "oracle_gold": 0.7,
            "oracle_win_rate": 0.7,
        },
    ],
}


def _write(root) -> None:
    run = root / "ppo" / "lowkl"
    write_json(run / "status.json", status("ppo", "lowkl", "finished", 600))
    rows = [{"step": 7, "time": 1.0, "ppo/kl": 0.5}]
    for step, kl, gold, proxy in EVALS:
        rows.append(
            {
                "step": step,
                "time": 2.0,
                "ppo/eval/kl": kl,
                "ppo/eval/sqrt_kl": math.sqrt(kl),
                "ppo/eval/gold": gold,
                "ppo/eval/proxy": proxy,
                "ppo/eval/initial_gold": 0.5,
                "ppo/eval/initial_proxy": 1.0,
            }
        )
    write_jsonl(run / "metrics.jsonl", rows)
    write_json(root / "eval" / "bon" / "best_of_n.json", BEST_OF_N)


def test_points_fits_and_best_of_n_from_the_files(runs_root):
    _write(runs_root)
    frame = loaders.metrics_frame(json.loads(line) for line in (runs_root / "ppo/lowkl/metrics.jsonl").open())
    points = loaders.gold_proxy_points(frame)
    assert [(p.step, p.gold, p.proxy) for p in points] == [
        (-1, 0.5, 1.0),
        *((s, g, x) for s, _, g, x in EVALS),
    ]
    assert [p.d for p in points] == pytest.approx([0.0, 1.0, E, E**2])
    (curve,), problems = loaders.find_best_of_n(runs_root)
    assert problems == [] and curve.label == "eval/bon" and curve.points["n"].tolist() == [1.0, 2.0, 4.0]
    fits = loaders.fits_table({"ppo/lowkl": points}, [curve]).set_index("series")
    rl = fits.loc["ppo/lowkl"]
    assert (rl["alpha"], rl["beta"], rl["r2"], rl["points"]) == pytest.approx((0.2, 0.1, 1.0, 4))
    assert (rl["peak_d"], rl["peak_gain"]) == pytest.approx((E, 0.1 * E))
    # best-of-n: gold - 0.5 = d (alpha - beta d) through (0.5, 0.075) and (1, 0.1): alpha 0.2, beta 0.1
    bon = fits.loc["eval/bon best-of-n"]
    assert (bon["alpha"], bon["beta"], bon["r2"]) == pytest.approx((0.2, 0.1, 1.0))


def test_long_data_has_both_measures_the_fit_and_both_best_of_n_picks(runs_root):
    _write(runs_root)
    points = loaders.gold_proxy_points(
        loaders.metrics_frame(json.loads(x) for x in (runs_root / "ppo/lowkl/metrics.jsonl").open())
    )
    (curve,), _ = loaders.find_best_of_n(runs_root)
    data = loaders.overoptimization_long({"ppo/lowkl": points}, [curve], fit_points=4)
    measured = data[data["kind"] == "point"]
    assert sorted(set(measured["series"])) == [
        "eval/bon best-of-n (RM picks)",
        "eval/bon best-of-n (judge picks)",
        "ppo/lowkl",
    ]
    assert measured[(measured["series"] == "ppo/lowkl") & (measured["measure"] == "proxy")][
        "value"
    ].tolist() == [
        1.0,
        1.3,
        1.6,
        2.0,
    ]
    fit = data[data["kind"] == "fit"]
    assert fit["d"].tolist() == pytest.approx([E**2 * i / 4 for i in range(5)])
    assert fit["value"].tolist() == pytest.approx(
        [0.5 + (0 if d == 0 else d * (0.2 - 0.1 * math.log(d))) for d in fit["d"]]
    )


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"points": []}, "field 'points': expected an array of 1 to 64 objects"),
        ({"points": [{"n": 1, "d": 0.0, "proxy": 1.0}]}, "field 'points[0].gold': expected a finite number"),
        ({"points": ["x"]}, "field 'points[0]': expected an object"),
    ],
)
def test_a_bad_best_of_n_file_is_a_problem_naming_the_field(tmp_path, body, problem):
    write_json(tmp_path / "eval" / "x" / "best_of_n.json", body)
    curves, problems = loaders.find_best_of_n(tmp_path)
    assert curves == [] and problems == [f"{tmp_path / 'eval' / 'x' / 'best_of_n.json'}: {problem}"]


def test_page_draws_gold_and_proxy_with_the_fit_table(runs_root, monkeypatch):
    monkeypatch.setenv("LIT_RLHF_RUNS", str(runs_root))
    _write(runs_root)
    at = open_page(runs_root, PAGE)
    assert at.multiselect[0].value == ["ppo/lowkl"]
    gold, proxy = chart_frames(at)
    assert set(gold["measure"]) == {"gold"} and set(proxy["measure"]) == {"proxy"}
    assert "ppo/lowkl (fit)" in set(gold["series"])
    fits = at.dataframe[0].value.set_index("series")
    assert fits.loc["ppo/lowkl", "alpha"] == pytest.approx(0.2)
    at.multiselect[0].set_value([]).run()  # best-of-n alone still draws
    assert not at.exception and len(chart_frames(at)) == 2


def test_page_without_evaluations_says_how_to_get_them(runs_root, monkeypatch):
    monkeypatch.setenv("LIT_RLHF_RUNS", str(runs_root))
    at = open_page(runs_root, PAGE)
    assert "python bench/overoptimization.py" in at.code[0].value
    assert isinstance(at.info[0].value, str) and not len(at.get("vega_lite_chart"))
