"""Programmatic reward functions: loading by import path, and a function that cannot load, raises, returns NaN
or a non-number is stopped with the component's name."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from lit_rlhf.rewards import (
    CombinedReward,
    CombinedRewardConfig,
    RewardFunctionConfig,
    RewardFunctionError,
    load_reward_function,
)


def has_x(prompt: str, response: str) -> bool:
    return "x" in response.split()


def raises(prompt: str, response: str) -> float:
    raise RuntimeError("the grader crashed")


def not_a_number(prompt: str, response: str) -> float:
    return math.nan


def a_list(prompt: str, response: str) -> list:
    return [1.0, 2.0]


class WordCount:
    """A class: instantiated once with no arguments, its instances score."""

    def __call__(self, prompt: str, response: str) -> int:
        return len(response.split())


def fn(target: str, **kw) -> RewardFunctionConfig:
    return RewardFunctionConfig(target=f"tests.test_rewards:{target}", **kw)


def test_functions_load_by_import_path_and_are_called_on_the_users_turn():
    f = load_reward_function(fn("has_x", weight=2.0))
    assert (f.name, f.weight) == ("has_x", 2.0)
    assert f("a b =", "a x") == 1.0 and f((("system", "s"), ("user", "q")), "a") == 0.0
    assert load_reward_function(fn("WordCount", name="words"))("p", "a b c") == 3.0


@pytest.mark.parametrize(
    ("target", "why"),
    [
        (
            "tests.test_rewards:missing",
            "reward function 'missing' \\(tests.test_rewards:missing\\): cannot import",
        ),
        ("no.such.module:f", "reward function 'f' \\(no.such.module:f\\): cannot import"),
        ("no_colon", "expected 'package.module:callable'"),
        ("math:pi", "reward function 'pi' \\(math:pi\\): float is not callable"),
    ],
)
def test_a_function_that_cannot_load_is_named(target, why):
    with pytest.raises(RewardFunctionError, match=why):
        CombinedReward(CombinedRewardConfig(functions=[RewardFunctionConfig(target=target)]))


@pytest.mark.parametrize(
    ("target", "why"),
    [
        (
            "raises",
            "reward function 'raises' \\(tests.test_rewards:raises\\) raised RuntimeError: the grader crashed",
        ),
        ("not_a_number", "reward function 'not_a_number' .* returned nan for prompt 'a b =': not finite"),
        ("a_list", "reward function 'a_list' .* returned list \\[1.0, 2.0\\] .*expected a finite number"),
    ],
)
def test_a_function_that_raises_or_returns_nan_or_a_list_stops_the_probe_with_its_name(target, why):
    combined = CombinedReward(CombinedRewardConfig(functions=[fn(target)]))
    with pytest.raises(RewardFunctionError, match=why):
        combined.probe(["a b ="])


def test_components_and_weights_by_hand():
    """Rule weights bind to the reward stage's rule heads; length and functions are components of their own."""
    cfg = CombinedRewardConfig(
        rule_weights={"long": 0.5}, length_coef=0.1, length_target=2, functions=[fn("has_x", weight=2.0)]
    )
    combined = CombinedReward(cfg)
    combined.bind(["has_x_rule", "long"])
    assert combined.weights == {"preference": 1.0, "rule_long": 0.5, "length": 1.0, "has_x": 2.0}
    out = combined.components(
        ["p", "q"],
        ["a x", "b"],
        preference=torch.tensor([1.0, -1.0]),
        rule_logits=torch.tensor([[5.0, 0.0], [5.0, 2.0]]),
        lengths=torch.tensor([4.0, 1.0]),
    )
    # rule_long: -softplus(0) = -0.6931472, -softplus(2) = -2.1269280; length: -0.1 * (4 - 2), 0
    assert_close(out["rule_long"], torch.tensor([-0.6931472, -2.1269280]))
    assert_close(out["length"], torch.tensor([-0.2, 0.0]))
    assert_close(out["has_x"], torch.tensor([1.0, 0.0]))
    everything = CombinedReward(CombinedRewardConfig())
    everything.bind(["a", "b"])  # no rule_weights: every rule head, weight 1
    assert everything.weights == {"preference": 1.0, "rule_a": 1.0, "rule_b": 1.0}
    gold = CombinedReward(CombinedRewardConfig(preference_weight=0.0, functions=[fn("has_x", weight=5.0)]))
    gold.bind([])  # the reward model's score computed and logged, not optimised
    assert gold.weights == {"preference": 0.0, "has_x": 5.0}


def test_bad_settings_are_refused_with_every_problem_named():
    with pytest.raises(ValueError, match="length_coef must be >= 0, got -1.*length_target must be >= 0"):
        CombinedReward(CombinedRewardConfig(length_coef=-1.0, length_target=-2))
    with pytest.raises(ValueError, match="preference_weight must be a finite number, got nan"):
        CombinedReward(CombinedRewardConfig(preference_weight=float("nan")))
    with pytest.raises(
        ValueError, match=r"rule_weights names \['tone'\], which the reward stage has no rule head"
    ):
        CombinedReward(CombinedRewardConfig(rule_weights={"tone": 1.0})).bind(["banned_word"])
    with pytest.raises(RewardFunctionError, match=r"\['has_x'\] used twice"):
        CombinedReward(CombinedRewardConfig(functions=[fn("has_x"), fn("has_x")]))
