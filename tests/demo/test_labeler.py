"""The programmatic labeler: literal scores, rankings with ties, comparisons, demonstration noise rates,
and Wilson win-rate intervals checked against values worked out by hand (bc, 20 digits)."""

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lit_rlhf.demo.labeler import Judgement, Labeler, WinRate, levenshtein, win_rate
from lit_rlhf.demo.world import BANNED, FILLERS, VOCABULARY, TaskGenerator, make_task

REVERSE = "reverse c a b ="  # canonical answer "b a c"


@pytest.mark.parametrize(
    ("prompt", "response", "expected"),
    [
        (REVERSE, "b a c", 1.0),
        (REVERSE, "  b  a c\n", 1.0),
        (REVERSE, "b a c done", 0.9),
        (REVERSE, "sure : b a c", 0.8),
        (REVERSE, "ok ok ok ok ok b a c", 0.7),  # filler penalty stops at 0.3
        (REVERSE, "b c", 0.4),  # one deletion of 3: 0.6 * 2/3
        (REVERSE, "c a b", 0.2),  # two substitutions of 3: 0.6 * 1/3
        (REVERSE, "sure : b c", 0.2),  # 0.4 - 0.2
        (REVERSE, "sure : c a b", 0.0),  # 0.2 - 0.2
        (REVERSE, "here : d", 0.0),  # nothing right, clipped at 0
        (REVERSE, "", 0.0),
        (REVERSE, "b a c dang", 0.0),
        (REVERSE, "dang", 0.0),
        ("sort d a c =", "a c d d done", 0.35),  # one insertion of 4: 0.6 * 3/4 - 0.1
        ("add 7 8 =", "1 5", 1.0),
        ("add 7 8 =", "1 4", 0.3),  # 0.6 * 1/2
        ("add 7 8 =", "15", 0.0),  # not digit by digit: one token, all wrong
        ("count b a l k =", "4", 1.0),
        ("count b a l k =", "5", 0.0),
    ],
)
def test_score_literal_cases(prompt, response, expected):
    assert Labeler().score(prompt, response) == pytest.approx(expected)


def test_judge_reports_every_part():
    labeler = Labeler()
    assert labeler.judge(REVERSE, "sure : b c") == Judgement(
        correct=False, similarity=pytest.approx(2 / 3), n_fillers=2, banned=False, score=pytest.approx(0.2)
    )
    assert labeler.judge(REVERSE, "here : b a c") == Judgement(True, 1.0, 2, False, pytest.approx(0.8))
    banned = labeler.judge(REVERSE, "b a dang c")
    assert (banned.banned, banned.correct, banned.score) == (True, False, 0.0)


def test_banned_word_only_counts_as_a_whole_word():
    assert Labeler().judge(REVERSE, "b a c dangling").banned is False


@pytest.mark.parametrize("prompt", ["", "hello", "reverse c a b", "add 1 2 3 ="])
def test_non_demo_prompt_raises_naming_it(prompt):
    labeler = Labeler()
    with pytest.raises(ValueError, match="not a demo prompt") as info:
        labeler.score(prompt, "a")
    assert repr(prompt) in str(info.value)
    with pytest.raises(ValueError, match="not a demo prompt"):
        labeler.exact_match(prompt, "a")


@pytest.mark.parametrize(
    ("response", "expected"),
    [("b a c", True), ("sure : b a c done", True), ("b a c dang", False), ("b c", False)],
)
def test_exact_match(response, expected):
    assert Labeler().exact_match(REVERSE, response) is expected


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [([], [], 0), (["a"], [], 1), (["a", "b", "c"], ["c", "a", "b"], 2), (["k", "i"], ["s", "i", "t"], 2)],
)
def test_levenshtein_by_hand(a, b, expected):
    assert levenshtein(a, b) == expected


def test_rank_dense_with_ties():
    responses = ["b a c", "sure : b a c", "b a c", "b c", "dang b a c", "x"]
    # scores 1.0, 0.8, 1.0, 0.4, 0.0, 0.0
    assert Labeler().rank(REVERSE, responses) == [0, 1, 0, 2, 3, 3]


def test_rank_and_compare_treat_scores_equal_to_1e6_as_ties():
    # Both are worth 0.2 on paper, but 0.6 * 5/6 - 0.3 is 0.19999999999999996 in floats while
    # 0.6 * (1 - 4/6) is 0.2: float round-off must not decide a preference.
    prompt, rounded_down, exact = "copy a b c d e f =", "sure : ok a b c d e", "a b"
    assert Labeler().rank(prompt, [rounded_down, exact, "a b c d e f"]) == [1, 1, 0]
    assert Labeler().compare(prompt, rounded_down, exact) == 0.5


def test_rank_noise_breaks_ties_reproducibly():
    responses = ["q", "w", "e", "r t", "y", "u u"]  # all wrong: equal scores
    assert Labeler().rank(REVERSE, responses) == [0] * 6
    noisy = Labeler(seed=1, rank_noise=1.0)
    ranking = noisy.rank(REVERSE, responses)
    assert sorted(ranking) == [0, 1, 2, 3, 4, 5]
    noisy.rank("sort d a c =", responses)  # another question in between changes nothing
    assert noisy.rank(REVERSE, responses) == ranking
    assert Labeler(seed=1, rank_noise=1.0).rank(REVERSE, responses) == ranking
    assert Labeler(seed=2, rank_noise=1.0).rank(REVERSE, responses) != ranking


def test_rank_noise_gives_a_repeated_response_one_rank():
    ranking = Labeler(seed=1, rank_noise=1.0).rank(REVERSE, ["q", "w", "q", "e", "w"])
    assert ranking[0] == ranking[2] and ranking[1] == ranking[4]
    assert len(set(ranking)) == 3


def test_small_rank_noise_keeps_clear_preferences():
    labeler = Labeler(seed=0, rank_noise=0.01)
    assert labeler.rank(REVERSE, ["b c", "b a c", "sure : b a c", "dang"]) == [2, 0, 1, 3]


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("b a c", "sure : b a c", 1.0),
        ("sure : b a c", "b a c", 0.0),
        ("b a c", " b a c ", 0.5),
        ("dang", "x", 0.5),
    ],
)
def test_compare(a, b, expected):
    assert Labeler().compare(REVERSE, a, b) == expected


def test_demonstrate_noise_rates_over_5000_draws():
    labeler, rng = Labeler(filler_rate=0.3, banned_rate=0.08), random.Random(0)
    tasks = TaskGenerator(0).sample_many(5000)
    demos = [labeler.demonstrate(task, rng) for task in tasks]
    with_filler = sum(any(w in FILLERS for w in d.split()) for d in demos) / 5000
    with_banned = sum(BANNED in d.split() for d in demos) / 5000
    # 5000 draws: std 0.0065 and 0.0038; tolerances are about five of them.
    assert with_filler == pytest.approx(0.3, abs=0.03)
    assert with_banned == pytest.approx(0.08, abs=0.02)
    for task, demo in zip(tasks, demos, strict=True):
        words = [w for w in demo.split() if w not in FILLERS and w != BANNED]
        assert " ".join(words) == task.answer
    habits = {tuple(w for w in d.split() if w in FILLERS) for d in demos}
    assert {("sure", ":"), ("here", ":"), ("ok",), ("done",)} <= habits


def test_clean_labeler_demonstrates_the_canonical_answer():
    labeler, rng = Labeler(filler_rate=0.0, banned_rate=0.0), random.Random(5)
    task = make_task("add", ("7", "8"))
    assert {labeler.demonstrate(task, rng) for _ in range(50)} == {"1 5"}


def test_demonstrate_is_deterministic_for_an_rng_seed():
    labeler, task = Labeler(filler_rate=0.5, banned_rate=0.5), make_task("copy", ("a", "b", "c"))
    first = [labeler.demonstrate(task, random.Random(9)) for _ in range(3)]
    assert len(set(first)) == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"filler_rate": 1.5}, "filler_rate"),
        ({"banned_rate": -0.1}, "banned_rate"),
        ({"rank_noise": -1.0}, "rank_noise"),
        ({"literal_rate": 2.0}, "literal_rate"),
    ],
)
def test_labeler_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Labeler(**kwargs)


@pytest.mark.parametrize(
    ("outcomes", "expected"),
    [
        ([1.0] * 8 + [0.0] * 2, WinRate(0.8, 0.49016247153664174, 0.94331784854562474, 10)),
        ([1.0, 0.5, 0.0, 1.0], WinRate(0.625, 0.21942652006536281, 0.90810077082098786, 4)),
        ([1.0] * 10, WinRate(1.0, 0.72246720013711080, 1.0, 10)),  # low = n / (n + z^2)
        ([0.0], WinRate(0.0, 0.0, 0.79345068562276257, 1)),  # high = z^2 / (1 + z^2)
    ],
)
def test_win_rate_wilson_interval_by_hand(outcomes, expected):
    result = win_rate(outcomes)
    assert result.n == expected.n
    assert (result.rate, result.ci_low, result.ci_high) == pytest.approx(
        (expected.rate, expected.ci_low, expected.ci_high)
    )


@pytest.mark.parametrize(
    ("outcomes", "message"), [([], "at least one"), ([1.0, 2.0], "in \\[0, 1\\]"), ([float("nan")], "in")]
)
def test_win_rate_rejects_bad_outcomes(outcomes, message):
    with pytest.raises(ValueError, match=message):
        win_rate(outcomes)


@given(st.lists(st.sampled_from([0.0, 0.5, 1.0]), min_size=1, max_size=200))
def test_win_rate_interval_contains_the_rate(outcomes):
    result = win_rate(outcomes)
    assert 0.0 <= result.ci_low <= result.rate <= result.ci_high <= 1.0


@given(seed=st.integers(0, 2**32), words=st.lists(st.sampled_from(VOCABULARY), max_size=12))
def test_scores_stay_in_unit_interval_and_canonical_answer_wins(seed, words):
    labeler, task = Labeler(), TaskGenerator(seed).sample()
    assert 0.0 <= labeler.score(task.prompt, " ".join(words)) <= 1.0
    assert labeler.score(task.prompt, task.answer) == 1.0
    assert labeler.compare(task.prompt, task.answer, " ".join(words)) in (0.5, 1.0)


@pytest.mark.parametrize(
    ("prompt", "response", "banned_word", "answer_format"),
    [
        (REVERSE, "b a c", False, False),
        (REVERSE, "sure : b a c done", False, False),  # fillers are not the answer's shape
        (REVERSE, "b a", False, True),  # a word short
        (REVERSE, "c a b", False, False),  # wrong, but well formed
        (REVERSE, "b a 3", False, True),  # a digit in a letters answer
        (REVERSE, "b dang a c", True, False),  # the banned word is its own rule, not the format's
        (REVERSE, "", False, True),
        ("count b a l k =", "4", False, False),
        ("count b a l k =", "d", False, True),
        ("add 7 8 =", "1 5 5", False, True),
        ("reverse c dang b =", "b dang c", True, False),  # the literal answer breaks only the word rule
        ("reverse c dang b =", "b c", False, False),
    ],
)
def test_rules_by_hand(prompt, response, banned_word, answer_format):
    assert Labeler().rules(prompt, response) == {"banned_word": banned_word, "answer_format": answer_format}


def test_adversarial_prompt_scores_the_rule_following_answer():
    labeler = Labeler()
    assert labeler.score("reverse c dang b =", "b c") == 1.0
    assert labeler.score("reverse c dang b =", "b dang c") == 0.0  # literal, and says the word


def test_literal_rate_on_adversarial_prompts_over_2000_draws():
    labeler, rng = Labeler(filler_rate=0.0, banned_rate=0.0, literal_rate=0.5), random.Random(1)
    gen = TaskGenerator(3)
    tasks = [gen.sample_adversarial() for _ in range(2000)]
    demos = [labeler.demonstrate(t, rng) for t in tasks]
    assert sum(d == t.literal_answer for d, t in zip(demos, tasks, strict=True)) / 2000 == pytest.approx(
        0.5, abs=0.06
    )  # std 0.011
    assert all(d in (t.answer, t.literal_answer) for d, t in zip(demos, tasks, strict=True))
    # ordinary tasks draw no literal coin: their demonstrations are what they were
    plain = TaskGenerator(4).sample_many(50)
    a = [Labeler(literal_rate=0.0).demonstrate(t, random.Random(2)) for t in plain]
    b = [Labeler(literal_rate=1.0).demonstrate(t, random.Random(2)) for t in plain]
    assert a == b


def test_demo_judge_gives_rule_labels_for_demo_prompts_only():
    from lit_rlhf.demo.judge import DemoJudge

    judge = DemoJudge()
    assert judge.rules("reverse c dang b =", "b dang c") == {"banned_word": True, "answer_format": False}
    assert judge.rules("what is love?", "dang") is None


def test_the_demo_answer_check_is_a_verifiable_reward():
    from lit_rlhf.demo.rewards import answer_is_correct

    assert answer_is_correct(REVERSE, "sure : b a c") == 1.0  # fillers are not the answer
    assert answer_is_correct(REVERSE, "b a") == 0.0
    assert answer_is_correct("reverse c dang b =", "b c") == 1.0
    assert answer_is_correct("reverse c dang b =", "b dang c") == 0.0  # the literal answer is not correct
    assert answer_is_correct("what?", "b a c") == 0.0


def test_the_gold_reward_is_the_judges_own_score():
    from lit_rlhf.demo.rewards import labeler_score

    assert labeler_score(REVERSE, "b a c") == 1.0
    assert labeler_score(REVERSE, "ok b a c") == pytest.approx(0.9)  # one filler word: -0.1
    assert labeler_score(REVERSE, "sure : b a c") == pytest.approx(0.8)  # "sure" and ":" are two
    assert labeler_score(REVERSE, "b c a") == pytest.approx(0.6 * (1 - 2 / 3))  # two of three words wrong
    assert labeler_score(REVERSE, "b dang a c") == 0.0  # the banned word
    assert labeler_score("what?", "b a c") == 0.0  # not a demo prompt: nothing to score
    for response in ("b a c", "ok b a", "c", "done done done done b a c"):
        assert labeler_score(REVERSE, response) == Labeler().score(REVERSE, response)
