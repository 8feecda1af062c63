"""Running `main.py` in subprocesses for the reliability tests: commands, polling and killing.

Only process plumbing and run-directory reading live here; what a run must leave behind is asserted in
the test files.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
ENV = {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}


def fit_command(config: str, run_root: Path, *overrides: str) -> list[str]:
    """`python main.py fit --config configs/<config>` writing under `run_root`, then the given overrides."""
    main = [sys.executable, str(ROOT / "main.py"), "fit", "--config", str(ROOT / config)]
    return [*main, "--run.root", str(run_root), *overrides]


def sft_overrides(demo: Path) -> list[str]:
    """The tiny SFT config's data paths pointed at a demo-data directory."""
    return [
        *("--model.init_args.backbone.tokenizer", str(demo / "tokenizer")),
        *("--model.init_args.samples.eval_prompts", str(demo / "eval_prompts.jsonl")),
        *("--data.init_args.train_path", str(demo / "sft_train.jsonl")),
        *("--data.init_args.val_path", str(demo / "sft_val.jsonl")),
    ]


def run(cmd: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run to the end; fail the test with the end of stderr when it does not exit 0."""
    proc = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def start(cmd: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    """Start in a new session (its own process group), so SIGKILL reaches every process it starts."""
    with open(log, "wb") as f:
        return subprocess.Popen(
            cmd, cwd=cwd, env=ENV, stdout=f, stderr=subprocess.STDOUT, start_new_session=True
        )


def kill_when(proc: subprocess.Popen, ready: Callable[[], bool], log: Path, timeout: float = 120) -> None:
    """SIGKILL the process group as soon as `ready()` is true; fail if it exits or times out first."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(
                f"exited with {proc.returncode} before the kill point:\n{log.read_text()[-3000:]}"
            )
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise AssertionError(f"kill point not reached in {timeout} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.002)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every complete row (a SIGKILL can leave a last line without its newline: not a row)."""
    data = path.read_bytes()
    return [json.loads(line) for line in data.split(b"\n")[:-1] if line.strip()]


def status(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "status.json").read_text())
