"""Write the demo world's data set: SFT demonstrations, RL and held-out eval prompts, a pretraining
corpus for the PPO-ptx loss, the tokenizer, and a world.json describing how it was all made.

Every split draws from its own generator whose seed is derived from (seed, split name), so changing one
count does not reshuffle the other splits. Every file is written to a temp path and renamed into place;
world.json is written last, so its presence means the directory is complete.

Adversarial prompts (Sparrow's red-teaming: the banned word slipped in among a task's letters, world.py) make up
`adversarial_rate` of sft_train, sft_val and rl_prompts, at seeded positions; eval_adversarial.jsonl holds distinct
ones that appear nowhere else, for the banned-word rate on held-out red-teaming prompts. eval_prompts has none, so
the task evaluation stays what it was.

Row formats (one JSON object per line), `row_format="plain"` (the default):
  sft_train.jsonl, sft_val.jsonl   {"prompt": str, "response": str}   labeler demonstrations
  rl_prompts.jsonl, eval_prompts.jsonl, eval_adversarial.jsonl   {"prompt": str}
  pretrain.jsonl                   {"text": str}   "<prompt> <canonical answer>", always correct
`row_format="chat"` writes the same tasks as conversations, for a chat model trained and judged through its own
chat template: demonstrations {"messages": [{"role": "user", ...}, {"role": "assistant", ...}]}, prompts
{"messages": [{"role": "user", ...}]}; pretraining text stays plain text.

Reading and validating these files is the data package's job, not this module's.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from lit_rlhf.atomic import write_text
from lit_rlhf.demo.labeler import Labeler
from lit_rlhf.demo.world import (
    ADVERSARIAL_FAMILIES,
    FAMILIES,
    Task,
    TaskGenerator,
    adversarial_space_size,
    prompt_space_size,
)

# 2: adversarial prompts (eval_adversarial.jsonl, adversarial_rate, the labeler's literal_rate).
FORMAT_VERSION = 2
# At most this share of a family's distinct prompts is held out for eval. `add` has only 100 prompts:
# holding out ~45 of them (what 300 uniform eval draws would do) leaves too little to learn addition from.
HELDOUT_CAP = 0.2

SPLITS = ("sft_train", "sft_val", "rl_prompts", "eval_prompts", "pretrain", "eval_adversarial")
MIXED_SPLITS = ("sft_train", "sft_val", "rl_prompts")  # the splits adversarial prompts are mixed into
FILES = {
    "sft_train": "sft_train.jsonl",
    "sft_val": "sft_val.jsonl",
    "rl_prompts": "rl_prompts.jsonl",
    "eval_prompts": "eval_prompts.jsonl",
    "pretrain": "pretrain.jsonl",
    "eval_adversarial": "eval_adversarial.jsonl",
    "tokenizer": "tokenizer",
    "world": "world.json",
}


def derive_seed(seed: int, name: str) -> int:
    """A 64-bit seed for the stream called `name`, stable across Python versions and processes."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{name}".encode()).digest()[:8], "big")


def sample_heldout(generator: TaskGenerator, n: int, cap: float = HELDOUT_CAP) -> list[Task]:
    """n distinct tasks, never more than `cap` of any family's prompt space (at least one each).

    Raises ValueError when the families cannot supply n distinct held-out prompts under the cap.
    """
    limits = {
        f: max(1, int(cap * prompt_space_size(f, generator.min_len, generator.max_len)))
        for f in dict.fromkeys(generator.families)
    }
    if n > sum(limits.values()):
        raise ValueError(f"cannot hold out {n} distinct prompts: the cap allows {sum(limits.values())}")
    taken: dict[str, Task] = {}
    per_family = dict.fromkeys(limits, 0)
    while len(taken) < n:
        task = generator.sample()
        if task.prompt not in taken and per_family[task.family] < limits[task.family]:
            taken[task.prompt] = task
            per_family[task.family] += 1
    return list(taken.values())


def sample_excluding(generator: TaskGenerator, n: int, excluded: set[str]) -> list[Task]:
    """The first n tasks of the stream whose prompt is not in `excluded` (repeats allowed)."""
    tasks: list[Task] = []
    while len(tasks) < n:
        task = generator.sample()
        if task.prompt not in excluded:
            tasks.append(task)
    return tasks


def sample_adversarial_excluding(
    generator: TaskGenerator, n: int, excluded: set[str], distinct: bool
) -> list[Task]:
    """n adversarial tasks of the stream whose prompt is not in `excluded` (all different when `distinct`).

    Raises ValueError when `distinct` asks for more than HELDOUT_CAP of the adversarial prompts there are.
    """
    if distinct:
        space = sum(
            adversarial_space_size(f, generator.min_len, generator.max_len) for f in set(generator.families)
        )
        if n > int(HELDOUT_CAP * space):
            raise ValueError(
                f"cannot hold out {n} distinct adversarial prompts: the cap allows {int(HELDOUT_CAP * space)} "
                "(lower n_eval_adversarial)"
            )
    tasks: list[Task] = []
    seen = set(excluded)
    while len(tasks) < n:
        task = generator.sample_adversarial()
        if task.prompt not in seen:
            tasks.append(task)
            if distinct:
                seen.add(task.prompt)
    return tasks


def mix_in(tasks: list[Task], extra: list[Task], rng: random.Random) -> list[Task]:
    """`tasks` with `extra` inserted at seeded positions; each list keeps its own order."""
    n = len(tasks) + len(extra)
    slots = set(rng.sample(range(n), len(extra)))
    ours, theirs = iter(tasks), iter(extra)
    return [next(theirs) if i in slots else next(ours) for i in range(n)]


def _write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    write_text(path, "".join(json.dumps(row) + "\n" for row in rows))


def as_chat(row: dict[str, str]) -> dict[str, Any]:
    """A plain demo row as a conversation: the prompt is the user's turn, the response the assistant's."""
    if "prompt" not in row:
        return row  # pretraining text stays text
    messages = [{"role": "user", "content": row["prompt"]}]
    if "response" in row:
        messages.append({"role": "assistant", "content": row["response"]})
    return {"messages": messages}


def _tokenizer_texts(splits: dict[str, list[dict[str, Any]]]) -> Iterator[str]:
    for rows in splits.values():
        for row in rows:
            if "messages" in row:
                # without a chat template these rows are rendered as "role: content" lines
                yield from (f"{m['role']}: {m['content']}" for m in row["messages"])
                yield "assistant:"
            else:
                yield from row.values()


def _make_splits(
    seed: int,
    counts: dict[str, int],
    labeler: Labeler,
    families: Sequence[str],
    min_len: int,
    max_len: int,
    adversarial_rate: float = 0.0,
) -> dict[str, list[dict[str, str]]]:
    """Draw every split's rows; held-out prompts first, so no other split can contain them.

    A mixed split of n rows holds round(adversarial_rate * n) adversarial ones: the ordinary rows are the first of
    the split's own stream (with a rate of 0 the files are what they were before adversarial prompts existed).
    """

    def generator(name: str) -> TaskGenerator:
        return TaskGenerator(derive_seed(seed, name), families, min_len, max_len)

    can_red_team = any(f in ADVERSARIAL_FAMILIES for f in families)
    eval_tasks = sample_heldout(generator("eval_prompts"), counts["eval_prompts"])
    heldout = {task.prompt for task in eval_tasks}
    red_team = counts["eval_adversarial"] if can_red_team else 0
    adversarial_eval = sample_adversarial_excluding(generator("eval_adversarial"), red_team, heldout, True)
    heldout |= {task.prompt for task in adversarial_eval}

    def tasks_of(name: str) -> list[Task]:
        n = counts[name]
        n_adv = round(adversarial_rate * n) if can_red_team else 0
        ordinary = sample_excluding(generator(name), n - n_adv, heldout)
        if not n_adv:
            return ordinary
        adversarial = sample_adversarial_excluding(generator(f"{name}/adversarial"), n_adv, heldout, False)
        return mix_in(ordinary, adversarial, random.Random(derive_seed(seed, f"{name}/adversarial-slots")))

    splits: dict[str, list[dict[str, str]]] = {}
    for name in ("sft_train", "sft_val"):
        rng = random.Random(derive_seed(seed, f"{name}/demonstrations"))
        splits[name] = [{"prompt": t.prompt, "response": labeler.demonstrate(t, rng)} for t in tasks_of(name)]
    splits["rl_prompts"] = [{"prompt": t.prompt} for t in tasks_of("rl_prompts")]
    splits["eval_prompts"] = [{"prompt": t.prompt} for t in eval_tasks]
    pretrain_tasks = sample_excluding(generator("pretrain"), counts["pretrain"], heldout)
    splits["pretrain"] = [{"text": f"{t.prompt} {t.answer}"} for t in pretrain_tasks]
    splits["eval_adversarial"] = [{"prompt": t.prompt} for t in adversarial_eval]
    return splits


def write_demo_data(
    out_dir: str | Path,
    seed: int = 0,
    n_train: int = 20000,
    n_val: int = 500,
    n_rl: int = 2000,
    n_eval: int = 300,
    n_pretrain: int = 5000,
    n_eval_adversarial: int = 200,
    adversarial_rate: float = 0.1,
    labeler: Labeler | None = None,
    families: Sequence[str] = FAMILIES,
    min_len: int = 3,
    max_len: int = 8,
    row_format: Literal["plain", "chat"] = "plain",
) -> dict[str, Path]:
    """Write the demo data set into out_dir and return each file's path by name (see FILES).

    labeler: writes the demonstrations; default Labeler(seed=seed). Same arguments -> byte-identical
    files. Eval prompts (eval_prompts, eval_adversarial) never appear in any other file (the pretrain texts
    included). adversarial_rate: share of sft_train, sft_val and rl_prompts rows that are adversarial prompts
    (none when no family echoes its arguments). row_format "chat" writes the same tasks as chat conversations
    (see the module docstring).
    """
    if row_format not in ("plain", "chat"):
        raise ValueError(f"write_demo_data: row_format must be 'plain' or 'chat', got {row_format!r}")
    arguments = {
        "n_train": n_train,
        "n_val": n_val,
        "n_rl": n_rl,
        "n_eval": n_eval,
        "n_pretrain": n_pretrain,
        "n_eval_adversarial": n_eval_adversarial,
    }
    negative = {name: n for name, n in arguments.items() if n < 0}
    if negative:
        raise ValueError(f"write_demo_data: counts must be >= 0, got {negative}")
    if not 0.0 <= adversarial_rate <= 1.0:
        raise ValueError(f"write_demo_data: adversarial_rate must be in [0, 1], got {adversarial_rate}")
    counts = dict(zip(SPLITS, arguments.values(), strict=True))
    labeler = labeler if labeler is not None else Labeler(seed=seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / filename for name, filename in FILES.items()}
    # world.json marks a complete directory: drop an old one so a crash mid-rewrite cannot pass as done.
    paths["world"].unlink(missing_ok=True)

    splits: dict[str, list[dict[str, Any]]] = _make_splits(
        seed, counts, labeler, families, min_len, max_len, adversarial_rate
    )
    if row_format == "chat":
        splits = {name: [as_chat(row) for row in rows] for name, rows in splits.items()}
    for name, rows in splits.items():
        _write_jsonl(paths[name], rows)
    from lit_rlhf.demo.tokenizer import train_tokenizer  # transformers: imported when the data is written

    tokenizer = train_tokenizer(_tokenizer_texts(splits), paths["tokenizer"])
    world = {
        "format_version": FORMAT_VERSION,
        "seed": seed,
        "counts": counts,
        "families": list(families),
        "min_len": min_len,
        "max_len": max_len,
        "heldout_cap": HELDOUT_CAP,
        "adversarial_rate": adversarial_rate,
        "vocab_size": len(tokenizer),
        "labeler": labeler.settings(),
        "files": FILES,
        "row_format": row_format,
    }
    write_text(paths["world"], json.dumps(world, indent=2, sort_keys=True) + "\n")
    return paths
