"""Atomic file and directory writes: a reader sees the old file (or folder) or the new one, never a part of one.

Standard library only: the run directory, stage directories, reports, the demo data and bench/ all write through
it, and the dashboard must not import torch.
Lives here: `staged_file` (a temporary sibling that replaces its target in one rename), `write_bytes`,
`write_text`, `write_json`, `write_jsonl` on top of it, and the directory swap: `atomic_dir`, `replace_dir`,
`temp_sibling`, `publish_dir` (first writer wins). Must not live here: appending (`lit_rlhf.data.io.append_jsonl`
writes in place, one O_APPEND write a row) and what the files mean.

Files get the modes a plain open() would give (0666 less the umask), not mkstemp's private 0600: runs, data and
stage directories are meant to be shared. JSON is written UTF-8 with ``allow_nan=False``: NaN is not JSON, and a
NaN that reached a file would break every strict reader downstream, so writing one fails loudly instead.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


@functools.cache
def _umask() -> int:
    # umask can only be read by setting it; done once, early, so the window is negligible.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(directory: str | os.PathLike) -> None:
    """Persist a rename itself (POSIX); a no-op where directories cannot be opened."""
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


@contextlib.contextmanager
def staged_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a hidden temporary sibling of `path` to fill; it replaces `path` in one rename when the block succeeds.

    The sibling is in the same folder (same filesystem, so the rename is atomic) and is fsynced before the
    rename; on error it is removed and `path` is untouched. The parent folder is created when missing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with staged_file(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` atomically, UTF-8, with ``\\n`` line ends on every platform."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2, newline: bool = False) -> None:
    """Write `obj` as JSON to `path` atomically (no NaN: it raises ValueError before the file is touched)."""
    text = json.dumps(obj, indent=indent, ensure_ascii=False, allow_nan=False)
    write_text(path, text + "\n" if newline else text)


def encode_jsonl_line(row: dict[str, Any]) -> bytes:
    """One JSONL line, newline included (UTF-8, no NaN)."""
    # json.dumps without indent escapes control characters, so the only b"\n" is the terminator.
    return (json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> int:
    """Write `rows` as a JSONL file atomically, streaming (the rows need not fit in memory as text).

    Returns the number of rows written. A row that cannot be JSON (NaN, an object) raises and leaves `path`
    as it was.
    """
    count = 0
    with staged_file(path) as tmp, open(tmp, "wb") as f:
        for row in rows:
            f.write(encode_jsonl_line(row))
            count += 1
    return count


# ---------------------------------------------------------------------------------------------------------
# Directories
# ---------------------------------------------------------------------------------------------------------


def temp_sibling(out: str | os.PathLike, token: str) -> Path:
    """The hidden temporary path a writer of the folder `out` fills before `replace_dir`."""
    out = Path(out)
    return out.parent / f".{out.name}.tmp-{token}"


def replace_dir(tmp: str | os.PathLike, out: str | os.PathLike) -> None:
    """Put the complete folder `tmp` at `out`, replacing what is there, and clear stale temporary copies."""
    tmp, out = Path(tmp), Path(out)
    if out.exists():
        # Two renames, not one: rename() cannot replace a non-empty directory. A crash between them leaves
        # the old copy under a hidden name and no `out`, which loads as "missing", never as half-written.
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        out.rename(old)
        tmp.rename(out)
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink()
    else:
        tmp.rename(out)
    # a writer killed earlier left its hidden temporary copy behind; the complete `out` supersedes it
    for stale in out.parent.glob(f".{out.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


def make_readable(root: str | os.PathLike) -> None:
    """Give a tree the usual 0644/0755 modes (less the umask): some writers create files 0600, which would hide
    a stage directory or a tokenizer from other users."""
    umask = _umask()
    for p in [Path(root), *Path(root).rglob("*")]:
        if p.is_symlink():  # chmod follows links: it would change the permissions of what they point at
            continue
        p.chmod((0o777 if p.is_dir() else 0o666) & ~umask)


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder that replaces the folder `out` in one swap when the block succeeds.

    On error the temporary folder is removed and `out` is untouched.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(out, uuid.uuid4().hex[:8])
    tmp.mkdir()
    try:
        yield tmp
        make_readable(tmp)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def publish_dir(tmp: str | os.PathLike, out: str | os.PathLike, done: str) -> bool:
    """Rename the complete folder `tmp` to `out` unless a rival writer got there first; True when this one won.

    For caches that several processes may fill at once with the same content: `out` counts as finished when it
    holds the marker file `done`; a failed rename without that marker is a real failure and raises. `tmp` is
    left for the caller to remove when this one lost.
    """
    try:
        Path(tmp).rename(out)
    except OSError:
        if not (Path(out) / done).is_file():
            raise
        return False
    return True
