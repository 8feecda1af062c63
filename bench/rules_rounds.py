"""Issue 14 on the demo world, side by side (run by hand; writes bench/results/rules_rounds.{json,md}).

Same data, seed and PPO compute (800 optimizer steps in all), cumulative variants:
  1. pref      preference reward model alone (configs/demo/pipeline.yaml, as before)
  2. rules     + rule heads (Sparrow): the judge labels banned_word and answer_format, the reward model learns them,
               PPO's combined reward adds log P(rule followed) per rule
  3. rounds    + 2 rounds (InstructGPT): configs/demo/pipeline-rules.yaml, 400 PPO steps per round
  4. verified  + the demo's answer check as a programmatic reward (configs/demo/pipeline-verified.yaml)
Every variant gets the same SFT stage (trained once, then copied: the run is deterministic for the seed) and the
same comparisons of SFT samples. Figures: win rate vs SFT on the 300 held-out prompts, judge score, exact match,
KL, the banned-word rate on the 200 held-out red-teaming prompts (SFT's beside it), and each round's reward model's
accuracy on correct-vs-wrong pairs of the current policy's samples.

Run: python bench/rules_rounds.py [--runs runs] [--data data/demo] [--only pref rules ...]
Existing stages and reports are reused (delete them to redo); variants run one after the other, never at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness import write_report  # noqa: E402

from lit_rlhf.pipeline import Pipeline, PipelineConfig  # noqa: E402

VARIANTS = {
    "pref": ("configs/demo/pipeline.yaml", {"name": "demo-pref"}),
    "rules": ("configs/demo/pipeline.yaml", {"name": "demo-rules1", "rules": True}),
    "rounds": ("configs/demo/pipeline-rules.yaml", {"name": "demo-rules"}),
    "verified": ("configs/demo/pipeline-verified.yaml", {"name": "demo-verified"}),
}
LABELS = {
    "pref": "preference RM alone",
    "rules": "+ rule heads",
    "rounds": "+ 2 rounds (400 + 400 PPO steps)",
    "verified": "+ answer check (programmatic reward, weight 2)",
}


def config(variant: str, runs: str, data: str) -> PipelineConfig:
    path, overrides = VARIANTS[variant]
    cfg = PipelineConfig.from_yaml(ROOT / path)
    return dataclasses.replace(cfg, runs_root=runs, data_dir=data, **overrides)


def share(src: Path, dst: Path) -> None:
    """Copy a finished run directory or data file to another variant's name (hard links where possible)."""
    if dst.exists() or not src.exists():
        return
    print(f"[rules_rounds] sharing {src} -> {dst}", flush=True)
    if src.is_dir():
        shutil.copytree(src, dst, copy_function=os.link)
    else:
        shutil.copy2(src, dst)


def share_sft_stages(cfg: PipelineConfig, donors: list[PipelineConfig]) -> None:
    """The SFT run and the comparisons (rule labels) of its samples, from a variant that has them."""
    runs, data = Path(cfg.runs_root), Path(cfg.data_dir)
    for donor in donors:
        if (runs / "sft" / donor.name / "stage" / "manifest.json").is_file():
            share(runs / "sft" / donor.name, runs / "sft" / cfg.name)
            break
    for donor in donors:
        names = ["comparisons"] + (["rules"] if cfg.rules else [])
        files = [
            (data / f"{n}_{donor.name}_{s}.jsonl", data / f"{n}_{cfg.name}_{s}.jsonl")
            for n in names
            for s in ("train", "val")
        ]
        if all(src.is_file() for src, _ in files):
            for src, dst in files:
                share(src, dst)
            break


def figures(cfg: PipelineConfig) -> dict:
    out = Path(cfg.runs_root) / "eval" / cfg.name
    rounds = json.loads((out / "rounds.json").read_text())
    last = rounds["rounds"][-1]
    return {
        "name": cfg.name,
        "rounds": rounds["rounds"],
        "sft": rounds["sft"],
        "win_rate_vs_sft": last["win_rate_vs_sft"],
        "win_rate_ci": last["win_rate_ci"],
        "judge_score": last["judge_score"],
        "exact_match": last["exact_match"],
        "kl": last["kl"],
        "banned_rate_red_team": last["banned_rate_red_team"],
        "rm_correct_vs_wrong_policy_samples": [
            r["rm_correct_vs_wrong_policy_samples"] for r in rounds["rounds"]
        ],
        "rm_matrix": rounds["rm_matrix"],
    }


def _f(v, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def markdown(result: dict) -> str:
    lines = [
        "## Rule heads, rounds and a programmatic reward on the demo world (issue 14)",
        "",
        f"Measured {result['date']}; load average {result['load_start']} at the start, {result['load_end']} at the end.",
        "",
        "| variant | win rate vs SFT [95% CI] | judge score | exact match | KL to SFT | banned word, red-team prompts | RM correct-vs-wrong, current policy's samples (per round) |",
        "|---|---|---|---|---|---|---|",
    ]
    sft = next(iter(result["variants"].values()))["sft"] if result["variants"] else {}
    if sft:
        lines.append(
            f"| SFT | 0.500 | {_f(sft['judge_score'])} | {_f(sft['exact_match'])} | 0.000 "
            f"| {_f(sft['banned_rate_red_team'])} | |"
        )
    for variant, r in result["variants"].items():
        low, high = r["win_rate_ci"]
        cvw = " -> ".join(_f(v) for v in r["rm_correct_vs_wrong_policy_samples"])
        lines.append(
            f"| {LABELS[variant]} | {_f(r['win_rate_vs_sft'])} [{_f(low)}, {_f(high)}] | {_f(r['judge_score'])} "
            f"| {_f(r['exact_match'])} | {_f(r['kl'])} | {_f(r['banned_rate_red_team'])} | {cvw} |"
        )
    lines += [
        "",
        "Wall time per variant (min): " + ", ".join(f"{k} {v / 60:.1f}" for k, v in result["wall_s"].items()),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", default="runs")
    p.add_argument("--data", default="data/demo")
    p.add_argument("--out", default="bench/results")
    p.add_argument("--only", nargs="*", choices=list(VARIANTS), default=list(VARIANTS))
    a = p.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    previous = (
        json.loads((out / "rules_rounds.json").read_text()) if (out / "rules_rounds.json").is_file() else {}
    )
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "load_start": [round(x, 2) for x in os.getloadavg()],
        "variants": previous.get("variants", {}),
        "wall_s": previous.get("wall_s", {}),
    }
    done: list[PipelineConfig] = []
    for variant in VARIANTS:
        cfg = config(variant, a.runs, a.data)
        if variant in a.only:
            share_sft_stages(cfg, done)
            start = time.perf_counter()
            Pipeline(cfg).run()
            result["wall_s"][variant] = time.perf_counter() - start
            result["variants"][variant] = figures(cfg)
        done.append(cfg)
    result["variants"] = {k: result["variants"][k] for k in VARIANTS if k in result["variants"]}
    result["load_end"] = [round(x, 2) for x in os.getloadavg()]
    write_report(out, "rules_rounds", result, markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
