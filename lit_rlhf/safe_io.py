"""Reading files that may be hostile: regular files only, bounded reads, strict JSON, short messages.

Standard library only: the data readers, the manifest reader and the dashboard's loaders all use it, and the
dashboard must not import torch.
Lives here: `open_regular` (refuses folders, FIFOs, devices, sockets and symlink loops, and never blocks on
opening), `read_bounded` (a whole small file, refused past a size), `strict_json` (no NaN, no repeated keys,
no nesting deep enough to exhaust the stack later) and `clip` (a value cut to fit in an error message).
Must not live here: what a file's content means (rows, manifests, run files).
"""

from __future__ import annotations

import errno
import json
import os
import stat
from typing import IO, Any

# Values quoted in error messages are cut to this many characters: a 50 MB value must not become a 50 MB
# message (and a 50 MB log line when the message is logged as a warning).
CLIP_CHARS = 200
# JSON nested deeper than this is refused. json itself gives up near the interpreter's recursion limit, but
# anything that later walks the value (pandas, copy, repr) can fail at a shallower depth.
MAX_JSON_DEPTH = 64


class UnreadableFile(OSError):
    """A path that is not a regular file that can be read (a folder, FIFO, device, socket or symlink loop).

    `str(err)` is "{path}: {reason}"; `reason` alone is what a caller with its own path prefix shows.
    """

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        super().__init__(f"{os.fspath(path)}: {reason}")
        self.path = os.fspath(path)
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class StrictJSONError(ValueError):
    """JSON that a strict reader refuses; the message names the field when there is one."""


def clip(text: str, limit: int = CLIP_CHARS) -> str:
    """`text` cut to `limit` characters, saying how long it was, for quoting in an error message."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def check_regular(path: str | os.PathLike) -> os.stat_result:
    """stat() a path that must be a regular file (links followed); FileNotFoundError when it is absent."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise _unreadable(path, e) from None
    if not stat.S_ISREG(st.st_mode):
        raise UnreadableFile(path, f"{_kind(st.st_mode)}, not a regular file")
    return st


def _unreadable(path: str | os.PathLike, e: OSError) -> UnreadableFile:
    if e.errno == errno.ELOOP:
        return UnreadableFile(path, "a symbolic link loop")
    return UnreadableFile(path, f"cannot be opened ({e.strerror or e})")


def open_regular(path: str | os.PathLike) -> IO[bytes]:
    """Open a regular file for binary reading; refuse anything else without blocking.

    O_NONBLOCK makes opening a FIFO return at once (a plain open() waits for a writer forever); the type is then
    checked on the open descriptor, so a file swapped for a FIFO between a check and the open is still refused.
    Raises FileNotFoundError when the path does not exist, UnreadableFile otherwise.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise _unreadable(path, e) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise UnreadableFile(path, f"{_kind(mode)}, not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bounded(path: str | os.PathLike, max_bytes: int) -> bytes:
    """The whole of a small regular file; UnreadableFile when it is larger than `max_bytes`."""
    with open_regular(path) as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise UnreadableFile(path, f"larger than {max_bytes} bytes, too large for this kind of file")
    return data


class _NonFinite:
    """Stands in for a NaN/Infinity literal so that the field holding it can be named."""

    def __init__(self, literal: str) -> None:
        self.literal = literal


class _Repeated(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


def _no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json keeps the last of repeated keys and silently drops the others: which one a reader sees is a guess.
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Repeated(key)
            seen.add(key)
    return obj


def _check_tree(value: Any, max_depth: int) -> None:
    """Refuse NaN/Infinity placeholders and nesting past `max_depth`, naming the field (iterative: no recursion)."""
    stack: list[tuple[Any, str, int]] = [(value, "", 0)]
    while stack:
        node, where, depth = stack.pop()
        if isinstance(node, _NonFinite):
            raise StrictJSONError(f"field '{clip(where)}': {node.literal} is not valid JSON")
        if not isinstance(node, dict | list):
            continue
        if depth >= max_depth:
            raise StrictJSONError(f"nested deeper than {max_depth} levels (at '{clip(where)}')")
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, child in items:
            child_where = (
                f"{where}[{key}]" if isinstance(node, list) else (f"{where}.{key}" if where else key)
            )
            stack.append((child, child_where, depth + 1))


def strict_json(data: bytes | str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Decode JSON, refusing NaN/Infinity, repeated keys and deep nesting (StrictJSONError, field named)."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        value = json.loads(text, parse_constant=_NonFinite, object_pairs_hook=_no_repeats)
    except UnicodeDecodeError:
        raise StrictJSONError("not valid UTF-8") from None
    except _Repeated as dup:
        raise StrictJSONError(f"field '{clip(dup.key)}': key appears more than once in the object") from None
    except RecursionError:
        raise StrictJSONError("nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, and int() refusing a 5000-digit number
        raise StrictJSONError(f"not valid JSON ({clip(str(e))})") from None
    _check_tree(value, max_depth)
    return value
