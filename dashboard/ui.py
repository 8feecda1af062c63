"""Streamlit glue shared by the pages: the runs root, cached loaders, the shared run selection, empty states.

Caching lives here, not in `loaders.py`: JSONL files are read through one process-wide `tail.JsonlTail`, which
parses only what was appended since the last rerun and holds all files under a byte budget. No torch here,
and nothing that renders file contents as Markdown or HTML: text from runs is shown with st.text, st.code
or st.dataframe only, and tables go through `table` (formula-like cells neutralised for CSV downloads).
The runs root typed in the sidebar must lie inside the one the dashboard was started with.
"""

from __future__ import annotations

from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st

from dashboard import loaders, safety, tail
from lit_rlhf import run_files

RUNS_ROOT_KEY = "runs_root"
_RUNS_ROOT_INPUT = "runs_root_input"
MAX_PROBLEMS_SHOWN = 20
SELECTED_KEY = "selected_runs"  # run ids chosen on the Runs page and overlaid on the Curves page
DEFAULT_SELECTED = 6
MAX_CACHED_BYTES = 256 * 1024 * 1024  # JSONL bytes held parsed, all runs and sessions together


def default_runs_root() -> str:
    """The runs root from the environment (`LIT_RLHF_RUNS`, set by `python main.py dashboard`), else `runs`."""
    return str(safety.startup_runs_root())


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
        "Runs root",
        key=_RUNS_ROOT_INPUT,
        on_change=_share,
        help="the folder holding <stage>/<name>/ runs: the one given at start-up, or a folder inside it",
    )
    if _typed_root() != runs_root():
        st.sidebar.text(
            f"{_typed_root()} is not inside the runs root this dashboard was started with; showing "
            f"{runs_root()}. Start it with --runs to look elsewhere."
        )
    return runs_root()


def _typed_root() -> Path:
    return Path(st.session_state.get(RUNS_ROOT_KEY) or default_runs_root())


def runs_root() -> Path:
    """The runs root in use: the sidebar's when it lies inside the start-up runs root, else the start-up one.

    A page must not become a reader of any folder on the machine because someone typed its path.
    """
    typed = _typed_root()
    return typed if safety.inside(default_runs_root(), typed) is not None else Path(default_runs_root())


def labels_root() -> Path:
    """The folder the Compare page may append comparisons to (`--labels` at start-up, else the runs root)."""
    return safety.labels_root()


@st.cache_resource(show_spinner=False)
def _tail() -> tail.JsonlTail:
    return tail.JsonlTail(MAX_CACHED_BYTES)


def read_jsonl(path: str) -> loaders.JsonlRows:
    """`loaders.read_jsonl` under the runs root, parsing only what was appended since the last rerun."""
    return _tail().read(path, root=runs_root())


def _metrics(run: loaders.Run) -> tuple[pd.DataFrame, list[str]]:
    return _tail().derived(
        run.file(run_files.METRICS), "metrics", loaders.metrics_frame_and_problems, root=runs_root()
    )


def metrics_of(run: loaders.Run) -> pd.DataFrame:
    """The run's `metrics_frame`, rebuilt only when metrics.jsonl got new rows."""
    return _metrics(run)[0]


def metric_problems(runs: list[loaders.Run]) -> list[str]:
    """The metrics.jsonl lines of `runs` that no chart can use (bad JSON, NaN, a step that is not an integer)."""
    return [problem for run in runs for problem in _metrics(run)[1]]


def discover_runs() -> list[loaders.Run]:
    # Not cached: a directory listing and a few small status files, and it must see new runs at once.
    return loaders.discover_runs(runs_root())


def table(frame: pd.DataFrame, **kwargs) -> None:
    """st.dataframe of `frame`, text cells that a spreadsheet would run as formulas neutralised (its toolbar
    offers the table as a CSV download)."""
    st.dataframe(safety.safe_cells(frame), **kwargs)


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


TOKENS_PER_ROW = 6


def kl_chart(tokens: list[str], kl: list[float]) -> alt.Chart:
    """Tokens laid out in rows, each cell coloured by its KL (red: the policy likes it more than the reference).

    Token text is chart data (drawn by vega as text), never Markdown or HTML.
    """
    frame = pd.DataFrame(
        {
            "col": [i % TOKENS_PER_ROW for i in range(len(tokens))],
            "row": [i // TOKENS_PER_ROW for i in range(len(tokens))],
            "token": tokens,
            "kl": kl,
        }
    )
    bound = max(1e-6, max((abs(v) for v in kl), default=0.0))  # symmetric, so white is always KL 0
    base = alt.Chart(frame).encode(
        x=alt.X("col:O", axis=None, scale=alt.Scale(paddingInner=0.08)),
        y=alt.Y("row:O", axis=None, scale=alt.Scale(paddingInner=0.2)),
    )
    legend = alt.Legend(orient="bottom", title="KL_t (nats)", gradientLength=160)
    cells = base.mark_rect(cornerRadius=3).encode(
        color=alt.Color(
            "kl:Q", scale=alt.Scale(scheme="redblue", reverse=True, domain=[-bound, bound]), legend=legend
        ),
        tooltip=["token:N", alt.Tooltip("kl:Q", format=".4f")],
    )
    text = base.mark_text(fontSize=13).encode(text="token:N")
    return (cells + text).properties(width=alt.Step(52), height=alt.Step(30))


def no_runs_yet() -> None:
    """The empty state of every page: where the dashboard looked and how to make a first run."""
    st.info("No runs found under this runs root yet. Train a first model with:")
    st.code(loaders.FIRST_RUN_COMMAND, language="bash")
    st.text(f"Runs root: {runs_root()}  (change it in the sidebar, or set LIT_RLHF_RUNS)")


def show_problems(problems: list[str], what: str = "rows") -> None:
    """Rows that could not be read: how many, and the first few as plain text in a collapsed box (never as
    Markdown)."""
    if problems:
        with st.expander(f"{len(problems)} {what} could not be read and were skipped"):
            shown = problems[:MAX_PROBLEMS_SHOWN]
            more = len(problems) - len(shown)
            st.code("\n".join(shown + ([f"... and {more} more"] if more else [])), language=None)
