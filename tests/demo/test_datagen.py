"""The demo data set on disk: exact file set, row formats, held-out eval prompts, byte-identical reruns."""

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from lit_rlhf.demo.datagen import sample_heldout, write_demo_data
from lit_rlhf.demo.labeler import Labeler
from lit_rlhf.demo.world import BANNED, FILLERS, TaskGenerator, parse_prompt

SMALL = {"n_train": 400, "n_val": 50, "n_rl": 100, "n_eval": 120, "n_pretrain": 100, "n_eval_adversarial": 40}
EXPECTED_FILES = [
    "eval_adversarial.jsonl",
    "eval_prompts.jsonl",
    "pretrain.jsonl",
    "rl_prompts.jsonl",
    "sft_train.jsonl",
    "sft_val.jsonl",
    "tokenizer",
    "tokenizer/tokenizer.json",
    "tokenizer/tokenizer_config.json",
    "world.json",
]


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _tree(root: Path) -> dict[str, bytes | None]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes() if p.is_file() else None
        for p in sorted(root.rglob("*"))
    }


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("demo")
    return out_dir, write_demo_data(out_dir, seed=3, **SMALL)


def test_writes_exactly_the_expected_files(data):
    out_dir, paths = data
    assert sorted(_tree(out_dir)) == EXPECTED_FILES
    assert set(paths) == {
        "sft_train",
        "sft_val",
        "rl_prompts",
        "eval_prompts",
        "pretrain",
        "eval_adversarial",
        "tokenizer",
        "world",
    }
    assert all(path.exists() and path.parent == out_dir for path in paths.values())


def test_row_formats_and_counts(data):
    _, paths = data
    expected = {
        "sft_train": ({"prompt", "response"}, 400),
        "sft_val": ({"prompt", "response"}, 50),
        "rl_prompts": ({"prompt"}, 100),
        "eval_prompts": ({"prompt"}, 120),
        "pretrain": ({"text"}, 100),
        "eval_adversarial": ({"prompt"}, 40),
    }
    for name, (keys, count) in expected.items():
        rows = _read(paths[name])
        assert len(rows) == count, name
        assert all(set(row) == keys and all(isinstance(v, str) for v in row.values()) for row in rows), name


def test_every_prompt_parses_and_demonstrations_are_noisy_answers(data):
    _, paths = data
    for name in ("sft_train", "sft_val", "rl_prompts", "eval_prompts", "eval_adversarial"):
        assert all(parse_prompt(row["prompt"]) is not None for row in _read(paths[name])), name
    demos = _read(paths["sft_train"])
    for row in demos:
        words = [w for w in row["response"].split() if w not in FILLERS and w != BANNED]
        assert " ".join(words) == parse_prompt(row["prompt"]).answer
    assert any(BANNED in row["response"].split() for row in demos)
    assert any(row["response"] == parse_prompt(row["prompt"]).answer for row in demos)


def test_pretrain_texts_are_correct_worked_examples(data):
    _, paths = data
    for row in _read(paths["pretrain"]):
        prompt, answer = row["text"].split(" = ")
        assert parse_prompt(prompt + " =").answer == answer


def test_eval_prompts_are_unique_and_appear_nowhere_else(data):
    _, paths = data
    eval_prompts = [row["prompt"] for row in _read(paths["eval_prompts"])]
    red_team = [row["prompt"] for row in _read(paths["eval_adversarial"])]
    assert len(set(eval_prompts)) == len(eval_prompts) and len(set(red_team)) == len(red_team)
    others = {row["prompt"] for name in ("sft_train", "sft_val", "rl_prompts") for row in _read(paths[name])}
    others |= {row["text"].split(" = ")[0] + " =" for row in _read(paths["pretrain"])}
    assert others.isdisjoint(eval_prompts) and others.isdisjoint(red_team)
    assert set(eval_prompts).isdisjoint(red_team)
    # `add` has 100 prompts: at most 20% of them may be held out.
    assert sum(p.startswith("add ") for p in eval_prompts) <= 20


def test_world_json_describes_the_run(data):
    _, paths = data
    world = json.loads(paths["world"].read_text())
    assert world["seed"] == 3
    assert world["counts"] == {
        "sft_train": 400,
        "sft_val": 50,
        "rl_prompts": 100,
        "eval_prompts": 120,
        "pretrain": 100,
        "eval_adversarial": 40,
    }
    assert world["families"] == ["reverse", "sort", "count", "copy", "add"]
    assert world["labeler"] == {
        "seed": 3,
        "filler_rate": 0.3,
        "banned_rate": 0.08,
        "rank_noise": 0.0,
        "literal_rate": 0.5,
    }
    assert (world["format_version"], world["adversarial_rate"]) == (2, 0.1)
    tok = AutoTokenizer.from_pretrained(paths["tokenizer"])
    assert world["vocab_size"] == len(tok) == 38


def test_same_seed_gives_byte_identical_files(data, tmp_path):
    out_dir, _ = data
    write_demo_data(tmp_path, seed=3, **SMALL)
    assert _tree(tmp_path) == _tree(out_dir)


def test_other_seed_or_labeler_changes_the_data(data, tmp_path):
    out_dir, paths = data
    write_demo_data(tmp_path / "seed", seed=4, **SMALL)
    assert (tmp_path / "seed" / "sft_train.jsonl").read_bytes() != paths["sft_train"].read_bytes()
    clean_labeler = Labeler(filler_rate=0.0, banned_rate=0.0, literal_rate=0.0)
    write_demo_data(tmp_path / "clean", seed=3, labeler=clean_labeler, **SMALL)
    clean = _read(tmp_path / "clean" / "sft_train.jsonl")
    assert all(row["response"] == parse_prompt(row["prompt"]).answer for row in clean)
    assert [row["prompt"] for row in clean] == [row["prompt"] for row in _read(paths["sft_train"])]


def test_changing_one_count_leaves_the_other_splits_alone(data, tmp_path):
    _, paths = data
    new = write_demo_data(tmp_path, seed=3, **{**SMALL, "n_train": 10})
    for name in ("sft_val", "rl_prompts", "eval_prompts", "pretrain", "eval_adversarial"):
        assert new[name].read_bytes() == paths[name].read_bytes(), name


def test_heldout_sampling_respects_the_cap():
    assert len(sample_heldout(TaskGenerator(0, families=("add",)), 20)) == 20
    with pytest.raises(ValueError, match="cap allows 20"):
        sample_heldout(TaskGenerator(0, families=("add",)), 21)


def test_too_many_held_out_adversarial_prompts_are_refused(tmp_path):
    # copy with 2 arguments: 12 letters x 2 positions = 24 adversarial prompts, 20% of them may be held out
    with pytest.raises(ValueError, match="cap allows 4"):
        write_demo_data(tmp_path, families=("copy",), min_len=2, max_len=2, n_eval=4, n_eval_adversarial=5)


def test_negative_count_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="'n_rl': -1"):
        write_demo_data(tmp_path, n_rl=-1)


def test_family_and_length_settings_reach_every_split(tmp_path):
    counts = {"n_train": 30, "n_val": 5, "n_rl": 5, "n_eval": 28, "n_pretrain": 5, "n_eval_adversarial": 4}
    paths = write_demo_data(tmp_path, families=("copy",), min_len=2, max_len=2, **counts)
    prompts = [
        row["prompt"] for name in ("sft_train", "rl_prompts", "eval_prompts") for row in _read(paths[name])
    ]
    assert all(prompt.startswith("copy ") and len(prompt.split()) == 4 for prompt in prompts)
    world = json.loads(paths["world"].read_text())
    assert (world["families"], world["min_len"], world["max_len"]) == (["copy"], 2, 2)


def test_chat_format_writes_the_same_tasks_as_conversations(data, tmp_path):
    """demo-data --format chat: demonstrations and prompts become messages rows of the same tasks; a judge sees
    the user's turn, and the demo tokenizer covers the plain chat rendering (no unknown tokens)."""
    from lit_rlhf.data.formatting import TextFormat
    from lit_rlhf.data.rows import read_rows
    from lit_rlhf.judges import judge_item, load_judge

    chat = write_demo_data(tmp_path / "chat", seed=3, row_format="chat", **SMALL)
    plain = data[1]
    for name in ("sft_train", "sft_val"):
        rows, _ = read_rows(chat[name], "demonstration")
        want = _read(plain[name])
        assert [(r.prompt_spec, r.answer) for r in rows] == [
            ((("user", w["prompt"]),), w["response"]) for w in want
        ]
    for name in ("rl_prompts", "eval_prompts"):
        rows, _ = read_rows(chat[name], "prompt")
        assert [r.prompt for r in rows] == [(("user", w["prompt"]),) for w in _read(plain[name])]
    assert chat["pretrain"].read_text() == plain["pretrain"].read_text()
    assert json.loads(chat["world"].read_text())["row_format"] == "chat"
    fmt = TextFormat(AutoTokenizer.from_pretrained(str(chat["tokenizer"])))
    rows, _ = read_rows(chat["sft_train"], "demonstration")
    ids = [i for r in rows[:50] for i in sum(fmt.sequence(r.prompt_spec, r.answer), [])]
    assert fmt.tokenizer.unk_token_id not in ids
    prompt = rows[0].prompt_spec
    assert judge_item(load_judge("demo"), prompt, rows[0].answer)["score"] == Labeler().score(
        prompt[0][1], rows[0].answer
    )


def test_adversarial_prompts_are_mixed_into_training_and_held_out_sets(data):
    """A tenth of sft_train/sft_val/rl_prompts try to draw the banned word out; the literal-minded demonstrator
    says it in about half of their demonstrations (literal_rate 0.5), and every demonstration minus the banned
    word and fillers is the rule-following answer."""
    _, paths = data
    for name, n in (("sft_train", 400), ("sft_val", 50), ("rl_prompts", 100)):
        tasks = [parse_prompt(row["prompt"]) for row in _read(paths[name])]
        assert sum(t.adversarial for t in tasks) == round(0.1 * n), name
    assert all(parse_prompt(row["prompt"]).adversarial for row in _read(paths["eval_adversarial"]))
    assert not any(parse_prompt(row["prompt"]).adversarial for row in _read(paths["eval_prompts"]))
    red = [row for row in _read(paths["sft_train"]) if parse_prompt(row["prompt"]).adversarial]
    said = sum(BANNED in row["response"].split() for row in red)
    # 40 rows: literal 0.5, plus the 8% stray habit on the rest; binomial std ~3.2
    assert 10 <= said <= 32
    assert all(parse_prompt(row["prompt"]).family in ("reverse", "sort", "copy") for row in red)


def test_no_adversarial_rate_gives_the_files_of_before(tmp_path):
    """adversarial_rate 0 draws exactly the ordinary rows: the adversarial streams are separate."""
    counts = {"n_train": 60, "n_val": 10, "n_rl": 20, "n_eval": 10, "n_pretrain": 10}
    none = write_demo_data(tmp_path / "none", seed=1, adversarial_rate=0.0, **counts)
    some = write_demo_data(tmp_path / "some", seed=1, adversarial_rate=0.5, **counts)
    for name in ("rl_prompts", "sft_train"):
        plain = [row["prompt"] for row in _read(none[name])]
        mixed = [row["prompt"] for row in _read(some[name]) if not parse_prompt(row["prompt"]).adversarial]
        assert mixed == plain[: len(mixed)] and len(mixed) == len(plain) // 2, name
    assert not any(parse_prompt(row["prompt"]).adversarial for row in _read(none["sft_train"]))
