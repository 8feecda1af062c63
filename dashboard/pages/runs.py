"""Runs: every run under the runs root with its status, last step, parent and key metrics."""

from __future__ import annotations

import streamlit as st

from dashboard import loaders, ui

st.title("Runs")
root = ui.sidebar_runs_root()
runs = ui.discover_runs()
if not runs:
    ui.no_runs_yet()
    st.stop()

frames = {run.id: ui.metrics_of(run) for run in runs}
ui.table(loaders.runs_table(runs, frames), hide_index=True)
ui.pick_runs([run.id for run in runs], page="runs", label="Runs to overlay on the Curves page")

alarms = loaders.alarms_table(runs)
if len(alarms):
    st.subheader("Alarms")
    ui.table(alarms, hide_index=True)

failed = [run for run in runs if run.status == "failed" and run.error]
for run in failed:
    st.text(f"{run.id} failed: {run.error}")
ui.show_problems([run.problem for run in runs if run.problem], what="status files")
ui.show_problems(ui.metric_problems(runs), what="metric rows")

report = loaders.latest_report(root)
if report is not None:
    path, text = report
    st.subheader("Latest evaluation report")
    st.text(path)
    table, notes = loaders.report_table(path, root)
    if table is None:  # no report.json (or a bad one): the Markdown as it is
        ui.show_problems(notes, what="report files")
        st.code(text, language=None)
    else:
        ui.table(table, hide_index=True)
        for note in notes:
            st.text(f"Note: {note}")
    png = loaders.report_figure(path, root)
    if png is not None:
        st.image(png)
    if table is not None:
        with st.expander("report.md"):
            st.code(text, language=None)
