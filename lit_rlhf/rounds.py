"""The report of InstructGPT's iterated rounds: one row per round, and how each round's reward model ranks the
samples of each round's policy.

A round r trains reward model RM_r (RM_1 on comparisons of SFT samples; RM_r, r > 1, further on those plus
comparisons of the previous policy's samples) and then policy pi_r with PPO against it. The report gives, per
round: RM_r's held-out pairwise accuracy on SFT samples and on the current policy pi_r's samples (and on their
correct-vs-wrong pairs: one response exactly right, the other not, when the judge reports ``exact_match``), the win
rate of pi_r vs SFT and vs pi_{r-1}, its judge score and KL to SFT (from `main.py evaluate` reports), and the banned
-word rate on held-out red-teaming prompts when there is such a report.

Lives here: the pure pair arithmetic, scoring comparison files with a reward stage, the report files.
Must not live here: running stages (lit_rlhf.pipeline), evaluation itself (lit_rlhf.evaluation).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lit_rlhf.data.rows import Comparison

CORRECT = "exact_match"  # the judge detail that marks an exactly right response


@dataclass(frozen=True)
class PairAccuracy:
    """How often a reward model orders labeled pairs as the labeler did (ties in score count as half).

    accuracy: over every (better, worse) pair; pairs: their number.
    correct_vs_wrong: over the pairs whose better response is exactly right and worse one is not (None without
        such pairs or without correctness labels); cvw_pairs: their number.
    """

    accuracy: float | None
    pairs: int
    correct_vs_wrong: float | None
    cvw_pairs: int


def pair_accuracy(
    rows: Sequence[Comparison],
    scores: Sequence[Sequence[float]],
    correct: Sequence[Sequence[bool]] | None = None,
) -> PairAccuracy:
    """Pairwise accuracy of `scores` (one per response of each row) against each row's ranking.

    Args:
        rows: Held-out comparisons. scores: the reward model's score of each response, row by row.
        correct: whether each response is exactly right, row by row (None: no correct-vs-wrong figure).
    """
    hits = n = cvw_hits = cvw = 0.0
    for i, row in enumerate(rows):
        s = scores[i]
        if len(s) != row.k:
            raise ValueError(f"row {i}: {len(s)} scores for {row.k} responses")
        for better, worse in row.pairs():
            outcome = 1.0 if s[better] > s[worse] else 0.5 if s[better] == s[worse] else 0.0
            hits, n = hits + outcome, n + 1
            if correct is not None and correct[i][better] and not correct[i][worse]:
                cvw_hits, cvw = cvw_hits + outcome, cvw + 1
    return PairAccuracy(hits / n if n else None, int(n), cvw_hits / cvw if cvw else None, int(cvw))


def score_comparisons(
    rm: str | Path, path: str | Path, judge: Any = None, device: str = "cpu"
) -> PairAccuracy:
    """Score every response of a comparisons file with reward stage `rm` (bias applied; it does not change
    orders) and measure its pair accuracy; with a judge, also on the correct-vs-wrong pairs."""
    from lit_rlhf.data.rows import read_rows
    from lit_rlhf.evaluation.reward_model import RewardScorer
    from lit_rlhf.judges import judge_item

    rows, _ = read_rows(path, "comparison")
    prompts = [r.prompt for r in rows for _ in r.responses]
    responses = [t for r in rows for t in r.responses]
    flat = RewardScorer(rm, device=device).score(prompts, responses)
    scores, at = [], 0
    for r in rows:
        scores.append(flat[at : at + r.k])
        at += r.k
    correct = None
    if judge is not None:
        items = [[judge_item(judge, r.prompt, t) for t in r.responses] for r in rows]
        if any(CORRECT in item for row in items for item in row):
            correct = [[item.get(CORRECT) == 1.0 for item in row] for row in items]
    return pair_accuracy(rows, scores, correct)


@dataclass(frozen=True)
class RoundStages:
    """What round r left behind.

    rm, ppo: its reward and PPO stage directories. policy_val: held-out comparisons of pi_r's samples.
    """

    round: int
    rm: str
    ppo: str
    policy_val: str


def _checkpoint_rows(report_path: Path) -> dict[str, dict[str, Any]]:
    return json.loads(report_path.read_text(encoding="utf-8"))["checkpoints"] if report_path.is_file() else {}


def build_report(
    rounds: Sequence[RoundStages],
    sft_val: str,
    eval_dir: Path,
    judge: Any = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """The rounds report: `eval_dir` holds report.json (SFT and every round's PPO stage vs SFT), optionally
    adversarial/report.json (the same on red-teaming prompts) and vs-round-<r-1>/report.json for r > 1."""
    vs_sft = _checkpoint_rows(eval_dir / "report.json")
    red = _checkpoint_rows(eval_dir / "adversarial" / "report.json")
    sets = {"sft": sft_val, **{f"round-{r.round}": r.policy_val for r in rounds}}
    matrix = {
        f"round-{r.round}": {
            name: asdict(score_comparisons(r.rm, path, judge, device)) for name, path in sets.items()
        }
        for r in rounds
    }
    table = []
    for r in rounds:
        own, figures = matrix[f"round-{r.round}"], vs_sft.get(r.ppo, {})
        previous = _checkpoint_rows(eval_dir / f"vs-round-{r.round - 1}" / "report.json").get(r.ppo, {})
        table.append(
            {
                "round": r.round,
                "rm": r.rm,
                "ppo": r.ppo,
                "rm_accuracy_sft_samples": own["sft"]["accuracy"],
                "rm_accuracy_policy_samples": own[f"round-{r.round}"]["accuracy"],
                "rm_correct_vs_wrong_sft_samples": own["sft"]["correct_vs_wrong"],
                "rm_correct_vs_wrong_policy_samples": own[f"round-{r.round}"]["correct_vs_wrong"],
                "win_rate_vs_sft": figures.get("win_rate_vs_sft"),
                "win_rate_ci": [figures.get("win_rate_ci_low"), figures.get("win_rate_ci_high")],
                "win_rate_vs_previous": previous.get("win_rate_vs_sft")
                if r.round > 1
                else figures.get("win_rate_vs_sft"),
                "judge_score": figures.get("judge_score"),
                "exact_match": figures.get("exact_match"),
                "kl": figures.get("kl"),
                "banned_rate_red_team": red.get(r.ppo, {}).get("banned"),
            }
        )
    sft_row = next((v for v in vs_sft.values() if v.get("stage") == "sft"), {})
    sft_red = next((v for v in red.values() if v.get("stage") == "sft"), {})
    return {
        "rounds": table,
        "sft": {
            "judge_score": sft_row.get("judge_score"),
            "exact_match": sft_row.get("exact_match"),
            "banned_rate_red_team": sft_red.get("banned"),
        },
        "rm_matrix": matrix,
        "held_out_sets": sets,
    }


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def render_markdown(report: dict[str, Any]) -> str:
    """rounds.md: the per-round table, then each reward model's accuracy on each policy's samples."""
    head = [
        "round",
        "RM acc. (SFT samples)",
        "RM acc. (policy samples)",
        "RM correct-vs-wrong (SFT / policy samples)",
        "win rate vs SFT [95% CI]",
        "win rate vs previous round",
        "judge score",
        "exact match",
        "KL to SFT",
        "banned word (red-team prompts)",
    ]
    sft = report["sft"]
    lines = ["# Iterated rounds", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines.append(
        f"| SFT | | | | 0.500 | | {_fmt(sft['judge_score'])} | {_fmt(sft['exact_match'])} | 0.000 "
        f"| {_fmt(sft['banned_rate_red_team'])} |"
    )
    for r in report["rounds"]:
        low, high = r["win_rate_ci"]
        ci = "" if low is None else f" [{low:.3f}, {high:.3f}]"
        cells = [
            str(r["round"]),
            _fmt(r["rm_accuracy_sft_samples"]),
            _fmt(r["rm_accuracy_policy_samples"]),
            f"{_fmt(r['rm_correct_vs_wrong_sft_samples'])} / {_fmt(r['rm_correct_vs_wrong_policy_samples'])}",
            _fmt(r["win_rate_vs_sft"]) + ci,
            _fmt(r["win_rate_vs_previous"]),
            _fmt(r["judge_score"]),
            _fmt(r["exact_match"]),
            _fmt(r["kl"]),
            _fmt(r["banned_rate_red_team"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    sets = list(report["held_out_sets"])
    lines += [
        "",
        "## Each round's reward model on each policy's held-out samples",
        "",
        "Pairwise accuracy (correct-vs-wrong pairs in brackets) on held-out comparisons of the samples of: "
        + ", ".join(f"`{s}` = {report['held_out_sets'][s]}" for s in sets),
        "",
        "| reward model | " + " | ".join(sets) + " |",
        "|" + "---|" * (len(sets) + 1),
    ]
    for rm, row in report["rm_matrix"].items():
        cells = [f"{_fmt(row[s]['accuracy'])} ({_fmt(row[s]['correct_vs_wrong'])})" for s in sets]
        lines.append(f"| {rm} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Round 1's policy samples are those the round-2 reward model was trained for; a reward model that ranks them",
        "better than round 1's did is what the rounds are for. Win rates, judge scores and KL: `report.json` in",
        "this folder (`main.py evaluate`), vs the previous round: `vs-round-<r>/`; banned-word rate: `adversarial/`.",
    ]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out: Path) -> None:
    """rounds.md, then rounds.json (last: its presence marks a complete report), each atomically."""
    from lit_rlhf.atomic import write_json, write_text

    write_text(out / "rounds.md", render_markdown(report))
    write_json(out / "rounds.json", report)
