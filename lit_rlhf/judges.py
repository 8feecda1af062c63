"""Judges: programs that play the human labeler (score a response, rank K of them, compare two).

A judge is any object with ``score(prompt, response, reference=None) -> float | None`` in [0, 1] (None: this
item cannot be judged, e.g. no reference answer); it may also have ``details(...) -> dict[str, float]`` (extra
per-item figures such as ``exact_match``, averaged in reports), ``rank(prompt, responses, reference=None)`` and
``rules(prompt, response, reference=None) -> dict[str, bool | None] | None`` (Sparrow-style rule labels: True where
the response breaks the rule, None where unsure).
`prompt` is the text of the user's turn (a raw prompt string, or the last user message of a chat prompt) and
`response` the assistant's reply text, cut at the end-of-turn token.

Judges are named in config as ``package.module:callable`` (a class or a factory called with no arguments, or a
plain function ``f(prompt, response) -> float``), or by a short name: ``demo`` (the demo world's labeler),
``exact_match`` (the response equals the reference answer a row carries). Comparison collection, SFT samples,
PPO evaluation, `evaluate` and the dashboard take a judge; stage modules never import the demo world.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from lit_rlhf.data.formatting import PromptSpec, prompt_for_judge

TIE_DECIMALS = 6  # scores equal to 1e-6 are a tie: float noise must not decide a ranking
ALIASES = {
    "demo": "lit_rlhf.demo.judge:DemoJudge",
    "exact_match": "lit_rlhf.judges:ExactMatchJudge",
}


class JudgeError(ValueError):
    """A judge that cannot be loaded or returned something unusable; the message names the judge."""


@runtime_checkable
class Judge(Protocol):
    def score(self, prompt: str, response: str, reference: str | None = None) -> float | None: ...


class ExactMatchJudge:
    """1.0 when the response equals the reference answer (whitespace-normalised), else 0.0; None without one.

    Prompt rows carry the reference as ``reference`` (or ``response``: a demonstrations file works as prompts),
    so task accuracy on a user's own data needs no code.

    Args:
        case_sensitive: Compare case as well.
    """

    def __init__(self, case_sensitive: bool = True) -> None:
        self.case_sensitive = case_sensitive

    def _norm(self, text: str) -> str:
        text = " ".join(text.split())
        return text if self.case_sensitive else text.lower()

    def score(self, prompt: str, response: str, reference: str | None = None) -> float | None:
        if reference is None:
            return None
        return 1.0 if self._norm(response) == self._norm(reference) else 0.0

    def details(self, prompt: str, response: str, reference: str | None = None) -> dict[str, float]:
        score = self.score(prompt, response, reference)
        return {} if score is None else {"exact_match": score}


class _FunctionJudge:
    """A plain function ``f(prompt, response) -> float`` as a judge."""

    def __init__(self, fn: Callable[..., Any], name: str) -> None:
        self.fn, self.name = fn, name

    def score(self, prompt: str, response: str, reference: str | None = None) -> float | None:
        return self.fn(prompt, response)


def load_judge(spec: str | None, options: dict[str, Any] | None = None) -> Any:
    """The judge `spec` names (``none``/None: no judge). Raises JudgeError naming `spec` when it cannot load.

    `options` are keyword arguments for a judge class or factory (e.g. ``{"rank_noise": 0.1}`` for ``demo``).
    """
    if spec is None or spec == "none":
        return None
    target = ALIASES.get(spec, spec)
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise JudgeError(
            f"judge {spec!r}: expected 'package.module:callable' or one of {sorted(ALIASES)} (or 'none')"
        )
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise JudgeError(f"judge {spec!r}: cannot import {target}: {e}") from e
    options = options or {}
    if isinstance(obj, type):
        try:
            obj = obj(**options)
        except TypeError as e:
            raise JudgeError(f"judge {spec!r}: {target} does not take {sorted(options)}: {e}") from e
    elif callable(obj) and not hasattr(obj, "score"):
        # a factory returns a judge; a scoring function takes (prompt, response)
        try:
            made = obj(**options)
        except TypeError:
            if options:
                raise JudgeError(f"judge {spec!r}: {target} takes no options {sorted(options)}") from None
            return _FunctionJudge(obj, spec)
        obj = made
    if not hasattr(obj, "score"):
        raise JudgeError(f"judge {spec!r}: {target} gave {type(obj).__name__}, which has no score() method")
    return obj


def _checked(judge: Any, value: Any, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise JudgeError(
            f"judge {type(judge).__name__}: {what} returned {value!r}, expected a number in [0, 1]"
        )
    if not 0.0 <= float(value) <= 1.0:
        raise JudgeError(f"judge {type(judge).__name__}: {what} returned {value}, outside [0, 1]")
    return float(value)


def judge_item(
    judge: Any, prompt: PromptSpec, response: str, reference: str | None = None
) -> dict[str, float]:
    """``{"score": s, **details}`` for one response, or ``{}`` when the judge cannot judge it."""
    text = prompt_for_judge(prompt)
    score = _checked(judge, judge.score(text, response, reference), "score()")
    if score is None:
        return {}
    out = {"score": score}
    if hasattr(judge, "details"):
        for k, v in judge.details(text, response, reference).items():
            out[k] = float(v)
    return out


def judge_rank(
    judge: Any, prompt: PromptSpec, responses: Sequence[str], reference: str | None = None
) -> list[int] | None:
    """ranking[i] = dense rank of responses[i] (0 = best, ties share a rank); None when they cannot be judged."""
    text = prompt_for_judge(prompt)
    if hasattr(judge, "rank"):
        ranking = judge.rank(text, list(responses), reference)
        return None if ranking is None else list(ranking)
    scores = [_checked(judge, judge.score(text, r, reference), "score()") for r in responses]
    if any(s is None for s in scores):
        return None
    rounded = [round(s, TIE_DECIMALS) for s in scores]
    levels = sorted(set(rounded), reverse=True)
    return [levels.index(r) for r in rounded]


def judge_rules(
    judge: Any, prompt: PromptSpec, response: str, reference: str | None = None
) -> dict[str, bool | None] | None:
    """The judge's rule labels of one response (True = broken, False = followed, None = unsure); None when it cannot
    judge the item. Raises JudgeError naming the judge when it has no ``rules()`` or returns something else."""
    if not hasattr(judge, "rules"):
        raise JudgeError(f"judge {type(judge).__name__}: has no rules() method, so it cannot label rules")
    labels = judge.rules(prompt_for_judge(prompt), response, reference)
    if labels is None:
        return None
    if not isinstance(labels, dict) or not all(
        isinstance(k, str) and (v is None or isinstance(v, bool)) for k, v in labels.items()
    ):
        raise JudgeError(
            f"judge {type(judge).__name__}: rules() returned {labels!r}, expected a dict of rule name -> "
            "true/false/null"
        )
    return dict(labels)


def compare_scores(a: float, b: float) -> float:
    """1.0 if a > b, 0.5 on a tie (to 1e-6), 0.0 otherwise: one win-rate outcome."""
    a, b = round(a, TIE_DECIMALS), round(b, TIE_DECIMALS)
    if a == b:
        return 0.5
    return 1.0 if a > b else 0.0
