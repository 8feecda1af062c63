"""Over-optimization: each PPO run's gold (judge) and proxy (reward-model) scores against d = sqrt(KL to SFT), with
Gao et al.'s RL fit, beside best-of-n from the SFT model (`bench/overoptimization.py` writes eval/<name>/best_of_n.json).

A PPO run logs one point per evaluation (`ppo/eval/*`, with `eval.prompts` set; gold needs `eval.judge`).
"""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from dashboard import loaders, ui

st.title("Over-optimization")
root = ui.sidebar_runs_root()
runs = ui.discover_runs()
ppo = {run.id: run for run in runs if run.stage == "ppo"}
curves, problems = loaders.find_best_of_n(root)
ui.show_problems(problems, what="best-of-n files")
points = {run_id: loaders.gold_proxy_points(ui.metrics_of(run)) for run_id, run in ppo.items()}
points = {run_id: p for run_id, p in points.items() if p}
if not runs and not curves:
    ui.no_runs_yet()
    st.stop()
if not points and not curves:
    st.info(
        "No PPO run has logged an evaluation yet. PPO logs gold and proxy against sqrt(KL) at every evaluation "
        "(model.eval.prompts, and model.eval.judge for the gold); best-of-n from the SFT model comes from:"
    )
    st.code("python bench/overoptimization.py --runs runs --name demo", language=None)
    st.stop()

chosen = st.multiselect("PPO runs", list(points), default=list(points))
data = loaders.overoptimization_long({r: points[r] for r in chosen}, curves)


def _chart(frame: pd.DataFrame, title: str) -> alt.Chart:
    """Points joined per series, fitted curves dashed."""
    base = alt.Chart(frame).encode(
        x=alt.X("d:Q", title="d = sqrt(KL to SFT)", scale=alt.Scale(padding=8)),
        y=alt.Y("value:Q", title=title, scale=alt.Scale(zero=False, padding=8)),
        color=alt.Color("series:N", legend=alt.Legend(orient="bottom", title=None, columns=2)),
        tooltip=[
            "series:N",
            "label:N",
            alt.Tooltip("d:Q", format=".3f"),
            alt.Tooltip("value:Q", format=".4f"),
        ],
    )
    measured = base.transform_filter(alt.datum.kind == "point").mark_line(point=True)
    fitted = base.transform_filter(alt.datum.kind == "fit").mark_line(strokeDash=[5, 4])
    return (measured + fitted).properties(height=340).interactive()


gold_col, proxy_col = st.columns(2)
for col, measure, title in (
    (gold_col, "gold", "gold: judge score"),
    (proxy_col, "proxy", "proxy: reward-model score"),
):
    with col:
        st.subheader(title)
        part = data[data["measure"] == measure]
        if part.empty:
            st.text(
                "Nothing measured: the gold needs a judge (model.eval.judge)." if measure == "gold" else ""
            )
        else:
            st.altair_chart(_chart(part, title), width="stretch")

st.subheader("Gao et al.'s fits (gold relative to the SFT model)")
st.text(
    "RL: gold(d) - gold(0) = d(α − β log d); best-of-n: d(α − β d). The peak is where the fit turns down."
)
ui.table(loaders.fits_table({r: points[r] for r in chosen}, curves), hide_index=True)
st.subheader("Points")
ui.table(data[data["kind"] == "point"].drop(columns=["kind"]), hide_index=True)
