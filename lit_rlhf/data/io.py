"""JSONL files that survive crashes and concurrent readers.

Lives here: `write_jsonl` (whole file, atomic replace), `append_jsonl` (one row, one O_APPEND write) and
`read_jsonl_tolerant` (for files another process is still appending to). Row validation is not here
(see `rows.py`); these functions move plain JSON objects. All JSON is written UTF-8 with
`ensure_ascii=False` and `allow_nan=False`: NaN is not JSON, and a NaN that reached a file would break
every strict reader downstream, so writing one fails loudly instead.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from collections.abc import Iterable
from typing import Any

from lit_rlhf.data.rows import parse_json_line
from lit_rlhf.safe_io import open_regular


def _encode_line(row: dict[str, Any]) -> bytes:
    # json.dumps without indent escapes control characters, so the only b"\n" is the terminator.
    return (json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")


@functools.cache
def _umask() -> int:
    # umask can only be read by setting it; done once, early, so the window is negligible.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> int:
    """Write `rows` as a JSONL file, atomically: readers see the old file or the new one, never a part.

    Writes a temp file in the same directory (same filesystem, so the rename is atomic), fsyncs it,
    then os.replace()s it over `path`. Returns the number of rows written.
    """
    path = os.fspath(path)
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        # mkstemp makes 0600 files; give the result the permissions a plain open() would have.
        os.fchmod(fd, 0o666 & ~_umask())
        count = 0
        with os.fdopen(fd, "wb") as f:
            for row in rows:
                f.write(_encode_line(row))
                count += 1
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)
    return count


def _fsync_dir(directory: str) -> None:
    """Persist the rename itself (POSIX); a no-op where directories cannot be opened."""
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def append_jsonl(path: str | os.PathLike, row: dict[str, Any]) -> None:
    """Append one row as one line, creating the file if absent; never rewrites what is there.

    The line goes out in a single os.write on an O_APPEND descriptor, so concurrent readers never see
    half of it and earlier rows are never touched. If the file ends in a half line (a writer crashed
    mid-write), a newline is written first so this row stays whole on its own line.
    """
    data = _encode_line(row)  # encode first: a row that cannot be JSON must not open or touch the file
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
