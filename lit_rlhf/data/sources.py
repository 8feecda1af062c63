"""Where rows come from: a plain .jsonl/.parquet file, or a Hugging Face `datasets` dataset, with a column mapping.

Lives here: `DataSource` (a dataset folder or hub name, its split and config, and which of its columns hold which
row field), its one-string form ``hf:PATH?split=train&prompt=question`` (accepted wherever a data path is a string),
and `open_source`, which `read_rows` calls to turn a source into rows for the one validation in `rows.py`.
Must not live here: what a row means (rows.py), tokenization (sft.py). `datasets` is imported only when a dataset
is read, so plain files never need it.

A dataset row's errors name the dataset, the split and the row index as Python indexes it, e.g.
``hf:data/qa[train][12]: field 'answer': must not be empty``, and fields by the dataset's own column names.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, get_args
from urllib.parse import parse_qsl, quote, urlencode

from lit_rlhf.data.rows import DataError, _open_rows

PREFIX = "hf:"
# The row fields a column mapping may name (every field of every row kind in docs/data-formats.md). A Literal, so
# a config parser refuses a misspelt field before anything runs.
Field = Literal[
    "prompt",
    "response",
    "messages",
    "chosen",
    "rejected",
    "responses",
    "ranking",
    "text",
    "rules",
    "reference",
]
FIELDS: tuple[str, ...] = get_args(Field)
_OPTIONS = ("split", "name")
INSTALL_HINT = "pip install 'lit-rlhf[data]' (or pip install datasets)"
# (where errors point, line number or None, a decoded row or the DataError that decoding it gave)
Items = Iterator[tuple[str, int | None, object]]


@dataclass(frozen=True)
class DataSource:
    """Rows from a Hugging Face dataset (or a file read with a column mapping).

    Attributes:
        path: a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``, a folder of .jsonl or
            .parquet files (read with ``datasets.load_dataset``, which takes splits from file names such as
            ``train-*.parquet``), a hub dataset name such as ``org/name`` (needs the network), or a single
            .jsonl/.parquet file (read by lit-rlhf's own reader, so errors keep their line numbers). A local file
            or folder wins over a hub name of the same spelling.
        split: the split to read (``train``, ``test``...); may be left out when the dataset has exactly one.
        name: the dataset's configuration name on the hub (``load_dataset(path, name)``), if it has several.
        columns: row field -> the dataset's column that holds it, e.g. ``{prompt: question, response: answer}``;
            a field mapped to null is not read even when a column of that name exists. Fields not named are read
            from columns of their own name.
    """

    path: str
    split: str | None = None
    name: str | None = None
    columns: dict[Field, str | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.path, str) or not self.path.strip():
            raise ValueError(f"DataSource: path must be a non-empty string, got {self.path!r}")
        for key in ("split", "name"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ValueError(f"DataSource: {key} must be a non-empty string or null, got {value!r}")
        columns = self.columns if self.columns is not None else {}
        if not isinstance(columns, dict):
            raise ValueError(f"DataSource: columns must map row fields to column names, got {columns!r}")
        for key, column in columns.items():
            if key not in FIELDS:
                raise ValueError(
                    f"DataSource: columns: unknown field {key!r}: expected one of {', '.join(FIELDS)}"
                )
            if column is not None and (not isinstance(column, str) or not column):
                raise ValueError(f"DataSource: columns.{key} must be a column name or null, got {column!r}")
        object.__setattr__(self, "columns", dict(columns))

    @classmethod
    def parse(cls, text: str) -> DataSource:
        """The source of ``hf:PATH[?split=S&name=N&FIELD=COLUMN...]`` (``FIELD=`` with no column: not read).

        Raises DataError naming the string and the key when it cannot be read.
        """
        if not text.startswith(PREFIX):
            raise DataError(text, None, None, f"a dataset source starts with {PREFIX!r}")
        path, _, query = text[len(PREFIX) :].partition("?")
        options: dict[str, str | None] = {}
        columns: dict[str, str | None] = {}
        try:
            pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
        except ValueError as e:
            raise DataError(text, None, None, f"cannot read the options after '?': {e}") from None
        for key, value in pairs:
            if key in options or key in columns:
                raise DataError(text, None, key, "given twice")
            if key in _OPTIONS:
                options[key] = value or None
            elif key in FIELDS:
                columns[key] = value or None
            else:
                raise DataError(
                    text, None, key, f"unknown key: expected split, name or a row field ({', '.join(FIELDS)})"
                )
        try:
            return cls(path, columns=columns, **options)
        except ValueError as e:
            raise DataError(text, None, None, str(e)) from None

    def spec(self) -> str:
        """The one-string form: ``parse(spec())`` gives this source back."""
        params = [(k, getattr(self, k)) for k in _OPTIONS if getattr(self, k) is not None]
        params += [(k, v or "") for k, v in self.columns.items()]
        query = urlencode(params, quote_via=quote, safe="/") if params else ""
        return f"{PREFIX}{self.path}" + (f"?{query}" if query else "")

    def __str__(self) -> str:
        return self.spec()


def as_source(path: str | os.PathLike | DataSource) -> DataSource | None:
    """The DataSource a data path names, or None for a plain file path (read as it always was)."""
    if isinstance(path, DataSource):
        return path
    if isinstance(path, str) and path.startswith(PREFIX):
        return DataSource.parse(path)
    return None


def as_spec(path: str | os.PathLike | DataSource | None) -> str | os.PathLike | None:
    """A data path as plain data (a DataSource becomes its ``hf:`` string): what hyperparameters, checkpoints and
    logs record, so they stay YAML/JSON and load without unpickling a class."""
    return path.spec() if isinstance(path, DataSource) else path


# ---------------------------------------------------------------------------------------------------------
# Column mapping
# ---------------------------------------------------------------------------------------------------------


def map_columns(obj: object, columns: dict[str, str | None], drop_nulls: bool) -> object:
    """A row with its mapped columns under their row-field names.

    A column that is mapped to a field no longer appears under its own name, and a field mapped to null (or to
    another column) is not read from a column of its own name, so ``{prompt: response, response: prompt}`` swaps
    them. With `drop_nulls` a null value counts as absent: a dataset gives every row every column, null where a
    row had none (a folder mixing prompt/response and messages rows, say).
    """
    if not isinstance(obj, dict):
        return obj  # validation names what it is
    renamed = {column for column in columns.values() if column is not None}
    out = {k: v for k, v in obj.items() if k not in columns and k not in renamed}
    for key, column in columns.items():
        if column is not None and column in obj:
            out[key] = obj[column]
    if drop_nulls:
        out = {k: v for k, v in out.items() if v is not None}
    return out


_TOP = re.compile(r"^([^.\[]+)(.*)$", re.S)


def _renamer(columns: dict[str, str | None], hint: str | None) -> Callable[[DataError], DataError]:
    """Rewrites a row error's field to the column the data holds it under (``response`` -> ``answer``); with
    `hint`, a top-level field found missing also lists the dataset's columns."""
    inverse = {key: column for key, column in columns.items() if column is not None}

    def annotate(err: DataError) -> DataError:
        match = None if err.field is None else _TOP.match(err.field)
        if match is None:
            return err
        top, rest = match.groups()
        reason = err.reason
        if hint is not None and not rest and reason.startswith("missing"):
            reason = f"{reason}; {hint}"
        if top not in inverse and reason == err.reason:
            return err
        renamed = copy.copy(err)  # the same class: a subclass keeps its summary heading
        renamed.field, renamed.reason = inverse.get(top, top) + rest, reason
        renamed.args = (renamed.path, renamed.line, renamed.field, renamed.reason)
        return renamed

    return annotate


# ---------------------------------------------------------------------------------------------------------
# Opening a source
# ---------------------------------------------------------------------------------------------------------


def open_source(path: str | DataSource) -> tuple[str, Items, Callable[[DataError], DataError]]:
    """(label for reports, the rows, a function that words a row's error in the data's own terms) of a
    DataSource or its ``hf:`` string.

    A file keeps `read_rows`' reader and its line numbers; a dataset is loaded with `datasets` and its rows are
    numbered by index.
    """
    source = path if isinstance(path, DataSource) else DataSource.parse(path)
    if os.path.isfile(source.path) or (
        not os.path.isdir(source.path) and os.path.splitext(source.path)[1].lower() in (".jsonl", ".parquet")
    ):
        if source.split is not None or source.name is not None:
            raise DataError(
                source.path, None, "split", "a single file has no splits or configurations: drop them"
            )
        rows = _open_rows(source.path)
        items = ((source.path, n, map_columns(obj, source.columns, False)) for n, obj in rows)
        return source.path, items, _renamer(source.columns, None)
    dataset, label = load_split(source)
    names = list(dataset.column_names)
    for key, column in source.columns.items():
        if column is not None and column not in names:
            raise DataError(
                label,
                None,
                f"columns.{key}",
                f"no column {column!r} in the dataset; its columns: {', '.join(names)}",
            )
    hint = f"the dataset's columns are {', '.join(names)} (map them to row fields with columns)"
    return label, _dataset_rows(dataset, label, source.columns), _renamer(source.columns, hint)


def _dataset_rows(dataset: Any, label: str, columns: dict[str, str | None]) -> Items:
    # with_format(None): a dataset saved with set_format("torch") would otherwise give tensors, not lists
    for index, obj in enumerate(dataset.with_format(None)):
        yield f"{label}[{index}]", None, map_columns(obj, columns, True)


def _datasets(label: str) -> Any:
    try:
        import datasets
    except ImportError:
        raise DataError(
            label, None, None, f"reading a Hugging Face dataset needs `datasets`: {INSTALL_HINT}"
        ) from None
    return datasets


def _explain(e: BaseException) -> str:
    """One line for a loader's exception, with its cause: `datasets` wraps the useful part (a schema that differs
    between files, say) in a generic "An error occurred while generating the dataset"."""
    text = f"{type(e).__name__}: {e}"
    if e.__cause__ is not None:
        text += f" ({type(e.__cause__).__name__}: {e.__cause__})"
    return " ".join(text.split())


def load_split(source: DataSource) -> tuple[Any, str]:
    """The one split `source` names, as a `datasets.Dataset`, and its label (``hf:PATH[split]``) for errors.

    A folder with ``dataset_dict.json`` or ``state.json`` is read with ``load_from_disk``; any other folder, or a
    name that is no local path, with ``load_dataset(path, name, split=split)`` (a folder of data files, or the hub).
    """
    base = PREFIX + source.path + (f"({source.name})" if source.name else "")
    datasets = _datasets(base)
    errors = (OSError, ValueError, KeyError, datasets.exceptions.DatasetsError)
    saved = os.path.isdir(source.path) and any(
        os.path.isfile(os.path.join(source.path, marker)) for marker in ("dataset_dict.json", "state.json")
    )
    if saved:
        if source.name is not None:
            raise DataError(
                base, None, "name", "a folder written by save_to_disk has no configurations: drop name"
            )
        try:
            loaded = datasets.load_from_disk(source.path)
        except errors as e:
            raise DataError(base, None, None, f"could not read the saved dataset: {e}") from None
    else:
        if os.path.isdir(source.path):
            what = "could not load the folder as a dataset"
        elif os.path.exists(source.path):
            raise DataError(base, None, None, "not a folder, .jsonl or .parquet file")
        else:
            what = "no such local file or folder, and loading it from the Hugging Face Hub failed"
        try:
            loaded = datasets.load_dataset(source.path, source.name, split=source.split)
        except errors as e:
            raise DataError(base, None, None, f"{what}: {_explain(e)}") from None
    if isinstance(loaded, datasets.DatasetDict):
        splits = list(loaded)
        split = source.split
        if split is None:
            if len(splits) != 1:
                raise DataError(base, None, "split", f"the dataset has splits {', '.join(splits)}: name one")
            split = splits[0]
        if split not in loaded:
            raise DataError(base, None, "split", f"no split {split!r}; the dataset has {', '.join(splits)}")
        return loaded[split], f"{base}[{split}]"
    if saved and source.split is not None:
        raise DataError(
            base, None, "split", "a dataset written by Dataset.save_to_disk has no splits: drop split"
        )
    return loaded, base if source.split is None else f"{base}[{source.split}]"
