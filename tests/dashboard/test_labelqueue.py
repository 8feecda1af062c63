"""The ranking queue's logic: keyboard syntax, places, reading a queue, appending rows the reward stage reads,
progress that survives a restart, and the page under AppTest."""

from __future__ import annotations

import json
import os

import pytest

from dashboard import labelqueue as lq
from lit_rlhf.data.rows import Comparison, DataError, read_rows

from .helpers import write_jsonl

QUEUE = [
    {"prompt": "sort c b a =", "responses": ["a b c", "c b a", "a b c", "a c b"]},
    {"messages": [{"role": "user", "content": "count a a ="}], "responses": ["2", "3"]},
    {"prompt": "copy d =", "responses": ["d", "d d"]},
]


@pytest.mark.parametrize(
    ("text", "k", "ranks"),
    [
        ("B A=C D", 4, (1, 0, 1, 2)),
        ("b a=c d", 4, (1, 0, 1, 2)),
        ("BA=CD", 4, (1, 0, 1, 2)),
        ("b > a = c > d", 4, (1, 0, 1, 2)),
        ("a,b", 2, (0, 1)),
        ("C A B", 3, (1, 2, 0)),
    ],
)
def test_keyboard_order_by_hand(text, k, ranks):
    assert lq.parse_order(text, k) == ranks


@pytest.mark.parametrize(
    ("text", "k", "why"),
    [
        ("A B", 3, "every response needs a place; missing: C"),
        ("A B A", 2, "A given more than once"),
        ("A E", 2, "'E' is not a response here: use A to B"),
        ("=A B", 2, "'=' must come between two letters"),
        ("A B=", 2, "'=' must come between two letters"),
    ],
)
def test_keyboard_order_mistakes_say_what_is_wrong(text, k, why):
    with pytest.raises(ValueError) as err:
        lq.parse_order(text, k)
    assert str(err.value) == why


def test_places_become_dense_ranks_and_describe_reads_them_back():
    assert lq.ranks_from_places([2, 1, 2, 4]) == (1, 0, 1, 2)
    assert lq.describe((1, 0, 1, 2)) == "B > A = C > D"
    with pytest.raises(ValueError, match="missing: B"):
        lq.ranks_from_places([1, None])


def _queue(tmp_path, rows=QUEUE) -> lq.QueueFiles:
    write_jsonl(tmp_path / "queue" / "mine.jsonl", rows)
    return lq.QueueFiles(tmp_path, "mine")


def test_reading_a_queue_merges_repeated_samples_and_names_bad_rows(tmp_path):
    files = _queue(
        tmp_path,
        [
            *QUEUE,
            {"prompt": "p", "responses": ["a", "b"], "ranking": [0, 1]},
            {"prompt": "p", "responses": []},
            {"responses": ["a"]},
        ],
    )
    items, problems = lq.read_queue(files.queue, tmp_path)
    assert [i.responses for i in items] == [("a b c", "c b a", "a c b"), ("2", "3"), ("d", "d d")]
    assert items[0].repeats == (2, 1, 1) and items[1].prompt == (("user", "count a a ="),)
    path = files.queue
    assert problems[0] == f"{path}:4: field 'ranking': already ranked: the queue takes unranked samples"
    assert problems[1] == f"{path}:5: field 'responses': expected a non-empty array of strings"
    assert problems[2].startswith(f"{path}:6: field 'prompt'")
    assert lq.prompt_text(items[1].prompt) == "user: count a a ="


def test_submitted_rows_are_comparisons_the_reward_stage_reads_and_rule_labels(tmp_path):
    files = _queue(tmp_path)
    items, _ = lq.read_queue(files.queue, tmp_path)
    lq.submit(files, items[0], lq.parse_order("A C B", 3), ["banned word"], {1: ["banned word"]})
    lq.submit(files, items[1], (1, 0))
    rows, report = read_rows(files.comparisons, "comparison")
    assert rows == [
        Comparison("sort c b a =", ("a b c", "c b a", "a c b"), (0, 2, 1)),
        Comparison((("user", "count a a ="),), ("2", "3"), (1, 0)),
    ]
    assert report.skipped == []
    rules = [json.loads(x) for x in files.rules.read_text().splitlines()]
    assert rules == [
        {"prompt": "sort c b a =", "response": "a b c", "rules": {"banned word": False}},
        {"prompt": "sort c b a =", "response": "c b a", "rules": {"banned word": True}},
        {"prompt": "sort c b a =", "response": "a c b", "rules": {"banned word": False}},
    ]
    assert lq.ranked_rows(files, items) == {0: (0, 2, 1), 1: (1, 0)}
    with pytest.raises(DataError, match=r"mine\.jsonl:3: field 'ranking': all 2 responses tied"):
        lq.submit(files, items[2], (0, 0))
    assert len(files.comparisons.read_text().splitlines()) == 2  # nothing written for it


def test_progress_is_the_last_row_and_navigation_skips_what_is_done(tmp_path):
    files = _queue(tmp_path)
    assert lq.read_progress(files) == lq.Progress()
    lq.save_progress(files, lq.Progress(2, [1], ["format"]))
    lq.save_progress(files, lq.Progress(1, [1, 1], []))
    assert lq.read_progress(files) == lq.Progress(1, [1], [])
    assert lq.next_open(3, 0, {0: (0, 1)}, [1]) == 2
    assert lq.next_open(3, 0, {0: (0, 1), 2: (1, 0)}, [1]) is None


def test_queue_files_stay_in_the_labels_folder(tmp_path):
    _queue(tmp_path)
    (tmp_path / "queue" / "mine.progress.jsonl").write_text("")
    outside = tmp_path.parent / f"{tmp_path.name}-outside.jsonl"
    outside.write_text("")
    os.symlink(outside, tmp_path / "queue" / "escape.jsonl")
    assert lq.find_queues(tmp_path) == ["mine"]
    with pytest.raises(lq.UnsafePath):
        _ = lq.QueueFiles(tmp_path, "../../x").comparisons


def test_rule_names_are_checked():
    assert lq.parse_rules(" banned word, format ,format") == ["banned word", "format"]
    with pytest.raises(ValueError, match="rule name '<b>'"):
        lq.parse_rules("<b>")


# ---- the page ----------------------------------------------------------------------------------------------


def _open(tmp_path, monkeypatch):
    from .test_app import open_page

    monkeypatch.setenv("LIT_RLHF_RUNS", str(tmp_path))
    return open_page(tmp_path, "pages/ranking_queue.py")


def _texts(at) -> str:
    return "\n".join([t.value for t in at.text] + [c.value for c in at.code])


def test_page_ranks_by_keyboard_and_clicks_skips_goes_back_and_resumes_after_a_restart(tmp_path, monkeypatch):
    files = _queue(tmp_path)
    at = _open(tmp_path, monkeypatch)
    assert at.code[0].value == "sort c b a =" and [c.value for c in at.code[1:4]] == [
        "a b c",
        "c b a",
        "a c b",
    ]
    at.text_input(key="queue_mine_0_order").set_value("c a=b")
    at.button(key="FormSubmitter:queue_mine_0-Submit ranking").click().run()
    assert at.code[0].value == "user: count a a ="  # the next prompt
    at.get("button_group")[0].set_value(2)  # A: place 2
    at.get("button_group")[1].set_value(1)  # B: place 1
    at.button(key="FormSubmitter:queue_mine_1-Submit ranking").click().run()
    assert at.code[0].value == "copy d ="
    at.button(key="queue_skip").click().run()
    assert "Every prompt is ranked or skipped." in [s.value for s in at.success]
    rows, _ = read_rows(files.comparisons, "comparison")
    assert [(r.responses, r.ranking) for r in rows] == [
        (("a b c", "c b a", "a c b"), (1, 1, 0)),
        (("2", "3"), (1, 0)),
    ]

    again = _open(tmp_path, monkeypatch)  # a new session: a reload, or the server restarted
    assert "2 of 3 prompts ranked, 1 skipped." in _texts(again)
    again.button(key="queue_back").click().run()
    assert again.code[0].value == "copy d ="  # the skipped prompt can be ranked now
    again.text_input(key="queue_mine_2_order").set_value("B A")
    again.button(key="FormSubmitter:queue_mine_2-Submit ranking").click().run()
    assert "3 of 3 prompts ranked, 0 skipped." in _texts(again)
    again.button(key="queue_back").click().run()
    assert "Ranked: B > A (saved; the comparisons file is append-only)" in _texts(again)


def test_page_refuses_an_incomplete_ranking_and_writes_rule_labels(tmp_path, monkeypatch):
    files = _queue(tmp_path)
    at = _open(tmp_path, monkeypatch)
    at.text_input(key="queue_rules_mine").set_value("banned, format").run()
    at.text_input(key="queue_mine_0_order").set_value("A B")
    at.button(key="FormSubmitter:queue_mine_0-Submit ranking").click().run()
    assert [e.value for e in at.error] == ["Not saved: every response needs a place; missing: C"]
    assert not files.comparisons.exists()
    at.text_input(key="queue_mine_0_order").set_value("A B C")
    at.multiselect(key="queue_mine_0_rules_2").set_value(["format"])
    at.button(key="FormSubmitter:queue_mine_0-Submit ranking").click().run()
    labels = [json.loads(x) for x in files.rules.read_text().splitlines()]
    assert [row["rules"] for row in labels] == [
        {"banned": False, "format": False},
        {"banned": False, "format": False},
        {"banned": False, "format": True},
    ]
    assert lq.read_progress(files).rules == ["banned", "format"]


def test_page_without_a_queue_says_how_to_make_one(tmp_path, monkeypatch):
    at = _open(tmp_path, monkeypatch)
    assert "collect-comparisons" in at.code[0].value and "queue/mine.jsonl" in at.code[0].value
