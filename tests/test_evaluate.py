"""`main.py evaluate`: pure metric functions by hand, baseline/RM resolution, exact SFT-vs-SFT tie, report files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lit_rlhf.backbone.build import Backbone
from lit_rlhf.backbone.config import BackboneConfig, LoraSettings
from lit_rlhf.backbone.generate import Generation
from lit_rlhf.checkpoint.manifest import Manifest
from lit_rlhf.checkpoint.stage_dir import load_stage_dir, save_stage_dir
from lit_rlhf.cli import main as cli
from lit_rlhf.data.io import write_jsonl
from lit_rlhf.evaluation.command import (
    EvalError,
    EvalSettings,
    check_policy_stage,
    checkpoint_metrics,
    evaluate_checkpoints,
    read_stage,
    resolve_rm,
    resolve_sft,
    response_lengths,
    sample,
)
from lit_rlhf.evaluation.metrics import judge_metrics, kl_k1_per_sequence, mean_or_none, weighted_mean
from lit_rlhf.evaluation.report import METRICS, render_markdown, short_label, write_report
from lit_rlhf.judges import ExactMatchJudge, load_judge

LORA = LoraSettings(r=4, alpha=8, dropout=0.0)


# ---- pure metrics by hand -------------------------------------------------------------------------------
def test_kl_k1_sums_log_ratio_over_the_response_mask_only():
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-0.25, -0.25, -0.75]])
    ref = torch.tensor([[-1.5, -1.0, -9.0], [-0.25, -0.75, -0.75]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    # row 0: 0.5 + (-1.0), the masked 8.5 left out; row 1: 0 + 0.5 + 0
    assert kl_k1_per_sequence(logp, ref, mask) == [-0.5, 0.5]


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.floats(-20, 0, allow_nan=False), min_size=6, max_size=6),
    st.lists(st.floats(-20, 0, allow_nan=False), min_size=6, max_size=6),
    st.lists(st.sampled_from([0.0, 1.0]), min_size=6, max_size=6),
)
def test_kl_k1_is_zero_against_itself_and_antisymmetric(a, b, m):
    a, b, m = (torch.tensor(x).view(2, 3) for x in (a, b, m))
    assert kl_k1_per_sequence(a, a, m) == [0.0, 0.0]
    assert kl_k1_per_sequence(a, b, m) == [-x for x in kl_k1_per_sequence(b, a, m)]


def test_judge_metrics_by_hand():
    prompts = ["reverse c a b =", "add 7 8 ="]
    ours = ["b a c", "dang"]  # exact answer (1.0); the banned word (0.0)
    sft = ["b a c", "1 5"]  # exact answer twice (1.0, 1.0)
    m = judge_metrics(load_judge("demo"), prompts, ours, baseline=sft)
    assert m["judge_score"] == 0.5 and m["judged"] == 2
    assert (m["exact_match"], m["banned"], m["filler"]) == (0.5, 0.5, 0.0)
    assert (m["exact_match_reverse"], m["exact_match_add"]) == (1.0, 0.0)  # accuracy per task family
    assert m["win_rate_vs_sft"] == 0.25  # a tie (0.5) and a loss (0) over 2 prompts
    # Wilson interval for p = 0.25, n = 2, z = 1.95996: centre 0.414398, half-width 0.387721
    assert m["win_rate_ci_low"] == pytest.approx(0.026677342)
    assert m["win_rate_ci_high"] == pytest.approx(0.802132544)


def test_exact_match_judge_uses_row_references_and_skips_rows_without_one():
    prompts = [(("user", "capital of France?"),), "2 + 2 =", "no reference"]
    m = judge_metrics(
        ExactMatchJudge(), prompts, ["Paris", " 5 ", "x"], ["Paris", "4", None], baseline=["Rome", "5", "x"]
    )
    assert m["judged"] == 2 and m["judge_score"] == 0.5 and m["exact_match"] == 0.5
    assert (
        m["win_rate_vs_sft"] == 0.75
    )  # a win (Paris vs Rome) and a tie (both wrong) over the 2 judged prompts


def test_response_lengths_count_mask_tokens():
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    g = Generation(
        ["", ""], torch.zeros(2, 2), torch.ones(2, 2), torch.zeros(2, 3), mask, torch.ones(2), ["", ""]
    )
    assert response_lengths([g, g]) == [2, 1, 2, 1]


def test_means():
    assert mean_or_none([1.0, 2.0]) == 1.5
    assert mean_or_none([]) is None and mean_or_none(None) is None
    assert mean_or_none([1.0, float("inf")]) is None
    assert weighted_mean([2.0, 4.0], [1, 3]) == 3.5
    with pytest.raises(ValueError):
        weighted_mean([1.0], [0])


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.floats(-5, 5), st.integers(1, 50)), min_size=1, max_size=8))
def test_weighted_mean_lies_between_the_values(pairs):
    values, weights = zip(*pairs, strict=True)
    assert min(values) - 1e-9 <= weighted_mean(values, weights) <= max(values) + 1e-9


def test_checkpoint_metrics_has_every_key_and_nulls_what_was_not_measured():
    row = checkpoint_metrics(None, None, [1.0, 3.0], float("nan"), [2, 4, 6])
    assert list(row) == list(METRICS)
    assert row["kl"] == 2.0 and row["mean_length"] == 4.0
    assert all(row[k] is None for k in ("judge_score", "win_rate_vs_sft", "rm_score", "pretrain_loss"))


# ---- resolving the baseline and the reward model --------------------------------------------------------
def _manifest(stage: str, parent: str | None = None, reward_from: str | None = None) -> Manifest:
    extra = {"reward_from": reward_from} if reward_from else {}
    return Manifest(stage=stage, base={"kind": "pretrained"}, backbone={}, parent=parent, extra=extra)


def test_resolve_sft_prefers_flag_then_sft_ckpt_then_ppo_parent():
    ppo = _manifest("ppo", parent="runs/sft/a/stage", reward_from="runs/reward/a/stage")
    assert resolve_sft({"p": ppo}, None) == "runs/sft/a/stage"
    assert resolve_sft({"p": ppo, "s": _manifest("sft")}, None) == "s"
    assert resolve_sft({"p": ppo}, "mine") == "mine"
    with pytest.raises(EvalError, match="pass --sft"):
        resolve_sft({"p": _manifest("ppo")}, None)


def test_resolve_rm_from_flag_or_ppo_manifest():
    ppo = _manifest("ppo", parent="x", reward_from="runs/reward/a/stage")
    assert resolve_rm({"s": _manifest("sft"), "p": ppo}, None) == "runs/reward/a/stage"
    assert resolve_rm({"p": ppo}, "rm2") == "rm2"
    assert resolve_rm({"s": _manifest("sft")}, None) is None


def test_reward_stage_is_not_a_policy():
    with pytest.raises(EvalError, match=r"runs/rm: --ckpt takes an sft or ppo .* 'reward'; pass .* as --rm"):
        check_policy_stage("runs/rm", _manifest("reward"), "--ckpt")


def test_run_directory_gets_a_hint(tmp_path):
    (tmp_path / "stage").mkdir()
    (tmp_path / "stage" / "manifest.json").write_text("{}")
    with pytest.raises(EvalError, match="did you mean .*stage"):
        read_stage(str(tmp_path))


def test_invalid_settings_are_reported_together(tmp_path):
    s = EvalSettings(prompts="p.jsonl", limit=0, temperature=-1.0)
    with pytest.raises(EvalError, match=r"--limit must be >= 1.*--temperature must be >= 0"):
        evaluate_checkpoints(["x"], s)


# ---- the report, rendered ---------------------------------------------------------------------------------
def _row(**kw) -> dict:
    return {"stage": "ppo", "step": 7, **dict.fromkeys(METRICS), **kw}


def test_render_markdown_table_rows():
    report = {
        "created": "2026-01-01T00:00:00Z",
        "prompts": {"path": "eval.jsonl", "count": 2},
        "settings": {"seed": 1234},
        "notes": ["rm_score is null: no --rm"],
        "checkpoints": {
            "runs/ppo/a/stage": _row(
                judge_score=0.75, win_rate_vs_sft=0.5, win_rate_ci_low=0.1, win_rate_ci_high=0.9, kl=1.5
            ),
            "runs/sft/a/stage": _row(stage="sft", step=0, exact_match=0.25),
        },
    }
    lines = render_markdown(report).splitlines()
    assert lines[2].startswith(
        "| checkpoint | stage | step | judge_score | win_rate_vs_sft | 95% CI | rm_score |"
    )
    assert lines[2].endswith("| mean_length | exact_match |")  # a judge's own detail gets a column
    assert (
        lines[4]
        == "| `runs/ppo/a/stage` | ppo | 7 | 0.7500 | 0.5000 | [0.100, 0.900] | n/a | 1.5000 | n/a | n/a | n/a |"
    )
    assert lines[5] == "| `runs/sft/a/stage` | sft | 0 | n/a | n/a | n/a | n/a | n/a | n/a | n/a | 0.2500 |"
    assert "- seed: `1234`" in lines and "- rm_score is null: no --rm" in lines


def test_short_label():
    assert short_label("runs/ppo/tiny/stage") == "ppo/tiny"
    assert short_label("/abs/runs/sft/x") == "sft/x"
    assert short_label("x") == "x"


# ---- tiny models end to end -----------------------------------------------------------------------------
def _perturb(backbone: Backbone, adapter: str, scale: float) -> None:
    with torch.no_grad():
        for p in backbone.adapter_parameters(adapter):
            p.add_(scale * torch.randn_like(p))


@pytest.fixture(scope="module")
def tiny(tiny_dir, tmp_path_factory) -> dict[str, Path]:
    """sft (full weights), rm (LoRA reward adapter + head), ppo (moved policy adapter; parent and reward_from set)."""
    tmp = tmp_path_factory.mktemp("eval")
    torch.manual_seed(0)
    sft = Backbone.build(BackboneConfig(name_or_path=str(tiny_dir / "gpt2")))
    save_stage_dir(tmp / "sft", sft, stage="sft")
    rm, _ = load_stage_dir(tmp / "sft", backbone_overrides={"lora": LORA.__dict__})
    rm.add_adapter("reward")
    _perturb(rm, "reward", 0.1)
    rm.add_head("reward")
    save_stage_dir(tmp / "rm", rm, stage="reward", heads={"reward": {"adapter": "reward", "bias": 0.3}})
    ppo, _ = load_stage_dir(tmp / "sft", backbone_overrides={"lora": LORA.__dict__})
    ppo.add_adapter("policy")
    _perturb(ppo, "policy", 0.5)
    extra = {"reward_from": str(tmp / "rm"), "ptx_coef": 0.0}
    save_stage_dir(tmp / "ppo", ppo, stage="ppo", step=5, parent=str(tmp / "sft"), extra=extra)
    write_jsonl(tmp / "prompts.jsonl", [{"prompt": f"{a} {b} ="} for a in "abcd" for b in "efgh"])
    write_jsonl(tmp / "text.jsonl", [{"text": f"{a} {b} = {b} {a}"} for a in "abcd" for b in "abcd"])
    return {k: tmp / k for k in ("sft", "rm", "ppo")} | {
        "prompts": tmp / "prompts.jsonl",
        "text": tmp / "text.jsonl",
    }


@pytest.fixture(scope="module")
def tiny_report(tiny) -> dict:
    s = EvalSettings(
        prompts=str(tiny["prompts"]),
        limit=6,
        max_new_tokens=4,
        batch_size=4,
        pretrain=str(tiny["text"]),
        pretrain_limit=5,
    )
    return evaluate_checkpoints([str(tiny["sft"]), str(tiny["ppo"])], s)


def test_tiny_report_figures(tiny, tiny_report):
    sft, ppo = (tiny_report["checkpoints"][str(tiny[k])] for k in ("sft", "ppo"))
    assert (sft["stage"], sft["step"], ppo["stage"], ppo["step"]) == ("sft", 0, "ppo", 5)
    assert sft["kl"] == 0.0  # the SFT model against itself, on its own tokens
    assert ppo["kl"] != 0.0  # the moved policy adapter
    assert tiny_report["settings"]["sft"] == str(tiny["sft"])  # the sft --ckpt is the baseline
    assert tiny_report["settings"]["rm"] == str(tiny["rm"])  # from the ppo manifest's extra.reward_from
    assert isinstance(sft["rm_score"], float) and isinstance(ppo["rm_score"], float)
    assert sft["pretrain_loss"] != ppo["pretrain_loss"]
    assert 1.0 <= sft["mean_length"] <= 4.0 and 1.0 <= ppo["mean_length"] <= 4.0
    assert tiny_report["prompts"]["count"] == 6 and tiny_report["settings"]["pretrain_rows"] == 5


def test_without_a_judge_the_judge_figures_are_null_and_the_report_says_so(tiny_report):
    for row in tiny_report["checkpoints"].values():
        assert (
            row["judge_score"] is None and row["win_rate_vs_sft"] is None and row["win_rate_ci_low"] is None
        )
    assert any("no --judge" in n for n in tiny_report["notes"])


def test_a_judge_that_cannot_judge_every_prompt_is_reported(tiny):
    s = EvalSettings(prompts=str(tiny["prompts"]), limit=4, max_new_tokens=3, batch_size=4, judge="demo")
    report = evaluate_checkpoints([str(tiny["sft"])], s)  # 'a e =' is no demo-world task
    assert report["checkpoints"][str(tiny["sft"])]["judge_score"] is None
    assert any("judged [0] of 4 prompts" in n for n in report["notes"])


def test_seed_and_temperature_decide_the_completions(tiny):
    backbone, _ = load_stage_dir(tiny["sft"])
    prompts = ["a e =", "b f =", "c g ="]
    texts = lambda temp, seed: [  # noqa: E731
        t
        for g in sample(backbone, prompts, EvalSettings("p", temperature=temp).sampling(), 2, seed)
        for t in g.texts
    ]
    assert texts(1.0, 1) == texts(1.0, 1)
    assert texts(1.0, 1) != texts(1.0, 2)
    assert texts(0.0, 1) == texts(0.0, 2)  # greedy ignores the seed


def test_reward_stage_as_ckpt_is_a_clear_error(tiny, tmp_path, capsys):
    rm = str(tiny["rm"])
    with pytest.raises(EvalError, match=f"{rm}: --ckpt takes an sft or ppo stage directory.*as --rm"):
        evaluate_checkpoints([str(tiny["sft"]), rm], EvalSettings(prompts=str(tiny["prompts"])))
    assert (
        cli(["evaluate", "--ckpt", rm, "--prompts", str(tiny["prompts"]), "--out", str(tmp_path / "r")]) == 2
    )
    assert f"error: {rm}: --ckpt takes an sft or ppo" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_rm_without_a_reward_head_is_refused_before_loading(tiny):
    s = EvalSettings(prompts=str(tiny["prompts"]))
    with pytest.raises(EvalError, match=f"{tiny['sft']}: stage 'sft' has no reward head"):
        evaluate_checkpoints([str(tiny["ppo"])], s, rm=str(tiny["sft"]))


def test_cli_end_to_end_resolves_parent_and_writes_the_report(tiny, tmp_path, capsys):
    out = tmp_path / "eval"
    argv = ["--ckpt", str(tiny["ppo"]), "--prompts", str(tiny["prompts"]), "--out", str(out)]
    assert cli(["evaluate", *argv, "--limit", "3", "--max-new-tokens", "3", "--seed", "7"]) == 0
    stdout = capsys.readouterr().out
    assert f"evaluation report: {out / 'report.md'}" in stdout
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["sft"] == str(tiny["sft"])  # the ppo manifest's parent
    assert report["settings"]["seed"] == 7 and report["prompts"]["count"] == 3
    assert report["checkpoints"][str(tiny["ppo"])]["pretrain_loss"] is None
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "report.md", "report.png"]


# ---- the demo world: SFT against itself ---------------------------------------------------------------------
ADD_PROMPTS = [f"add {a} {b} =" for a in "0123" for b in "0123" if 1 <= int(a) + int(b) <= 3]  # answers 1..3


@pytest.fixture(scope="module")
def demo_sft(demo_data, tmp_path_factory) -> Path:
    """A demo-tokenizer SFT stage that babbles the digits 1-3 and EOS whatever the prompt.

    A random init scores 0 on every prompt, so every comparison would tie whatever was sampled; the babbler
    gets partial credit that varies from sample to sample, so a tie has to come from identical completions.
    """
    from lit_rlhf.demo.world import parse_prompt

    assert all(parse_prompt(p) is not None for p in ADD_PROMPTS)
    torch.manual_seed(0)
    cfg = BackboneConfig(
        model_config={"model_type": "gpt2", "n_layer": 1, "n_embd": 32, "n_head": 2, "n_positions": 64},
        tokenizer=str(demo_data / "tokenizer"),
    )
    net = Backbone.build(cfg)
    tok, gpt2 = net.tokenizer, net.model
    with torch.no_grad():  # final hidden state = e_0, so logits = the embeddings' first column (tied head)
        gpt2.transformer.ln_f.weight.zero_()
        gpt2.transformer.ln_f.bias.copy_(torch.eye(32)[0])
        emb = gpt2.transformer.wte.weight
        emb[:, 0] = -10.0
        emb[tok.convert_tokens_to_ids(["1", "2", "3"]), 0] = 0.0
        emb[tok.eos_token_id, 0] = 0.4  # p(EOS) about 0.33 per step
    out = tmp_path_factory.mktemp("demo_sft")
    save_stage_dir(out / "sft", net, stage="sft")
    write_jsonl(out / "prompts.jsonl", [{"prompt": p} for p in ADD_PROMPTS])
    return out


def test_sft_against_itself_is_an_exact_tie_and_report_files(demo_sft, demo_data, tmp_path):
    s = EvalSettings(
        prompts=str(demo_sft / "prompts.jsonl"),
        max_new_tokens=6,
        batch_size=3,
        pretrain=str(demo_data / "pretrain.jsonl"),
        pretrain_limit=8,
        judge="demo",
    )
    sft = str(demo_sft / "sft")
    report = evaluate_checkpoints([sft], s)
    row = report["checkpoints"][sft]
    assert row["win_rate_vs_sft"] == 0.5 and row["kl"] == 0.0
    # Wilson interval for p = 0.5 over n = 9 prompts
    assert row["win_rate_ci_low"] == pytest.approx(0.226529230)
    assert row["win_rate_ci_high"] == pytest.approx(0.773470770)
    assert (
        0.0 < row["judge_score"] <= 1.0
    )  # some responses got credit: ties were not forced by all-zero scores
    assert row["rm_score"] is None
    assert any("rm_score is null" in n for n in report["notes"])
    assert not any("judge" in n for n in report["notes"])

    paths = write_report(report, tmp_path / "r")
    saved = json.loads(paths["report.json"].read_text())
    assert set(saved) == {"created", "prompts", "settings", "notes", "checkpoints"}
    assert set(saved["checkpoints"][sft]) == {
        "stage",
        "step",
        "judged",
        "exact_match",
        "banned",
        "filler",
        "exact_match_add",  # the demo SFT fixture's prompts are all additions
        *METRICS,
    }
    md = paths["report.md"].read_text()
    assert f"| `{sft}` | sft | 0 | {row['judge_score']:.4f} | 0.5000 | [0.227, 0.773] |" in md
    assert "Wilson score interval" in md
    assert paths["report.png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in (tmp_path / "r").iterdir() if p.name.startswith(".")]  # no temp files left


def test_a_checkpoint_with_another_vocabulary_is_refused_before_loading(tiny, demo_sft):
    s = EvalSettings(prompts=str(tiny["prompts"]))
    with pytest.raises(EvalError, match=f"{tiny['sft']}: its tokenizer's vocabulary differs"):
        evaluate_checkpoints([str(tiny["sft"])], s, sft=str(demo_sft / "sft"))


def test_base_row_is_the_sft_stages_pretrained_model_with_adapters_off(tiny_dir, tiny, tmp_path):
    """--base: the zero-shot model under a LoRA SFT stage is the first row; a full-weights SFT has none."""
    from lit_rlhf.evaluation.command import BASE_ROW

    sft = Backbone.build(BackboneConfig(name_or_path=str(tiny_dir / "llama"), lora=LORA))
    sft.add_adapter("policy")
    _perturb(sft, "policy", 0.5)
    save_stage_dir(tmp_path / "sft", sft, stage="sft")
    s = EvalSettings(prompts=str(tiny["prompts"]), limit=4, max_new_tokens=3, batch_size=4, base=True)
    report = evaluate_checkpoints([str(tmp_path / "sft")], s)
    assert list(report["checkpoints"]) == [BASE_ROW, str(tmp_path / "sft")]
    base, tuned = report["checkpoints"].values()
    assert (base["stage"], base["step"]) == ("base", 0) and tuned["kl"] == 0.0 and base["kl"] != 0.0
    plain = Backbone.build(
        BackboneConfig(name_or_path=str(tiny_dir / "llama"))
    ).eval()  # the same base, no LoRA
    prompts = ["a e =", "a f =", "a g =", "a h ="]  # the first 4 rows of tiny["prompts"]
    lengths = response_lengths(sample(plain, prompts, s.sampling(), 4, s.seed))
    assert base["mean_length"] == sum(lengths) / 4
    with pytest.raises(EvalError, match="--base needs a LoRA SFT stage"):
        evaluate_checkpoints([str(tiny["sft"])], s)
