"""Rankings: a reward run's validation prompts, the labeler's ranks against the RM's scores, worst first."""

from __future__ import annotations

import streamlit as st

from dashboard import loaders, ui
from lit_rlhf import run_files

ACCURACY_KEYS = ("reward/accuracy", "reward/val_accuracy", "reward/val_kendall_tau")

st.title("Rankings")
ui.sidebar_runs_root()
runs = {run.id: run for run in ui.discover_runs() if run.stage == "reward"}
if not runs:
    st.info(
        "No reward runs under this runs root yet. Train a reward model (stage `reward`) from an SFT stage "
        "directory; its validation rankings show here."
    )
    st.stop()

run = runs[st.selectbox("Reward run", list(runs))]
frame = ui.metrics_of(run)
st.subheader("RM accuracy over time")
accuracy = loaders.metrics_long(frame, ACCURACY_KEYS)
if len(accuracy):
    ui.line_chart(accuracy, color="metric")
else:
    st.text("No accuracy metrics logged yet.")

rows, problems = loaders.parse_rankings(ui.read_jsonl(run.file(run_files.RANKINGS)))
ui.show_problems(problems)
if not rows:
    st.info("This run has written no rankings yet (rankings.jsonl appears after the first validation).")
    st.stop()

steps = sorted({r.step for r in rows})
step = st.select_slider("Validation step", steps, value=steps[-1]) if len(steps) > 1 else steps[0]
table = loaders.ranking_table(rows, step)
st.subheader("Prompts, most disagreement first")
ui.table(table.drop(columns=["row"]), hide_index=True)

position = st.number_input("Show prompt #", 1, len(table), 1, help="position in the table above (1 = worst)")
row = rows[int(table["row"].iloc[int(position) - 1])]
st.text(f"Prompt ({row.source}):")
st.code(row.prompt, language=None)
ui.table(loaders.ranking_detail(row), hide_index=True)
for rank, rm_score, response in sorted(zip(row.labeled_rank, row.scores, row.responses, strict=True)):
    st.text(f"labeled rank {rank}, RM score {rm_score:+.3f}:")
    st.code(response, language=None)
