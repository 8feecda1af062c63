"""lit_rlhf.dashboard_cmd: the streamlit command line `lit-rlhf dashboard` runs (read through the real command
path: typed defaults in lit_rlhf.commands.dashboard, jsonargparse, today's dashed flags)."""

from __future__ import annotations

import os
import sys

import pytest

from lit_rlhf import dashboard_cmd

from .helpers import REPO, streamlit_command


def _flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_defaults_bind_loopback_headless_without_usage_stats(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    command, env = streamlit_command([])
    assert command[:5] == [sys.executable, "-m", "streamlit", "run", str(REPO / "dashboard" / "app.py")]
    assert _flag(command, "--server.address") == "127.0.0.1"
    assert _flag(command, "--server.port") == "8501"
    assert _flag(command, "--server.headless") == "true"
    assert _flag(command, "--browser.gatherUsageStats") == "false"
    assert env["LIT_RLHF_RUNS"] == str(tmp_path / "runs")


def test_flags_reach_the_command_and_the_environment(tmp_path):
    command, env = streamlit_command(["--runs", str(tmp_path / "r"), "--port", "9999", "--host", "0.0.0.0"])
    assert _flag(command, "--server.address") == "0.0.0.0"
    assert _flag(command, "--server.port") == "9999"
    assert env["LIT_RLHF_RUNS"] == str(tmp_path / "r")
    assert env["PATH"] == os.environ["PATH"]  # the rest of the environment is passed on
    # pages import the `dashboard` package from the repository root, even when opened directly by URL
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(dashboard_cmd.APP.parent.parent)


def test_serve_execs_streamlit(monkeypatch, tmp_path, capsys):
    from lit_rlhf.cli import main

    calls = []
    monkeypatch.setattr(dashboard_cmd.os, "execve", lambda *args: calls.append(args))
    assert main(["dashboard", "--runs", str(tmp_path), "--port", "8600"]) == 0
    ((path, argv, env),) = calls
    assert path == sys.executable and argv[1:4] == ["-m", "streamlit", "run"]
    assert _flag(argv, "--server.port") == "8600"
    assert env["LIT_RLHF_RUNS"] == str(tmp_path)
    assert "http://127.0.0.1:8600" in capsys.readouterr().out


def test_the_defaults_live_in_the_typed_command():
    import inspect

    from lit_rlhf.commands import dashboard

    defaults = {n: p.default for n, p in inspect.signature(dashboard).parameters.items()}
    assert defaults["host"] == "127.0.0.1" and defaults["port"] == 8501 and defaults["runs"] == "runs"
    # the launcher's settings have none of their own (a second copy could drift, e.g. bind 0.0.0.0), and they are
    # the command's parameters one to one
    import dataclasses

    fields = dataclasses.fields(dashboard_cmd.DashboardSettings)
    assert all(f.default is dataclasses.MISSING for f in fields)
    assert [f.name for f in fields] == list(defaults)


def test_bad_port_is_a_usage_error():
    with pytest.raises(SystemExit) as exit_info:
        streamlit_command(["--port", "http"])
    assert exit_info.value.code == 2


def test_start_up_settings_come_from_the_flags_only(monkeypatch, tmp_path):
    monkeypatch.setenv("LIT_RLHF_TRUST_REMOTE_CODE", "1")  # left over in the shell: must not turn code on
    monkeypatch.setenv("LIT_RLHF_LABELS", "/somewhere/else")
    monkeypatch.delenv("LIT_RLHF_LOCAL_BASES_ONLY", raising=False)
    _, env = streamlit_command(["--runs", str(tmp_path / "r")])
    assert env["LIT_RLHF_TRUST_REMOTE_CODE"] == "0"
    assert "LIT_RLHF_LABELS" not in env and "LIT_RLHF_LOCAL_BASES_ONLY" not in env
    _, env = streamlit_command(
        ["--trust-remote-code", "--local-bases-only", "--labels", str(tmp_path / "labels")]
    )
    assert env["LIT_RLHF_TRUST_REMOTE_CODE"] == "1" and env["LIT_RLHF_LOCAL_BASES_ONLY"] == "1"
    assert env["LIT_RLHF_LABELS"] == str(tmp_path / "labels")


def test_the_judge_comes_from_the_flag(monkeypatch):
    from dashboard import safety

    monkeypatch.setenv("LIT_RLHF_JUDGE", "left.over:judge")
    _, env = streamlit_command([])
    assert "LIT_RLHF_JUDGE" not in env
    _, env = streamlit_command(["--judge", "demo"])
    assert env["LIT_RLHF_JUDGE"] == "demo"
    monkeypatch.setenv("LIT_RLHF_JUDGE", "demo")
    assert safety.judge_spec() == "demo"


def test_the_app_reads_the_start_up_settings(monkeypatch, tmp_path):
    from dashboard import safety

    monkeypatch.setenv("LIT_RLHF_RUNS", str(tmp_path / "r"))
    monkeypatch.delenv("LIT_RLHF_LABELS", raising=False)
    monkeypatch.setenv("LIT_RLHF_TRUST_REMOTE_CODE", "0")
    assert safety.labels_root() == tmp_path / "r" and not safety.trust_remote_code()
    monkeypatch.setenv("LIT_RLHF_LABELS", str(tmp_path / "l"))
    monkeypatch.setenv("LIT_RLHF_TRUST_REMOTE_CODE", "1")
    assert safety.labels_root() == tmp_path / "l" and safety.trust_remote_code()
