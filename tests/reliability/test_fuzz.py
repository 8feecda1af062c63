"""Hostile input: whole files of every row kind through `read_rows`, and over-long examples through the
tokenizing data modules (demo tokenizer; truncation error|skip|truncate; on_error raise|skip).

The contract checked on every generated file: it loads; or it raises DataError whose message starts with
"{path}:{line}: " for the first bad line (a file-level DataError naming the path only when no single line
is at fault: no rows at all, or nothing left); or, under on_error="skip", every non-blank line ends up either
kept or in the report's skipped list with its own line, so read == kept + skipped. Never another exception,
never a silent drop. Lines the generator knows to be good must be kept, lines it knows to be bad skipped.

The number of examples per strategy and their outcomes are written to the terminal (the reliability note).
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lit_rlhf.data.comparisons import ComparisonDataModule
from lit_rlhf.data.rows import ROLES, DataError, read_rows, row_to_dict, split_source
from lit_rlhf.data.sft import IGNORE_INDEX, OverlengthError, SFTDataModule, render_chat

FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
COUNTS: dict[str, Counter] = defaultdict(Counter)  # strategy -> outcome -> examples


def _print_counts(capsys, *names: str) -> None:
    """Outcome counts of the named strategies, printed past pytest's capture (figures for the note)."""
    with capsys.disabled():
        for name in names:
            c, unit = COUNTS[name], "non-blank lines" if name.endswith(" lines") else "examples"
            outcomes = ", ".join(f"{k} {v}" for k, v in sorted(c.items()))
            print(f"\nfuzz {name}: {sum(c.values())} {unit}; {outcomes}")


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


# The unknown-token check's error limit, switched off where the fuzzed rows are not about vocabulary coverage.
UNKNOWN_OFF = 1.0


@pytest.fixture(scope="module")
def demo_tokenizer(demo_data):
    from lit_rlhf.backbone.build import load_tokenizer

    return load_tokenizer(str(demo_data / "tokenizer"))


# ---- lines of a file, each knowing whether it must be kept ------------------------------------------------
@dataclass(frozen=True)
class Line:
    raw: bytes  # without the newline
    expect: str | None  # "ok" | "bad" | "bom" (ok only on line 1) | None (unknown: random bytes)
    row: dict[str, Any] | None = None  # for "ok": what row_to_dict must give back


def _encode(obj: Any, ascii_only: bool) -> bytes:
    # surrogatepass: a lone surrogate must reach the file as the (invalid) bytes a careless writer produces
    return json.dumps(obj, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


# Non-blank strings of any UTF-8-encodable characters (lone surrogates are a separate, bad case).
TEXT = st.text(st.characters(codec="utf-8"), min_size=1, max_size=12).filter(str.strip)
HUGE = st.integers(20_000, 200_000).map(lambda n: "x" * n)
GOOD_STRING = st.one_of(TEXT, TEXT, TEXT, HUGE)
NOT_A_GOOD_STRING = st.one_of(
    st.integers(),
    st.floats(allow_nan=False),
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.sampled_from(["", " ", "\t\n ", "\u3000", "\ud800", "a\udfffb"]),
)
EXTRA = st.dictionaries(
    st.text(max_size=6).map(lambda k: "x_" + k),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | TEXT,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
        max_leaves=6,
    ),
    max_size=2,
)


@st.composite
def _ranking(draw, k: int) -> list[int]:
    return draw(st.lists(st.integers(0, k - 1), min_size=k, max_size=k).filter(lambda r: len(set(r)) >= 2))


@st.composite
def valid_rows(draw, kind: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(row as written, row as row_to_dict must return it)."""
    if kind == "demonstration" and draw(st.booleans()):
        n = draw(st.integers(1, 3))
        msgs = [{"role": draw(st.sampled_from(ROLES)), "content": draw(GOOD_STRING)} for _ in range(n)]
        msgs.append({"role": "assistant", "content": draw(GOOD_STRING)})
        return {"messages": msgs}, {"messages": msgs}
    if kind == "demonstration":
        row = {"prompt": draw(GOOD_STRING), "response": draw(GOOD_STRING)}
    elif kind == "comparison" and draw(st.booleans()):
        chosen = draw(GOOD_STRING)  # a row preferring a response to itself is refused (contradictory)
        row = {
            "prompt": draw(GOOD_STRING),
            "chosen": chosen,
            "rejected": draw(GOOD_STRING.filter(lambda r: r != chosen)),
        }
        return row, {
            "prompt": row["prompt"],
            "responses": [row["chosen"], row["rejected"]],
            "ranking": [0, 1],
        }
    elif kind == "comparison":
        k = draw(st.integers(2, 5))
        # distinct texts: a repeated response ranked twice differently is refused (contradictory labels)
        row = {
            "prompt": draw(GOOD_STRING),
            "responses": draw(st.lists(GOOD_STRING, min_size=k, max_size=k, unique=True)),
        }
        row["ranking"] = draw(_ranking(k))
    else:
        field = "text" if kind == "text" else "prompt"
        row = {field: draw(GOOD_STRING)}
    return row, dict(row)


def _string_leaves(row: dict[str, Any]) -> list[tuple[Any, Any]]:
    """(container, key) of every required string in a valid row."""
    if "messages" in row:
        return [(m, key) for m in row["messages"] for key in ("role", "content")]
    leaves = [(row, k) for k in ("prompt", "response", "text", "chosen", "rejected") if k in row]
    return leaves + [(row["responses"], i) for i in range(len(row.get("responses", [])))]


@st.composite
def broken_rows(draw, kind: str) -> dict[str, Any]:
    """A row that must be rejected: a required string wrong or missing, or (K-wise) a bad ranking."""
    row, _ = draw(valid_rows(kind))
    row = json.loads(json.dumps(row))  # a deep copy to break
    if "ranking" in row and draw(st.booleans()):
        k = len(row["responses"])
        row["ranking"] = draw(
            st.one_of(
                st.lists(st.integers(0, k - 1), min_size=0, max_size=8).filter(lambda r: len(r) != k),
                st.just([0] * k),  # all tied: no comparison in the row
                st.lists(st.integers(0, k - 1), min_size=k, max_size=k).map(lambda r: [k + 3, *r[1:]]),
                st.lists(st.integers(0, k - 1), min_size=k, max_size=k).map(lambda r: [-1, *r[1:]]),
                st.sampled_from([True, 1.0, "0", None]).map(lambda v: [v, *range(1, k)]),
                NOT_A_GOOD_STRING.filter(lambda v: not isinstance(v, list)),
            )
        )
        return row
    container, key = draw(st.sampled_from(_string_leaves(row)))
    if isinstance(container, dict) and draw(st.booleans()):
        del container[key]
    else:
        container[key] = draw(NOT_A_GOOD_STRING)
    return row


INVALID_UTF8 = st.sampled_from([b"\xff", b"\xfe", b"\x80", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe2\x82"])


@st.composite
def lines(draw, kind: str) -> Line:
    """One line of a hostile file."""
    row, expected = draw(valid_rows(kind))
    ascii_only = draw(st.booleans())
    good = _encode({**row, **draw(EXTRA)}, ascii_only)
    choice = draw(st.integers(0, 13))
    if choice <= 2:
        return Line(good, "ok", expected)
    if choice == 3:
        return Line(good + b"\r", "ok", expected)  # CRLF files
    if choice == 4:
        return Line(b"\xef\xbb\xbf" + good, "bom", expected)  # BOM: fine on line 1 only
    if choice == 5:
        return Line(_encode(draw(broken_rows(kind)), ascii_only), "bad")
    if choice == 6:
        cut = draw(st.integers(1, len(good) - 1))
        return Line(good[:cut], "bad")  # truncated JSON (or a cut UTF-8 sequence)
    if choice == 7:
        at = draw(st.integers(0, len(good)))
        return Line(good[:at] + draw(INVALID_UTF8) + good[at:], "bad")
    if choice == 8:
        value = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
        return Line(_encode({**row, "x_score": value}, ascii_only), "bad")  # NaN/Infinity literals
    if choice == 9:
        key = draw(st.sampled_from(sorted(row)))
        return Line(good[:-1] + b', "' + key.encode() + b'": ' + _encode(row[key], True) + b"}", "bad")
    if choice == 10:
        value = draw(st.one_of(st.lists(st.integers(), max_size=3), st.integers(), TEXT, st.none()))
        return Line(_encode(value, ascii_only), "bad")  # JSON, but not an object
    if choice == 11:
        depth = draw(st.sampled_from([100_000, 5000]))
        return Line(b'{"x": ' + b"[" * depth + b"]" * depth + b"}", "bad")
    if choice == 12:
        return Line(b'{"prompt": 1' + b"0" * draw(st.integers(4400, 6000)) + b"}", "bad")
    return Line(draw(st.binary(max_size=60)).replace(b"\n", b""), None)


BLANK = st.sampled_from([b"", b"   ", b"\t", b"\r"]).map(lambda raw: Line(raw, "blank"))


def files(kind: str):
    return st.tuples(st.lists(st.one_of(lines(kind), lines(kind), BLANK), max_size=8), st.booleans())


# ---- the read_rows oracle ------------------------------------------------------------------------------------
def _write(path: Path, file_lines: list[Line], trailing_newline: bool) -> dict[int, Line]:
    """Write the file; physical line number -> Line for every non-blank line."""
    path.write_bytes(b"\n".join(x.raw for x in file_lines) + (b"\n" if trailing_newline else b""))
    return {i: x for i, x in enumerate(file_lines, start=1) if x.raw.strip()}


def _expect(line_no: int, line: Line) -> str | None:
    if line.expect == "bom":
        return "ok" if line_no == 1 else "bad"
    return line.expect


def _assert_names_line(err: DataError, path: Path, line: int) -> None:
    assert (err.path, err.line) == (str(path), line)
    assert str(err).startswith(f"{path}:{line}: ")


def _check_skip(path: Path, kind: str, nonblank: dict[int, Line]) -> set[int]:
    """read_rows(on_error="skip"): every non-blank line kept or skipped by its line. Returns the skipped lines."""
    try:
        rows, report = read_rows(path, kind, on_error="skip")
    except DataError as err:  # file level: no rows at all, or none valid
        assert err.line is None and str(err).startswith(f"{path}: ")
        if nonblank:
            assert "no valid rows" in str(err) and all(_expect(n, x) != "ok" for n, x in nonblank.items())
        return set(nonblank)
    kept = {split_source(r.source)[1]: r for r in rows}
    skipped = {e.line for e in report.skipped}
    for err in report.skipped:
        _assert_names_line(err, path, err.line)
    assert report.read == len(nonblank) == report.kept + len(report.skipped)
    assert len(kept) == report.kept and not set(kept) & skipped and set(kept) | skipped == set(nonblank)
    for n, line in nonblank.items():
        assert _expect(n, line) != ("ok" if n in skipped else "bad"), (n, line.raw[:200])
        if n in kept and _expect(n, line) == "ok":
            assert row_to_dict(kept[n]) == line.row
    return skipped


def _check_raise(path: Path, kind: str, nonblank: dict[int, Line], skipped: set[int]) -> str:
    """read_rows(on_error="raise"): loads when nothing was skipped, else names the first skipped line."""
    try:
        rows, report = read_rows(path, kind)
    except DataError as err:
        if not nonblank:
            assert err.line is None and str(err).startswith(f"{path}: ")
            return "no rows"
        _assert_names_line(err, path, min(skipped))
        return "DataError naming the line"
    assert not skipped and report.kept == report.read == len(rows) == len(nonblank)
    return "loaded"


@pytest.mark.parametrize("kind", ["demonstration", "comparison", "prompt", "text"])
def test_read_rows_on_hostile_files(kind, fuzz_dir, capsys):
    path = fuzz_dir / f"{kind}.jsonl"

    @FUZZ
    @given(spec=files(kind))
    def check(spec):
        nonblank = _write(path, *spec)
        skipped = _check_skip(path, kind, nonblank)
        COUNTS[f"read_rows[{kind}]"][_check_raise(path, kind, nonblank, skipped)] += 1
        COUNTS[f"read_rows[{kind}] lines"].update(
            _expect(n, x) or "random bytes" for n, x in nonblank.items()
        )

    check()
    _print_counts(capsys, f"read_rows[{kind}]", f"read_rows[{kind}] lines")


# ---- over-long examples through the data modules -------------------------------------------------------------
VOCAB = ["reverse", "sort", "count", "a", "b", "c", "k", "=", "1", "7", "here", ":", "zz", "ü", "[EOS]"]
WORDS = st.lists(st.sampled_from(VOCAB), min_size=1, max_size=40).map(" ".join)
BAD_LINES = [b'{"prompt": 3, "response": "r"}', b"not json", b'{"prompt": "\xff"}', b"[1, 2]"]
SETTINGS = st.tuples(
    st.sampled_from([2, 3, 5, 8, 16, 32, 64]),
    st.sampled_from(["error", "skip", "truncate"]),
    st.sampled_from(["raise", "skip"]),
)


def _length(tok, prompt: str, response: str) -> int:
    """Tokens of prompt (special tokens on) + response + eos: the example before any truncation."""
    return len(tok(prompt)["input_ids"]) + len(tok(response, add_special_tokens=False)["input_ids"]) + 1


def _texts(row: dict[str, Any], tok) -> tuple[str, str]:
    """(prompt, response) text as the SFT data module renders a row."""
    return render_chat(row["messages"], tok) if "messages" in row else (row["prompt"], row["response"])


PLAIN_ROW = st.fixed_dictionaries({"prompt": WORDS, "response": WORDS})
CHAT_ROW = st.builds(
    lambda user, answer: {
        "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    },
    WORDS,
    WORDS,
)
DEMONSTRATION_FILES = st.lists(
    st.one_of(PLAIN_ROW, CHAT_ROW, st.sampled_from(BAD_LINES)), min_size=1, max_size=8
)


def _write_rows(path: Path, items: list[dict[str, Any] | bytes]) -> None:
    path.write_bytes(b"".join((x if isinstance(x, bytes) else _encode(x, False)) + b"\n" for x in items))


def _expected_outcome(items, lengths: list[int | None], limit: int, truncation: str, on_error: str):
    """("error", line) | ("loaded", kept lines, skipped lines, truncated) | ("empty", None) by the rules above."""
    bad = [i for i, n in enumerate(lengths, 1) if n is None]
    over = [i for i, n in enumerate(lengths, 1) if n is not None and n > limit]
    if bad and on_error == "raise":
        return ("error", bad[0])
    if len(bad) == len(items):
        return ("empty", None)
    if over and truncation == "error":
        return ("error", over[0])
    dropped = set(bad) | (set(over) if truncation == "skip" else set())
    kept = [i for i in range(1, len(items) + 1) if i not in dropped]
    return (
        ("loaded", kept, sorted(dropped), len(over) if truncation == "truncate" else 0)
        if kept
        else ("empty", None)
    )


def _check_module(path: Path, load, expected, count: Counter) -> Any:
    """Run `load()`; compare with the expected outcome; the loaded (data, report) or None."""
    try:
        data, report = load()
    except DataError as err:
        if expected[0] == "empty":
            assert err.line is None and str(err).startswith(f"{path}")
            count["DataError (nothing left)"] += 1
            return None
        assert expected[0] == "error", (expected, str(err))
        _assert_names_line(err, path, expected[1])
        count[type(err).__name__] += 1
        return None
    assert expected[0] == "loaded", expected
    _, kept, dropped, truncated = expected
    assert report.read == len(kept) + len(dropped) == report.kept + len(report.skipped)
    assert len(data) == report.kept == len(kept)
    assert sorted(e.line for e in report.skipped) == dropped and report.truncated == truncated
    for err in report.skipped:
        _assert_names_line(err, path, err.line)
    count["loaded, some skipped" if dropped else "loaded"] += 1
    return data


def _load_module(module, path: Path, tok, limit: int, truncation: str, on_error: str):
    """Set up an SFT or comparison data module on `path`; its (train items, report).

    "[EOS]" is in VOCAB: here it counts as a token (special_tokens="allow"); the screening is fuzzed below.
    Vocabulary coverage is not what is drawn here (chat rows' plain "user:"/"assistant:" words are unknown to the
    demo tokenizer), so the unknown-token limit is off (UNKNOWN_OFF).
    """
    dm = module(
        str(path),
        max_length=limit,
        on_error=on_error,
        truncation=truncation,
        tokenizer=tok,
        special_tokens="allow",
        unknown_tokens_error=UNKNOWN_OFF,
    )
    dm.setup("fit")
    return (dm._data if module is SFTDataModule else dm.data)["train"], dm.reports["train"]


def test_sft_data_module_over_long_and_bad_rows(demo_tokenizer, fuzz_dir, capsys):
    path, tok = fuzz_dir / "sft.jsonl", demo_tokenizer

    @FUZZ
    @given(items=DEMONSTRATION_FILES, cfg=SETTINGS)
    def check(items, cfg):
        limit, truncation, on_error = cfg
        _write_rows(path, items)
        lengths = [None if isinstance(x, bytes) else _length(tok, *_texts(x, tok)) for x in items]

        expected = _expected_outcome(items, lengths, limit, truncation, on_error)
        data = _check_module(
            path,
            lambda: _load_module(SFTDataModule, path, tok, limit, truncation, on_error),
            expected,
            COUNTS[f"SFTDataModule[{truncation}]"],
        )
        for ex in data or []:  # every kept example fits and still ends by teaching eos
            assert len(ex.input_ids) == len(ex.labels) <= limit
            assert ex.labels[-1] == tok.eos_token_id and ex.labels[0] == IGNORE_INDEX

    check()
    _print_counts(capsys, *(f"SFTDataModule[{t}]" for t in ("error", "skip", "truncate")))


@st.composite
def comparison_rows(draw) -> dict[str, Any]:
    k = draw(st.integers(2, 4))
    return {
        "prompt": draw(WORDS),
        "responses": draw(st.lists(WORDS, min_size=k, max_size=k, unique=True)),
        "ranking": draw(_ranking(k)),
    }


COMPARISON_FILES = st.lists(st.one_of(comparison_rows(), st.sampled_from(BAD_LINES)), min_size=1, max_size=6)


def test_comparison_data_module_over_long_and_bad_rows(demo_tokenizer, fuzz_dir, capsys):
    path, tok = fuzz_dir / "cmp.jsonl", demo_tokenizer

    @FUZZ
    @given(items=COMPARISON_FILES, cfg=SETTINGS)
    def check(items, cfg):
        limit, truncation, on_error = cfg
        _write_rows(path, items)
        seq = [
            None if isinstance(x, bytes) else [_length(tok, x["prompt"], r) for r in x["responses"]]
            for x in items
        ]
        lengths = [None if s is None else max(s) for s in seq]
        expected = _expected_outcome(items, lengths, limit, truncation, on_error)
        if expected[0] == "loaded" and truncation == "truncate":  # counted per sequence, not per comparison
            expected = (*expected[:3], sum(n > limit for s in seq if s for n in s))
        data = _check_module(
            path,
            lambda: _load_module(ComparisonDataModule, path, tok, limit, truncation, on_error),
            expected,
            COUNTS[f"ComparisonDataModule[{truncation}]"],
        )
        for enc in data or []:
            assert len(enc.input_ids) == len(enc.ranking) and all(len(ids) <= limit for ids in enc.input_ids)

    check()
    names = [f"ComparisonDataModule[{t}]" for t in ("error", "skip", "truncate")]
    _print_counts(capsys, *names)


def test_comparisons_all_too_long_under_skip_is_a_data_error(demo_tokenizer, tmp_path):
    path = tmp_path / "long.jsonl"
    _write_rows(path, [{"prompt": "reverse a b c =", "responses": ["a b c", "c b a"], "ranking": [1, 0]}])
    dm = ComparisonDataModule(str(path), max_length=4, truncation="skip", tokenizer=demo_tokenizer)
    with pytest.raises(DataError) as err:
        dm.setup("fit")
    assert str(err.value).startswith(f"{path}: ")


def test_overlength_error_names_the_row_line(demo_tokenizer, tmp_path):
    """A literal case of the rule the fuzzers check: line 3 (after a fitting row and a blank line) is too long."""
    path = tmp_path / "sft.jsonl"
    path.write_text(
        '{"prompt": "sort a =", "response": "a"}\n\n{"prompt": "sort a b c =", "response": "a b c"}\n'
    )
    dm = SFTDataModule(str(path), max_length=6, tokenizer=demo_tokenizer)
    with pytest.raises(OverlengthError) as err:
        dm.setup("fit")
    # [BOS] sort a b c = -> 6 prompt tokens; a b c [EOS] -> 4 response tokens
    assert str(err.value).startswith(f"{path}:3: example is 10 tokens (prompt 6 + response with eos 4)")


# ---- special tokens written as text -------------------------------------------------------------------------
SPECIAL_TEXT = st.sampled_from(["[EOS]", "[BOS]", "[PAD]", "[UNK]"])
CLEAN_WORDS = st.lists(st.sampled_from([w for w in VOCAB if w != "[EOS]"]), min_size=1, max_size=40).map(
    " ".join
)


@st.composite
def with_special_text(draw) -> tuple[dict[str, Any], str | None]:
    """A demonstration or comparison row; maybe a special token spliced into a response or message content.

    Returns the row and the field the screen must name (None: clean, or only the raw prompt holds one).
    """
    kind = draw(st.sampled_from(["plain", "chat", "comparison"]))
    words = draw(st.lists(CLEAN_WORDS, min_size=3, max_size=3, unique=True))
    token, where, at = draw(SPECIAL_TEXT), draw(st.integers(0, 3)), draw(st.integers(0, 200))

    def splice(text: str) -> str:
        cut = min(at, len(text))
        return text[:cut] + token + text[cut:]

    if kind == "plain":
        row: dict[str, Any] = {"prompt": words[0], "response": words[1]}
        fields = {0: ("prompt", None), 1: ("response", "response")}
    elif kind == "chat":
        row = {
            "messages": [{"role": "user", "content": words[0]}, {"role": "assistant", "content": words[1]}]
        }
        fields = {0: ("messages.0", "messages[0].content"), 1: ("messages.1", "messages[1].content")}
    else:
        row = {"prompt": words[0], "responses": [words[1], words[2]], "ranking": [0, 1]}
        fields = {0: ("prompt", None), 1: ("responses.1", "responses[1]")}
    if where not in fields:  # clean row
        return row, None
    key, named = fields[where]
    if key.startswith("messages."):
        msg = row["messages"][int(key[-1])]
        msg["content"] = splice(msg["content"])
    elif key == "responses.1":
        row["responses"][1] = splice(row["responses"][1])
    else:
        row[key] = splice(row[key])
    return row, named


def test_special_token_text_in_responses_is_a_located_error_or_a_counted_skip(
    demo_tokenizer, fuzz_dir, capsys
):
    """Over generated files: every response / message content holding "[EOS]" etc. as text is rejected with its
    line and field (raise), or skipped and counted (skip); raw prompts may hold them; clean rows load."""
    path, tok, count = fuzz_dir / "special.jsonl", demo_tokenizer, COUNTS["special-token text"]

    @FUZZ
    @given(
        items=st.lists(with_special_text(), min_size=1, max_size=6),
        on_error=st.sampled_from(["raise", "skip"]),
    )
    def check(items, on_error):
        comparisons = ["responses" in row for row, _ in items]
        items = [
            (row, named)
            for (row, named), is_cmp in zip(items, comparisons, strict=True)
            if is_cmp == comparisons[0]
        ]
        _write_rows(path, [row for row, _ in items])
        bad = [(i, named) for i, (_, named) in enumerate(items, 1) if named is not None]
        module = ComparisonDataModule if comparisons[0] else SFTDataModule
        dm = module(
            str(path), max_length=512, on_error=on_error, tokenizer=tok, unknown_tokens_error=UNKNOWN_OFF
        )
        try:
            dm.setup("fit")
        except DataError as err:
            if on_error == "raise":
                assert (err.line, err.field) == bad[0] and "as text" in str(err), str(err)
                assert str(err).startswith(
                    f"{path}:{bad[0][0]}: field '{bad[0][1]}': holds the special token"
                )
                count["raised with line and field"] += 1
                return
            assert len(bad) == len(items) and err.line is None  # skip: nothing left
            count["skip: nothing left"] += 1
            return
        report = dm.reports["train"]
        assert [(e.line, e.field) for e in report.skipped] == bad
        assert report.kept == len(items) - len(bad) and report.read == len(items)
        count["loaded, some skipped" if bad else "loaded"] += 1

    check()
    _print_counts(capsys, "special-token text")


def test_special_tokens_allow_keeps_the_row_and_reads_the_token(demo_tokenizer, tmp_path):
    path = tmp_path / "sft.jsonl"
    _write_rows(path, [{"prompt": "copy a b =", "response": "a [EOS] b"}])
    with pytest.raises(DataError, match=r"sft\.jsonl:1: field 'response': holds the special token '\[EOS\]'"):
        SFTDataModule(str(path), max_length=64, tokenizer=demo_tokenizer).setup("fit")
    dm = SFTDataModule(str(path), max_length=64, tokenizer=demo_tokenizer, special_tokens="allow")
    dm.setup("fit")
    (example,) = dm._data["train"]
    eos = demo_tokenizer.eos_token_id
    assert example.input_ids.count(eos) == 2  # the one written as text, and the one SFT appends
