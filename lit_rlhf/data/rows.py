"""Row formats shared by every stage: typed rows, validation with file:line errors, and the row readers.

Lives here: the five row kinds (demonstration, comparison, prompt, text, rule), `DataError`, `validate_row`,
`read_rows` (JSONL and parquet; Hugging Face datasets through `sources.py`) with its `ReadReport`, and
`row_to_dict` for writing rows back.
Must not live here: tokenization, tensors, Lightning (see `sft.py`), or file writing (see `io.py`).
Every rejection names the file, the line and the field, so a bad row can be found and fixed by hand.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from lit_rlhf.data.formatting import Messages, PromptSpec
from lit_rlhf.safe_io import CLIP_CHARS, UnreadableFile, check_regular, clip, open_regular

if TYPE_CHECKING:
    from lit_rlhf.data.sources import DataSource

logger = logging.getLogger(__name__)

RowKind = Literal["demonstration", "comparison", "prompt", "text", "rule"]
ROW_KINDS: tuple[str, ...] = ("demonstration", "comparison", "prompt", "text", "rule")
# Rule names become metric names (reward/val_rule/<name>/auroc) and manifest entries: no slashes or spaces.
RULE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
ROLES: tuple[str, ...] = ("system", "user", "assistant")

# Individual warnings past this many per file would drown the log; the rest go to DEBUG and the summary.
_MAX_LOGGED_SKIPS = 20


class DataError(ValueError):
    """A bad row or a bad data file. `str(err)` is "{path}:{line}: field '{field}': {reason}"."""

    # The heading a skip is counted under in `ReadReport.summary` when the error names no field.
    summary_key = "row"

    def __init__(self, path: str, line: int | None, field: str | None, reason: str) -> None:
        super().__init__(path, line, field, reason)
        self.path = str(path)
        self.line = line
        # Both can quote a value from the file (a JSON key, a bad rank): cut, so a huge value gives a short message.
        self.field = None if field is None else clip(field)
        self.reason = clip(reason, 2 * CLIP_CHARS)

    def __str__(self) -> str:
        parts = [self.path if self.line is None else f"{self.path}:{self.line}"]
        if self.field is not None:
            parts.append(f"field '{self.field}'")
        parts.append(self.reason)
        return ": ".join(parts)

    def __reduce__(self) -> tuple[Any, ...]:
        # Subclasses take other constructor arguments; rebuilding from the state keeps them
        # picklable across DataLoader worker processes.
        return (_restore_error, (type(self), self.__dict__.copy()))


def _restore_error(cls: type[DataError], state: dict[str, Any]) -> DataError:
    err = cls.__new__(cls)
    err.__dict__.update(state)
    return err


def split_source(source: str) -> tuple[str, int | None]:
    """Split a row's "file:line" source back into (path, line); line is None when absent."""
    path, sep, tail = source.rpartition(":")
    if sep and tail.isdigit():
        return path, int(tail)
    return source, None


# ---------------------------------------------------------------------------------------------------------
# Row types
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Demonstration:
    """A supervised example: either `prompt` + `response`, or chat `messages` ending with the assistant."""

    prompt: str | None
    response: str | None
    messages: Messages | None  # ((role, content), ...); None for prompt/response rows
    source: str = field(default="", compare=False)  # "file:line", for reports

    @property
    def prompt_spec(self) -> PromptSpec:
        """What the model is asked: the prompt string, or every message before the final answer."""
        return self.messages[:-1] if self.messages is not None else self.prompt

    @property
    def answer(self) -> str:
        """The demonstrated response: `response`, or the final assistant message's content."""
        return self.messages[-1][1] if self.messages is not None else self.response


@dataclass(frozen=True)
class Comparison:
    """K responses to one prompt, ranked by a labeler: ranking[i] is the rank of responses[i], 0 = best.

    The prompt is a string, or chat messages ending with a user message (a ``messages`` row).
    """

    prompt: PromptSpec
    responses: tuple[str, ...]
    ranking: tuple[int, ...]
    source: str = field(default="", compare=False)

    @property
    def k(self) -> int:
        return len(self.responses)

    def pairs(self) -> list[tuple[int, int]]:
        """Every (better, worse) index pair with unequal rank, ordered by (better, worse).

        Ties give no pair: the labeler expressed no preference between them.
        """
        r = self.ranking
        return [(i, j) for i in range(len(r)) for j in range(len(r)) if r[i] < r[j]]


@dataclass(frozen=True)
class Prompt:
    """A prompt to answer: a string, or chat messages ending with a user message (a ``messages`` row)."""

    prompt: PromptSpec
    source: str = field(default="", compare=False)
    reference: str | None = None  # a reference answer (a demonstration row's response), for judges


@dataclass(frozen=True)
class Text:
    """Pretraining text (the PPO-ptx mix)."""

    text: str
    source: str = field(default="", compare=False)


@dataclass(frozen=True)
class RuleLabel:
    """A response labeled against named rules (Sparrow): rules[name] is True when the response breaks the rule,
    False when it follows it, None when the labeler is unsure (not trained on)."""

    prompt: PromptSpec
    response: str
    rules: dict[str, bool | None]
    source: str = field(default="", compare=False)


Row = Demonstration | Comparison | Prompt | Text | RuleLabel


# ---------------------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------------------


def _json_type(value: object) -> str:
    """The JSON name of a value's type, for messages a data author recognises."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


class _Where:
    """The file and line being validated; makes errors for a field."""

    def __init__(self, path: str, line: int | None) -> None:
        self.path, self.line = path, line

    def error(self, field_name: str | None, reason: str) -> DataError:
        return DataError(self.path, self.line, field_name, reason)

    @property
    def source(self) -> str:
        return self.path if self.line is None else f"{self.path}:{self.line}"


def _string(value: object, name: str, at: _Where) -> str:
    if not isinstance(value, str):
        raise at.error(name, f"expected a string, got {_json_type(value)}")
    if not value.strip():
        raise at.error(name, "must not be empty (or only whitespace)")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        # JSON "\ud800" escapes decode to lone surrogates that every tokenizer later chokes on.
        raise at.error(name, "contains an unpaired UTF-16 surrogate") from None
    return value


def _required(obj: dict, key: str, at: _Where, needs: str, field_name: str | None = None) -> object:
    """obj[key], or a "missing" error for `field_name` (the key itself unless a nested path is given)."""
    if key not in obj:
        raise at.error(field_name or key, f"missing ({needs})")
    return obj[key]


def _list(value: object, name: str, at: _Where, what: str) -> list:
    if not isinstance(value, list):
        raise at.error(name, f"expected an array of {what}, got {_json_type(value)}")
    return value


def _validate_messages(
    value: object, at: _Where, last_role: str = "assistant", key: str = "messages", least: int | None = None
) -> Messages:
    """Chat messages under field `key`; the last one must come from `last_role` (the answer in a demonstration,
    the question in a prompt or comparison row). `least` defaults to 2 for an answer (context, then the answer)
    and 1 for a question."""
    items = _list(value, key, at, "{role, content} objects")
    if least is None:
        least = 2 if last_role == "assistant" else 1
    if len(items) < least:
        if last_role != "assistant":
            what = "ending with the user's message"
        else:
            what = "context, then the answer" if least > 1 else "ending with the assistant's answer"
        raise at.error(key, f"expected at least {least} messages ({what}), got {len(items)}")
    messages = []
    for i, item in enumerate(items):
        name = f"{key}[{i}]"
        if not isinstance(item, dict):
            raise at.error(name, f"expected an object with 'role' and 'content', got {_json_type(item)}")
        needs = "each message needs 'role' and 'content'"
        role = _string(_required(item, "role", at, needs, f"{name}.role"), f"{name}.role", at)
        if role not in ROLES:
            raise at.error(f"{name}.role", f"unknown role {role!r}: expected one of {', '.join(ROLES)}")
        content = _required(item, "content", at, needs, f"{name}.content")
        messages.append((role, _string(content, f"{name}.content", at)))
    if messages[-1][0] != last_role:
        last = f"{key}[{len(messages) - 1}].role"
        raise at.error(last, f"the last message must be from the {last_role}, got {messages[-1][0]!r}")
    return tuple(messages)


def _validate_prompt(obj: dict, at: _Where, needs: str) -> PromptSpec:
    """A row's prompt: the string 'prompt', or 'messages' ending with the user's turn."""
    if "messages" in obj:
        if "prompt" in obj:
            raise at.error("messages", "give either 'messages' or 'prompt', not both")
        return _validate_messages(obj["messages"], at, last_role="user")
    return _string(_required(obj, "prompt", at, needs), "prompt", at)


def _validate_demonstration(obj: dict, at: _Where) -> Demonstration:
    if "messages" in obj:
        if "prompt" in obj or "response" in obj:
            raise at.error("messages", "give either 'messages' or 'prompt'/'response', not both")
        return Demonstration(None, None, _validate_messages(obj["messages"], at), source=at.source)
    needs = "a demonstration needs 'prompt' and 'response', or 'messages'"
    prompt = _string(_required(obj, "prompt", at, needs), "prompt", at)
    response = _string(_required(obj, "response", at, needs), "response", at)
    return Demonstration(prompt, response, None, source=at.source)


def _validate_ranking(value: object, k: int, at: _Where) -> tuple[int, ...]:
    ranks = _list(value, "ranking", at, "integer ranks")
    if len(ranks) != k:
        raise at.error("ranking", f"expected {k} ranks (one per response), got {len(ranks)}")
    for i, rank in enumerate(ranks):
        # bool is an int subclass; `true` as a rank is a data bug, not rank 1.
        if isinstance(rank, bool) or not isinstance(rank, int):
            raise at.error(f"ranking[{i}]", f"expected an integer rank, got {_json_type(rank)} {rank!r}")
        if not 0 <= rank <= k - 1:
            raise at.error(f"ranking[{i}]", f"rank {rank} out of range [0, {k - 1}] for {k} responses")
    if len(set(ranks)) < 2:
        raise at.error("ranking", f"all {k} responses tied (rank {ranks[0]}): the row holds no comparison")
    return tuple(ranks)


def _split_conversations(obj: dict, at: _Where, needs: str) -> tuple[PromptSpec, str, str]:
    """(prompt, chosen answer, rejected answer) of a row whose 'chosen'/'rejected' are whole conversations.

    Each conversation ends with the assistant's answer (the response); the messages before it are the prompt and
    must be the same in both. When the conversations hold only the answer, the prompt is the row's 'prompt' or
    'messages'; when they hold the prompt, a 'prompt'/'messages' field beside them is not read.
    """
    chosen, rejected = obj["chosen"], obj["rejected"]
    for key, value in (("chosen", chosen), ("rejected", rejected)):
        if not isinstance(value, list):
            other = "rejected" if key == "chosen" else "chosen"
            raise at.error(
                key,
                f"expected a conversation like '{other}' (an array of {{role, content}} objects), "
                f"got {_json_type(value)}",
            )
    chosen = _validate_messages(chosen, at, "assistant", key="chosen", least=1)
    rejected = _validate_messages(rejected, at, "assistant", key="rejected", least=1)
    context = chosen[:-1]
    if rejected[:-1] != context:
        n = len(context)
        differ = next(
            (i for i, (a, b) in enumerate(zip(context, rejected[:-1], strict=False)) if a != b), None
        )
        where = f"rejected[{differ}]" if differ is not None else "rejected"
        detail = (
            f"message {differ} differs"
            if differ is not None
            else f"'chosen' has {n} messages before its answer, 'rejected' {len(rejected) - 1}"
        )
        raise at.error(
            where,
            f"the conversations do not share their prompt ({detail}): 'chosen' and 'rejected' must hold the "
            "same messages before their final assistant answer",
        )
    if context:
        if context[-1][0] != "user":
            raise at.error(
                f"chosen[{len(context) - 1}].role",
                f"the message before the final answer must be from the user, got {context[-1][0]!r}",
            )
        prompt: PromptSpec = context
    else:
        prompt = _validate_prompt(obj, at, needs)
    return prompt, chosen[-1][1], rejected[-1][1]


def _validate_comparison(obj: dict, at: _Where) -> Comparison:
    needs = "a comparison needs 'prompt' (or 'messages') with 'responses' and 'ranking', or 'chosen' and 'rejected'"
    conversations = "responses" not in obj and any(
        isinstance(obj.get(k), list) for k in ("chosen", "rejected")
    )
    if conversations:
        for key in ("chosen", "rejected"):
            _required(obj, key, at, needs)
        prompt, chosen, rejected = _split_conversations(obj, at, needs)
        if chosen == rejected:
            raise at.error("rejected", "identical to 'chosen': a response cannot be preferred to itself")
        return Comparison(prompt, (chosen, rejected), (0, 1), source=at.source)
    prompt = _validate_prompt(obj, at, needs)
    if "responses" not in obj and ("chosen" in obj or "rejected" in obj):
        chosen = _string(_required(obj, "chosen", at, needs), "chosen", at)
        rejected = _string(_required(obj, "rejected", at, needs), "rejected", at)
        if chosen == rejected:
            raise at.error("rejected", "identical to 'chosen': a response cannot be preferred to itself")
        return Comparison(prompt, (chosen, rejected), (0, 1), source=at.source)
    if "chosen" in obj or "rejected" in obj:
        raise at.error("responses", "give either 'responses'/'ranking' or 'chosen'/'rejected', not both")
    items = _list(_required(obj, "responses", at, needs), "responses", at, "strings")
    if len(items) < 2:
        raise at.error("responses", f"expected at least 2 responses, got {len(items)}")
    responses = tuple(_string(r, f"responses[{i}]", at) for i, r in enumerate(items))
    ranking = _validate_ranking(_required(obj, "ranking", at, needs), len(responses), at)
    first_rank: dict[str, int] = {}  # the same text ranked twice differently says both "better" and "worse"
    for i, (text, rank) in enumerate(zip(responses, ranking, strict=True)):
        if first_rank.setdefault(text, rank) != rank:
            reason = f"responses[{i}] repeats a response ranked {first_rank[text]}: contradictory labels"
            raise at.error(f"ranking[{i}]", reason)
    return Comparison(prompt, responses, ranking, source=at.source)


def _validate_rule_label(obj: dict, at: _Where) -> RuleLabel:
    needs = "a rule row needs 'prompt' (or 'messages'), 'response' and 'rules'"
    prompt = _validate_prompt(obj, at, needs)
    response = _string(_required(obj, "response", at, needs), "response", at)
    labels = _required(obj, "rules", at, needs)
    if not isinstance(labels, dict):
        raise at.error(
            "rules", f"expected an object mapping rule names to true/false/null, got {_json_type(labels)}"
        )
    if not labels:
        raise at.error("rules", "empty: the row labels no rule")
    for name, value in labels.items():
        if not RULE_NAME.fullmatch(name):
            raise at.error(f"rules.{name}", "a rule name is 1-64 letters, digits, '_', '-' or '.'")
        if value is not None and not isinstance(value, bool):
            raise at.error(
                f"rules.{name}",
                f"expected true (broken), false (followed) or null (unsure), got {_json_type(value)} {value!r}",
            )
    if all(v is None for v in labels.values()):
        raise at.error("rules", f"all {len(labels)} rules are null (unsure): the row holds no label")
    return RuleLabel(prompt, response, dict(labels), source=at.source)


def validate_row(obj: object, kind: RowKind, path: str, line: int | None) -> Row:
    """Check one decoded JSON value against the `kind` format and build its typed row.

    Raises DataError naming `path`, `line` and the offending field; extra keys are ignored.
    """
    at = _Where(str(path), line)
    if not isinstance(obj, dict):
        raise at.error(None, f"expected a JSON object, got {_json_type(obj)}")
    if kind == "demonstration":
        return _validate_demonstration(obj, at)
    if kind == "comparison":
        return _validate_comparison(obj, at)
    if kind == "prompt":
        if "messages" in obj and isinstance(obj["messages"], list) and obj["messages"]:
            last = obj["messages"][-1]
            if isinstance(last, dict) and last.get("role") == "assistant":
                # a demonstration row used as a prompt: its last answer is the reference, the rest the prompt
                demo = _validate_demonstration(obj, at)
                return Prompt(demo.prompt_spec, at.source, reference=demo.answer)
        prompt = _validate_prompt(obj, at, "a prompt row needs 'prompt' or 'messages'")
        reference = obj.get("reference", obj.get("response"))
        if reference is not None:
            reference = _string(reference, "reference" if "reference" in obj else "response", at)
        return Prompt(prompt, at.source, reference=reference)
    if kind == "text":
        return Text(_string(_required(obj, "text", at, "a text row needs 'text'"), "text", at), at.source)
    if kind == "rule":
        return _validate_rule_label(obj, at)
    raise ValueError(f"unknown row kind {kind!r}: expected one of {', '.join(ROW_KINDS)}")


def prompt_json(prompt: PromptSpec) -> dict[str, Any]:
    """``{"prompt": str}`` or ``{"messages": [...]}``: how a row spells its prompt."""
    if isinstance(prompt, str):
        return {"prompt": prompt}
    return {"messages": [{"role": role, "content": content} for role, content in prompt]}


def row_to_dict(row: Row) -> dict[str, Any]:
    """The JSON object for a row (inverse of `validate_row`; pairwise rows come back in K-wise form)."""
    if isinstance(row, Demonstration):
        if row.messages is not None:
            return {"messages": [{"role": role, "content": content} for role, content in row.messages]}
        return {"prompt": row.prompt, "response": row.response}
    if isinstance(row, Comparison):
        return {**prompt_json(row.prompt), "responses": list(row.responses), "ranking": list(row.ranking)}
    if isinstance(row, Prompt):
        out = prompt_json(row.prompt)
        return out if row.reference is None else {**out, "reference": row.reference}
    if isinstance(row, Text):
        return {"text": row.text}
    if isinstance(row, RuleLabel):
        return {**prompt_json(row.prompt), "response": row.response, "rules": dict(row.rules)}
    raise TypeError(f"not a row: {type(row).__name__}")


# ---------------------------------------------------------------------------------------------------------
# Decoding one JSONL line
# ---------------------------------------------------------------------------------------------------------


class _NonFinite:
    """Stands in for a NaN/Infinity literal so the reader can name the field that held it."""

    def __init__(self, literal: str) -> None:
        self.literal = literal


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json keeps the last of repeated keys and silently drops the rest; a repeated key is a writer bug.
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return obj


def _find_non_finite(value: object, where: str) -> tuple[str, str] | None:
    """(json path, literal) of the first NaN/Infinity placeholder inside `value`, if any."""
    if isinstance(value, _NonFinite):
        return where, value.literal
    if isinstance(value, dict):
        children = ((f"{where}.{k}" if where else k, v) for k, v in value.items())
    elif isinstance(value, list):
        children = ((f"{where}[{i}]", v) for i, v in enumerate(value))
    else:
        return None
    for child_where, child in children:
        found = _find_non_finite(child, child_where)
        if found is not None:
            return found
    return None


def parse_json_line(raw: bytes, path: str, line: int) -> dict[str, Any]:
    """Decode one JSONL line (bytes) into a JSON object, or raise DataError naming the line.

    Rejects invalid UTF-8, invalid JSON, NaN/Infinity literals (naming the field that held one),
    repeated keys, and values that are not objects.
    """
    at = _Where(str(path), line)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise at.error(None, "not valid UTF-8") from None
    if line == 1:
        text = text.removeprefix("\ufeff")  # a BOM from Windows editors is not part of the first row
    try:
        value = json.loads(text, parse_constant=_NonFinite, object_pairs_hook=_object_without_duplicates)
        non_finite = _find_non_finite(value, "") if "NaN" in text or "Infinity" in text else None
    except _DuplicateKey as dup:
        raise at.error(dup.key, "key appears more than once in the object") from None
    except RecursionError:
        raise at.error(None, "invalid JSON: nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, and int() refusing a 5000-digit number
        raise at.error(None, f"invalid JSON: {e}") from None
    if non_finite is not None:
        where, literal = non_finite
        raise at.error(where or None, f"{literal} is not valid JSON (use null, or drop the value)")
    if not isinstance(value, dict):
        raise at.error(None, f"expected a JSON object, got {_json_type(value)}")
    return value


# ---------------------------------------------------------------------------------------------------------
# Reading files
# ---------------------------------------------------------------------------------------------------------


@dataclass
class ReadReport:
    """What reading one file did: rows read, kept, and every skipped row's error."""

    path: str
    kind: str
    read: int
    kept: int
    skipped: list[DataError]
    truncated: int = 0  # rows kept after cutting them to fit (set by the tokenizing stage)

    def summary(self) -> str:
        """One line, e.g. "data/x.jsonl: read 100 rows, kept 97, skipped 3 (ranking: 2, prompt: 1)"."""
        text = f"{self.path}: read {self.read} rows, kept {self.kept}, skipped {len(self.skipped)}"
        if self.skipped:
            counts = Counter(_summary_key(err) for err in self.skipped)
            text += " (" + ", ".join(f"{key}: {n}" for key, n in counts.most_common()) + ")"
        if self.truncated:
            text += f", truncated {self.truncated}"
        return text


def _summary_key(err: DataError) -> str:
    """The top-level field an error is about ("ranking[2]" -> "ranking"), or its class's heading."""
    if err.field is None:
        return err.summary_key
    return err.field.split("[", 1)[0].split(".", 1)[0]


def _iter_jsonl(path: str):
    """(line number, decoded object or DataError) for every non-blank line."""
    with open_regular(path) as f:
        for line_no, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                yield line_no, parse_json_line(raw, path, line_no)
            except DataError as err:
                yield line_no, err


def _iter_parquet(path: str):
    """(row number, row dict) for every row of a parquet file, one record batch at a time."""
    import pyarrow.parquet as pq  # heavy; only parquet readers pay for it

    try:
        batches = pq.ParquetFile(path).iter_batches()
        row_no = 0
        for batch in batches:
            for obj in batch.to_pylist():
                row_no += 1
                yield row_no, obj
    except (OSError, ValueError) as e:  # ArrowInvalid is a ValueError; ArrowIOError an OSError
        raise DataError(path, None, None, f"not a readable parquet file: {e}") from None


_READERS = {".jsonl": _iter_jsonl, ".parquet": _iter_parquet}


def _open_rows(path: str):
    ext = os.path.splitext(path)[1].lower()
    if ext not in _READERS:
        if os.path.isdir(path):
            raise DataError(
                path,
                None,
                None,
                "a folder, not a .jsonl or .parquet file; a Hugging Face dataset folder (save_to_disk, or a folder "
                f"of .jsonl/.parquet files) is read as hf:{path}",
            )
        raise DataError(
            path, None, None, f"unknown file type {ext or '(none)'!r}: expected .jsonl or .parquet"
        )
    try:
        check_regular(path)  # a folder, FIFO, device or symlink loop: a clear error, never a hang
    except FileNotFoundError:
        raise FileNotFoundError(f"data file not found: {path}") from None
    except UnreadableFile as e:
        raise DataError(path, None, None, e.reason) from None
    return _READERS[ext](path)


def _is_plain_path(path: object) -> bool:
    """A path read as a file as it always was (not a DataSource, not an ``hf:`` string)."""
    return isinstance(path, os.PathLike) or (isinstance(path, str) and not path.startswith("hf:"))


def read_rows(
    path: str | os.PathLike | DataSource,
    kind: RowKind,
    on_error: Literal["raise", "skip"] = "raise",
    limit: int | None = None,
) -> tuple[list[Row], ReadReport]:
    """Read and validate every row of a .jsonl or .parquet file, or of a Hugging Face dataset.

    `path` is a file path, a `DataSource` or its ``hf:...`` string (a `datasets` folder or hub name, its split and
    a column mapping: `lit_rlhf.data.sources`). on_error="raise" stops at the first bad row; "skip" logs and
    counts each bad row in the report and keeps the rest, but a file with no good row is still an error. `limit`
    stops after that many kept rows. Blank JSONL lines are not rows; line numbers are physical lines (1-based) so
    an editor finds them; a dataset's rows are named by index (``hf:data/qa[train][12]``).
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of rows or None, got {limit}")
    if _is_plain_path(path):
        label = os.fspath(path)
        items = ((label, n, obj) for n, obj in _open_rows(label))
        annotate = None
    else:
        from lit_rlhf.data.sources import open_source  # imports `datasets` only when a dataset is read

        label, items, annotate = open_source(path)
    rows: list[Row] = []
    report = ReadReport(path=label, kind=kind, read=0, kept=0, skipped=[])
    for where, line_no, obj in items:
        report.read += 1
        try:
            if isinstance(obj, DataError):
                raise obj
            rows.append(validate_row(obj, kind, where, line_no))
        except DataError as err:
            if annotate is not None:
                err = annotate(err)
            if on_error == "raise":
                raise err
            record_skip(report, err)
            continue
        if limit is not None and len(rows) >= limit:
            break
    report.kept = len(rows)
    _check_not_empty(report)
    return rows, report


def record_skip(report: ReadReport, err: DataError) -> None:
    """Count a skipped row in `report` and log it (the first 20 per file at WARNING, the rest at DEBUG)."""
    report.skipped.append(err)
    n = len(report.skipped)
    if n <= _MAX_LOGGED_SKIPS:
        logger.warning("skipping bad %s row: %s", report.kind, err)
    else:
        if n == _MAX_LOGGED_SKIPS + 1:
            logger.warning("%s: more bad rows; the rest are logged at DEBUG and counted", report.path)
        logger.debug("skipping bad %s row: %s", report.kind, err)


def _check_not_empty(report: ReadReport) -> None:
    if report.read == 0:
        raise DataError(report.path, None, None, f"no rows: the file holds no {report.kind} rows")
    if report.kept == 0:
        first = report.skipped[0]
        raise DataError(
            report.path, None, None, f"no valid rows: all {report.read} were rejected (first: {first})"
        )
