"""Streamlit glue shared by the pages: the runs root, cached loaders, the shared run selection, empty states.

Caching lives here, not in `loaders.py`: every cached function takes a file's `(path, mtime_ns, size)` so a
file that training appended to is read again on the next rerun and an unchanged one is not. No torch here,
and nothing that renders file contents as Markdown or HTML: text from runs is shown with st.text, st.code
or st.dataframe only.
"""

from __future__ import annotations

import os
from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st

from dashboard import loaders

RUNS_ROOT_KEY = "runs_root"
_RUNS_ROOT_INPUT = "runs_root_input"
SELECTED_KEY = "selected_runs"  # run ids chosen on the Runs page and overlaid on the Curves page
DEFAULT_RUNS_ROOT = "runs"
DEFAULT_SELECTED = 6


def default_runs_root() -> str:
    """The runs root from the environment (`LIT_RLHF_RUNS`, set by `python main.py dashboard`), else `runs`."""
    return os.environ.get("LIT_RLHF_RUNS") or DEFAULT_RUNS_ROOT


def sidebar_runs_root() -> Path:
    """The sidebar's runs-root input, drawn by every page; returns the runs root.

    Drawn by the pages, not app.py: a widget drawn in the entrypoint before st.navigation loses every edit
    (Streamlit 1.67). The value lives under RUNS_ROOT_KEY and seeds each page's widget, like `pick_runs`.
    """
    if RUNS_ROOT_KEY not in st.session_state:
        st.session_state[RUNS_ROOT_KEY] = default_runs_root()
    st.session_state[_RUNS_ROOT_INPUT] = st.session_state[RUNS_ROOT_KEY]

    def _share() -> None:
        st.session_state[RUNS_ROOT_KEY] = st.session_state[_RUNS_ROOT_INPUT]

    st.sidebar.text_input(
        "Runs root", key=_RUNS_ROOT_INPUT, on_change=_share, help="the folder holding <stage>/<name>/ runs"
    )
    return runs_root()


def runs_root() -> Path:
    return Path(st.session_state.get(RUNS_ROOT_KEY) or default_runs_root())


@st.cache_data(max_entries=512, show_spinner=False)
def _read_jsonl(path: str, mtime_ns: int, size: int) -> loaders.JsonlRows:
    return loaders.read_jsonl(path)


@st.cache_data(max_entries=256, show_spinner=False)
def _metrics_frame(path: str, mtime_ns: int, size: int) -> pd.DataFrame:
    return loaders.metrics_frame(_read_jsonl(path, mtime_ns, size).rows)


def read_jsonl(path: str) -> loaders.JsonlRows:
    """`loaders.read_jsonl`, cached on the file's (path, mtime, size)."""
    key = loaders.file_key(path)
    return loaders.JsonlRows(path) if key is None else _read_jsonl(*key)


def metrics_of(run: loaders.Run) -> pd.DataFrame:
    """The run's `metrics_frame`, cached on metrics.jsonl's (path, mtime, size)."""
    key = loaders.file_key(run.file(loaders.METRICS))
    return loaders.metrics_frame([]) if key is None else _metrics_frame(*key)


def discover_runs() -> list[loaders.Run]:
    # Not cached: a directory listing and a few small status files, and it must see new runs at once.
    return loaders.discover_runs(runs_root())


def pick_runs(options: list[str], page: str, label: str = "Runs to overlay") -> list[str]:
    """A multiselect whose choice is shared by every page through st.session_state[SELECTED_KEY].

    Each page has its own widget (Streamlit forgets a widget's state when its page is left), seeded from
    the shared choice before it is drawn and copied back when changed.
    """
    widget_key = f"{page}_runs"
    if SELECTED_KEY not in st.session_state:  # first visit: overlay a handful rather than an empty chart
        st.session_state[SELECTED_KEY] = options[:DEFAULT_SELECTED]
    st.session_state[widget_key] = [r for r in st.session_state.get(SELECTED_KEY, []) if r in options]

    def _share() -> None:
        st.session_state[SELECTED_KEY] = list(st.session_state[widget_key])

    return st.multiselect(label, options, key=widget_key, on_change=_share)


def line_chart(data: pd.DataFrame, color: str) -> None:
    """Lines of `value` by `step` from long-form data, one per `color` value, with a dot on every point.

    The dots matter: a metric logged once so far (a validation metric early in a run) is a single point,
    which a plain line chart does not draw at all.
    """
    chart = (
        alt.Chart(data)
        .mark_line(point=True)
        .encode(
            x=alt.X("step:Q", title="step", scale=alt.Scale(padding=8)),  # dots at the ends stay whole
            y=alt.Y("value:Q", title=None, scale=alt.Scale(zero=False, padding=8)),
            color=alt.Color(f"{color}:N", legend=alt.Legend(orient="bottom", title=None)),
            tooltip=["step:Q", "value:Q", f"{color}:N"],
        )
        .properties(height=260)
        .interactive()
    )
    st.altair_chart(chart, width="stretch")


def no_runs_yet() -> None:
    """The empty state of every page: where the dashboard looked and how to make a first run."""
    st.info("No runs found under this runs root yet. Train a first model with:")
    st.code(loaders.FIRST_RUN_COMMAND, language="bash")
    st.text(f"Runs root: {runs_root()}  (change it in the sidebar, or set LIT_RLHF_RUNS)")


def show_problems(problems: list[str], what: str = "rows") -> None:
    """Rows that could not be read, as plain text in a collapsed box (never as Markdown)."""
    if problems:
        with st.expander(f"{len(problems)} {what} could not be read and were skipped"):
            st.code("\n".join(problems[:200]), language=None)
