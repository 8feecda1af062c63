"""Reward-model over-optimization on the demo world (Gao, Schulman and Hilton 2022), reproduced by hand.

The demo judge plays the gold reward and the trained reward model is the proxy. Two ways of moving away from the
SFT model, plotted against d = sqrt(KL to SFT) (nats^(1/2)):

1. Best-of-n from the SFT model, n = 1, 2, 4, ..., n_max: N = n_max samples per held-out prompt, each scored by
   the reward model (proxy) and the judge (gold); the expected outcome of keeping the proxy's favourite among a
   random n of them is exact over all n-subsets (lit_rlhf.evaluation.overoptimization), at the analytic
   KL log n - (n - 1) / n. Also the judge's own favourite (the ceiling of re-ranking), and the win rate against the
   SFT model's own sample of each prompt (the same seeds as PPO's evaluation and `evaluate`).
2. PPO-ptx runs with the demo config and other KL coefficients (a small one is the over-optimization regime),
   evaluated every few iterations on the same prompts: their ppo/eval/* records.

Gao et al.'s forms are fitted to the gold score relative to the SFT model: RL d (alpha - beta log d), best-of-n
d (alpha - beta d), with R^2.

Run after the pipeline's SFT and reward stages (`python main.py pipeline --config configs/demo/pipeline.yaml`):
    python bench/overoptimization.py [--runs runs] [--name demo] [--data data/demo] [--kl-coefs 0.01:60:2 0.1:150:10 0.6:100:10]
Writes bench/results/overoptimization.{json,md,png}, and <runs>/eval/<name>-overopt/best_of_n.json, which the
dashboard's Over-optimization page draws with the PPO runs. PPO runs that already have a stage directory are
reused (delete them to redo).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness import run_main  # noqa: E402

from lit_rlhf.evaluation.overoptimization import (  # noqa: E402
    BestOfNPoint,
    GaoFit,
    best_of_n_curve,
    fit_gao,
    fit_run,
    points_from_metrics,
)
from lit_rlhf.pipeline import ppo_stage_args  # noqa: E402  (the pipeline's own PPO overrides, not a copy)

PPO_UPDATES_PER_ITERATION = 8  # configs/demo/ppo.yaml: 64 prompts / minibatch 16 x 2 epochs


def log(msg: str) -> None:
    print(f"[overoptimization] {msg}", flush=True)


# ---- 1. best-of-n from the SFT model -----------------------------------------------------------------------
def best_of_n_scores(a: argparse.Namespace, sft: Path, rm: Path) -> dict[str, Any]:
    """N samples per prompt from the SFT model, their proxy and gold scores, and the baseline sample's gold."""
    import torch

    from lit_rlhf.backbone.generate import SamplingConfig
    from lit_rlhf.data.rows import read_rows
    from lit_rlhf.evaluation.command import load_policy, sample
    from lit_rlhf.evaluation.reward_model import RewardScorer
    from lit_rlhf.judges import judge_item, load_judge

    torch.set_num_threads(a.threads)
    rows, _ = read_rows(str(Path(a.data) / "eval_prompts.jsonl"), "prompt", limit=a.prompts)
    prompts, refs = [r.prompt for r in rows], [r.reference for r in rows]
    sampling = SamplingConfig(max_new_tokens=a.max_new_tokens, do_sample=True, temperature=1.0)
    judge = load_judge(a.judge)
    policy = load_policy(str(sft), "cpu")
    # the baseline: exactly the SFT sample PPO's evaluation and `evaluate` compare against (seed, batch size)
    baseline = [t for g in sample(policy, prompts, sampling, a.eval_batch_size, a.eval_seed) for t in g.texts]
    texts: list[list[str]] = [[] for _ in prompts]  # (P, N)
    start = time.perf_counter()
    for j in range(a.n_max):  # sample j of every prompt; its own seeds, disjoint from the baseline's
        gens = sample(policy, prompts, sampling, a.batch_size, a.seed + 10_000 * (j + 1))
        for i, text in enumerate(t for g in gens for t in g.texts):
            texts[i].append(text)
    log(f"sampled {a.n_max} x {len(prompts)} completions in {time.perf_counter() - start:.0f} s")
    del policy
    scorer = RewardScorer(str(rm), device="cpu")
    flat = [t for row in texts for t in row]
    scores = scorer.score([p for p, row in zip(prompts, texts, strict=True) for _ in row], flat, a.batch_size)
    proxy = [scores[i * a.n_max : (i + 1) * a.n_max] for i in range(len(prompts))]

    def gold_of(prompt: Any, text: str, ref: str | None) -> float:
        return judge_item(judge, prompt, text, ref)["score"]

    gold = [[gold_of(p, t, r) for t in row] for p, row, r in zip(prompts, texts, refs, strict=True)]
    base_gold = [gold_of(p, t, r) for p, t, r in zip(prompts, baseline, refs, strict=True)]
    return {
        "proxy": proxy,
        "gold": gold,
        "baseline_gold": base_gold,
        "prompts": len(prompts),
        "sampling": asdict(sampling),
    }


def best_of_n_result(scores: dict[str, Any], n_max: int) -> tuple[list[BestOfNPoint], GaoFit]:
    ns = [2**k for k in range(n_max.bit_length()) if 2**k <= n_max]
    points = best_of_n_curve(scores["proxy"], scores["gold"], ns, scores["baseline_gold"])
    base = points[0].gold  # n = 1: the SFT model's mean gold score
    return points, fit_gao("bon", [p.d for p in points], [p.gold - base for p in points])


# ---- 2. PPO runs at several KL coefficients ----------------------------------------------------------------
def ppo_run_name(a: argparse.Namespace, coef: float) -> str:
    return f"{a.name}-overopt-kl{coef:g}"


def train_ppo(
    a: argparse.Namespace, coef: float, iterations: int, every: int, sft: Path, rm: Path
) -> tuple[Path, float | None]:
    """A PPO-ptx run of configs/demo/ppo.yaml with KL coefficient `coef`, evaluated every `every` iterations."""
    run = Path(a.runs) / "ppo" / ppo_run_name(a, coef)
    if (run / "stage" / "manifest.json").is_file():
        log(f"{run}: done, reused")
        return run, None
    args = [
        *(
            "fit",
            "--config",
            "configs/demo/ppo.yaml",
            "--run.root",
            a.runs,
            "--run.name",
            ppo_run_name(a, coef),
        ),
        *("--seed_everything", "0", "--trainer.max_steps", str(iterations * PPO_UPDATES_PER_ITERATION)),
        *("--model.init_args.kl.init_coef", str(coef), "--model.init_args.kl.adaptive", "false"),
        *("--model.init_args.eval.every_n_steps", str(every)),
        *("--model.init_args.eval.limit", str(a.prompts)),
        *ppo_stage_args(sft, rm, Path(a.data)),
    ]
    if (run / "checkpoints" / "last.ckpt").is_file():
        args += ["--ckpt_path", str(run / "checkpoints" / "last.ckpt")]
    return run, run_main(args, "overoptimization", cwd=ROOT)


def ppo_result(run: Path) -> dict[str, Any]:
    """The run's gold-vs-proxy points, its win rates, the RL-form fit, its alarms and its best kept checkpoint."""
    from lit_rlhf.data.io import read_jsonl_tolerant

    rows = read_jsonl_tolerant(run / "metrics.jsonl")
    points = points_from_metrics(rows)
    wins = {r["step"]: r.get("ppo/win_rate_vs_sft") for r in rows if "ppo/eval/kl" in r}
    status = json.loads((run / "status.json").read_text())
    try:
        fit = asdict(fit_run(points))
    except ValueError as e:  # too few points: say so in the results instead of failing the whole benchmark
        fit = {"error": str(e)}
    return {
        "run": str(run),
        "points": [{**asdict(p), "win_rate": wins.get(p.step)} for p in points],
        "fit": fit,
        "alarms": status.get("alarms", []),
        "best": status.get("best"),
    }


# ---- report --------------------------------------------------------------------------------------------
def _fitted(ax: Any, fit: GaoFit, base: float, top: float, color: str) -> None:
    """The fitted form, dashed, from d = 0 (the SFT score `base`) to `top`."""
    ds = [top * i / 50 for i in range(51)]
    ax.plot(ds, [base + fit.predict(d) for d in ds], "--", color=color, linewidth=0.8)


def plot(result: dict[str, Any], path: Path) -> None:
    """Two panels against d = sqrt(KL): gold (judge score) and proxy (RM score), PPO runs and best-of-n; the
    fitted Gao et al. forms dashed on the gold panel."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2))
    FigureCanvasAgg(fig)
    gold_ax, proxy_ax = fig.subplots(1, 2)
    bon = result["best_of_n"]["points"]
    for ax, key in ((gold_ax, "gold"), (proxy_ax, "proxy")):
        ax.plot(
            [p["d"] for p in bon], [p[key] for p in bon], "o-", color="black", label="best-of-n (RM picks)"
        )
        for p in bon:
            ax.annotate(str(p["n"]), (p["d"], p[key]), textcoords="offset points", xytext=(3, 3), fontsize=7)
        for coef, run in result["ppo"].items():
            pts = [p for p in run["points"] if p[key] is not None]
            line = ax.plot([p["d"] for p in pts], [p[key] for p in pts], ".-", label=f"PPO, KL coef {coef}")
            if key == "gold" and "alpha" in run["fit"]:  # Gao et al.'s RL form through the SFT point
                _fitted(
                    ax, GaoFit(**run["fit"]), pts[0]["gold"], max(p["d"] for p in pts), line[0].get_color()
                )
        ax.set_xlabel("d = sqrt(KL to SFT)  (nats^1/2)")
    gold_ax.plot(
        [p["d"] for p in bon],
        [p["oracle_gold"] for p in bon],
        "x--",
        color="grey",
        label="best-of-n (judge picks)",
    )
    _fitted(gold_ax, GaoFit(**result["best_of_n"]["fit"]), bon[0]["gold"], bon[-1]["d"], "black")
    gold_ax.set_ylabel("gold: judge score")
    proxy_ax.set_ylabel("proxy: reward-model score")
    gold_ax.set_title("gold")
    proxy_ax.set_title("proxy")
    gold_ax.legend(fontsize="small")
    fig.tight_layout()
    from lit_rlhf.atomic import staged_file

    with staged_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def _f(v: Any, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def markdown(result: dict[str, Any]) -> str:
    bon = result["best_of_n"]
    lines = [
        "# Over-optimization on the demo world",
        "",
        f"{bon['prompts']} held-out prompts; best-of-n from {bon['samples_per_prompt']} SFT samples per prompt.",
        "",
        "| best-of-n | KL | d | proxy (RM) | gold (judge) | win rate vs SFT | judge-picked gold | judge-picked win rate |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in bon["points"]:
        lines.append(
            f"| {p['n']} | {p['kl']:.3f} | {p['d']:.3f} | {p['proxy']:.3f} | {p['gold']:.3f} | {_f(p['win_rate'])} | "
            f"{p['oracle_gold']:.3f} | {_f(p['oracle_win_rate'])} |"
        )
    fit = bon["fit"]
    lines += [
        "",
        f"Best-of-n fit d(alpha - beta d): alpha {fit['alpha']:.4f}, beta {fit['beta']:.4f}, R^2 {fit['r2']:.3f}.",
        "",
    ]
    for coef, run in result["ppo"].items():
        lines += [
            f"## PPO-ptx, KL coefficient {coef}",
            "",
            "| step | KL | d | proxy (RM) | gold (judge) | win rate vs SFT |",
            "|---|---|---|---|---|---|",
        ]
        for p in run["points"]:
            step = "SFT" if p["step"] < 0 else str(p["step"])
            lines.append(
                f"| {step} | {p['kl']:.3f} | {p['d']:.3f} | {_f(p['proxy'])} | {_f(p['gold'])} | {_f(p['win_rate'])} |"
            )
        f = run["fit"]
        if "error" in f:
            lines += ["", f"RL fit: {f['error']}"]
        else:
            peak = (
                "no peak (beta <= 0)"
                if f["peak_d"] is None
                else f"peak at d {f['peak_d']:.3f} (+{f['peak_r']:.4f})"
            )
            lines += [
                "",
                f"RL fit d(alpha - beta log d): alpha {f['alpha']:.4f}, beta {f['beta']:.4f}, R^2 {f['r2']:.3f}; {peak}.",
            ]
        names = (
            ", ".join(f"{x['name']} (first at step {x['first_step']}, {x['count']}x)" for x in run["alarms"])
            or "none"
        )
        lines += [f"Alarms: {names}. Best kept checkpoint: {run['best']}.", ""]
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", default="runs")
    p.add_argument("--name", default="demo", help="the pipeline's run name (its sft and reward stages)")
    p.add_argument("--data", default="data/demo")
    p.add_argument(
        "--kl-coefs",
        nargs="+",
        default=["0.01:60:2", "0.1:150:10", "0.6:100:10"],
        help="PPO runs as COEF[:ITERATIONS[:EVAL_EVERY]] (defaults: --iterations, --eval-every)",
    )
    p.add_argument("--iterations", type=int, default=100, help="PPO iterations per run unless COEF:N says")
    p.add_argument("--eval-every", type=int, default=10, help="PPO evaluation every N iterations")
    p.add_argument("--prompts", type=int, default=300, help="held-out prompts (PPO's eval.limit too)")
    p.add_argument("--n-max", type=int, default=64, help="largest n of best-of-n (samples per prompt)")
    p.add_argument(
        "--max-new-tokens", type=int, default=16, help="as PPO's eval.sampling in configs/demo/ppo.yaml"
    )
    p.add_argument("--judge", default="demo")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--eval-seed", type=int, default=1234, help="PPO's eval.seed: the SFT baseline sample")
    p.add_argument(
        "--eval-batch-size", type=int, default=32, help="PPO's eval.batch_size (it picks the seeds)"
    )
    p.add_argument("--batch-size", type=int, default=300, help="prompts per generate call for best-of-n")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    a = p.parse_args()
    runs = Path(a.runs)
    sft, rm = runs / "sft" / a.name / "stage", runs / "reward" / a.name / "stage"
    for stage in (sft, rm):
        if not (stage / "manifest.json").is_file():
            raise SystemExit(
                f"{stage} is missing: run `python main.py pipeline --config configs/demo/pipeline.yaml` first"
            )
    out, timings = Path(a.out), {}
    out.mkdir(parents=True, exist_ok=True)
    scores_path = out / "overoptimization_scores.json.tmp"  # git-ignored: reused if the PPO part is rerun
    start = time.perf_counter()
    if scores_path.is_file():
        scores = json.loads(scores_path.read_text())
    else:
        scores = best_of_n_scores(a, sft, rm)
        scores_path.write_text(json.dumps(scores))
        timings["best_of_n"] = time.perf_counter() - start
    bon_points, bon_fit = best_of_n_result(scores, a.n_max)
    result: dict[str, Any] = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "settings": {k: v for k, v in vars(a).items() if k != "out"},
        "best_of_n": {
            "format_version": 1,
            "sft": str(sft),
            "rm": str(rm),
            "judge": a.judge,
            "prompts": scores["prompts"],
            "samples_per_prompt": a.n_max,
            "sampling": scores["sampling"],
            "points": [asdict(x) for x in bon_points],
            "fit": asdict(bon_fit),
        },
        "ppo": {},
    }
    for spec in a.kl_coefs:
        text, iterations, every = [*spec.split(":"), "", ""][:3]
        coef, iterations, every = float(text), int(iterations or a.iterations), int(every or a.eval_every)
        run, took = train_ppo(a, coef, iterations, every, sft, rm)
        if took is not None:
            timings[f"ppo_kl{coef:g}"] = took
        result["ppo"][f"{coef:g}"] = {"iterations": iterations, "eval_every": every, **ppo_result(run)}
    result["timings_s"] = timings
    result["load_average"] = os.getloadavg()
    from lit_rlhf.atomic import write_json, write_text

    dashboard = runs / "eval" / f"{a.name}-overopt"
    dashboard.mkdir(parents=True, exist_ok=True)
    write_json(dashboard / "best_of_n.json", result["best_of_n"])
    write_json(out / "overoptimization.json", result)
    write_text(out / "overoptimization.md", markdown(result))
    plot(result, out / "overoptimization.png")
    print(markdown(result))
    log(f"wrote {out / 'overoptimization.md'}, .json, .png and {dashboard / 'best_of_n.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
