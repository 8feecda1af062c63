"""One row per prompt for the reward model: packing and mask by hand, the same rewards and gradients as K rows."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from lit_rlhf.backbone.build import Backbone, position_ids_from_mask
from lit_rlhf.backbone.config import BackboneConfig, LoraSettings
from lit_rlhf.checkpoint.stage_dir import save_stage_dir
from lit_rlhf.data.comparisons import ComparisonDataModule
from lit_rlhf.data.io import write_jsonl
from lit_rlhf.data.padding import pad_right
from lit_rlhf.data.shared_prefix import pack_shared_prefix, shared_prefix_mask
from lit_rlhf.stages.common import OptimConfig
from lit_rlhf.stages.reward import RewardModule


def test_pack_by_hand():
    # group 0: [5 6 7 8], [5 6 9], [5 6 7 1] share [5 6]; group 1 (not adjacent): [3 4], [3 4] share [3] (each
    # sequence keeps its last token of its own, even when two are equal)
    seqs = [[5, 6, 7, 8], [3, 4], [5, 6, 9], [3, 4], [5, 6, 7, 1]]
    ids, mask = pad_right(seqs, pad_id=0)
    rows = pack_shared_prefix(ids, mask, torch.tensor([0, 1, 0, 1, 0]), pad_id=0)
    assert rows.input_ids.tolist() == [[5, 6, 7, 8, 9, 7, 1], [3, 4, 4, 0, 0, 0, 0]]
    assert rows.position_ids.tolist() == [[0, 1, 2, 3, 2, 2, 3], [0, 1, 1, 0, 0, 0, 0]]
    assert rows.segments.tolist() == [[0, 0, 1, 1, 2, 3, 3], [0, 1, 2, -1, -1, -1, -1]]
    assert rows.last.tolist() == [[0, 3], [1, 1], [0, 4], [1, 2], [0, 6]]


def test_mask_by_hand():
    segments = torch.tensor([[0, 0, 1, 2, 2, -1]])
    allowed = shared_prefix_mask(segments)
    assert allowed.shape == (1, 1, 6, 6)
    assert allowed[0, 0].int().tolist() == [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],  # response 1: the prefix and itself
        [1, 1, 0, 1, 0, 0],  # response 2 does not see response 1
        [1, 1, 0, 1, 1, 0],
        [0, 0, 0, 0, 0, 1],  # padding: itself only (never an empty row)
    ]
    additive = shared_prefix_mask(segments, torch.float32)
    assert (
        additive[0, 0, 3].tolist()
        == [0.0, 0.0, torch.finfo(torch.float32).min, 0.0] + [torch.finfo(torch.float32).min] * 2
    )


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_rewards_and_gradients_equal_k_separate_sequences(tiny_dir, arch, attention):
    torch.manual_seed(0)
    bb = Backbone.build(BackboneConfig(name_or_path=str(tiny_dir / arch), lora=LoraSettings(r=4, alpha=8)))
    bb.hf_model.config._attn_implementation = attention
    bb.add_adapter("reward")
    bb.add_head("reward")
    with torch.no_grad():
        for p in bb.adapter_parameters("reward"):
            p.add_(0.1 * torch.randn_like(p))
    bb.eval()  # GPT-2's dropout would draw different masks for the two layouts
    tok = bb.tokenizer
    prompts = [tok("a b c d e =")["input_ids"], tok("f g =")["input_ids"]]
    responses = [["a b", "e d c b a", "x"], ["g f", "f g f g"]]
    seqs = [
        p + tok(r)["input_ids"] + [tok.eos_token_id]
        for p, rs in zip(prompts, responses, strict=True)
        for r in rs
    ]
    ids, mask = pad_right(seqs, bb.text_format.pad_id)
    group = torch.tensor([0, 0, 0, 1, 1])

    def run(packed: bool):
        bb.zero_grad()
        with bb.use_adapter("reward"):
            if packed:
                rows = pack_shared_prefix(ids, mask, group, bb.text_format.pad_id)
                assert rows.input_ids.numel() < ids.numel()
                scores = bb.score_shared_prefix(("reward",), rows)["reward"]
            else:
                scores = bb.score("reward", ids, mask, position_ids_from_mask(mask))
        (scores * torch.arange(1.0, 6.0)).sum().backward()
        return scores.detach(), {n: p.grad.clone() for n, p in bb.named_parameters() if p.grad is not None}

    (packed, packed_grads), (separate, separate_grads) = run(True), run(False)
    torch.testing.assert_close(packed, separate, rtol=1e-5, atol=1e-5)
    assert packed_grads.keys() == separate_grads.keys() and any("lora" in n for n in packed_grads)
    for name, grad in separate_grads.items():
        torch.testing.assert_close(
            packed_grads[name], grad, rtol=1e-4, atol=1e-4, msg=name
        )  # grads up to ~70


def test_flash_attention_is_refused(tiny_dir):
    bb = Backbone.build(BackboneConfig(name_or_path=str(tiny_dir / "llama")))
    bb.add_head("reward")
    bb.hf_model.config._attn_implementation = "flash_attention_2"
    ids, mask = pad_right([[5, 6, 7], [5, 6, 8]], 0)
    rows = pack_shared_prefix(ids, mask, torch.tensor([0, 0]), 0)
    with pytest.raises(ValueError, match="SDPA or eager attention.*'flash_attention_2'"):
        bb.score_shared_prefix(("reward",), rows)


def test_reward_stage_trains_the_same_weights_with_a_shared_prefix(tiny_dir, tmp_path):
    """RewardModule(shared_prefix=True): the same trained weights and logged loss as one sequence per response."""
    torch.manual_seed(0)
    sft = Backbone.build(BackboneConfig(name_or_path=str(tiny_dir / "llama")))
    save_stage_dir(tmp_path / "sft", sft, stage="sft")
    rows = [
        {
            "prompt": f"{a} {b} {a} =",
            "responses": [f"{b} {a}", f"{a}", f"{b} {b} {a}", f"{a} {b}"],
            "ranking": [0, 2, 1, 3],
        }
        for a in "abcd"
        for b in "efgh"
    ]
    write_jsonl(tmp_path / "train.jsonl", rows)
    results = []
    for shared in (True, False):
        module = RewardModule(
            init_from=str(tmp_path / "sft"),
            lora=LoraSettings(r=4, alpha=8, dropout=0.0),  # dropout draws masks of each layout's shape
            optim=OptimConfig(lr=1e-2, warmup_steps=0),
            max_length=32,
            shared_prefix=shared,
        )
        L.seed_everything(0)
        trainer = L.Trainer(
            max_steps=3,
            accelerator="cpu",
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=0,
            num_sanity_val_steps=0,
        )
        trainer.fit(module, ComparisonDataModule(str(tmp_path / "train.jsonl"), batch_size=4, max_length=32))
        trained = {n: p.detach().clone() for n, p in module.net.named_parameters() if p.requires_grad}
        results.append((trained, float(trainer.callback_metrics["reward/loss"])))
    (shared_w, shared_loss), (separate_w, separate_loss) = results
    assert shared_loss == pytest.approx(separate_loss, rel=1e-4)
    assert any("lora" in n for n in shared_w)
    for name, value in separate_w.items():
        if name.endswith("reward.proj.bias"):
            # a ranking loss does not see a shared offset: the head bias's gradient is 0 but for rounding, which
            # AdamW turns into steps of +-lr either way
            continue
        torch.testing.assert_close(shared_w[name], value, rtol=1e-4, atol=1e-4, msg=name)
