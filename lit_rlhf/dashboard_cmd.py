"""`python main.py dashboard [--runs runs/] [--port 8501] [--host 127.0.0.1]`: start the Streamlit dashboard.

Builds the `streamlit run dashboard/app.py` command and replaces this process with it. It binds the loopback
address unless told otherwise (the dashboard can generate with your models and write files), runs headless
and sends no usage statistics (dashboard/.streamlit/config.toml says the same for any other way of starting
it). The start-up settings reach the app as environment variables: the runs root it may read, the labels
folder it may write, whether stage directories' code may run and whether external bases are refused.
No torch or Streamlit import here: the command starts instantly.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

from lit_rlhf.checkpoint.safety import LOCAL_BASES_ONLY_ENV

APP = Path(__file__).resolve().parent.parent / "dashboard" / "app.py"
RUNS_ENV = "LIT_RLHF_RUNS"
LABELS_ENV = "LIT_RLHF_LABELS"
TRUST_ENV = "LIT_RLHF_TRUST_REMOTE_CODE"
JUDGE_ENV = "LIT_RLHF_JUDGE"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="main.py dashboard", description="Start the lit-rlhf Streamlit dashboard."
    )
    p.add_argument(
        "--runs", default="runs", help="runs root holding <stage>/<name>/ run directories (default: runs)"
    )
    p.add_argument("--port", type=int, default=8501, help="port to serve on (default: 8501)")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default: 127.0.0.1, this machine only; 0.0.0.0 exposes it to the network)",
    )
    p.add_argument(
        "--labels",
        default=None,
        help="folder the Compare page may save comparisons in (default: the runs root); it writes nowhere else",
    )
    p.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="let code shipped in a stage directory run when the Compare page loads it (only for ones you trust)",
    )
    p.add_argument(
        "--judge",
        default=None,
        help="judge that scores the Compare page's completions: demo, exact_match or package.module:callable",
    )
    p.add_argument(
        "--local-bases-only",
        action="store_true",
        help="refuse to load stage directories whose base is a hub name or a folder outside them",
    )
    return p


def dashboard_command(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """The streamlit command line and environment that `main` runs, from this command's arguments."""
    args = _parser().parse_args(argv)
    command = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(APP),
        "--server.address",
        args.host,
        "--server.port",
        str(args.port),
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
    ]
    # Absolute, so the runs root means the same folder whatever directory Streamlit resolves paths from.
    env = {**os.environ, RUNS_ENV: os.path.abspath(args.runs)}
    env.pop(LABELS_ENV, None)
    if args.labels is not None:
        env[LABELS_ENV] = os.path.abspath(args.labels)
    # Set from the flags only: a variable left in the shell must not turn code execution on unnoticed.
    env[TRUST_ENV] = "1" if args.trust_remote_code else "0"
    env.pop(JUDGE_ENV, None)
    if args.judge is not None:
        env[JUDGE_ENV] = args.judge
    if args.local_bases_only:
        env[LOCAL_BASES_ONLY_ENV] = "1"
    # Every page imports the `dashboard` package, which lives beside lit_rlhf in the repository, not in the installed
    # distribution: a page opened directly (a bookmarked URL) runs before app.py could put the root on sys.path.
    root = str(APP.resolve().parent.parent)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([root, *(p for p in paths if p != root)])
    return command, env


def main(argv: list[str]) -> int:
    """Entry point of `python main.py dashboard`; on success it does not return (the process becomes streamlit)."""
    args = _parser().parse_args(argv)
    command, env = dashboard_command(argv)
    if not APP.is_file():
        print(
            f"error: {APP} not found: the dashboard runs from a source checkout of lit-rlhf", file=sys.stderr
        )
        return 2
    if importlib.util.find_spec("streamlit") is None:
        print("error: streamlit is not installed (pip install -c constraints.txt -e .)", file=sys.stderr)
        return 2
    print(f"[lit-rlhf] dashboard for {env[RUNS_ENV]} on http://{args.host}:{args.port}", flush=True)
    os.execve(command[0], command, env)
    return 0  # not reached: execve replaces the process
