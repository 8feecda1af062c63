"""InstructGPT's ablations on the demo world (run by hand; writes bench/results/ablations.{json,md}).

1. SFT vs PPO (gamma_ptx = 0) vs PPO-ptx: win rate vs SFT, judge score, KL, pretraining loss (alignment tax),
   same seed and steps. The PPO-ptx run is the pipeline's (configs/demo/ppo.yaml); this script trains the
   gamma_ptx = 0 twin with the same config and seed, then evaluates all three with `main.py evaluate`.
2. Reward model: K-wise grouped batches vs the same comparisons shuffled as independent pairs, held-out accuracy
   after 1 and after 3 epochs (InstructGPT found the shuffled-pairs scheme overfits).

Run after the pipeline: python bench/ablations.py [--runs runs] [--name demo] [--data data/demo]
Each training run is a `main.py fit` subprocess with a fixed seed; existing outputs are reused (delete them to redo).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness import run_main, write_report  # noqa: E402

from lit_rlhf.pipeline import ppo_stage_args  # noqa: E402  (the pipeline's own PPO overrides, not a copy)


def run(args: list[str]) -> float:
    """Run `python main.py ARGS`, fail loudly, return the wall time."""
    return run_main(args, "ablations")


def manifest_metrics(stage_dir: Path) -> dict:
    return json.loads((stage_dir / "manifest.json").read_text())["metrics"]


def ppo_ablation(a: argparse.Namespace, out: Path) -> dict:
    runs, d = Path(a.runs), Path(a.data)
    sft, rm, ptx = (runs / s / a.name / "stage" for s in ("sft", "reward", "ppo"))
    for p in (sft, rm, ptx):
        if not (p / "manifest.json").is_file():
            raise SystemExit(
                f"{p} is missing: run `python main.py pipeline --config configs/demo/pipeline.yaml` first"
            )
    plain = runs / "ppo" / f"{a.name}-ptx0" / "stage"
    timings = {}
    if not (plain / "manifest.json").is_file():
        timings["ppo_ptx0"] = run(
            [
                "fit",
                "--config",
                "configs/demo/ppo.yaml",
                "--run.root",
                str(runs),
                "--run.name",
                f"{a.name}-ptx0",
                "--seed_everything",
                "0",
                "--model.init_args.ptx_coef",
                "0",
                *ppo_stage_args(sft, rm, d),
            ]
        )
    report_dir = out / "ppo_eval"
    if not (report_dir / "report.json").is_file():
        timings["evaluate"] = run(
            [
                "evaluate",
                "--ckpt",
                str(sft),
                str(plain),
                str(ptx),
                "--sft",
                str(sft),
                "--rm",
                str(rm),
                "--prompts",
                str(d / "eval_prompts.jsonl"),
                "--pretrain",
                str(d / "pretrain.jsonl"),
                "--judge",
                "demo",
                "--out",
                str(report_dir),
            ]
        )
    report = json.loads((report_dir / "report.json").read_text())
    labels = {str(sft): "SFT", str(plain): "PPO (gamma_ptx=0)", str(ptx): "PPO-ptx"}
    rows = {labels.get(k, k): v for k, v in report["checkpoints"].items()}
    return {
        "rows": rows,
        "timings_s": timings,
        "ptx_coef": json.loads((ptx / "manifest.json").read_text())["extra"],
    }


def rm_ablation(a: argparse.Namespace) -> dict:
    runs, d = Path(a.runs), Path(a.data)
    sft = runs / "sft" / a.name / "stage"
    train = d / f"comparisons_{a.name}_train.jsonl"
    val = d / f"comparisons_{a.name}_val.jsonl"
    results = {}
    for layout in ("kwise", "pairs"):
        for epochs in (1, 3):
            name = f"{a.name}-{layout}-{epochs}ep"
            stage = runs / "reward" / name / "stage"
            if not (stage / "manifest.json").is_file():
                run(
                    [
                        "fit",
                        "--config",
                        "configs/demo/rm.yaml",
                        "--run.root",
                        str(runs),
                        "--run.name",
                        name,
                        "--seed_everything",
                        "0",
                        "--trainer.max_epochs",
                        str(epochs),
                        "--trainer.val_check_interval",
                        "1.0",
                        "--model.init_args.init_from",
                        str(sft),
                        "--model.init_args.bias_from",
                        str(d / "sft_val.jsonl"),
                        "--data.init_args.train_path",
                        str(train),
                        "--data.init_args.val_path",
                        str(val),
                        "--data.init_args.layout",
                        layout,
                    ]
                )
            m = manifest_metrics(stage)
            results[f"{layout}/{epochs}ep"] = {
                "val_accuracy": m.get("val_accuracy"),
                "val_kendall_tau": m.get("val_kendall_tau"),
                "train_loss": m.get("loss"),
                "steps": json.loads((stage / "manifest.json").read_text())["step"],
            }
    return results


def markdown(result: dict) -> str:
    lines = [
        "## SFT vs PPO vs PPO-ptx (demo world, held-out prompts, sampled at temperature 1)",
        "",
        "| model | win rate vs SFT [95% CI] | judge score | KL to SFT | pretraining loss | RM score |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in result["ppo"]["rows"].items():
        lines.append(
            f"| {name} | {r['win_rate_vs_sft']:.3f} [{r['win_rate_ci_low']:.3f}, {r['win_rate_ci_high']:.3f}] "
            f"| {r['judge_score']:.3f} | {r['kl']:.3f} | {r['pretrain_loss']:.3f} | {r['rm_score']:.3f} |"
        )
    lines += [
        "",
        "## Reward model: K-wise grouped batches vs shuffled independent pairs (held-out comparisons)",
        "",
        "| layout | epochs | optimizer steps | held-out pairwise accuracy | Kendall tau | final train loss |",
        "|---|---|---|---|---|---|",
    ]
    for key, r in result["rm"].items():
        layout, ep = key.split("/")
        lines.append(
            f"| {layout} | {ep[:-2]} | {r['steps']} | {r['val_accuracy']:.3f} | {r['val_kendall_tau']:.3f} "
            f"| {r['train_loss']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", default="runs")
    p.add_argument("--name", default="demo")
    p.add_argument("--data", default="data/demo")
    p.add_argument("--out", default="bench/results")
    a = p.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"date": time.strftime("%Y-%m-%d"), "ppo": ppo_ablation(a, out), "rm": rm_ablation(a)}
    write_report(out, "ablations", result, markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
