"""The ranking queue (InstructGPT's labeling flow) behind the dashboard's Ranking queue page. No Streamlit, no torch.

A queue is a file of unranked samples in the labels folder, ``queue/<name>.jsonl``: ``{"prompt" | "messages",
"responses": [...]}`` rows, what ``collect-comparisons`` writes without ``--judge``. A person ranks one prompt at a
time; each submission is appended (one write, validated first) to ``comparisons/<name>.jsonl`` in the comparison
format the reward stage reads, and the rule violations they flag to ``comparisons/<name>.rules.jsonl`` as rule-label
rows ``{"prompt" | "messages", "response", "rules": {"<rule>": true | false}}`` (true: the response breaks it).
Where they are (position, skipped prompts, the rules to flag) is appended to ``queue/<name>.progress.jsonl``; what is
ranked is read back from the comparisons file itself. So progress survives a browser reload and a server restart,
and every file is append-only.

Lives here: reading a queue, the keyboard ranking syntax (``B A=C D``: best first, ``=`` for ties), turning places
into ranks, progress and navigation, and the writes (each checked to stay inside the labels folder).
Must not live here: widgets (pages/ranking_queue.py).
"""

from __future__ import annotations

import json
import os
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dashboard.labeling import save_ranking
from dashboard.loaders import read_jsonl
from dashboard.safety import UnsafePath, labels_path
from lit_rlhf.data.io import append_jsonl
from lit_rlhf.data.rows import DataError, PromptSpec, prompt_json, validate_row
from lit_rlhf.safe_io import clip

QUEUE_DIR, COMPARISONS_DIR = "queue", "comparisons"
PROGRESS_SUFFIX, RULES_SUFFIX = ".progress.jsonl", ".rules.jsonl"
LETTERS = string.ascii_uppercase
MAX_RULES = 16
_RULE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_ .-]{0,63}$")


@dataclass(frozen=True)
class QueueItem:
    """One prompt to rank.

    Attributes:
        index: Its position in the queue (0-based).
        prompt: The prompt as the rows give it: a string, or chat messages ending with the user's turn.
        responses: (K,) the distinct responses, in first-seen order (a repeated sample is shown and saved once).
        repeats: (K,) how often each was sampled.
        source: ``file:line`` of the row.
    """

    index: int
    prompt: PromptSpec
    responses: tuple[str, ...]
    repeats: tuple[int, ...]
    source: str

    @property
    def key(self) -> str:
        """What identifies the item in the comparisons file: its prompt and responses."""
        return _key(self.prompt, self.responses)


def _key(prompt: PromptSpec, responses: Sequence[str]) -> str:
    return json.dumps([prompt_json(prompt), list(responses)], sort_keys=True)


def prompt_text(prompt: PromptSpec) -> str:
    """The prompt as a person reads it: the string, or one ``role: content`` line per chat message."""
    return prompt if isinstance(prompt, str) else "\n".join(f"{role}: {content}" for role, content in prompt)


# ---- files ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class QueueFiles:
    """The files of the queue `name` in the labels folder `root`."""

    root: Path
    name: str

    @property
    def queue(self) -> Path:
        return labels_path(f"{QUEUE_DIR}/{self.name}.jsonl", self.root)

    @property
    def comparisons(self) -> Path:
        return labels_path(f"{COMPARISONS_DIR}/{self.name}.jsonl", self.root)

    @property
    def rules(self) -> Path:
        return labels_path(f"{COMPARISONS_DIR}/{self.name}{RULES_SUFFIX}", self.root)

    @property
    def progress(self) -> Path:
        return labels_path(f"{QUEUE_DIR}/{self.name}{PROGRESS_SUFFIX}", self.root)


def find_queues(root: str | os.PathLike) -> list[str]:
    """Names of the queue files in ``<root>/queue/`` (their progress files left out), sorted."""
    folder = Path(root) / QUEUE_DIR
    if not folder.is_dir():
        return []
    names = []
    for path in sorted(folder.glob("*.jsonl")):
        if path.name.endswith(PROGRESS_SUFFIX) or path.name.startswith("."):
            continue
        try:
            labels_path(
                f"{QUEUE_DIR}/{path.name}", root
            )  # a link leading out of the labels folder is no queue
        except UnsafePath:
            continue
        names.append(path.name.removesuffix(".jsonl"))
    return names


def read_queue(path: str | os.PathLike, root: str | os.PathLike) -> tuple[list[QueueItem], list[str]]:
    """The items of a queue file, and a problem (file:line: field: why) for each row that cannot be ranked."""
    read = read_jsonl(path, root)
    items, problems = [], list(read.problems)
    for obj, line in zip(read.rows, read.lines, strict=True):
        try:
            items.append(_item(obj, str(path), line, len(items)))
        except DataError as err:
            problems.append(str(err))
    return items, problems


def _item(obj: dict[str, Any], path: str, line: int, index: int) -> QueueItem:
    prompt = validate_row(obj, "prompt", path, line).prompt
    responses = obj.get("responses")
    if not isinstance(responses, list) or not responses:
        raise DataError(path, line, "responses", "expected a non-empty array of strings")
    for i, r in enumerate(responses):
        if not isinstance(r, str):
            raise DataError(path, line, f"responses[{i}]", "expected a string")
    if "ranking" in obj:
        raise DataError(path, line, "ranking", "already ranked: the queue takes unranked samples")
    counts: dict[str, int] = {}
    for r in responses:
        counts[r] = counts.get(r, 0) + 1
    if len(counts) > len(LETTERS):
        raise DataError(path, line, "responses", f"more than {len(LETTERS)} distinct responses")
    return QueueItem(index, prompt, tuple(counts), tuple(counts.values()), f"{path}:{line}")


def ranked_rows(files: QueueFiles, items: Sequence[QueueItem]) -> dict[int, tuple[int, ...]]:
    """Item index -> the ranking saved for it, read from the comparisons file (the last row of an item wins)."""
    by_key = {item.key: item.index for item in items}
    out: dict[int, tuple[int, ...]] = {}
    for row in read_jsonl(files.comparisons, files.root).rows:
        prompt = row.get("messages") if "messages" in row else row.get("prompt")
        if isinstance(prompt, list):
            prompt = tuple((m.get("role"), m.get("content")) for m in prompt if isinstance(m, dict))
        responses, ranking = row.get("responses"), row.get("ranking")
        if isinstance(responses, list) and isinstance(ranking, list):
            try:
                index = by_key.get(_key(prompt, responses))
            except (TypeError, ValueError):  # a row no queue item can be (bad prompt): not ours
                continue
            if index is not None:
                out[index] = tuple(ranking)
    return out


# ---- ranking input ----------------------------------------------------------------------------------------
def parse_order(text: str, k: int) -> tuple[int, ...]:
    """Ranks from the keyboard syntax: letters best first, ``=`` between ties, spaces, commas or ``>`` between
    places; case does not matter. ``B A=C D`` (or ``b a=c d``, ``BA=CD``) for 4 responses gives (1, 0, 1, 2).

    Raises ValueError saying what is wrong (an unknown or repeated letter, a response without a place).
    """
    letters = LETTERS[:k]
    text = re.sub(r"\s*=\s*", "=", text.strip().upper())  # "A = C" is "A=C"
    places: list[list[int]] = []
    for token in re.split(r"[\s,>]+", text):
        if token.startswith("=") or token.endswith("=") or "==" in token:
            raise ValueError("'=' must come between two letters")
        tied = False
        for ch in token:  # "BA=C": B, then A tied with C
            if ch == "=":
                tied = True
                continue
            if ch not in letters:
                raise ValueError(f"{ch!r} is not a response here: use {letters[0]} to {letters[-1]}")
            if tied:
                places[-1].append(letters.index(ch))
            else:
                places.append([letters.index(ch)])
            tied = False
    seen = [i for place in places for i in place]
    repeated = sorted({LETTERS[i] for i in seen if seen.count(i) > 1})
    if repeated:
        raise ValueError(f"{', '.join(repeated)} given more than once")
    missing = [LETTERS[i] for i in range(k) if i not in seen]
    if missing:
        raise ValueError(f"every response needs a place; missing: {', '.join(missing)}")
    ranking = [0] * k
    for rank, place in enumerate(places):
        for i in place:
            ranking[i] = rank
    return tuple(ranking)


def ranks_from_places(places: Sequence[int | None]) -> tuple[int, ...]:
    """Dense ranks (0 = best) from the place clicked for each response (1 = best; equal places are ties)."""
    missing = [LETTERS[i] for i, p in enumerate(places) if p is None]
    if missing:
        raise ValueError(f"every response needs a place; missing: {', '.join(missing)}")
    levels = sorted(set(places))
    return tuple(levels.index(p) for p in places)


def describe(ranking: Sequence[int]) -> str:
    """``B > A = C > D`` for ranks (1, 0, 1, 2)."""
    groups = [[LETTERS[i] for i, r in enumerate(ranking) if r == level] for level in sorted(set(ranking))]
    return " > ".join(" = ".join(g) for g in groups)


# ---- progress and navigation ------------------------------------------------------------------------------
@dataclass
class Progress:
    """Where a person is in a queue (the last row of its progress file)."""

    position: int = 0
    skipped: list[int] = field(default_factory=list)
    rules: list[str] = field(default_factory=list)


def read_progress(files: QueueFiles) -> Progress:
    """The last complete progress row; the start of the queue when there is none (or it does not fit)."""
    rows = read_jsonl(files.progress, files.root).rows
    if not rows:
        return Progress()
    last = rows[-1]
    position, skipped, rules = last.get("position"), last.get("skipped"), last.get("rules", [])
    ok = (
        isinstance(position, int)
        and isinstance(skipped, list)
        and all(isinstance(i, int) for i in skipped)
        and isinstance(rules, list)
        and all(isinstance(r, str) for r in rules)
    )
    return Progress(position, list(skipped), list(rules)) if ok else Progress()


def save_progress(files: QueueFiles, progress: Progress) -> None:
    """Append the state as one row (one write): the file is append-only like every label file."""
    files.progress.parent.mkdir(parents=True, exist_ok=True)
    append_jsonl(
        files.progress,
        {"position": progress.position, "skipped": sorted(set(progress.skipped)), "rules": progress.rules},
    )


def next_open(n_items: int, start: int, ranked: Mapping[int, Any], skipped: Sequence[int]) -> int | None:
    """The first item at or after `start` that is neither ranked nor skipped; None when there is none."""
    for i in range(start, n_items):
        if i not in ranked and i not in skipped:
            return i
    return None


def parse_rules(text: str) -> list[str]:
    """Rule names from a comma-separated list: letters, digits, ``_ . -`` and spaces, at most MAX_RULES."""
    names = list(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    bad = [n for n in names if not _RULE_NAME.match(n)]
    if bad:
        raise ValueError(f"rule name {clip(repr(bad[0]))}: use letters, digits, '_', '.', '-' and spaces")
    if len(names) > MAX_RULES:
        raise ValueError(f"at most {MAX_RULES} rules")
    return names


# ---- submitting -------------------------------------------------------------------------------------------
def submit(
    files: QueueFiles,
    item: QueueItem,
    ranking: Sequence[int],
    rules: Sequence[str] = (),
    broken: Mapping[int, Sequence[str]] | None = None,
) -> None:
    """Append the item's comparison row and, when `rules` are being flagged, one rule-label row per response
    (true for the rules the person said it breaks, false for the others). The comparison is validated first
    (DataError names the file, line and field), so nothing is written for an invalid ranking."""
    save_ranking(files.comparisons, item.prompt, list(item.responses), list(ranking), root=files.root)
    if not rules:
        return
    broken = broken or {}
    for i, response in enumerate(item.responses):
        flags = {rule: rule in broken.get(i, ()) for rule in rules}
        append_jsonl(files.rules, {**prompt_json(item.prompt), "response": response, "rules": flags})
