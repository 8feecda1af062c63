"""Samples: completions logged during training, filtered by run, mode, step and text; one prompt over steps.

Completions are model output: they are shown with st.text and st.dataframe only.
"""

from __future__ import annotations

import streamlit as st

from dashboard import loaders, ui

MAX_ROWS = 2000  # the table shows the newest rows past this many
MAX_HISTORY = 50  # completions of one prompt written out in full

st.title("Samples")
ui.sidebar_runs_root()
runs = ui.discover_runs()
if not runs:
    ui.no_runs_yet()
    st.stop()

reads = {run.id: ui.read_jsonl(run.file(loaders.SAMPLES)) for run in runs}
frame, problems = loaders.samples_frame(reads)  # a run whose file cannot be read brings its problem
ui.show_problems(problems)
if frame.empty:
    st.info(
        "No samples yet: runs write samples.jsonl every `samples.every_n_steps` steps and at the end of fit."
    )
    st.stop()

run_ids = sorted(frame["run"].unique())
modes = sorted(frame["mode"].unique())
c1, c2 = st.columns(2)
chosen_runs = c1.multiselect("Runs", run_ids, default=run_ids)
chosen_modes = c2.multiselect("Modes", modes, default=modes)
lo, hi = int(frame["step"].min()), int(frame["step"].max())
steps = st.slider("Steps", lo, hi, (lo, hi)) if hi > lo else (lo, hi)
text = st.text_input("Search prompts and completions", "")
shown = loaders.filter_samples(frame, chosen_runs, chosen_modes, steps, text)

st.text(f"{len(shown)} of {len(frame)} samples")
ui.table(shown.tail(MAX_ROWS), hide_index=True)
if shown.empty:
    st.stop()

st.subheader("One prompt over steps")
prompts = list(dict.fromkeys(shown["prompt"]))  # first-seen order, no repeats
prompt = st.selectbox("Prompt", prompts)
history = loaders.prompt_history(shown, prompt)
ui.table(history.drop(columns=["prompt"]), hide_index=True)
for record in history.tail(MAX_HISTORY).to_dict("records"):
    st.text(loaders.sample_heading(record))
    st.text(record["completion"])
