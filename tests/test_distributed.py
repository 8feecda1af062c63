"""The single-process pieces of FSDP2 support: the root-forward hidden states, writing a stage directory from a
gathered state, the strategy's registration and its refusals. The 2-process runs are in tests/reliability."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from lit_rlhf.backbone.build import Backbone
from lit_rlhf.backbone.config import BackboneConfig, LoraSettings
from lit_rlhf.checkpoint.stage_dir import _untied, load_stage_dir, save_stage_dir
from lit_rlhf.distributed import FSDP2Strategy, decoder_layers, register_strategy, shard_backbone


def _build(tiny_dir, arch: str, lora: bool) -> Backbone:
    cfg = BackboneConfig(name_or_path=str(tiny_dir / arch), lora=LoraSettings(r=4, alpha=8) if lora else None)
    bb = Backbone.build(cfg)
    if lora:
        bb.add_adapter("policy")
        torch.manual_seed(0)
        for p in bb.adapter_parameters("policy"):  # non-zero B, so the adapter changes the hidden states
            p.data.normal_(0, 0.1)
    bb.add_head("reward")
    return bb.eval()


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_hidden_states_through_the_root_equal_the_decoder_path(tiny_dir, arch):
    """Sharded backbones read hidden states through the model's root forward: same values as the decoder."""
    bb = _build(tiny_dir, arch, lora=True)
    enc = bb.tokenizer(["a b c = c b a", "d ="], return_tensors="pt", padding=True)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    direct = bb.hidden_states(ids, mask)
    bb.sharded = True  # only the code path: the parameters stay whole in one process
    via_root = bb.hidden_states(ids, mask)
    assert via_root.shape == direct.shape == (2, ids.shape[1], bb.hidden_size)
    torch.testing.assert_close(via_root, direct, rtol=0, atol=1e-6)


@pytest.mark.parametrize("lora", [False, True])
def test_stage_dir_from_a_gathered_state_equals_the_one_from_live_weights(tiny_dir, tmp_path, lora):
    bb = _build(tiny_dir, "gpt2", lora)
    heads = {"reward": {"adapter": "policy" if lora else None, "bias": 0.5}}
    save_stage_dir(tmp_path / "live", bb, stage="reward", heads=heads)
    gathered = {k: v.clone() for k, v in bb.state_dict().items()}  # what full_state returns on rank zero
    with torch.no_grad():  # the live parameters now differ (as shards would): only `state` may be read
        for p in bb.parameters():
            p.add_(1.0)
    save_stage_dir(tmp_path / "gathered", bb, stage="reward", heads=heads, state=gathered)
    live, from_state = load_stage_dir(tmp_path / "live")[1], load_stage_dir(tmp_path / "gathered")[1]
    assert sorted(live.files) == sorted(from_state.files)
    for rel in (f for f in live.files if f.endswith(".safetensors")):
        a, b = load_file(str(tmp_path / "live" / rel)), load_file(str(tmp_path / "gathered" / rel))
        assert sorted(a) == sorted(b), rel
        for k in a:
            assert torch.equal(a[k], b[k]), (rel, k)


def test_tied_output_layer_is_written_once(tiny_dir):
    bb = _build(tiny_dir, "gpt2", lora=False)
    model = bb.hf_model
    assert model.lm_head.weight is model.transformer.wte.weight  # tied in this tiny GPT-2
    state = {k: v.clone() for k, v in model.state_dict(keep_vars=False).items()}
    state["lm_head.weight"] = state["transformer.wte.weight"].clone()  # a gathered state has both names
    kept = _untied(model, state)
    assert "lm_head.weight" not in kept and "transformer.wte.weight" in kept


def test_decoder_layers_are_found_per_architecture(tiny_dir):
    for arch, n in (("gpt2", 2), ("llama", 2)):
        bb = _build(tiny_dir, arch, lora=False)
        layers = decoder_layers(bb.hf_model)
        assert len(layers) == bb.hf_model.config.num_hidden_layers == n
    with pytest.raises(ValueError, match="Linear: cannot find its decoder layers"):
        decoder_layers(torch.nn.Linear(2, 2))


def test_quantized_backbones_are_refused_before_sharding():
    with pytest.raises(ValueError, match="FSDP2 with a bitsandbytes-quantized base is not supported"):
        shard_backbone(SimpleNamespace(is_quantized=True), mesh=None)


def test_fsdp2_strategy_is_registered_and_data_parallel_only():
    from lightning.pytorch.strategies import StrategyRegistry

    register_strategy()
    register_strategy()  # idempotent: the CLI calls it on every run
    strategy = StrategyRegistry.get("fsdp2")
    assert isinstance(strategy, FSDP2Strategy)
    assert strategy._tensor_parallel_size == 1


_GATHER_SCRIPT = """
import os, sys
import torch, torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from transformers import GPT2Config, GPT2LMHeadModel
from lit_rlhf.distributed import gathered_for_generation
dist.init_process_group("gloo", rank=0, world_size=1)
mesh = init_device_mesh("cpu", (1,))
m = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=50, n_positions=32)).eval()
for block in m.transformer.h:
    fully_shard(block, mesh=mesh)
fully_shard(m, mesh=mesh)
m._lit_rlhf_gather_for_generation = sys.argv[1] == "on"
x = torch.randint(0, 50, (2, 5))
sharded = lambda: all(isinstance(b.attn.c_attn.weight, DTensor) for b in m.transformer.h)
with torch.no_grad():
    m(x)
    before = sharded()
    with gathered_for_generation(m):
        m(x)
        inside = sharded()
    print(before, inside, sharded())
dist.destroy_process_group()
"""


@pytest.mark.parametrize("setting", ["on", "off"])
def test_generation_keeps_layers_gathered_then_frees_them(tmp_path, setting):
    """One all-gather per layer per generate call (not per decoding step), and the shards are back afterwards.

    A 1-process FSDP2 group in a subprocess, so this test process never joins a process group.
    """
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "PYTHONPATH": str(root)}
    script = tmp_path / "gather.py"
    script.write_text(_GATHER_SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script), setting], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    before, inside, after = proc.stdout.split()[-3:]
    assert (before, after) == ("True", "True")  # freed after each forward outside the block, and after it
    assert inside == ("False" if setting == "on" else "True")
