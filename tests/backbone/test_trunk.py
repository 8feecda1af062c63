"""Sparrow's shared trunk: the lower layers once, the top layers per role, exactly the full forward's numbers."""

from __future__ import annotations

import pytest
import torch

from lit_rlhf.backbone.build import Backbone, position_ids_from_mask
from lit_rlhf.backbone.config import BackboneConfig, LoraSettings
from lit_rlhf.backbone.trunk import TrunkSplit, closing_column, same_tokens

ARCHS = ("gpt2", "llama")
LORA = LoraSettings(r=4, alpha=8, dropout=0.0)


def _left_padded(bb):
    bb.tokenizer.padding_side = "left"
    enc = bb.tokenizer(["a b c = c b a", "d e = e"], return_tensors="pt", padding=True)
    return enc["input_ids"], enc["attention_mask"]


def _layer_calls(bb, index: int) -> list[int]:
    layers = getattr(TrunkSplit.for_model(bb.hf_model, 1).decoder, "layers", None)
    layers = layers if layers is not None else bb.hf_model.transformer.h
    calls = []
    layers[index].register_forward_hook(lambda *_: calls.append(1))
    return calls


@pytest.mark.parametrize("arch", ARCHS)
def test_lower_then_upper_equals_the_full_decoder(tiny_dir, arch):
    bb = Backbone.build(BackboneConfig(name_or_path=str(tiny_dir / arch))).eval()
    ids, mask = _left_padded(bb)
    pos = position_ids_from_mask(mask)
    split = TrunkSplit.for_model(bb.hf_model, top=1)
    with torch.no_grad():
        full = bb.hidden_states(ids, mask, pos)
        state = split.lower(ids, mask, pos)
        torch.testing.assert_close(split.upper(state), full, rtol=0, atol=1e-6)
    assert len(getattr(split.decoder, split.attr)) == 2  # the layer list is restored afterwards


@pytest.mark.parametrize("arch", ARCHS)
def test_roles_on_the_top_layers_share_one_lower_pass(tiny_dir, arch):
    """Adapters on the top layer only: inside `shared_trunk` policy, reference (adapters off) and critic read the
    same numbers as full passes, the lower layer runs once, and no gradient reaches it."""
    torch.manual_seed(0)
    bb = Backbone.build(BackboneConfig(name_or_path=str(tiny_dir / arch), lora=LORA, top_layers=1))
    for name in ("policy", "critic"):
        bb.add_adapter(name)
        with torch.no_grad():
            for p in bb.adapter_parameters(name):
                p.add_(0.3 * torch.randn_like(p))
    assert all(".1." in n or ".h.1." in n for n, _ in bb.named_parameters() if "lora_" in n)  # top layer only
    bb.add_head("value")
    bb.eval()
    ids, mask = _left_padded(bb)
    pos = position_ids_from_mask(mask)

    def passes():
        with bb.use_adapter("policy"):
            policy = bb.response_logits(ids, mask, pos, 2)
        with bb.use_adapter(None):
            reference = bb.response_logits(ids, mask, pos, 2)
        with bb.use_adapter("critic"):
            values = bb.heads["value"](bb.hidden_states(ids, mask, pos))
        return policy, reference, values

    full = [t.detach() for t in passes()]
    lower_calls = _layer_calls(bb, 0)
    with bb.shared_trunk(ids, mask, pos) as shared:
        shared_out = passes()
    assert shared and len(lower_calls) == 1  # one lower pass for three roles
    for a, b in zip(shared_out, full, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert not torch.equal(full[0], full[1])  # the adapters do act on the top layer
    shared_out[0].sum().backward()
    grads = {n for n, p in bb.named_parameters() if p.grad is not None}
    assert grads and all(".policy." in n for n in grads)


def test_full_fine_tuning_of_the_top_layers_freezes_the_rest(tiny_dir):
    bb = Backbone.build(BackboneConfig(name_or_path=str(tiny_dir / "llama"), top_layers=1))
    trainable = {n for n, p in bb.named_parameters() if p.requires_grad}
    assert trainable and all(
        n.startswith(("model.model.layers.1.", "model.model.norm.", "model.lm_head.")) for n in trainable
    )
    assert any(n.startswith("model.model.layers.1.") for n in trainable)


def test_an_unsupported_decoder_falls_back_to_full_passes_and_says_so(tiny_dir, monkeypatch, caplog):
    bb = Backbone.build(BackboneConfig(name_or_path=str(tiny_dir / "gpt2"), lora=LORA, top_layers=1))
    monkeypatch.setattr(TrunkSplit, "for_model", classmethod(lambda cls, model, top: None))
    ids, mask = _left_padded(bb)
    with caplog.at_level("INFO"), bb.shared_trunk(ids, mask) as shared:
        assert not shared
    assert "not a supported decoder shape" in caplog.text


def test_top_layers_is_checked():
    assert "backbone.top_layers must be >= 1" in BackboneConfig(name_or_path="x", top_layers=0).problems()[0]


def test_closing_column_closes_only_the_rows_that_hit_the_limit():
    ids = torch.tensor([[0, 5, 6, 9, 0], [3, 4, 7, 8, 1]])  # row 0: left pad, ended with 9, right pad
    mask = torch.tensor([[0, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    out_ids, out_mask = closing_column(ids, mask, torch.tensor([True, False]), end_of_turn_id=9, pad_id=0)
    assert out_ids.tolist() == [[0, 5, 6, 9, 0, 0], [3, 4, 7, 8, 1, 9]]
    assert out_mask.tolist() == [[0, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]]
    assert out_ids.dtype == ids.dtype and out_mask.dtype == mask.dtype


def test_same_tokens_compares_real_tokens_across_paddings():
    a = torch.tensor([[0, 5, 6, 9, 0], [3, 4, 7, 8, 1], [0, 0, 2, 2, 2]])
    ma = torch.tensor([[0, 1, 1, 1, 0], [1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
    b = torch.tensor([[5, 6, 9, 0], [3, 4, 7, 8], [2, 2, 0, 0]])
    mb = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0]])
    assert same_tokens(a, ma, b, mb).tolist() == [True, False, False]  # row 1: one token short; row 2: 3 vs 2
