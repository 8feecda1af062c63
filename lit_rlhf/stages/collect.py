"""Comparison collection (InstructGPT step 2's data loop): sample K responses per prompt, have the labeler rank them.

The demo labeler plays the human here; users with their own human rankings bring rows in the same format.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from lit_rlhf.backbone.generate import SamplingConfig, generate
from lit_rlhf.data.io import write_jsonl
from lit_rlhf.data.rows import read_rows


@dataclass
class CollectReport:
    """What a collection run produced."""

    prompts: int
    written: int
    all_tied: int  # prompts whose K responses the labeler ranked all equal: no comparison, not written
    empty_responses: int  # responses that were empty (immediate EOS): left out of their row, counted here
    tied_pair_share: float  # share of tied pairs among the written rows
    out: str

    def summary(self) -> str:
        return (
            f"{self.out}: {self.written} comparisons from {self.prompts} prompts "
            f"({self.all_tied} dropped: every response tied; {self.empty_responses} empty responses left out), "
            f"{100 * self.tied_pair_share:.1f}% of pairs tied"
        )


def collect_comparisons(
    ckpt: str | Path,
    prompts_path: str | Path,
    out: str | Path,
    k: int = 4,
    sampling: SamplingConfig | None = None,
    batch_size: int = 16,
    limit: int | None = None,
    seed: int = 0,
    rank_noise: float = 0.0,
) -> CollectReport:
    """Sample `k` responses per prompt from the stage directory `ckpt` and write labeler-ranked comparisons.

    Args:
        k: responses per prompt (InstructGPT used 4 to 9).
        sampling: generation settings (default: temperature 1, 24 new tokens).
        batch_size: prompts per generate call (each repeated k times).
        limit: use at most this many prompts.
        rank_noise: labeler noise (humans disagree); 0 = deterministic.
    """
    import torch

    from lit_rlhf.checkpoint.stage_dir import load_stage_dir
    from lit_rlhf.demo.labeler import Labeler
    from lit_rlhf.demo.world import parse_prompt

    if not 2 <= k <= 16:
        raise ValueError(f"k must be in [2, 16], got {k}")
    sampling = sampling or SamplingConfig(max_new_tokens=24, do_sample=True, temperature=1.0)
    if not sampling.do_sample:
        raise ValueError(
            "comparison collection needs sampling (do_sample=True): greedy gives K equal responses"
        )
    rows, _ = read_rows(prompts_path, "prompt", limit=limit)
    for row in rows:
        if parse_prompt(row.prompt) is None:
            raise ValueError(
                f"{row.source}: field 'prompt': not a demo-world prompt; the demo labeler cannot rank it"
            )
    backbone, _ = load_stage_dir(ckpt)
    backbone.eval()
    labeler = Labeler(seed=seed, rank_noise=rank_noise)
    torch.manual_seed(seed)
    random.seed(seed)
    written, all_tied, empty, tied, total = [], 0, 0, 0, 0
    for i in range(0, len(rows), batch_size):
        prompts = [r.prompt for r in rows[i : i + batch_size]]
        gen = generate(backbone.model, backbone.tokenizer, [p for p in prompts for _ in range(k)], sampling)
        for j, prompt in enumerate(prompts):
            # the row format has no empty strings; an empty response is left out of its row and counted
            responses = [t for t in gen.texts[j * k : (j + 1) * k] if t.strip()]
            empty += k - len(responses)
            ranking = labeler.rank(prompt, responses) if len(responses) >= 2 else [0] * len(responses)
            if len(set(ranking)) < 2:
                all_tied += 1
                continue
            n = len(responses)
            tied += sum(ranking[a] == ranking[b] for a in range(n) for b in range(a + 1, n))
            total += n * (n - 1) // 2
            written.append({"prompt": prompt, "responses": responses, "ranking": ranking})
    if not written:
        raise ValueError(f"{prompts_path}: every prompt's {k} responses tied; raise the temperature or k")
    write_jsonl(out, written)
    return CollectReport(len(rows), len(written), all_tied, empty, tied / total if total else 0.0, str(out))
