"""JSONL files that survive crashes and concurrent readers.

Lives here: `append_jsonl` (one row, one O_APPEND write) and `read_jsonl_tolerant` (for files another process is
still appending to). `write_jsonl` (whole file, atomic replace) lives in `lit_rlhf.atomic` with every other
atomic write and is re-exported here. Row validation is not here (see `rows.py`); these functions move plain
JSON objects. All JSON is written UTF-8 with
`ensure_ascii=False` and `allow_nan=False`: NaN is not JSON, and a NaN that reached a file would break
every strict reader downstream, so writing one fails loudly instead.
"""

from __future__ import annotations

import os
from typing import Any

from lit_rlhf.atomic import encode_jsonl_line, write_jsonl
from lit_rlhf.data.rows import parse_json_line
from lit_rlhf.safe_io import open_regular

__all__ = ["append_jsonl", "read_jsonl_tolerant", "write_jsonl"]


def append_jsonl(path: str | os.PathLike, row: dict[str, Any]) -> None:
    """Append one row as one line, creating the file if absent; never rewrites what is there.

    The line goes out in a single os.write on an O_APPEND descriptor, so concurrent readers never see
    half of it and earlier rows are never touched. If the file ends in a half line (a writer crashed
    mid-write), a newline is written first so this row stays whole on its own line.
    """
    data = encode_jsonl_line(row)  # encode first: a row that cannot be JSON must not open or touch the file
    fd = os.open(os.fspath(path), os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data
        written = os.write(fd, data)
        if written != len(data):  # only on a full disk or a quota; say so rather than leave half a line
            raise OSError(f"{path}: short write while appending ({written} of {len(data)} bytes)")
    finally:
        os.close(fd)


def read_jsonl_tolerant(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a JSONL file that may still be being appended to.

    A final line without its newline is a row still being written: it is left out. A bad line anywhere
    before it is corruption, not a race, and raises DataError naming the line. Blank lines are skipped.
    """
    path = os.fspath(path)
    with open_regular(path) as f:  # a FIFO or device raises instead of blocking or reading forever
        data = f.read()
    lines = data.split(b"\n")
    # After split, the last element is what follows the final newline: empty, or a half-written row.
    complete = lines[:-1]
    rows = []
    for line_no, raw in enumerate(complete, start=1):
        if raw.strip():
            rows.append(parse_json_line(raw, path, line_no))
    return rows
