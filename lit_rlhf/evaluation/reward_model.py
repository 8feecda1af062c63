"""The reward model as a scorer: a reward stage directory loaded once, (prompt, response) texts in, rewards out.

Lives here: `score_texts` (a backbone's reward head over texts, the stored bias applied, inputs built exactly as the
reward stage built them in training) and `RewardScorer` (a reward stage directory loaded for scoring). Every reader
of a reward model uses them: the reward stage's own bias, `evaluate`'s RM score, PPO-free rounds, the dashboard's
Compare page and bench/. Must not live here: training (lit_rlhf.stages.reward).
"""

from __future__ import annotations

from pathlib import Path

import torch

from lit_rlhf.backbone.build import REWARD
from lit_rlhf.data.comparisons import reward_inputs
from lit_rlhf.data.formatting import PromptSpec


@torch.no_grad()
def score_texts(
    backbone,
    head: str,
    adapter: str | None,
    bias: float,
    prompts: list[PromptSpec],
    responses: list[str],
    batch_size: int = 64,
    max_length: int | None = None,
) -> list[float]:
    """Reward of each (prompt, response): head `head` read through `adapter`, plus the stored bias.

    Inputs are built by `reward_inputs` with the backbone's own prompt format: the sequence the reward model
    was trained on.
    """
    out: list[float] = []
    was_training = backbone.training
    backbone.eval()
    device = next(backbone.parameters()).device
    try:
        with backbone.use_adapter(adapter):
            for i in range(0, len(prompts), batch_size):
                ids, mask = reward_inputs(
                    backbone.text_format,
                    prompts[i : i + batch_size],
                    responses[i : i + batch_size],
                    max_length,
                )
                s = backbone.score(head, ids.to(device), mask.to(device))
                out.extend((s + bias).tolist())
    finally:
        backbone.train(was_training)
    return out


class RewardScorer:
    """Load a reward stage directory once and score (prompt, response) texts, bias applied."""

    def __init__(
        self,
        stage_dir: str | Path,
        device: str = "cpu",
        head: str = REWARD,
        *,
        trust_remote_code: bool = False,
    ) -> None:
        from lit_rlhf.checkpoint.stage_dir import load_stage_dir

        self.backbone, self.manifest = load_stage_dir(
            stage_dir, device=device, trust_remote_code=trust_remote_code
        )
        if head not in self.manifest.heads:
            raise ValueError(
                f"{stage_dir}: no head {head!r} (stage {self.manifest.stage!r}); is it a reward stage directory?"
            )
        info = self.manifest.heads[head]
        self.head, self.adapter, self.bias = head, info.get("adapter"), float(info.get("bias", 0.0))
        self.max_length = self.manifest.extra.get("max_length")

    def score(self, prompts: list[PromptSpec], responses: list[str], batch_size: int = 64) -> list[float]:
        """Reward of each (prompt, response), built and cut as the reward model's training built them."""
        return score_texts(
            self.backbone, self.head, self.adapter, self.bias, prompts, responses, batch_size, self.max_length
        )
