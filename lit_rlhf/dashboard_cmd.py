"""`lit-rlhf dashboard [--runs runs/] [--port 8501] [--host 127.0.0.1]`: start the Streamlit dashboard.

Builds the `streamlit run dashboard/app.py` command and replaces this process with it. It binds the loopback
address unless told otherwise (the dashboard can generate with your models and write files), runs headless
and sends no usage statistics (dashboard/.streamlit/config.toml says the same for any other way of starting
it). The start-up settings reach the app as environment variables: the runs root it may read, the labels
folder it may write, whether stage directories' code may run and whether external bases are refused.
No torch or Streamlit import here: the command starts instantly.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from lit_rlhf.checkpoint.safety import LOCAL_BASES_ONLY_ENV

APP = Path(__file__).resolve().parent.parent / "dashboard" / "app.py"
RUNS_ENV = "LIT_RLHF_RUNS"
LABELS_ENV = "LIT_RLHF_LABELS"
TRUST_ENV = "LIT_RLHF_TRUST_REMOTE_CODE"
JUDGE_ENV = "LIT_RLHF_JUDGE"


@dataclass(frozen=True)
class DashboardSettings:
    """`lit-rlhf dashboard`'s arguments (lit_rlhf.commands.dashboard holds their defaults and help)."""

    runs: str
    port: int
    host: str
    labels: str | None
    trust_remote_code: bool
    judge: str | None
    local_bases_only: bool


def dashboard_command(settings: DashboardSettings) -> tuple[list[str], dict[str, str]]:
    """The streamlit command line and environment that `serve` runs."""
    runs, port, host, labels = settings.runs, settings.port, settings.host, settings.labels
    command = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(APP),
        "--server.address",
        host,
        "--server.port",
        str(port),
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
    ]
    # Absolute, so the runs root means the same folder whatever directory Streamlit resolves paths from.
    env = {**os.environ, RUNS_ENV: os.path.abspath(runs)}
    env.pop(LABELS_ENV, None)
    if labels is not None:
        env[LABELS_ENV] = os.path.abspath(labels)
    # Set from the flags only: a variable left in the shell must not turn code execution on unnoticed.
    env[TRUST_ENV] = "1" if settings.trust_remote_code else "0"
    env.pop(JUDGE_ENV, None)
    if settings.judge is not None:
        env[JUDGE_ENV] = settings.judge
    if settings.local_bases_only:
        env[LOCAL_BASES_ONLY_ENV] = "1"
    # Every page imports the `dashboard` package, which lives beside lit_rlhf in the repository, not in the installed
    # distribution: a page opened directly (a bookmarked URL) runs before app.py could put the root on sys.path.
    root = str(APP.resolve().parent.parent)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([root, *(p for p in paths if p != root)])
    return command, env


def serve(settings: DashboardSettings) -> int:
    """Start the dashboard; on success it does not return: the process becomes streamlit."""
    command, env = dashboard_command(settings)
    if not APP.is_file():
        print(
            f"error: {APP} not found: the dashboard runs from a source checkout of lit-rlhf", file=sys.stderr
        )
        return 2
    if importlib.util.find_spec("streamlit") is None:
        print("error: streamlit is not installed (pip install -c constraints.txt -e .)", file=sys.stderr)
        return 2
    print(f"[lit-rlhf] dashboard for {env[RUNS_ENV]} on http://{settings.host}:{settings.port}", flush=True)
    os.execve(command[0], command, env)
    return 0  # not reached: execve replaces the process
