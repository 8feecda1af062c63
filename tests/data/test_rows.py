import json
import logging
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lit_rlhf.data.rows import (
    Comparison,
    DataError,
    Demonstration,
    Prompt,
    ReadReport,
    RuleLabel,
    Text,
    parse_json_line,
    read_rows,
    row_to_dict,
    validate_row,
)

GOOD = {
    "demonstration": b'{"prompt": "p", "response": "r"}',
    "comparison": b'{"prompt": "p", "responses": ["a", "b"], "ranking": [1, 0]}',
    "prompt": b'{"prompt": "p"}',
    "text": b'{"text": "t"}',
    "rule": b'{"prompt": "p", "response": "r", "rules": {"banned_word": true}}',
}


def write_lines(tmp_path, lines, name="rows.jsonl"):
    path = tmp_path / name
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return str(path)


# Each bad row sits on physical line 3 (after a good row and a blank line); the error must say where
# and which field: (kind, the bad line, what str(err) must contain after "{path}:3: ").
BAD_ROWS = [
    ("rule", b'{"prompt": "p", "response": "r"}', "field 'rules': missing (a rule row needs"),
    ("rule", b'{"prompt": "p", "rules": {"x": true}}', "field 'response': missing"),
    ("rule", b'{"prompt": "p", "response": "r", "rules": []}', "field 'rules': expected an object mapping"),
    (
        "rule",
        b'{"prompt": "p", "response": "r", "rules": {}}',
        "field 'rules': empty: the row labels no rule",
    ),
    (
        "rule",
        b'{"prompt": "p", "response": "r", "rules": {"a": false, "b": 1}}',
        "field 'rules.b': expected true (broken), false (followed) or null (unsure), got integer 1",
    ),
    (
        "rule",
        b'{"prompt": "p", "response": "r", "rules": {"no/slash": true}}',
        "field 'rules.no/slash': a rule name is 1-64 letters",
    ),
    (
        "rule",
        b'{"prompt": "p", "response": "r", "rules": {"a": null, "b": null}}',
        "field 'rules': all 2 rules are null (unsure): the row holds no label",
    ),
    (
        "rule",
        b'{"messages": [{"role": "assistant", "content": "x"}], "response": "r", "rules": {"a": true}}',
        "field 'messages[0].role': the last message must be from the user",
    ),
    ("demonstration", b'{"prompt": "p", ', "invalid JSON: "),
    ("demonstration", b'["p", "r"]', "expected a JSON object, got array"),
    ("text", b'"just a string"', "expected a JSON object, got string"),
    ("demonstration", b'{"prompt": "p"}', "field 'response': missing"),
    ("demonstration", b'{"prompt": 3, "response": "r"}', "field 'prompt': expected a string, got integer"),
    ("prompt", b'{"prompt": null}', "field 'prompt': expected a string, got null"),
    ("demonstration", b'{"prompt": " \\n ", "response": "r"}', "field 'prompt': must not be empty"),
    ("text", b'{"text": ""}', "field 'text': must not be empty"),
    (
        "comparison",
        b'{"prompt": "", "responses": ["a", "b"], "ranking": [0, 1]}',
        "field 'prompt': must not be empty",
    ),
    (
        "comparison",
        b'{"prompt": "p", "responses": ["a", "b", "c", "d"], "ranking": [0, 1, 2]}',
        "field 'ranking': expected 4 ranks (one per response), got 3",
    ),
    (
        "comparison",
        b'{"prompt": "p", "responses": ["a"], "ranking": [0]}',
        "field 'responses': expected at least 2 responses, got 1",
    ),
    (
        "comparison",
        b'{"prompt": "p", "responses": ["a", 7], "ranking": [0, 1]}',
        "field 'responses[1]': expected a string, got integer",
    ),
    (
        "comparison",
        b'{"prompt": "p", "responses": ["a", "b"], "ranking": [0, 2]}',
        "field 'ranking[1]': rank 2 out of range [0, 1]",
    ),
    (
        "comparison",
        b'{"prompt": "p", "responses": ["a", "b"], "ranking": [-1, 0]}',
        "field 'ranking[0]': rank -1 out of range [0, 1]",
    ),
    (
        "comparison",
        b'{"prompt": "p", "responses": ["a", "b"], "ranking": [true, 0]}',
        "field 'ranking[0]': expected an integer rank, got boolean",
    ),
    (
        "comparison",
        b'{"prompt": "p", "responses": ["a", "b"], "ranking": [0, 1.0]}',
        "field 'ranking[1]': expected an integer rank, got number",
    ),
    (
        "comparison",
        b'{"prompt": "p", "responses": ["a", "b"], "ranking": "01"}',
        "field 'ranking': expected an array of integer ranks",
    ),
    (
        "comparison",
        b'{"prompt": "p", "responses": ["a", "b", "c"], "ranking": [1, 1, 1]}',
        "field 'ranking': all 3 responses tied",
    ),
    (
        "comparison",
        b'{"prompt": "p", "responses": ["a", "b"], "ranking": [0, NaN]}',
        "field 'ranking[1]': NaN is not valid JSON",
    ),
    (
        "demonstration",
        b'{"prompt": "p", "response": "r", "meta": {"s": -Infinity}}',
        "field 'meta.s': -Infinity is not valid JSON",
    ),
    ("comparison", b'{"prompt": "p", "chosen": "a"}', "field 'rejected': missing"),
    ("demonstration", b'{"prompt": "p\xff", "response": "r"}', "not valid UTF-8"),
    (
        "demonstration",
        b'{"prompt": "p", "prompt": "q", "response": "r"}',
        "field 'prompt': key appears more than once",
    ),
    (
        "demonstration",
        b'{"prompt": "\\ud800", "response": "r"}',
        "field 'prompt': contains an unpaired UTF-16 surrogate",
    ),
    (
        "demonstration",
        b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}, {"role": "user", "content": "?"}]}',
        "field 'messages[2].role': the last message must be from the assistant, got 'user'",
    ),
    (
        "demonstration",
        b'{"messages": [{"role": "assistant", "content": "yo"}]}',
        "field 'messages': expected at least 2 messages",
    ),
    (
        "demonstration",
        b'{"messages": [{"role": "tool", "content": "x"}, {"role": "assistant", "content": "yo"}]}',
        "field 'messages[0].role': unknown role 'tool'",
    ),
    (
        "demonstration",
        b'{"messages": [{"role": "user"}, {"role": "assistant", "content": "yo"}]}',
        "field 'messages[0].content': missing",
    ),
    (
        "demonstration",
        b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " "}]}',
        "field 'messages[1].content': must not be empty",
    ),
    (
        "demonstration",
        b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], "prompt": "p"}',
        "field 'messages': give either 'messages' or 'prompt'/'response', not both",
    ),
]


@pytest.mark.parametrize(("kind", "bad", "expected"), BAD_ROWS)
def test_bad_row_error_names_file_line_and_field(tmp_path, kind, bad, expected):
    path = write_lines(tmp_path, [GOOD[kind], b"", bad])
    with pytest.raises(DataError) as info:
        read_rows(path, kind)
    assert str(info.value).startswith(f"{path}:3: {expected}")
    assert info.value.path == path
    assert info.value.line == 3


def test_error_attributes_for_the_spec_example():
    bad = {"prompt": "p", "responses": ["a", "b", "c", "d"], "ranking": [0, 1, 2]}
    with pytest.raises(DataError) as info:
        validate_row(bad, "comparison", "data/cmp.jsonl", 12)
    err = info.value
    assert str(err) == "data/cmp.jsonl:12: field 'ranking': expected 4 ranks (one per response), got 3"
    assert (err.path, err.line, err.field) == ("data/cmp.jsonl", 12, "ranking")
    assert err.reason == "expected 4 ranks (one per response), got 3"


def test_error_str_omits_missing_parts():
    assert str(DataError("a.jsonl", None, None, "no rows")) == "a.jsonl: no rows"
    assert str(DataError("a.jsonl", 4, None, "not valid UTF-8")) == "a.jsonl:4: not valid UTF-8"
    assert str(DataError("a.jsonl", None, "text", "bad")) == "a.jsonl: field 'text': bad"


def test_error_survives_pickling():
    # DataLoader workers send exceptions back to the main process by pickling them.
    err = pickle.loads(pickle.dumps(DataError("a.jsonl", 3, "prompt", "must not be empty")))
    assert str(err) == "a.jsonl:3: field 'prompt': must not be empty"
    assert (err.line, err.field) == (3, "prompt")


def test_skip_policy_counts_logs_and_keeps_the_good_rows(tmp_path, caplog):
    lines = [
        b'{"prompt": "p1", "responses": ["a", "b"], "ranking": [0, 1]}',
        b'{"prompt": "p2", "responses": ["a", "b"], "ranking": [0, 0]}',
        b"",
        b'{"prompt": "", "responses": ["a", "b"], "ranking": [0, 1]}',
        b'{"prompt": "p3", "responses": ["a", "b", "c"], "ranking": [2, 0, 1], "extra": {"ignored": true}}',
        b'{"prompt": "p4", "responses": ["a", "b"], "ranking": [0, 5]}',
    ]
    path = write_lines(tmp_path, lines)
    with caplog.at_level(logging.WARNING, logger="lit_rlhf.data.rows"):
        rows, report = read_rows(path, "comparison", on_error="skip")
    assert rows == [Comparison("p1", ("a", "b"), (0, 1)), Comparison("p3", ("a", "b", "c"), (2, 0, 1))]
    assert [r.source for r in rows] == [f"{path}:1", f"{path}:5"]
    assert (report.read, report.kept, report.truncated) == (5, 2, 0)
    assert [(e.line, e.field) for e in report.skipped] == [(2, "ranking"), (4, "prompt"), (6, "ranking[1]")]
    assert report.summary() == f"{path}: read 5 rows, kept 2, skipped 3 (ranking: 2, prompt: 1)"
    for line in (2, 4, 6):
        assert f"{path}:{line}: field" in caplog.text


def test_raise_policy_stops_at_the_first_bad_row(tmp_path):
    path = write_lines(tmp_path, [GOOD["text"], b'{"text": 1}', b"{"])
    with pytest.raises(DataError, match=r":2: field 'text'"):
        read_rows(path, "text")


def test_every_row_bad_is_an_error_even_under_skip(tmp_path):
    path = write_lines(tmp_path, [b'{"text": ""}', b"[]"])
    with pytest.raises(DataError) as info:
        read_rows(path, "text", on_error="skip")
    assert str(info.value).startswith(
        f"{path}: no valid rows: all 2 were rejected (first: {path}:1: field 'text'"
    )


def test_a_file_of_blank_lines_is_an_error(tmp_path):
    path = write_lines(tmp_path, [b"", b"   "])
    with pytest.raises(DataError, match="no rows"):
        read_rows(path, "text", on_error="skip")


def test_blank_lines_are_not_rows_and_crlf_and_bom_are_accepted(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"text": "a"}\r\n\r\n{"text": "b"}')  # no final newline either
    rows, report = read_rows(path, "text")
    assert rows == [Text("a"), Text("b")]
    assert rows[1].source == f"{path}:3"
    assert (report.read, report.kept) == (2, 2)


def test_limit_stops_after_that_many_kept_rows(tmp_path):
    path = write_lines(
        tmp_path, [b'{"prompt": "1"}', b'{"prompt": ""}', b'{"prompt": "2"}', b'{"prompt": "3"}']
    )
    rows, report = read_rows(path, "prompt", on_error="skip", limit=2)
    assert rows == [Prompt("1"), Prompt("2")]
    assert (report.read, report.kept, len(report.skipped)) == (3, 2, 1)


def test_missing_file_and_unknown_extension(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        read_rows(tmp_path / "nope.jsonl", "text")
    csv = tmp_path / "rows.csv"
    csv.write_text("text\nhello\n")
    with pytest.raises(DataError, match=r"rows\.csv: unknown file type '\.csv'"):
        read_rows(csv, "text")


def test_parquet_comparisons_with_row_numbers(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table(
        {
            "prompt": ["p1", "p2", "p3"],
            "responses": [["a", "b"], ["c", "d", "e"], ["f", "g"]],
            "ranking": [[1, 0], [0, 0, 0], [0, 1]],
        }
    )
    path = str(tmp_path / "cmp.parquet")
    pq.write_table(table, path)
    with pytest.raises(DataError) as info:
        read_rows(path, "comparison")
    assert str(info.value).startswith(f"{path}:2: field 'ranking': all 3 responses tied")
    rows, report = read_rows(path, "comparison", on_error="skip")
    assert rows == [Comparison("p1", ("a", "b"), (1, 0)), Comparison("p3", ("f", "g"), (0, 1))]
    assert rows[1].source == f"{path}:3"
    assert report.summary() == f"{path}: read 3 rows, kept 2, skipped 1 (ranking: 1)"


def test_parquet_chat_demonstrations(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    messages = [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]]
    path = str(tmp_path / "sft.parquet")
    pq.write_table(pa.table({"messages": messages}), path)
    rows, _ = read_rows(path, "demonstration")
    assert rows == [Demonstration(None, None, (("user", "hi"), ("assistant", "yo")))]


def test_rule_rows_keep_unsure_labels_and_read_from_parquet(tmp_path):
    row = validate_row(
        {"messages": [{"role": "user", "content": "q"}], "response": "r", "rules": {"a": True, "b": None}},
        "rule",
        "f",
        1,
    )
    assert row == RuleLabel((("user", "q"),), "r", {"a": True, "b": None})
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = str(tmp_path / "rules.parquet")
    rules = [{"a": True, "b": None}, {"a": None, "b": None}]
    pq.write_table(pa.table({"prompt": ["p", "q"], "response": ["r", "s"], "rules": rules}), path)
    with pytest.raises(DataError, match=r"rules\.parquet:2: field 'rules': all 2 rules are null"):
        read_rows(path, "rule")
    rows, report = read_rows(path, "rule", on_error="skip")
    assert rows == [RuleLabel("p", "r", {"a": True, "b": None})] and report.summary().endswith("(rules: 1)")


def test_parquet_that_is_not_parquet(tmp_path):
    path = tmp_path / "x.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="not a readable parquet file"):
        read_rows(path, "text")


def test_pairwise_row_is_the_k2_case():
    row = validate_row({"prompt": "p", "chosen": "good", "rejected": "bad"}, "comparison", "f", 1)
    assert row == Comparison("p", ("good", "bad"), (0, 1))
    assert row.k == 2
    assert row.pairs() == [(0, 1)]


def test_pairs_with_ties_by_hand():
    # ranks: response 1 best; responses 0 and 2 tied second; response 3 last.
    row = Comparison("p", ("a", "b", "c", "d"), (1, 0, 1, 2))
    assert row.k == 4
    assert row.pairs() == [(0, 3), (1, 0), (1, 2), (1, 3), (2, 3)]


def test_source_does_not_affect_equality():
    assert Prompt("a", source="x.jsonl:1") == Prompt("a", source="y.jsonl:9")
    assert Text("a", source="x.jsonl:1") != Text("b", source="x.jsonl:1")


def test_chat_row_and_row_to_dict():
    obj = {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                        {"role": "assistant", "content": "yo", "name": "bot"}]}  # fmt: skip
    row = validate_row(obj, "demonstration", "f", 1)
    assert row == Demonstration(None, None, (("system", "be brief"), ("user", "hi"), ("assistant", "yo")))
    assert row_to_dict(row) == {
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "yo"},
        ]
    }
    assert row_to_dict(Comparison("p", ("a", "b"), (1, 0))) == {
        "prompt": "p",
        "responses": ["a", "b"],
        "ranking": [1, 0],
    }


def test_unknown_kind_is_a_programming_error():
    with pytest.raises(ValueError, match="unknown row kind 'pairs'"):
        validate_row({}, "pairs", "f", 1)


def test_report_summary_without_skips():
    assert (
        ReadReport("d.jsonl", "text", 10, 10, [], truncated=2).summary()
        == "d.jsonl: read 10 rows, kept 10, skipped 0, truncated 2"
    )


# --- property tests ------------------------------------------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
)
KEYS = [
    "prompt",
    "response",
    "messages",
    "responses",
    "ranking",
    "chosen",
    "rejected",
    "text",
    "role",
    "content",
    "rules",
]
message_like = st.fixed_dictionaries({}, optional={"role": st.sampled_from(["user", "assistant", "x"]) | json_values,
                                                   "content": json_values})  # fmt: skip
row_like = st.dictionaries(
    st.sampled_from(KEYS),
    json_values | st.lists(message_like, max_size=3) | st.lists(st.integers(-1, 3), max_size=4),
    max_size=5,
)


@settings(max_examples=300)
@given(
    obj=json_values | row_like,
    kind=st.sampled_from(["demonstration", "comparison", "prompt", "text", "rule"]),
)
def test_validate_row_raises_only_data_error(obj, kind):
    try:
        validate_row(obj, kind, "fuzz.jsonl", 7)
    except DataError as err:
        assert str(err).startswith("fuzz.jsonl:7: ")


@given(raw=st.binary(max_size=40) | json_values.map(lambda v: json.dumps(v).encode()))
def test_parse_json_line_raises_only_data_error(raw):
    try:
        assert isinstance(parse_json_line(raw, "fuzz.jsonl", 2), dict)
    except DataError as err:
        assert str(err).startswith("fuzz.jsonl:2: ")


words = st.text(alphabet="ab é\n", min_size=1, max_size=6).filter(str.strip)
valid_rows = st.one_of(
    st.builds(lambda p, r: Demonstration(p, r, None), words, words),
    st.builds(
        lambda ctx, ans: Demonstration(None, None, (*ctx, ("assistant", ans))),
        st.lists(
            st.tuples(st.sampled_from(["system", "user", "assistant"]), words), min_size=1, max_size=3
        ).map(tuple),
        words,
    ),
    st.integers(2, 5).flatmap(
        lambda k: st.builds(
            lambda p, rs, rk: Comparison(p, tuple(rs), tuple(rk)),
            words,
            st.lists(words, min_size=k, max_size=k, unique=True),  # a repeat ranked twice is refused
            st.lists(st.integers(0, k - 1), min_size=k, max_size=k).filter(lambda rk: len(set(rk)) > 1),
        )
    ),
    st.builds(Prompt, words),
    st.builds(Text, words),
    st.builds(
        RuleLabel,
        words,
        words,
        st.dictionaries(
            st.sampled_from(["banned_word", "format", "r.2"]), st.booleans() | st.none(), min_size=1
        ).filter(lambda d: any(v is not None for v in d.values())),
    ),
)
KIND_OF = {
    Demonstration: "demonstration",
    Comparison: "comparison",
    Prompt: "prompt",
    Text: "text",
    RuleLabel: "rule",
}


@given(row=valid_rows)
def test_row_to_dict_round_trips_through_json_and_validation(row):
    obj = json.loads(json.dumps(row_to_dict(row)))
    assert validate_row(obj, KIND_OF[type(row)], "f", 1) == row


@given(ranking=st.lists(st.integers(0, 4), min_size=2, max_size=6))
def test_pairs_are_exactly_the_strictly_ordered_pairs(ranking):
    row = Comparison("p", tuple("r" * len(ranking)), tuple(ranking))
    pairs = row.pairs()
    assert all(ranking[i] < ranking[j] for i, j in pairs)
    unequal = sum(ranking[i] != ranking[j] for i in range(len(ranking)) for j in range(len(ranking)))
    assert len(pairs) * 2 == unequal
    assert len(set(pairs)) == len(pairs)
