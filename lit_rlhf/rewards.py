"""The combined PPO reward's components: settings, programmatic reward functions, and gathering the components.

    reward = w_p * preference score + sum_r w_r * log P(rule r followed) + length penalty + sum_f w_f * f(prompt, response)

Lives here: `CombinedRewardConfig` (what PPO's ``reward`` setting holds), loading and checking programmatic reward
functions named ``package.module:callable`` (verifiable rewards: a unit test passes, an answer checks out, a format
is valid), and `CombinedReward`, which turns one rollout's texts, preference scores and rule logits into named
components. Must not live here: the arithmetic (lit_rlhf.rl.combined), models (lit_rlhf.stages.roles).
A bad function (it cannot be imported, raises, returns NaN or a non-number) stops the run with a
`RewardFunctionError` naming the component: at construction for an import, before the first rollout for the
rest (`CombinedReward.probe`), and at any later rollout where it misbehaves.
"""

from __future__ import annotations

import importlib
import math
import numbers
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from lit_rlhf.data.formatting import PromptSpec, prompt_for_judge
from lit_rlhf.rl.combined import length_penalty, rule_follow_terms
from lit_rlhf.safe_io import clip

PREFERENCE, LENGTH = "preference", "length"
RULE_PREFIX = "rule_"  # rule r's component is rule_<r>
COMPONENT_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # becomes a metric name: ppo/reward/<name>


class RewardFunctionError(ValueError):
    """A programmatic reward function that cannot be used; the message names the component and its target."""


@dataclass
class RewardFunctionConfig:
    """A programmatic reward function (a verifiable reward) in the combined PPO reward.

    Attributes:
        target: ``package.module:callable``: a function ``f(prompt, response) -> float`` (a bool counts as 0 or 1;
            `prompt` is the user's turn, `response` the reply text), or a class called with no arguments whose
            instances are such functions.
        weight: Its weight w_f in the combined reward (0: computed and logged, not optimised).
        name: The component's name, logged as ``ppo/reward/<name>``; default: the callable's name.
    """

    target: str
    weight: float = 1.0
    name: str | None = None


@dataclass
class CombinedRewardConfig:
    """What PPO optimises: the reward model's preference score and the terms besides it.

    Attributes:
        preference_weight: The weight of the reward model's score (1 by default). 0 computes and logs it
            without optimising it: PPO then optimises the other terms alone (e.g. a programmatic reward, to
            measure what PPO reaches with a perfect reward where the judge is a program, as in the demo world).
        rule_weights: Rule name -> w_r for the reward stage's rule heads (component ``rule_<name>``, the term
            ``w_r * log P(rule followed)``); null = every rule the reward stage has, weight 1; ``{}`` = none.
        length_coef: Length penalty ``-length_coef * max(0, tokens - length_target)`` (0 = none).
        length_target: Response tokens that cost nothing.
        functions: Programmatic reward functions, each ``w_f * f(prompt, response)``.
    """

    preference_weight: float = 1.0
    rule_weights: dict[str, float] | None = None
    length_coef: float = 0.0
    length_target: int = 0
    functions: list[RewardFunctionConfig] = field(default_factory=list)

    def problems(self) -> list[str]:
        """Every invalid setting (empty when all are valid); functions are checked when they load."""
        out = []
        if not math.isfinite(self.preference_weight):
            out.append(f"preference_weight must be a finite number, got {self.preference_weight}")
        if self.length_coef < 0:
            out.append(f"length_coef must be >= 0, got {self.length_coef}")
        if self.length_target < 0:
            out.append(f"length_target must be >= 0, got {self.length_target}")
        for name, w in (self.rule_weights or {}).items():
            if not math.isfinite(w):
                out.append(f"rule_weights[{name!r}] must be a finite number, got {w}")
        for f in self.functions:
            if not math.isfinite(f.weight):
                out.append(f"functions: the weight of {f.target!r} must be a finite number, got {f.weight}")
        return out


@dataclass(frozen=True)
class RewardFunction:
    """A loaded programmatic reward function: its component name, import path, weight and the callable."""

    name: str
    target: str
    weight: float
    fn: Callable[..., Any]

    def where(self) -> str:
        return f"reward function {self.name!r} ({self.target})"

    def __call__(self, prompt: PromptSpec, response: str) -> float:
        """f(prompt text, response) as a float; RewardFunctionError naming the component on any misbehaviour."""
        text = prompt_for_judge(prompt)
        try:
            value = self.fn(text, response)
        except Exception as e:
            raise RewardFunctionError(
                f"{self.where()} raised {type(e).__name__}: {clip(str(e))} (prompt {clip(repr(text))})"
            ) from e
        return checked_value(self, value, text)


def checked_value(fn: RewardFunction, value: Any, prompt: str) -> float:
    """`value` as a float when it is a finite real number or a bool; else RewardFunctionError naming `fn`."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, numbers.Real) and not isinstance(value, complex):
        value = float(value)
        if math.isfinite(value):
            return value
        raise RewardFunctionError(
            f"{fn.where()} returned {value} for prompt {clip(repr(prompt))}: not finite"
        )
    raise RewardFunctionError(
        f"{fn.where()} returned {type(value).__name__} {clip(repr(value))} for prompt {clip(repr(prompt))}: "
        "expected a finite number (or a bool)"
    )


def load_reward_function(cfg: RewardFunctionConfig) -> RewardFunction:
    """Import `cfg.target`; a class is instantiated with no arguments. RewardFunctionError names what failed."""
    module_name, sep, attr = cfg.target.partition(":")
    name = cfg.name or attr or cfg.target
    where = f"reward function {name!r} ({cfg.target})"
    if not sep or not module_name or not attr:
        raise RewardFunctionError(f"{where}: expected 'package.module:callable'")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise RewardFunctionError(f"{where}: cannot import it: {type(e).__name__}: {e}") from e
    if isinstance(obj, type):
        try:
            obj = obj()
        except Exception as e:
            raise RewardFunctionError(f"{where}: {attr}() failed: {type(e).__name__}: {e}") from e
    if not callable(obj):
        raise RewardFunctionError(f"{where}: {type(obj).__name__} is not callable")
    if not COMPONENT_NAME.fullmatch(name):
        raise RewardFunctionError(f"{where}: a component name is 1-64 letters, digits, '_', '-' or '.'")
    return RewardFunction(name, cfg.target, float(cfg.weight), obj)


class CombinedReward:
    """The components of one rollout's combined reward, by name, with their weights.

    Args:
        cfg: The combined-reward settings (PPO's ``reward``).
    """

    def __init__(self, cfg: CombinedRewardConfig | None = None) -> None:
        self.cfg = cfg or CombinedRewardConfig()
        if self.cfg.problems():
            raise ValueError("PPOModule.reward: " + "; ".join(self.cfg.problems()))
        self.functions = [load_reward_function(f) for f in self.cfg.functions]
        self.weights: dict[str, float] = {PREFERENCE: float(self.cfg.preference_weight)}
        self.rules: list[str] = []  # the reward stage's rule heads, in their output order
        self.rule_weights: dict[str, float] = {}
        names = [PREFERENCE, LENGTH, *(f.name for f in self.functions)]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise RewardFunctionError(
                f"reward component names must differ: {repeated} used twice (set name:)"
            )

    def bind(self, rule_names: Sequence[str]) -> None:
        """Fix the components once the reward stage's rule heads are known; refuses weights for rules it lacks."""
        self.rules = list(rule_names)
        wanted = self.cfg.rule_weights
        if wanted is None:
            wanted = dict.fromkeys(self.rules, 1.0)
        unknown = sorted(set(wanted) - set(self.rules))
        if unknown:
            raise ValueError(
                f"PPOModule.reward.rule_weights names {unknown}, which the reward stage has no rule head for "
                f"(it has {self.rules or 'none'}; train them with data.init_args.rules_train_path)"
            )
        self.rule_weights = dict(wanted)
        rules = {RULE_PREFIX + r: w for r, w in self.rule_weights.items()}
        self.weights = {PREFERENCE: float(self.cfg.preference_weight), **rules}
        if self.cfg.length_coef > 0:
            self.weights[LENGTH] = 1.0  # the coefficient is the weight
        self.weights.update({f.name: f.weight for f in self.functions})

    def probe(self, prompts: Sequence[PromptSpec]) -> None:
        """Call every function on a few prompts (an empty response and the prompt's own text as responses) so a
        function that raises, returns NaN or a non-number stops the run before the first rollout."""
        for fn in self.functions:
            for prompt in prompts:
                for response in ("", prompt_for_judge(prompt)):
                    fn(prompt, response)

    def components(
        self,
        prompts: Sequence[PromptSpec],
        responses: Sequence[str],
        preference: Tensor,
        rule_logits: Tensor | None,
        lengths: Tensor,
    ) -> dict[str, Tensor]:
        """name -> ``(B,)`` raw component values, in the order of `weights`.

        Args:
            preference: ``(B,)`` the reward model's score (bias applied).
            rule_logits: ``(B, R)`` the rule heads' violation logits in `rules` order, or None without rule heads.
            lengths: ``(B,)`` response tokens.
        """
        out = {PREFERENCE: preference.float()}
        if self.rule_weights:
            follow = rule_follow_terms(rule_logits.float())  # (B, R)
            for r in self.rule_weights:
                out[RULE_PREFIX + r] = follow[:, self.rules.index(r)]
        if LENGTH in self.weights:
            out[LENGTH] = length_penalty(lengths, self.cfg.length_coef, self.cfg.length_target).to(
                preference.device
            )
        for fn in self.functions:
            values = [fn(p, r) for p, r in zip(prompts, responses, strict=True)]
            out[fn.name] = torch.tensor(values, dtype=torch.float32, device=preference.device)
        return out
