"""Ranking queue: rank K unranked samples per prompt, one prompt at a time (InstructGPT's labeling flow).

Keyboard: type the ranking best first (``B A=C D``, ``=`` for ties) and press Enter; Alt+S skips, Alt+B goes back.
Clicks: a place for each response (equal places are ties), then Submit. Rule violations are flagged per response
when rules are named. Every write is an append inside the labels folder (dashboard/labelqueue.py says which files);
model text is shown with st.code and st.text only.
"""

from __future__ import annotations

import streamlit as st

from dashboard import labelqueue as lq
from dashboard import ui
from dashboard.safety import UnsafePath
from lit_rlhf.data.rows import DataError

COLUMNS = 2  # responses side by side


def _empty(root) -> None:
    st.info(
        f"No queue in {root / lq.QUEUE_DIR} yet. A queue is a file of unranked samples, what collect-comparisons "
        "writes without --judge; rank them here and train the reward model on comparisons/<name>.jsonl. For example:"
    )
    st.code(
        "python main.py collect-comparisons --ckpt runs/sft/demo/stage --prompts data/demo/sft_val.jsonl "
        f"--k 4 --limit 50 --out {root / lq.QUEUE_DIR / 'mine.jsonl'}",
        language="bash",
    )


def _go(files: lq.QueueFiles, progress: lq.Progress, position: int) -> None:
    progress.position = position
    lq.save_progress(files, progress)
    st.rerun()


def _rules(files: lq.QueueFiles, progress: lq.Progress) -> list[str]:
    text = st.text_input(
        "Rules to flag (comma-separated; empty: none)",
        ", ".join(progress.rules),
        key=f"queue_rules_{files.name}",
        help="each response gets a box for the rules it breaks; written as rule-label rows next to the comparisons",
    )
    try:
        rules = lq.parse_rules(text)
    except ValueError as err:
        st.error(str(err))
        return progress.rules
    if rules != progress.rules:
        progress.rules = rules
        lq.save_progress(files, progress)
    return rules


def _show(item: lq.QueueItem) -> None:
    st.text(f"Prompt {item.index + 1} ({item.source}):")
    st.code(lq.prompt_text(item.prompt), language=None)
    for start in range(0, len(item.responses), COLUMNS):
        for i, col in enumerate(st.columns(COLUMNS), start=start):
            if i < len(item.responses):
                with col:
                    times = f"  (sampled {item.repeats[i]} times)" if item.repeats[i] > 1 else ""
                    st.text(f"{lq.LETTERS[i]}{times}")
                    st.code(item.responses[i], language=None)


def _rank_form(files: lq.QueueFiles, item: lq.QueueItem, rules: list[str]):
    """The ranking form; (ranking, broken rules per response) once submitted with a valid ranking, else None."""
    k = len(item.responses)
    key = f"queue_{files.name}_{item.index}"
    with st.form(key, enter_to_submit=True):
        order = st.text_input(
            f"Ranking, best first (e.g. {' '.join(lq.LETTERS[:k][::-1])} or {lq.LETTERS[0]}={lq.LETTERS[1]}"
            " ...), then Enter",
            key=f"{key}_order",
        )
        st.text("or click a place for each response (1 = best; equal places are ties):")
        places = [
            st.segmented_control(f"Place of {lq.LETTERS[i]}", list(range(1, k + 1)), key=f"{key}_place_{i}")
            for i in range(k)
        ]
        broken = {}
        if rules:
            for i in range(k):
                broken[i] = st.multiselect(f"{lq.LETTERS[i]} breaks", rules, key=f"{key}_rules_{i}")
        if not st.form_submit_button("Submit ranking", type="primary"):
            return None
    try:
        ranking = lq.parse_order(order, k) if order.strip() else lq.ranks_from_places(places)
    except ValueError as err:
        st.error(f"Not saved: {err}")
        return None
    return ranking, broken


st.title("Ranking queue")
ui.sidebar_runs_root()
root = ui.labels_root()
names = lq.find_queues(root)
if not names:
    _empty(root)
    st.stop()

name = st.selectbox("Queue", names)
files = lq.QueueFiles(root, name)
items, problems = lq.read_queue(files.queue, root)
ui.show_problems(problems)
if not items:
    st.info(f"{files.queue} holds no prompt to rank.")
    st.stop()

ranked = lq.ranked_rows(files, items)
progress = lq.read_progress(files)
position = min(max(progress.position, 0), len(items))
st.text(
    f"{len(ranked)} of {len(items)} prompts ranked, {len([i for i in progress.skipped if i not in ranked])} skipped. "
    f"Comparisons: {files.comparisons}"
)
rules = _rules(files, progress)

if position == len(items):
    st.success("Every prompt is ranked or skipped.")
    first_skipped = lq.next_open(len(items), 0, ranked, [])
    if first_skipped is not None and st.button("Rank the skipped prompts", key="queue_skipped"):
        progress.skipped = []
        _go(files, progress, first_skipped)
else:
    item = items[position]
    _show(item)
    if position in ranked:
        st.text(f"Ranked: {lq.describe(ranked[position])} (saved; the comparisons file is append-only)")
    else:
        result = _rank_form(files, item, rules)
        if result is not None:
            ranking, broken = result
            try:
                lq.submit(files, item, ranking, rules, broken)
            except DataError as err:
                st.error("Not saved: the row is not a valid comparison.")
                st.code(str(err), language=None)
            except (UnsafePath, OSError) as err:
                st.error("Not saved: the dashboard does not write there.")
                st.code(str(err), language=None)
            else:
                ranked[position] = tuple(ranking)
                progress.skipped = [i for i in progress.skipped if i != position]
                after = lq.next_open(len(items), position + 1, ranked, progress.skipped)
                _go(files, progress, len(items) if after is None else after)

back, skip, _ = st.columns([1, 1, 4])
if back.button("Back", key="queue_back", shortcut="Alt+B", disabled=position == 0):
    _go(files, progress, position - 1)
if skip.button("Skip", key="queue_skip", shortcut="Alt+S", disabled=position >= len(items)):
    if position not in ranked:
        progress.skipped = sorted({*progress.skipped, position})
    after = lq.next_open(len(items), position + 1, ranked, progress.skipped)
    _go(files, progress, len(items) if after is None else after)
