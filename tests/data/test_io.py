import json
import os
import threading

import pytest

from lit_rlhf.data.io import append_jsonl, read_jsonl_tolerant, write_jsonl
from lit_rlhf.data.rows import DataError


def current_umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_write_jsonl_exact_bytes_and_count(tmp_path):
    path = tmp_path / "out.jsonl"
    assert write_jsonl(path, iter([{"a": 1}, {"b": "é\n"}])) == 2
    assert path.read_bytes() == b'{"a": 1}\n{"b": "\xc3\xa9\\n"}\n'
    assert os.listdir(tmp_path) == ["out.jsonl"]  # no temp file left behind
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~current_umask()


def test_write_jsonl_replaces_the_whole_file(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_bytes(b'{"old": 1}\n{"old": 2}\n{"old": 3}\n')
    assert write_jsonl(path, [{"new": 1}]) == 1
    assert path.read_bytes() == b'{"new": 1}\n'


@pytest.mark.parametrize("bad_row", [{"loss": float("nan")}, {"x": object()}])
def test_failed_write_leaves_the_old_file_and_no_temp(tmp_path, bad_row):
    path = tmp_path / "out.jsonl"
    path.write_bytes(b'{"old": 1}\n')
    with pytest.raises((ValueError, TypeError)):
        write_jsonl(path, [{"ok": 1}, bad_row])
    assert path.read_bytes() == b'{"old": 1}\n'
    assert os.listdir(tmp_path) == ["out.jsonl"]


def test_append_creates_then_appends_never_overwrites(tmp_path):
    path = tmp_path / "log.jsonl"
    append_jsonl(path, {"step": 1})
    append_jsonl(path, {"step": 2, "text": "ü"})
    assert path.read_bytes() == b'{"step": 1}\n{"step": 2, "text": "\xc3\xbc"}\n'


def test_append_keeps_rows_written_by_others(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_bytes(b'{"step": 0}\n')
    append_jsonl(path, {"step": 1})
    assert path.read_bytes() == b'{"step": 0}\n{"step": 1}\n'


def test_append_after_a_crashed_half_line_keeps_our_row_whole(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_bytes(b'{"step": 0}\n{"step": ')
    append_jsonl(path, {"step": 2})
    assert path.read_bytes() == b'{"step": 0}\n{"step": \n{"step": 2}\n'
    with pytest.raises(DataError) as info:  # the crash's debris is now a bad line in the middle
        read_jsonl_tolerant(path)
    assert str(info.value).startswith(f"{path}:2: invalid JSON")


def test_append_of_an_unwritable_row_touches_nothing(tmp_path):
    path = tmp_path / "log.jsonl"
    with pytest.raises(ValueError):
        append_jsonl(path, {"loss": float("inf")})
    assert not path.exists()


def test_concurrent_appends_never_interleave(tmp_path):
    path = tmp_path / "log.jsonl"
    payload = "x" * 5000  # bigger than a typical stdio buffer, so a buffered writer would split it

    def writer(worker):
        for i in range(50):
            append_jsonl(path, {"worker": worker, "i": i, "payload": payload})

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rows = read_jsonl_tolerant(path)
    assert len(rows) == 200
    assert sorted((r["worker"], r["i"]) for r in rows) == [(w, i) for w in range(4) for i in range(50)]


def test_tolerant_read_skips_a_trailing_half_line_and_blank_lines(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_bytes(b'{"a": 1}\n\n{"b": 2}\n{"c": ')
    assert read_jsonl_tolerant(path) == [{"a": 1}, {"b": 2}]
    # even a final line that happens to parse is unfinished until its newline arrives
    path.write_bytes(b'{"a": 1}\n{"b": 2}')
    assert read_jsonl_tolerant(path) == [{"a": 1}]


def test_tolerant_read_raises_on_a_bad_middle_line(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_bytes(b'{"a": 1}\nnot json\n{"b": 2}\n')
    with pytest.raises(DataError) as info:
        read_jsonl_tolerant(path)
    assert str(info.value).startswith(f"{path}:2: invalid JSON")
    path.write_bytes(b'{"a": 1}\n[1, 2]\n')
    with pytest.raises(DataError, match=r":2: expected a JSON object, got array"):
        read_jsonl_tolerant(path)


def test_round_trip_of_awkward_strings(tmp_path):
    rows = [{"s": "line\u2028separator"}, {"s": 'quote " and \\ backslash'}, {"s": "\x00\t"}]
    path = tmp_path / "r.jsonl"
    write_jsonl(path, rows)
    assert read_jsonl_tolerant(path) == rows
    assert [json.loads(line) for line in path.read_bytes().split(b"\n")[:-1]] == rows
