"""Comparison collection (InstructGPT step 2's data loop): sample K responses per prompt, have a judge rank them.

A judge (the demo labeler, or one of your own) plays the human here; with ``rules_out`` it also labels every
distinct sample against its rules (Sparrow's rule-violation data). Without a judge the K samples of each prompt
are written unranked (``{"prompt" | "messages", "responses"}`` rows) for people to rank; users with their own
human rankings bring rows in the comparison format.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from lit_rlhf.backbone.generate import SamplingConfig, generate
from lit_rlhf.data.io import write_jsonl
from lit_rlhf.data.rows import prompt_json, read_rows
from lit_rlhf.judges import judge_rank, judge_rules, load_judge


@dataclass
class CollectReport:
    """What a collection run produced."""

    prompts: int
    written: int
    all_tied: int  # prompts whose K responses the judge ranked all equal: no comparison, not written
    empty_responses: int  # responses that were empty (immediate stop): left out of their row, counted here
    tied_pair_share: float  # share of tied pairs among the written rows
    out: str
    ranked: bool = True  # False: no judge, the rows hold unranked samples
    rule_rows: int = 0  # rule-label rows written to rules_out
    rules_out: str | None = None

    def summary(self) -> str:
        text = self._comparisons()
        if self.rules_out is not None:
            text += f"; {self.rules_out}: {self.rule_rows} rule-labeled responses"
        return text

    def _comparisons(self) -> str:
        if not self.ranked:
            return (
                f"{self.out}: {self.written} prompts with unranked samples (no judge; rank them, e.g. in the "
                f"dashboard), {self.empty_responses} empty responses left out"
            )
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
    judge: str | None = None,
    rules_out: str | Path | None = None,
) -> CollectReport:
    """Sample `k` responses per prompt from the stage directory `ckpt` and write judge-ranked comparisons.

    Args:
        k: responses per prompt (InstructGPT used 4 to 9).
        sampling: generation settings (default: temperature 1, 24 new tokens).
        batch_size: prompts per generate call (each repeated k times).
        limit: use at most this many prompts.
        rank_noise: judge noise (humans disagree), passed to the judge; 0 = deterministic.
        judge: ranks the samples (``demo``, ``package.module:callable``); None writes them unranked.
        rules_out: also write one rule-label row per distinct non-empty sample of each prompt, labeled by the
            judge's ``rules()`` (Sparrow's rule data); needs a judge that has one.
    """
    import torch

    from lit_rlhf.checkpoint.stage_dir import load_stage_dir

    if not 2 <= k <= 16:
        raise ValueError(f"k must be in [2, 16], got {k}")
    sampling = sampling or SamplingConfig(max_new_tokens=24, do_sample=True, temperature=1.0)
    if not sampling.do_sample:
        raise ValueError(
            "comparison collection needs sampling (do_sample=True): greedy gives K equal responses"
        )
    ranker = load_judge(judge, {"seed": seed, "rank_noise": rank_noise} if rank_noise else None)
    if ranker is None and rank_noise:
        raise ValueError("rank_noise needs a judge (e.g. judge='demo')")
    if rules_out is not None and (ranker is None or not hasattr(ranker, "rules")):
        raise ValueError(f"rules_out needs a judge with a rules() method; {judge!r} has none")
    rows, _ = read_rows(prompts_path, "prompt", limit=limit)
    backbone, _ = load_stage_dir(ckpt)
    backbone.eval()
    torch.manual_seed(seed)
    random.seed(seed)
    written, all_tied, empty, tied, total = [], 0, 0, 0, 0
    rule_rows: list[dict] = []
    for i in range(0, len(rows), batch_size):
        batch = rows[i : i + batch_size]
        prompts = [r.prompt for r in batch for _ in range(k)]
        gen = generate(backbone.model, backbone.text_format, prompts, sampling)
        for j, row in enumerate(batch):
            # the row format has no empty strings; an empty response is left out of its row and counted
            responses = [t for t in gen.texts[j * k : (j + 1) * k] if t.strip()]
            empty += k - len(responses)
            if rules_out is not None:
                rule_rows += _rule_rows(ranker, row, responses)
            if ranker is None:
                if responses:
                    written.append({**prompt_json(row.prompt), "responses": responses})
                continue
            ranking = (
                judge_rank(ranker, row.prompt, responses, row.reference) if len(responses) >= 2 else None
            )
            if ranking is None and len(responses) >= 2:
                raise ValueError(
                    f"{row.source}: field 'prompt': the judge {judge!r} cannot rank responses to it"
                )
            if ranking is None or len(set(ranking)) < 2:
                all_tied += 1
                continue
            n = len(responses)
            tied += sum(ranking[a] == ranking[b] for a in range(n) for b in range(a + 1, n))
            total += n * (n - 1) // 2
            written.append({**prompt_json(row.prompt), "responses": responses, "ranking": ranking})
    if not written:
        raise ValueError(f"{prompts_path}: every prompt's {k} responses tied; raise the temperature or k")
    write_jsonl(out, written)
    if rules_out is not None:
        if not rule_rows:
            raise ValueError(f"{prompts_path}: the judge {judge!r} labeled no rule of any sample")
        write_jsonl(rules_out, rule_rows)
    return CollectReport(
        len(rows),
        len(written),
        all_tied,
        empty,
        tied / total if total else 0.0,
        str(out),
        ranker is not None,
        len(rule_rows),
        None if rules_out is None else str(rules_out),
    )


def _rule_rows(judge, row, responses: list[str]) -> list[dict]:
    """One rule-label row per distinct response (a repeated sample teaches nothing new); items the judge cannot
    label, or labels only as unsure, are left out."""
    out = []
    for response in dict.fromkeys(responses):
        labels = judge_rules(judge, row.prompt, response, row.reference)
        if labels and any(v is not None for v in labels.values()):
            out.append({**prompt_json(row.prompt), "response": response, "rules": labels})
    return out
