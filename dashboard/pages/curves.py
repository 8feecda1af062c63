"""Curves: each stage's headline metrics first, then every metric by step grouped by prefix (sft/, reward/, ppo/),
several runs overlaid, EMA smoothing.

Each rerun re-reads a metrics file only if its (path, mtime, size) changed, so a running run is followed by
rerunning (the Refresh button, or the auto-refresh toggle).
"""

from __future__ import annotations

import streamlit as st

from dashboard import loaders, ui
from lit_rlhf import run_files

REFRESH_SECONDS = 5

st.title("Curves")
ui.sidebar_runs_root()
runs = {run.id: run for run in ui.discover_runs()}
if not runs:
    ui.no_runs_yet()
    st.stop()

chosen = ui.pick_runs(list(runs), page="curves")
left, mid, right = st.columns([3, 2, 1])
weight = left.slider("Smoothing (EMA weight)", 0.0, 0.99, 0.0, 0.01)
follow = mid.toggle(
    f"Follow running runs (re-read every {REFRESH_SECONDS} s)",
    value=False,
    disabled=not any(runs[r].status == "running" for r in chosen),
)
right.button("Refresh")


@st.fragment(run_every=REFRESH_SECONDS if follow else None)
def charts() -> None:
    frames = {run_id: ui.metrics_of(runs[run_id]) for run_id in chosen}
    ui.show_problems(ui.metric_problems([runs[run_id] for run_id in chosen]), what="metric rows")
    groups = loaders.group_by_prefix(key for frame in frames.values() for key in frame.columns)
    if not groups:
        st.info("The chosen runs have logged no metrics yet.")
        return
    headline = loaders.headline_keys(key for keys in groups.values() for key in keys)
    if headline:
        st.subheader("Headline")
        _grid(frames, headline, weight)
    for group, keys in groups.items():
        st.subheader(f"{group}/" if group in run_files.STAGES else "other")
        # No key: the widget's identity is its options, so a run bringing new metrics resets it to all.
        shown = st.multiselect("Metrics", keys, default=keys)
        _grid(frames, shown, weight)


def _grid(frames, keys: list[str], weight: float) -> None:
    """Two charts a row, in the order given."""
    for i in range(0, len(keys), 2):
        for col, key in zip(st.columns(2), keys[i : i + 2], strict=False):
            with col:
                st.text(key)
                ui.line_chart(loaders.overlay(frames, key, weight), color="run")


if not chosen:
    st.info("Choose one or more runs above (or on the Runs page) to draw their curves.")
else:
    charts()
