"""Incremental, byte-bounded reading of the JSONL files that training appends to. No Streamlit, no torch.

A live run appends to metrics.jsonl every few steps. Caching whole reads keyed by (path, mtime, size) kept one
copy per append (a 50 MB metrics file pickled to 40 MB per entry, without bound). Here each file has ONE entry:
the rows parsed so far and the byte offset they end at; a rerun parses only the bytes appended since, and the
entries of all files together are kept under a byte budget (least recently read evicted first).
Lives here: `JsonlTail` and nothing else; what the rows mean is `loaders.py`'s.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dashboard.loaders import JsonlRows, read_problem
from lit_rlhf.data.rows import DataError, parse_json_line
from lit_rlhf.safe_io import UnreadableFile, open_regular

DEFAULT_MAX_BYTES = 256 * 1024 * 1024  # file bytes held parsed, all files together
_FINGERPRINT = 64  # bytes before the offset re-read to notice a file rewritten in place (not appended to)


@dataclass
class _Entry:
    ident: tuple[int, int]  # (st_dev, st_ino): a replaced file starts over
    offset: int = 0  # bytes parsed: up to and including the last complete line
    line_no: int = 0  # physical lines parsed
    tail_bytes: bytes = b""  # the _FINGERPRINT bytes before `offset`
    rows: list[dict[str, Any]] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    partial: bool = False
    derived: dict[str, Any] = field(default_factory=dict)  # name -> value computed from these rows


class JsonlTail:
    """Read JSONL files as `loaders.read_jsonl` does, parsing only what was appended since the last read.

    Thread-safe (Streamlit serves each session from its own thread). `bytes_held` is the sum of the parsed
    files' sizes; the parsed rows take a small multiple of it in memory.
    """

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self.bytes_read = 0  # from disk, over the reader's life: appends are read once
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def bytes_held(self) -> int:
        return sum(e.offset for e in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def read(self, path: str | os.PathLike, root: str | os.PathLike | None = None) -> JsonlRows:
        """The file's rows, as `loaders.read_jsonl(path, root)` would return them."""
        path = os.fspath(path)
        with self._lock:
            entry = self._update(path, root)
            return self._problem_or_empty(path, root) if entry is None else self._rows(path, entry)

    def derived(
        self,
        path: str | os.PathLike,
        name: str,
        compute: Callable[[JsonlRows], Any],
        root: str | os.PathLike | None = None,
    ) -> Any:
        """`compute(rows)`, recomputed only when rows were appended since it was last asked for.

        Computed under the lock, so the value stored always belongs to the rows it is stored with.
        """
        path = os.fspath(path)
        with self._lock:
            entry = self._update(path, root)
            if entry is None:
                return compute(self._problem_or_empty(path, root))
            if name not in entry.derived:
                entry.derived[name] = compute(self._rows(path, entry))
            return entry.derived[name]

    # ---- internals ------------------------------------------------------------------------------------------
    @staticmethod
    def _rows(path: str, entry: _Entry) -> JsonlRows:
        return JsonlRows(path, tuple(entry.rows), tuple(entry.lines), tuple(entry.problems), entry.partial)

    def _problem_or_empty(self, path: str, root: str | os.PathLike | None) -> JsonlRows:
        problem = read_problem(path, root)
        return JsonlRows(path, problems=(problem,) if problem else ())

    def _update(self, path: str, root: str | os.PathLike | None) -> _Entry | None:
        if read_problem(path, root) is not None:
            self._entries.pop(path, None)
            return None
        try:
            f = open_regular(path)
        except (FileNotFoundError, UnreadableFile, PermissionError):
            self._entries.pop(path, None)
            return None
        with f:
            st = os.fstat(f.fileno())
            entry = self._entries.get(path)
            if entry is None or not self._continues(entry, f, (st.st_dev, st.st_ino), st.st_size):
                entry = _Entry((st.st_dev, st.st_ino))
            if st.st_size > entry.offset:
                f.seek(entry.offset)
                self._parse(entry, path, f.read(st.st_size - entry.offset))  # bounded by the size at fstat
        self._entries[path] = entry
        self._entries.move_to_end(path)
        while len(self._entries) > 1 and self.bytes_held > self.max_bytes:
            self._entries.popitem(last=False)
        return entry

    @staticmethod
    def _continues(entry: _Entry, f, ident: tuple[int, int], size: int) -> bool:
        """Whether the file is still the one parsed, grown or unchanged, not replaced, truncated or rewritten."""
        if entry.ident != ident or size < entry.offset:
            return False
        start = entry.offset - len(entry.tail_bytes)
        f.seek(start)
        return f.read(len(entry.tail_bytes)) == entry.tail_bytes

    def _parse(self, entry: _Entry, path: str, data: bytes) -> None:
        self.bytes_read += len(data)
        end = data.rfind(b"\n") + 1  # 0 when no complete line was appended
        complete, rest = data[:end], data[end:]
        if complete:
            for raw in complete.split(b"\n")[:-1]:
                entry.line_no += 1
                if not raw.strip():
                    continue
                try:
                    entry.rows.append(parse_json_line(raw, path, entry.line_no))
                    entry.lines.append(entry.line_no)
                except DataError as err:
                    entry.problems.append(str(err))
            entry.tail_bytes = (entry.tail_bytes + complete)[-_FINGERPRINT:]
            entry.offset += end
            entry.derived.clear()
        # a last line without its newline is a row still being written: not parsed, not an error
        entry.partial = bool(rest.strip())
