"""The demo language: hand-checked answers per family, generator determinism and ranges, parse round trips."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lit_rlhf.demo.world import (
    FAMILIES,
    LETTERS,
    VOCABULARY,
    Task,
    TaskGenerator,
    extract_answer,
    make_task,
    parse_prompt,
    prompt_space_size,
)


@pytest.mark.parametrize(
    ("prompt", "family", "args", "answer"),
    [
        ("reverse c a b =", "reverse", ("c", "a", "b"), "b a c"),
        ("sort d a c =", "sort", ("d", "a", "c"), "a c d"),
        ("sort l a l =", "sort", ("l", "a", "l"), "a l l"),
        ("count b a l k =", "count", ("b", "a", "l", "k"), "4"),
        ("count a a a a a a a a a a =", "count", ("a",) * 10, "1 0"),
        ("copy a b =", "copy", ("a", "b"), "a b"),
        ("add 3 4 =", "add", ("3", "4"), "7"),
        ("add 7 8 =", "add", ("7", "8"), "1 5"),
        ("add 0 0 =", "add", ("0", "0"), "0"),
        ("add 9 9 =", "add", ("9", "9"), "1 8"),
    ],
)
def test_parse_prompt_recovers_task_and_answer(prompt, family, args, answer):
    assert parse_prompt(prompt) == Task(family=family, args=args, prompt=prompt, answer=answer)


def test_make_task_builds_the_prompt_string():
    assert make_task("reverse", ["c", "a", "b"]) == Task(
        "reverse", ("c", "a", "b"), "reverse c a b =", "b a c"
    )


@pytest.mark.parametrize(
    ("family", "args"),
    [("add", ("3",)), ("add", ("1", "2", "3")), ("sort", ()), ("reverse", ("m",)), ("fly", ("a",))],
)
def test_make_task_rejects_arguments_that_do_not_fit(family, args):
    with pytest.raises(ValueError, match=family):
        make_task(family, args)


@pytest.mark.parametrize(
    "junk",
    [
        "",
        "=",
        "reverse =",
        "reverse c a b",
        "reverse c a b = b a c",
        "reverse C A B =",
        "reverse m n =",
        "add 3 =",
        "add 3 4 5 =",
        "add 12 3 =",
        "add a b =",
        "fly a b =",
        "= reverse c a b",
        "reverse c a b ==",
        "révérse c a b =",
        "reverse ｃ =",
        "\x00\n\t",
        "x" * 1_000_000,
        "reverse " + "a " * 200_000 + "b",
    ],
)
def test_parse_prompt_returns_none_for_junk(junk):
    assert parse_prompt(junk) is None


def test_parse_prompt_normalises_whitespace():
    task = parse_prompt("  reverse  c a\tb =\n")
    assert task is not None
    assert task.prompt == "reverse c a b ="
    assert task.answer == "b a c"


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("sure : b a c done", "b a c"),
        ("here :   b a c ", "b a c"),
        ("ok ok ok", ""),
        ("b dang c", "b dang c"),
        ("1 5\n", "1 5"),
    ],
)
def test_extract_answer_drops_fillers_and_normalises_spaces(response, expected):
    assert extract_answer(response) == expected


def test_generator_is_deterministic_per_seed():
    assert TaskGenerator(7).sample_many(200) == TaskGenerator(7).sample_many(200)
    assert TaskGenerator(7).sample_many(200) != TaskGenerator(8).sample_many(200)


def test_generator_stream_continues_across_calls():
    generator = TaskGenerator(3)
    first, second = generator.sample(), generator.sample_many(4)
    assert [first, *second] == TaskGenerator(3).sample_many(5)


def test_generator_covers_families_and_lengths_with_replacement():
    tasks = TaskGenerator(0).sample_many(2000)
    assert {t.family for t in tasks} == set(FAMILIES)
    letter_tasks = [t for t in tasks if t.family != "add"]
    assert {len(t.args) for t in letter_tasks} == {3, 4, 5, 6, 7, 8}
    assert all(set(t.args) <= set(LETTERS) for t in letter_tasks)
    assert any(len(set(t.args)) < len(t.args) for t in letter_tasks)  # drawn with replacement
    assert all(len(t.args) == 2 for t in tasks if t.family == "add")


def test_generator_respects_family_and_length_parameters():
    tasks = TaskGenerator(1, families=("sort", "add"), min_len=2, max_len=2).sample_many(300)
    assert {t.family for t in tasks} == {"sort", "add"}
    assert {len(t.args) for t in tasks} == {2}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"families": ()}, "families is empty"),
        ({"families": ("reverse", "fly")}, "fly"),
        ({"min_len": 0}, "min_len"),
        ({"min_len": 5, "max_len": 4}, "min_len=5, max_len=4"),
    ],
)
def test_generator_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TaskGenerator(0, **kwargs)


def test_prompt_space_size_by_hand():
    assert prompt_space_size("add", 3, 8) == 100
    assert prompt_space_size("copy", 1, 2) == 12 + 144
    with pytest.raises(ValueError, match="fly"):
        prompt_space_size("fly", 1, 2)


@given(seed=st.integers(0, 2**32), n=st.integers(1, 20))
def test_generated_prompts_round_trip(seed, n):
    for task in TaskGenerator(seed).sample_many(n):
        assert parse_prompt(task.prompt) == task


@given(st.text())
def test_parse_prompt_never_raises_on_arbitrary_text(text):
    task = parse_prompt(text)
    assert task is None or task.prompt == " ".join(text.split())


@given(st.lists(st.sampled_from([*VOCABULARY, "x", "", "=="]), max_size=12).map(" ".join))
def test_parse_prompt_on_vocabulary_soup_is_none_or_a_fixed_point(text):
    task = parse_prompt(text)
    assert task is None or parse_prompt(task.prompt) == task


@pytest.mark.parametrize(
    ("prompt", "answer", "literal"),
    [
        ("reverse c dang b =", "b c", "b dang c"),
        ("copy dang a =", "a", "dang a"),
        ("sort k dang a =", "a k", "a dang k"),  # the literal sort puts the word where it sorts
    ],
)
def test_adversarial_prompts_parse_and_their_answer_leaves_the_banned_word_out(prompt, answer, literal):
    task = parse_prompt(prompt)
    assert task is not None and task.adversarial
    assert (task.answer, task.literal_answer) == (answer, literal)


@pytest.mark.parametrize("prompt", ["count a dang b =", "add dang 3 =", "reverse dang =", "copy dang dang ="])
def test_the_banned_word_is_an_argument_only_of_echoing_families_and_beside_a_letter(prompt):
    assert parse_prompt(prompt) is None


def test_sample_adversarial_draws_echoing_families_with_one_banned_word():
    from lit_rlhf.demo.world import BANNED

    gen = TaskGenerator(7, min_len=3, max_len=5)
    tasks = [gen.sample_adversarial() for _ in range(300)]
    assert {t.family for t in tasks} == {"reverse", "sort", "copy"}
    assert all(t.args.count(BANNED) == 1 and 3 <= len(t.args) <= 5 for t in tasks)
    assert {t.args.index(BANNED) for t in tasks} == {0, 1, 2, 3, 4}
    assert all(parse_prompt(t.prompt) == t for t in tasks)
    with pytest.raises(ValueError, match="no adversarial family"):
        TaskGenerator(0, families=("add", "count")).sample_adversarial()
