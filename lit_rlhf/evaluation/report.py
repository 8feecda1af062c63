"""The evaluation report: report.json (the figures), report.md (a table, the settings, the notes and how each
figure is computed) and report.png (judge score and win rate with its interval per checkpoint).

Lives here: the metric names a report row holds (`METRICS`), rendering and writing the three files, atomically,
report.json last (its presence marks a complete report). Must not live here: computing the figures
(lit_rlhf.evaluation.metrics, lit_rlhf.evaluation.command). No torch: the dashboard reads these reports.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lit_rlhf.atomic import staged_file, write_json, write_text

METRICS = (
    "judge_score",
    "win_rate_vs_sft",
    "win_rate_ci_low",
    "win_rate_ci_high",
    "rm_score",
    "kl",
    "pretrain_loss",
    "mean_length",
)
REPORT_FILES = ("report.json", "report.md", "report.png")


METHOD = """\
## How the figures are computed

- Every model answers each held-out prompt once, sampled at the temperature above (0 = greedy); prompt batch i
  is sampled with seed + i for every model, so the SFT model evaluated against itself is an exact tie.
- **judge_score**: mean score in [0, 1] of the judge above, over the prompts it can judge; further columns
  (e.g. exact_match, banned, filler) are the means of the judge's own per-response details.
- **win_rate_vs_sft**: the judge compares the checkpoint's response with the SFT baseline's on each prompt:
  1 if it scores higher, 0.5 on a tie (scores equal to 1e-6), 0 if lower; the win rate is the mean outcome.
  **CI**: the 95% Wilson score interval of that mean over the n prompts (ties counted as half a win).
- **rm_score**: mean reward of the reward model above (its stored bias applied), on the (prompt, response)
  token sequence it was trained on.
- **kl**: mean over prompts of sum_t (log pi(y_t) - log pi_sft(y_t)) over the checkpoint's own sampled response
  token ids, the stop token included (the k1 estimate of KL(pi || pi_sft) in nats, as the PPO penalty uses).
  Log-probs are of the model's own distribution (temperature 1, float32 logits) whatever the sampling
  temperature.
- **pretrain_loss**: next-token loss per token on the first pretraining rows (each cut to the length above):
  the alignment tax is its rise over the SFT row.
- **mean_length**: mean response length in tokens, EOS included.
"""


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _detail_columns(report: dict[str, Any]) -> list[str]:
    """The judge's own detail figures present in any row (e.g. exact_match), in order of first appearance."""
    fixed = {*METRICS, "stage", "step", "judged"}
    return list(dict.fromkeys(k for row in report["checkpoints"].values() for k in row if k not in fixed))


def render_markdown(report: dict[str, Any]) -> str:
    """report.md: one table row per checkpoint, then the settings, notes and how each figure is computed."""
    details = _detail_columns(report)
    head = ["checkpoint", "stage", "step", "judge_score", "win_rate_vs_sft", "95% CI", *METRICS[4:], *details]
    lines = ["# Evaluation report", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for path, row in report["checkpoints"].items():
        ci = (
            "n/a"
            if row["win_rate_ci_low"] is None
            else f"[{row['win_rate_ci_low']:.3f}, {row['win_rate_ci_high']:.3f}]"
        )
        cells = [f"`{path}`", row["stage"], str(row["step"]), _fmt(row["judge_score"])]
        cells += [_fmt(row["win_rate_vs_sft"]), ci, *(_fmt(row[k]) for k in METRICS[4:])]
        cells += [_fmt(row.get(k)) for k in details]
        lines.append("| " + " | ".join(cells) + " |")
    p = report["prompts"]
    lines += [
        "",
        f"Created {report['created']} on {p['count']} prompts of `{p['path']}`.",
        "",
        "## Settings",
        "",
    ]
    lines += [f"- {k}: `{v}`" for k, v in report["settings"].items()]
    if report["notes"]:
        lines += ["", "## Notes", "", *(f"- {n}" for n in report["notes"])]
    return "\n".join([*lines, "", METHOD])


def short_label(path: str) -> str:
    """A chart label: the last two path parts, skipping a trailing `stage` (runs/ppo/x/stage -> ppo/x)."""
    parts = [p for p in Path(path).parts if p not in ("/", "")]
    if parts and parts[-1] == "stage":
        parts = parts[:-1]
    return "/".join(parts[-2:]) or path


def plot_report(report: dict[str, Any], path: Path) -> None:
    """report.png: judge score and win rate (95% CI error bars) per checkpoint; n/a bars are left empty."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = list(report["checkpoints"].items())
    fig = Figure(figsize=(max(4.0, 1.6 * len(rows) + 2), 3.6))
    FigureCanvasAgg(fig)  # Agg, without pyplot's global state
    ax = fig.add_subplot()
    xs = range(len(rows))
    score = [r["judge_score"] or 0.0 for _, r in rows]
    rate = [r["win_rate_vs_sft"] or 0.0 for _, r in rows]
    err = [
        [(r["win_rate_vs_sft"] or 0) - (r["win_rate_ci_low"] or 0) for _, r in rows],
        [(r["win_rate_ci_high"] or 0) - (r["win_rate_vs_sft"] or 0) for _, r in rows],
    ]
    ax.bar([x - 0.2 for x in xs], score, 0.4, label="judge score")
    ax.bar([x + 0.2 for x in xs], rate, 0.4, yerr=err, capsize=4, label="win rate vs SFT (95% CI)")
    for x, (_, r) in zip(xs, rows, strict=True):
        if r["judge_score"] is None:
            ax.text(x, 0.02, "n/a", ha="center")
    ax.axhline(0.5, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xticks(list(xs), [short_label(p) for p, _ in rows], rotation=15, ha="right")
    ax.set_ylim(0, 1.05)
    ax.legend(loc="upper left", fontsize="small")
    ax.set_title(f"{report['prompts']['count']} held-out prompts")
    fig.tight_layout()
    with staged_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def write_report(report: dict[str, Any], out: str | os.PathLike) -> dict[str, Path]:
    """Write report.png, report.md and report.json (last: it marks a complete report) into `out`, atomically."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / name for name in REPORT_FILES}
    plot_report(report, paths["report.png"])
    write_text(paths["report.md"], render_markdown(report))
    write_json(paths["report.json"], report)
    return paths
