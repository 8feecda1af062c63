"""The Compare page's logic (dashboard.modeling) on two tiny stage directories, and the page itself."""

from __future__ import annotations

import importlib.machinery
import sys
import types

import pyarrow as pa
import pytest
import streamlit as st
import torch
from streamlit.testing.v1 import AppTest

from dashboard import loaders, modeling
from lit_rlhf.backbone.build import Backbone
from lit_rlhf.backbone.config import BackboneConfig, LoraSettings
from lit_rlhf.backbone.generate import SamplingConfig
from lit_rlhf.checkpoint.stage_dir import save_stage_dir
from lit_rlhf.data.rows import Comparison, read_rows
from lit_rlhf.rl.logprobs import gather_logprobs

from .helpers import REPO, write_json

GREEDY = SamplingConfig(max_new_tokens=6, do_sample=False)
PROMPT = "a b c ="


def _stage_dir(tiny_dir, out, stage: str, seed: int) -> None:
    """A gpt2 tiny base with a policy adapter nudged away from zero (a fresh LoRA adapter is a no-op)."""
    cfg = BackboneConfig(name_or_path=str(tiny_dir / "gpt2"), lora=LoraSettings(r=4, alpha=8, dropout=0.0))
    backbone = Backbone.build(cfg)
    backbone.add_adapter("policy")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in backbone.adapter_parameters("policy"):
            p.add_(0.5 * torch.randn(p.shape, generator=gen))
    save_stage_dir(out, backbone, stage=stage, step=seed)


@pytest.fixture(scope="module")
def model_root(tiny_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("model-runs")
    _stage_dir(tiny_dir, root / "sft" / "a" / "stage", "sft", seed=1)
    _stage_dir(tiny_dir, root / "ppo" / "b" / "stage", "ppo", seed=2)
    return root


@pytest.fixture(scope="module")
def models(model_root):
    a = modeling.load_model(model_root / "sft" / "a" / "stage", "sft/a")
    b = modeling.load_model(model_root / "ppo" / "b" / "stage", "ppo/b")
    return a, b


# ---- pure pieces -----------------------------------------------------------------------------------------


def test_completion_kl_is_k1_per_token():
    c = modeling.Completion("m", "x y", ["x", "y"], [-1.0, -2.0], [-1.5, -1.0])
    assert c.kl == [0.5, -1.0]
    assert c.kl_sum == -0.5
    no_ref = modeling.Completion("m", "x", ["x"], [-1.0], None)
    assert (no_ref.kl, no_ref.kl_sum) == (None, None)


def test_same_vocabulary():
    def tok(vocab):
        return types.SimpleNamespace(get_vocab=lambda: vocab)

    assert modeling.same_vocabulary(tok({"a": 0, "b": 1}), tok({"b": 1, "a": 0}))
    assert not modeling.same_vocabulary(tok({"a": 0}), tok({"a": 1}))


# ---- on tiny models --------------------------------------------------------------------------------------


def test_compare_kl_against_the_reference(models):
    a, b = models
    out_a, out_b = modeling.compare([a, b], PROMPT, GREEDY, reference=a)
    assert [c.label for c in (out_a, out_b)] == ["sft/a", "ppo/b"]
    # The reference scored against itself: identical log-probs, KL exactly zero on every token.
    assert out_a.ref_logprobs == out_a.logprobs
    assert out_a.kl == [0.0] * len(out_a.tokens)
    assert 1 <= len(out_b.tokens) == len(out_b.logprobs) == len(out_b.ref_logprobs) <= GREEDY.max_new_tokens
    assert any(abs(k) > 1e-4 for k in out_b.kl)  # the two adapters differ
    assert out_b.kl_sum == pytest.approx(sum(out_b.logprobs) - sum(out_b.ref_logprobs))


def test_reference_logprobs_match_an_independent_shifted_computation(models):
    a, b = models
    (out_b,) = modeling.compare([b], PROMPT, GREEDY, reference=a)
    prompt_ids = a.backbone.tokenizer(PROMPT, return_tensors="pt")["input_ids"]  # (1, P)
    response_ids = torch.tensor([a.backbone.tokenizer.convert_tokens_to_ids(out_b.tokens)])  # (1, R)
    ids = torch.cat([prompt_ids, response_ids], dim=1)
    with torch.no_grad(), a.backbone.use_adapter("policy"):
        logits = a.backbone(ids, torch.ones_like(ids))
    # logits[:, t] predicts ids[:, t + 1]: shift by hand, keep the response columns
    expected = gather_logprobs(logits[:, :-1], ids[:, 1:])[0, prompt_ids.shape[1] - 1 :]
    torch.testing.assert_close(torch.tensor(out_b.ref_logprobs), expected)


def test_greedy_compare_is_repeatable_and_sampling_follows_the_seed(models):
    a, b = models
    first = modeling.compare([a, b], PROMPT, GREEDY, reference=a)
    again = modeling.compare([a, b], PROMPT, GREEDY, reference=a)
    assert [c.tokens for c in first] == [c.tokens for c in again]
    sampled = SamplingConfig(max_new_tokens=8, do_sample=True, temperature=1.5)
    runs = [modeling.compare([b], PROMPT, sampled, None, seed=s)[0].tokens for s in (3, 3, 4, 5, 6)]
    assert runs[0] == runs[1] and len({tuple(r) for r in runs}) > 1


def test_a_reference_with_another_vocabulary_gives_no_kl(models):
    a, _ = models
    other = types.SimpleNamespace(
        backbone=types.SimpleNamespace(tokenizer=types.SimpleNamespace(get_vocab=dict))
    )
    (out,) = modeling.compare([a], PROMPT, GREEDY, reference=other)
    assert out.ref_logprobs is None and out.kl is None


def test_empty_prompt_is_refused(models):
    with pytest.raises(ValueError, match="prompt is empty"):
        modeling.compare(list(models), "  ", GREEDY, reference=None)


# ---- the page --------------------------------------------------------------------------------------------


class FakeRewardScorer:
    """Stands in for lit_rlhf.evaluation.reward_model.RewardScorer: the score is the response's length."""

    def __init__(self, stage_dir, trust_remote_code=False):
        self.stage_dir = stage_dir
        assert trust_remote_code is False  # the dashboard was not started with --trust-remote-code

    def score(self, prompts, responses):
        assert len(prompts) == len(responses)
        return [float(len(r)) for r in responses]


@pytest.fixture
def fake_reward(monkeypatch, model_root):
    module = types.ModuleType("lit_rlhf.evaluation.reward_model")
    module.__spec__ = importlib.machinery.ModuleSpec("lit_rlhf.evaluation.reward_model", None)
    module.RewardScorer = FakeRewardScorer
    monkeypatch.setitem(sys.modules, "lit_rlhf.evaluation.reward_model", module)
    write_json(model_root / "reward" / "rm" / "stage" / "manifest.json", {"stage": "reward", "step": 3})
    yield module
    (model_root / "reward" / "rm" / "stage" / "manifest.json").unlink()


def _texts(at: AppTest) -> list[str]:
    """The page's text lines without the notes on where each chosen model's base comes from."""
    return [t.value for t in at.text if not t.value.startswith("Note: ")]


def _compare_page(model_root, monkeypatch, labels=None) -> AppTest:
    st.cache_resource.clear()  # models and scorers cached by an earlier test must not leak into this one
    monkeypatch.setenv("LIT_RLHF_RUNS", str(model_root))
    if labels is not None:
        monkeypatch.setenv("LIT_RLHF_LABELS", str(labels))
    at = AppTest.from_file(str(REPO / "dashboard" / "app.py"), default_timeout=60)
    at.run()
    at.switch_page("pages/compare.py").run()
    return at


def test_page_generates_scores_ranks_and_saves(model_root, fake_reward, monkeypatch, tmp_path, tiny_dir):
    at = _compare_page(model_root, monkeypatch, labels=tmp_path / "labels")
    found = {d.label: d for d in loaders.find_stage_dirs(model_root)[0]}
    a, b = found["sft/a"], found["ppo/b"]
    at.multiselect[0].set_value([b, a]).run()
    at.text_area[0].set_value(PROMPT)
    at.selectbox[0].set_value(a)  # KL reference: sft/a
    at.selectbox[1].set_value(found["reward/rm"]).run()
    # A random tiny model may stop at once (an empty completion, which no comparison row may hold), and where it
    # does depends on float rounding: sample (greedy decoding would ignore the seed) and try a few seeds.
    next(t for t in at.toggle if t.label == "Sample").set_value(True)
    for seed in range(6, 16):
        at.number_input[0].set_value(seed)
        at.button(key="compare_generate").click().run()
        assert not at.exception, [e.value for e in at.exception]
        shown = _texts(at)
        if shown[3] and shown[6]:
            break
    assert shown[:2] == [f"Prompt: {PROMPT}", "KL reference: sft/a"]
    notes = [t.value for t in at.text if t.value.startswith("Note: ")]
    base = str(tiny_dir / "gpt2")  # both tiny stages are LoRA on a base folder outside them: the user is told
    assert notes == [
        f"Note: {d}: the base is the folder {base!r}, outside the stage directory."
        for d in ("ppo/b", "sft/a")
    ]
    assert shown[2] == "#1  ppo/b" and shown[5] == "#2  sft/a"
    completions = [shown[3], shown[6]]
    assert f"RM score {len(completions[0]):+.4f}" in shown[4]
    assert all(completions), "the tiny models must write something for the ranking to be valid"
    kl_frames = [
        pa.ipc.open_stream(c.proto.datasets[0].data.data).read_pandas() for c in at.get("vega_lite_chart")
    ]
    assert len(kl_frames) == 2 and (kl_frames[1]["kl"] == 0.0).all()  # sft/a against itself

    path = tmp_path / "labels" / "mine" / "comparisons.jsonl"
    at.text_input(key="compare_file").set_value("mine/comparisons.jsonl")  # relative to the labels folder
    at.number_input(key="compare_rank_0").set_value(1)
    at.number_input(key="compare_rank_1").set_value(0)
    at.button(key="compare_save").click().run()
    assert [s.value for s in at.success] == ["Saved."]
    rows, _ = read_rows(path, "comparison")
    assert rows == [Comparison(PROMPT, tuple(completions), (1, 0))]

    at.number_input(key="compare_rank_0").set_value(0)
    at.button(key="compare_save").click().run()
    assert [e.value for e in at.error] == ["Not saved: the row is not a valid comparison."]
    assert f"{path}:2: field 'ranking': all 2 responses tied" in at.code[-1].value
    assert len(read_rows(path, "comparison")[0]) == 1


def test_a_failing_reward_model_still_shows_the_completions(model_root, fake_reward, monkeypatch):
    class Broken(FakeRewardScorer):
        def score(self, prompts, responses):
            raise RuntimeError("no reward head")

    fake_reward.RewardScorer = Broken
    at = _compare_page(model_root, monkeypatch)
    found = {d.label: d for d in loaders.find_stage_dirs(model_root)[0]}
    at.multiselect[0].set_value([found["sft/a"], found["ppo/b"]])
    at.text_area[0].set_value(PROMPT)
    at.selectbox[1].set_value(found["reward/rm"]).run()
    at.button(key="compare_generate").click().run()
    shown = _texts(at)
    assert shown[2] == "RM scoring failed: RuntimeError: no reward head"
    assert shown[3] == "#1  sft/a" and "RM score" not in shown[5]


def test_page_reports_a_broken_stage_dir_without_crashing(model_root, monkeypatch, tmp_path):
    broken = model_root / "sft" / "broken" / "stage"
    write_json(broken / "manifest.json", {"stage": "sft", "step": 0})  # passes discovery, fails to load
    try:
        at = _compare_page(model_root, monkeypatch)
        found = {d.label: d for d in loaders.find_stage_dirs(model_root)[0]}
        at.multiselect[0].set_value([found["sft/broken"], found["sft/a"]]).run()
        at.text_area[0].set_value(PROMPT).run()
        at.button(key="compare_generate").click().run()
        assert not at.exception
        assert [e.value for e in at.error] == ["Generation failed."]
        assert "ManifestError" in at.code[-1].value
    finally:
        (broken / "manifest.json").unlink()


@pytest.mark.parametrize(
    ("judge", "expected"),
    [
        ("tests.test_judges:length_judge", "judge score "),
        ("no.such.module:judge", "Judge 'no.such.module:judge' failed: JudgeError"),
    ],
)
def test_the_start_up_judge_scores_each_completion_or_says_why_not(model_root, monkeypatch, judge, expected):
    """`dashboard --judge`: each completion shows the judge's score; a judge that fails leaves the completions."""
    monkeypatch.setenv("LIT_RLHF_JUDGE", judge)
    at = _compare_page(model_root, monkeypatch)
    found = {d.label: d for d in loaders.find_stage_dirs(model_root)[0]}
    at.multiselect[0].set_value([found["ppo/b"], found["sft/a"]]).run()
    at.text_area[0].set_value(PROMPT).run()
    at.button(key="compare_generate").click().run()
    assert not at.exception, [e.value for e in at.exception]
    shown = _texts(at)
    assert any(expected in line for line in shown), shown
    assert shown[0] == f"Prompt: {PROMPT}"
