"""The stage directory: round trips, export, validation errors, atomic writes, no pickle."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM

from lit_rlhf.atomic import atomic_dir
from lit_rlhf.backbone.build import Backbone
from lit_rlhf.backbone.config import BackboneConfig, LoraSettings
from lit_rlhf.backbone.generate import SamplingConfig, generate
from lit_rlhf.checkpoint.manifest import FORMAT_VERSION, ManifestError, read_manifest
from lit_rlhf.checkpoint.stage_dir import export_stage_dir, load_stage_dir, save_stage_dir

PROMPTS = ["a b c =", "d e f g =", "h ="]
GREEDY = SamplingConfig(max_new_tokens=6, do_sample=False)


def _perturb(params, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(0.2 * torch.randn(p.shape, generator=g))


def _lora_backbone(tiny_dir, arch="gpt2", quant="none"):
    cfg = BackboneConfig(
        name_or_path=str(tiny_dir / arch), quantization=quant, lora=LoraSettings(r=4, alpha=8, dropout=0.0)
    )
    bb = Backbone.build(cfg)
    bb.add_adapter("policy")
    _perturb(bb.adapter_parameters("policy"))  # a trained-looking adapter (fresh ones are a no-op)
    return bb.eval()


def _ids(bb):
    enc = bb.tokenizer(PROMPTS, return_tensors="pt", padding=True)
    return enc["input_ids"], enc["attention_mask"]


@pytest.mark.parametrize(
    ("arch", "quant"), [("gpt2", "none"), ("llama", "none"), ("gpt2", "4bit"), ("llama", "8bit")]
)
def test_lora_round_trip_gives_identical_logits(tiny_dir, tmp_path, arch, quant):
    bb = _lora_backbone(tiny_dir, arch, quant)
    bb.add_head("reward")
    ids, mask = _ids(bb)
    logits = bb(ids, mask)
    score = bb.score("reward", ids, mask)
    save_stage_dir(
        tmp_path / "stage",
        bb,
        stage="sft",
        step=7,
        metrics={"exact_match": 0.5},
        heads={"reward": {"adapter": "policy", "bias": 0.25}},
    )
    bb2, manifest = load_stage_dir(tmp_path / "stage")
    bb2.eval()
    assert torch.equal(bb2(ids, mask), logits)
    assert torch.equal(bb2.score("reward", ids, mask), score)
    assert manifest.step == 7 and manifest.metrics == {"exact_match": 0.5}
    assert manifest.heads["reward"]["bias"] == 0.25
    assert manifest.base["kind"] == "pretrained"  # the hub/path base is referenced, not copied
    assert set(manifest.files) == {
        "adapters/policy.safetensors",
        "heads/reward.safetensors",
        "tokenizer/tokenizer.json",
        "tokenizer/tokenizer_config.json",
    }


def test_full_weights_round_trip_from_inline_config(tiny_dir, tmp_path):
    cfg = BackboneConfig(
        model_config={
            "model_type": "llama",
            "num_hidden_layers": 1,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "max_position_embeddings": 32,
        },
        tokenizer=str(tiny_dir / "tokenizer"),
    )
    bb = Backbone.build(cfg).eval()
    ids, mask = _ids(bb)
    save_stage_dir(tmp_path / "s", bb, stage="sft")
    bb2, manifest = load_stage_dir(tmp_path / "s")
    assert manifest.base == {"kind": "local", "path": "base"}
    assert torch.equal(bb2.eval()(ids, mask), bb(ids, mask))
    # a later stage adding LoRA on this base copies the base into its own directory (self-contained)
    bb2.cfg.lora = LoraSettings(r=2, alpha=4, dropout=0.0)
    bb2.add_adapter("reward")
    save_stage_dir(tmp_path / "s2", bb2, stage="reward", parent=str(tmp_path / "s"))
    shutil.rmtree(tmp_path / "s")
    bb3, m3 = load_stage_dir(tmp_path / "s2")
    assert m3.base == {"kind": "local", "path": "base"} and "reward" in bb3.adapters


def test_only_safetensors_and_json_in_a_stage_dir(tiny_dir, tmp_path):
    bb = _lora_backbone(tiny_dir)
    save_stage_dir(tmp_path / "s", bb, stage="sft", config_text="seed_everything: 0\n")
    suffixes = {p.suffix for p in (tmp_path / "s").rglob("*") if p.is_file()}
    assert suffixes <= {".json", ".safetensors", ".yaml"}, suffixes


@pytest.mark.parametrize("lora", [True, False])
def test_export_gives_same_greedy_completion(tiny_dir, tmp_path, lora):
    if lora:
        bb = _lora_backbone(tiny_dir, "llama")
    else:
        bb = Backbone.build(BackboneConfig(name_or_path=str(tiny_dir / "gpt2"))).eval()
        _perturb(bb.parameters())
    save_stage_dir(tmp_path / "s", bb, stage="sft")
    stage_bb, _ = load_stage_dir(tmp_path / "s")
    expected = generate(stage_bb.model, stage_bb.text_format, PROMPTS, GREEDY).texts
    export_stage_dir(tmp_path / "s", tmp_path / "hf")
    plain = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"))
    assert "Peft" not in type(plain).__name__
    assert not any("lora" in n for n, _ in plain.named_parameters())
    assert generate(plain, stage_bb.text_format, PROMPTS, GREEDY).texts == expected
    ids, mask = _ids(stage_bb)
    torch.testing.assert_close(plain(input_ids=ids, attention_mask=mask).logits, stage_bb.eval()(ids, mask))


def _saved(tiny_dir, tmp_path):
    bb = _lora_backbone(tiny_dir)
    save_stage_dir(tmp_path / "s", bb, stage="sft")
    return tmp_path / "s"


def _edit_manifest(path, **changes):
    m = json.loads((path / "manifest.json").read_text())
    m.update(changes)
    (path / "manifest.json").write_text(json.dumps(m))


def test_missing_file_is_named(tiny_dir, tmp_path):
    s = _saved(tiny_dir, tmp_path)
    (s / "adapters" / "policy.safetensors").unlink()
    with pytest.raises(
        ManifestError, match=r"file 'adapters/policy.safetensors' listed in manifest.json is missing"
    ):
        read_manifest(s)


def test_wrong_version_and_missing_manifest(tiny_dir, tmp_path):
    s = _saved(tiny_dir, tmp_path)
    _edit_manifest(s, format_version=FORMAT_VERSION + 1)
    with pytest.raises(ManifestError, match="format_version 2 is not supported"):
        read_manifest(s)
    (s / "manifest.json").unlink()
    with pytest.raises(ManifestError, match="manifest.json: missing"):
        load_stage_dir(s)


def test_truncated_weights_detected_by_size(tiny_dir, tmp_path):
    s = _saved(tiny_dir, tmp_path)
    f = s / "adapters" / "policy.safetensors"
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(ManifestError, match="manifest says"):
        read_manifest(s)


@pytest.mark.parametrize("bad", ["../outside.safetensors", "/etc/passwd", "adapters/../../x"])
def test_paths_leaving_the_stage_dir_are_refused(tiny_dir, tmp_path, bad):
    s = _saved(tiny_dir, tmp_path)
    _edit_manifest(s, adapters={"policy": bad})
    with pytest.raises(ManifestError, match="leaves the stage directory"):
        read_manifest(s)


def test_shape_mismatch_names_the_adapter_file(tiny_dir, tmp_path):
    s = _saved(tiny_dir, tmp_path)
    m = json.loads((s / "manifest.json").read_text())
    m["backbone"]["lora"]["r"] = 8  # the stored adapter has r=4
    (s / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ManifestError, match=r"policy.safetensors: adapter 'policy' does not fit"):
        load_stage_dir(s)


def test_atomic_dir_leaves_old_copy_on_failure(tmp_path):
    out = tmp_path / "stage"
    with atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("crash mid-write")
    assert (out / "a.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stage"]  # no temp directory left behind
    with atomic_dir(out) as tmp:
        (tmp / "b.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["b.txt"]


@pytest.mark.parametrize(("arch", "modules"), [("gpt2", ["wte"]), ("llama", ["embed_tokens", "lm_head"])])
def test_lora_modules_to_save_train_in_full_round_trip_and_export(tiny_dir, tmp_path, arch, modules):
    """lora.modules_to_save: each adapter trains its own full copy of those modules; the base stays frozen; the
    copies are saved with the adapter, reloaded, and merged on export."""
    cfg = BackboneConfig(
        name_or_path=str(tiny_dir / arch),
        lora=LoraSettings(r=4, alpha=8, dropout=0.0, modules_to_save=modules),
    )
    bb = Backbone.build(cfg)
    bb.add_adapter("policy")
    bb.add_adapter("reward", trainable=False)
    bb.use_adapter_("policy")
    copies = [n for n, p in bb.named_parameters() if "modules_to_save" in n]
    trainable = {n for n, p in bb.named_parameters() if p.requires_grad}
    assert {n for n in copies if ".policy." in n} <= trainable and not any(".reward." in n for n in trainable)
    assert len([n for n in copies if ".policy." in n]) == len(modules)
    assert not any(p.requires_grad for _, p in bb.base_named_parameters())
    assert set(bb.adapter_parameters("policy")) >= {
        p for n, p in bb.named_parameters() if n in copies and ".policy." in n
    }
    _perturb([p for n, p in bb.named_parameters() if ".policy." in n and "modules_to_save" in n])
    bb.eval()
    ids, mask = _ids(bb)
    with torch.no_grad():
        policy = bb(ids, mask)
        with bb.use_adapter("reward"):
            reward = bb(ids, mask)
    assert (policy - reward).abs().max() > 1e-3  # the policy's own embedding copy computes
    save_stage_dir(tmp_path / "s", bb, stage="sft", adapters=["policy"])
    again, manifest = load_stage_dir(tmp_path / "s")
    assert manifest.backbone["lora"]["modules_to_save"] == modules
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(ids, mask), policy)
    export_stage_dir(tmp_path / "s", tmp_path / "hf")
    plain = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf")).eval()
    with torch.no_grad():
        torch.testing.assert_close(
            plain(input_ids=ids, attention_mask=mask).logits, policy, rtol=1e-4, atol=1e-5
        )


def test_a_multi_label_head_round_trips_with_its_output_names(tiny_dir, tmp_path):
    """A rule head (one logit per rule, read through the same adapter as the reward head) is saved with its rule
    names; loading rebuilds it and one forward pass gives both heads the scores they had."""
    bb = _lora_backbone(tiny_dir)
    bb.add_head("reward")
    bb.add_head("rules", outputs=["banned_word", "answer_format"])
    _perturb(bb.heads["rules"].parameters(), seed=1)
    ids, mask = _ids(bb)
    both = bb.score_heads(("reward", "rules"), ids, mask)
    assert both["rules"].shape == (3, 2) and both["reward"].shape == (3,)
    assert torch.equal(both["rules"], bb.score("rules", ids, mask))
    heads = {"reward": {"adapter": "policy", "bias": 0.5}, "rules": {"adapter": "policy"}}
    save_stage_dir(tmp_path / "s", bb, stage="reward", heads=heads)
    bb2, manifest = load_stage_dir(tmp_path / "s")
    assert manifest.heads["rules"]["outputs"] == ["banned_word", "answer_format"]
    assert "outputs" not in manifest.heads["reward"]
    assert bb2.heads["rules"].outputs == ["banned_word", "answer_format"]
    again = bb2.eval().score_heads(("reward", "rules"), ids, mask)
    assert torch.equal(again["rules"], both["rules"]) and torch.equal(again["reward"], both["reward"])


@pytest.mark.parametrize("outputs", ["banned_word", [], ["a", "a"], ["a", 3]])
def test_bad_head_outputs_are_refused_naming_the_field(tiny_dir, tmp_path, outputs):
    bb = _lora_backbone(tiny_dir)
    bb.add_head("rules", outputs=["a", "b"])
    save_stage_dir(tmp_path / "s", bb, stage="reward", heads={"rules": {"adapter": "policy"}})
    m = json.loads((tmp_path / "s/manifest.json").read_text())
    m["heads"]["rules"]["outputs"] = outputs
    (tmp_path / "s/manifest.json").write_text(json.dumps(m))
    with pytest.raises(
        ManifestError, match="field 'heads.rules.outputs' must be a non-empty list of distinct"
    ):
        read_manifest(tmp_path / "s")
