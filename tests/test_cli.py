"""The command line: one overview of every command, one clean line for a user's mistake, --debug for the rest."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from lit_rlhf.cli import LIGHTNING_COMMANDS, TOOL_COMMANDS, main

ROOT = Path(__file__).resolve().parents[1]


def test_help_lists_every_command_and_says_what_the_project_is(capsys):
    assert main([]) == 0 and main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "InstructGPT's three stages" in out
    assert all(f"\n  {c}" in out for c in TOOL_COMMANDS + ("fit",))
    assert all(c in out for c in LIGHTNING_COMMANDS)


def test_an_unknown_command_is_refused_with_the_overview(capsys):
    assert main(["fitt"]) == 2
    assert "unknown command 'fitt'" in capsys.readouterr().err


def _fit_bad_data(demo_data: Path, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    bad = tmp_path / "sft.jsonl"
    bad.write_text(
        json.dumps({"prompt": "copy a =", "response": "a"}) + "\n" + json.dumps({"prompt": "x"}) + "\n"
    )
    cmd = [sys.executable, str(ROOT / "main.py"), "fit", "--config", str(ROOT / "configs/tiny/sft.yaml")]
    cmd += ["--model.init_args.backbone.tokenizer", str(demo_data / "tokenizer")]
    cmd += ["--data.init_args.train_path", str(bad), "--data.init_args.val_path", str(bad)]
    cmd += ["--run.root", str(tmp_path / "runs"), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def test_a_bad_data_row_is_one_line_and_debug_shows_the_traceback(demo_data, tmp_path):
    proc = _fit_bad_data(demo_data, tmp_path)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert errors == [
        f"main.py: error: {tmp_path / 'sft.jsonl'}:2: field 'response': missing (a demonstration "
        "needs 'prompt' and 'response', or 'messages')"
    ]
    assert "Traceback" not in proc.stderr
    debug = _fit_bad_data(demo_data, tmp_path, "--debug")
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "DataError" in debug.stderr


def test_the_console_script_is_the_same_command():
    script = Path(sys.executable).parent / "lit-rlhf"
    proc = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("lit-rlhf: InstructGPT's three stages")
