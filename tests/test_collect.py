"""collect-comparisons: a judge ranks the K samples; without one they are written unranked for people to rank."""

from __future__ import annotations

import json

import pytest

from lit_rlhf.backbone.build import Backbone
from lit_rlhf.backbone.config import BackboneConfig
from lit_rlhf.backbone.generate import SamplingConfig
from lit_rlhf.checkpoint.stage_dir import save_stage_dir
from lit_rlhf.collect import collect_comparisons
from lit_rlhf.data.io import write_jsonl

SAMPLING = SamplingConfig(max_new_tokens=3, do_sample=True, temperature=1.5)


@pytest.fixture
def sft(tiny_dir, tmp_path):
    save_stage_dir(
        tmp_path / "sft", Backbone.build(BackboneConfig(name_or_path=str(tiny_dir / "gpt2"))), stage="sft"
    )
    return tmp_path / "sft"


def test_without_a_judge_the_samples_are_written_unranked(sft, tmp_path):
    write_jsonl(
        tmp_path / "p.jsonl",
        [{"prompt": "a b ="}, {"messages": [{"role": "user", "content": "c d ="}]}],
    )
    report = collect_comparisons(sft, tmp_path / "p.jsonl", tmp_path / "out.jsonl", k=3, sampling=SAMPLING)
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert not report.ranked and "unranked samples (no judge" in report.summary()
    assert [set(r) for r in rows] == [{"prompt", "responses"}, {"messages", "responses"}]
    assert rows[1]["messages"] == [{"role": "user", "content": "c d ="}]
    assert all(1 <= len(r["responses"]) <= 3 for r in rows)


def test_a_judge_ranks_them_and_one_that_cannot_names_the_row(sft, tmp_path):
    write_jsonl(
        tmp_path / "p.jsonl", [{"prompt": f"{a} {b} =", "reference": a} for a in "abcd" for b in "efgh"]
    )
    report = collect_comparisons(
        sft, tmp_path / "p.jsonl", tmp_path / "out.jsonl", k=4, sampling=SAMPLING, judge="exact_match"
    )
    rows = (
        [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
        if report.written
        else []
    )
    assert report.ranked and all(
        len(set(r["ranking"])) == 2 for r in rows
    )  # exact match: right (0) or wrong (1)
    with pytest.raises(
        ValueError, match=r"p.jsonl:1: field 'prompt': the judge 'demo' cannot rank responses to it"
    ):
        collect_comparisons(
            sft, tmp_path / "p.jsonl", tmp_path / "o2.jsonl", k=4, sampling=SAMPLING, judge="demo"
        )


class LengthRulesJudge:
    """Scores shorter responses higher and labels two rules: `long` (more than one word), `mystery` (unsure)."""

    def score(self, prompt: str, response: str, reference: str | None = None) -> float:
        return 1.0 / len(response.split())

    def rules(self, prompt: str, response: str, reference: str | None = None) -> dict:
        return {"long": len(response.split()) > 1, "mystery": None}


def test_rules_out_labels_every_distinct_sample_with_the_judges_rules(sft, tmp_path):
    from lit_rlhf.data.rows import read_rows

    write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"{a} {b} ="} for a in "abcd" for b in "efgh"])
    report = collect_comparisons(
        sft,
        tmp_path / "p.jsonl",
        tmp_path / "out.jsonl",
        k=4,
        sampling=SAMPLING,
        judge="tests.test_collect:LengthRulesJudge",
        rules_out=tmp_path / "rules.jsonl",
    )
    rows, _ = read_rows(tmp_path / "rules.jsonl", "rule")  # valid rule rows
    assert report.rule_rows == len(rows) > 16 and "rule-labeled responses" in report.summary()
    assert all(r.rules == {"long": len(r.response.split()) > 1, "mystery": None} for r in rows)
    pairs = [(r.prompt, r.response) for r in rows]
    assert len(pairs) == len(set(pairs))  # a repeated sample is labeled once
    with pytest.raises(ValueError, match="rules_out needs a judge with a rules\\(\\) method; 'exact_match'"):
        collect_comparisons(
            sft,
            tmp_path / "p.jsonl",
            tmp_path / "o.jsonl",
            judge="exact_match",
            rules_out=tmp_path / "r.jsonl",
        )


def test_a_judge_returning_bad_rule_labels_is_named():
    from lit_rlhf.judges import JudgeError, judge_rules

    class Bad:
        def rules(self, prompt, response, reference=None):
            return {"long": 1}

    with pytest.raises(JudgeError, match=r"judge Bad: rules\(\) returned \{'long': 1\}"):
        judge_rules(Bad(), "p", "r")
    assert judge_rules(LengthRulesJudge(), (("user", "q"),), "a b") == {"long": True, "mystery": None}
