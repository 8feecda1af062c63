"""What a PPO samples.jsonl row carries beyond its text, so the dashboard's Samples page can filter and read it.

Lives here: the response's tokens with each token's KL to the reference (coloured on the Samples page as on the
Compare page), the judge's view of a response (its score and details, e.g. exact_match, banned, filler), and the
rows of the fixed held-out prompts written at each evaluation (mode ``eval``, and the SFT model's completion of
the same prompts once, mode ``eval_sft``), which the Samples page compares across steps.
Must not live here: models, files and torch (tensors come in and are read with ``tolist``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lit_rlhf.data.formatting import prompt_to_json
from lit_rlhf.judges import judge_item


def token_fields(tokenizer: Any, response_ids: Any, response_mask: Any, token_kl: Any) -> dict[str, list]:
    """``tokens`` (the response tokens as the tokenizer spells them, the stop token included) and ``token_kl``
    (log pi - log pi_ref of each, nats, 6 decimals) of one response.

    Args:
        response_ids: (R,) sampled ids. response_mask: (R,) 1 on the response's tokens. token_kl: (R,) per-token KL.
    """
    keep = [i for i, m in enumerate(response_mask.tolist()) if m]
    ids, kl = response_ids.tolist(), token_kl.tolist()
    return {
        "tokens": tokenizer.convert_ids_to_tokens([ids[i] for i in keep]),
        "token_kl": [round(float(kl[i]), 6) for i in keep],
    }


def judge_fields(judge: Any, prompt: Any, response: str, reference: str | None = None) -> dict[str, float]:
    """The judge's ``score`` and details of one response (empty without a judge or when it cannot judge it)."""
    return {} if judge is None else judge_item(judge, prompt, response, reference)


def eval_rows(
    step: int,
    mode: str,
    prompts: Sequence[Any],
    references: Sequence[str | None],
    texts: Sequence[str],
    rm_scores: Sequence[float] | None = None,
    kls: Sequence[float] | None = None,
    judge: Any = None,
) -> list[dict[str, Any]]:
    """samples.jsonl rows for held-out prompts: the same prompts at every evaluation, so their completions can be
    compared across steps and with the SFT model's (`mode` ``eval_sft``)."""
    rows = []
    for i, (prompt, ref, text) in enumerate(zip(prompts, references, texts, strict=False)):
        row: dict[str, Any] = {
            "step": step,
            "prompt": prompt_to_json(prompt),
            "completion": text,
            "mode": mode,
        }
        if rm_scores is not None:
            row["rm_score"] = float(rm_scores[i])
        if kls is not None:
            row["kl"] = float(kls[i])
        rows.append({**row, **judge_fields(judge, prompt, text, ref)})
    return rows
