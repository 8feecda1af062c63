"""Programmatic reward functions of the demo world (verifiable rewards for PPO's combined reward).

Named in a PPO config as ``lit_rlhf.demo.rewards:answer_is_correct``; stage modules never import this module.
"""

from __future__ import annotations

from lit_rlhf.demo.world import extract_answer, parse_prompt


def answer_is_correct(prompt: str, response: str) -> float:
    """1.0 when the response, filler words aside, is the task's exact answer (on an adversarial prompt: the answer
    without the banned word), else 0.0; 0.0 for a prompt outside the demo world (nothing checks out)."""
    task = parse_prompt(prompt)
    return float(task is not None and extract_answer(response) == task.answer)
