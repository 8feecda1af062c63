"""Programmatic reward functions of the demo world (verifiable rewards for PPO's combined reward).

Named in a PPO config as ``lit_rlhf.demo.rewards:answer_is_correct`` (or ``:labeler_score``); stage modules never
import this module.
"""

from __future__ import annotations

from lit_rlhf.demo.judge import DemoJudge
from lit_rlhf.demo.world import extract_answer, parse_prompt

# The judge the evaluation uses (`--judge demo`), so the gold reward is its score by construction.
_GOLD = DemoJudge()


def answer_is_correct(prompt: str, response: str) -> float:
    """1.0 when the response, filler words aside, is the task's exact answer (on an adversarial prompt: the answer
    without the banned word), else 0.0; 0.0 for a prompt outside the demo world (nothing checks out)."""
    task = parse_prompt(prompt)
    return float(task is not None and extract_answer(response) == task.answer)


def labeler_score(prompt: str, response: str) -> float:
    """The demo labeler's own score in [0, 1] (the judge score of the evaluation); 0.0 outside the demo world.

    The gold reward: with ``reward.preference_weight: 0`` PPO optimises the judge itself, which measures what the
    same PPO settings reach with a perfect reward model, so a win rate short of an aim can be put down to the reward
    model or to the optimisation (Gao et al.'s gold reward model, here a program).
    """
    score = _GOLD.score(prompt, response)
    return 0.0 if score is None else score
