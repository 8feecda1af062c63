"""The demo labeler as a judge (``judge: demo``): scores, ranks and details for demo-world prompts only.

A prompt that is not a demo-world instruction gets None ("cannot judge"), never a made-up score.
"""

from __future__ import annotations

from collections.abc import Sequence

from lit_rlhf.demo.labeler import Labeler
from lit_rlhf.demo.world import parse_prompt


class DemoJudge:
    """Judge of the demo world: the labeler's score in [0, 1], and which of its rules a response broke.

    Args:
        seed: Seeds the ranking noise.
        rank_noise: Std of the Gaussian noise added to scores before ranking (humans disagree; 0 = consistent).
    """

    def __init__(self, seed: int = 0, rank_noise: float = 0.0) -> None:
        self.labeler = Labeler(seed=seed, rank_noise=rank_noise)

    def rules(self, prompt: str, response: str, reference: str | None = None) -> dict[str, bool] | None:
        """Sparrow-style rule labels: ``banned_word`` and ``answer_format``, True where the response breaks it."""
        return None if parse_prompt(prompt) is None else self.labeler.rules(prompt, response)

    def score(self, prompt: str, response: str, reference: str | None = None) -> float | None:
        return None if parse_prompt(prompt) is None else self.labeler.score(prompt, response)

    def details(self, prompt: str, response: str, reference: str | None = None) -> dict[str, float]:
        """exact_match (the task's answer), banned (the banned word), filler (any filler word): 0 or 1 each; and
        exact_match_<family> (reverse, sort, ...), present only for that family's prompts, so its mean over a
        report is the family's accuracy."""
        task = parse_prompt(prompt)
        if task is None:
            return {}
        j = self.labeler.judge(prompt, response)
        return {
            "exact_match": float(j.correct),
            "banned": float(j.banned),
            "filler": float(j.n_fillers > 0),
            f"exact_match_{task.family}": float(j.correct),
        }

    def rank(self, prompt: str, responses: Sequence[str], reference: str | None = None) -> list[int] | None:
        return None if parse_prompt(prompt) is None else self.labeler.rank(prompt, responses)
