"""Samples: completions logged during training, filtered by run, mode, step, text, reward-model score, judge score,
length and what they break; one prompt over steps with per-token KL, and a word diff of two of its completions.

Completions are model output: they are shown with st.text, st.code, st.dataframe and chart data only.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import loaders, ui
from lit_rlhf import run_files

MAX_ROWS = 2000  # the table shows the newest rows past this many
MAX_HISTORY = 50  # completions of one prompt written out in full
DIFF_MARK = {"=": "  ", "-": "- ", "+": "+ "}


def _range(col, label: str, values: pd.Series, integer: bool = False):
    """A range slider over the values present; None (no filter) while it spans them all."""
    present = values.dropna()
    if present.nunique() < 2:
        return None
    lo, hi = (
        (int(present.min()), int(present.max())) if integer else (float(present.min()), float(present.max()))
    )
    chosen = col.slider(label, lo, hi, (lo, hi), key=f"samples_{label}")
    return None if tuple(chosen) == (lo, hi) else tuple(chosen)


def _label(record: dict) -> str:
    return f"step {record['step']} · {record['run']} · {record['mode']}"


st.title("Samples")
ui.sidebar_runs_root()
runs = ui.discover_runs()
if not runs:
    ui.no_runs_yet()
    st.stop()

reads = {run.id: ui.read_jsonl(run.file(run_files.SAMPLES)) for run in runs}
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
f1, f2, f3, f4 = st.columns(4)
reward = _range(f1, "RM score", loaders.sample_reward(frame))
score = _range(f2, "Judge score", frame["score"])
length = _range(f3, "Length (tokens)", frame["length"], integer=True)
all_flags = sorted({flag for flags in frame["flags"] for flag in flags})
flags = f4.multiselect("Breaks (any of)", all_flags, help="the judge's 0/1 details and rule labels") or None
shown = loaders.filter_samples(frame, chosen_runs, chosen_modes, steps, text, reward, score, length, flags)

st.text(f"{len(shown)} of {len(frame)} samples")
table = shown.drop(columns=["tokens", "token_kl"]).assign(flags=shown["flags"].map(", ".join))
ui.table(table.tail(MAX_ROWS), hide_index=True)
if shown.empty:
    st.stop()

st.subheader("One prompt over steps")
prompts = list(dict.fromkeys(shown["prompt"]))  # first-seen order, no repeats
prompt = st.selectbox("Prompt", prompts)
history = loaders.prompt_history(shown, prompt)
ui.table(history.drop(columns=["prompt", "tokens", "token_kl"]), hide_index=True)
records = history.to_dict("records")
for record in records[-MAX_HISTORY:]:
    st.text(loaders.sample_heading(record))
    st.text(record["completion"])
    if isinstance(record["tokens"], tuple) and record["tokens"]:
        st.altair_chart(ui.kl_chart(list(record["tokens"]), list(record["token_kl"])), width="content")

if len(records) >= 2:
    st.subheader("Two completions of this prompt, word by word")
    d1, d2 = st.columns(2)
    labels = [_label(r) for r in records]
    first = d1.selectbox(
        "From", range(len(records)), index=0, format_func=labels.__getitem__, key="samples_diff_a"
    )
    second = d2.selectbox(
        "To",
        range(len(records)),
        index=len(records) - 1,
        format_func=labels.__getitem__,
        key="samples_diff_b",
    )
    diff = loaders.word_diff(records[first]["completion"], records[second]["completion"])
    st.code("\n".join(DIFF_MARK[op] + words for op, words in diff) or "(both empty)", language=None)
