"""Generation under FSDP2: layers gathered once per `generate` call vs gathered again at every decoding step.

Run by hand, not a test (see bench/README.md), after the demo data exists (`python main.py demo-data`):

    python bench/fsdp2_generation.py                 # 2 CPU processes (gloo), demo-size GPT-2
    python bench/fsdp2_generation.py --layers 8 --new-tokens 64

Each process builds the demo-size backbone from its config (same seed, so the same weights), shards it with the
project's `shard_backbone` and generates greedily with the project's `generate` (the path every stage uses for
samples, evaluation and PPO rollouts). The two settings alternate, `--repeats` times each; the script checks that
they produce the same tokens and writes bench/results/fsdp2_generation.json with the median wall time per call.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def worker(rank: int, a: argparse.Namespace, port: int, out: Path) -> None:
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from lit_rlhf.backbone.build import Backbone
    from lit_rlhf.backbone.config import BackboneConfig
    from lit_rlhf.backbone.generate import SamplingConfig, generate
    from lit_rlhf.demo.world import TaskGenerator
    from lit_rlhf.distributed import shard_backbone

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(a.threads)
    dist.init_process_group("gloo", rank=rank, world_size=a.world)
    torch.manual_seed(0)
    cfg = BackboneConfig(
        model_config={
            "model_type": "gpt2",
            "n_layer": a.layers,
            "n_embd": 256,
            "n_head": 4,
            "n_positions": 128,
        },
        tokenizer=str(Path(a.data) / "tokenizer"),
    )
    net = Backbone.build(cfg).eval()
    shard_backbone(net, init_device_mesh("cpu", (a.world,)))
    # every rank its own prompts, as in PPO rollouts
    prompts = [t.prompt for t in TaskGenerator(seed=rank).sample_many(a.prompts)]
    sampling = SamplingConfig(max_new_tokens=a.new_tokens, do_sample=False)
    times: dict[str, list[float]] = {"per_step": [], "per_call": []}
    texts: dict[str, list[str]] = {}
    generate(net.model, net.text_format, prompts, sampling)  # warm-up (lazy FSDP init)
    for _ in range(a.repeats):
        for mode in times:
            net.hf_model._lit_rlhf_gather_for_generation = mode == "per_call"
            dist.barrier()
            start = time.perf_counter()
            gen = generate(net.model, net.text_format, prompts, sampling)
            times[mode].append(time.perf_counter() - start)
            texts[mode] = gen.texts
    if rank == 0:
        med = {m: statistics.median(v) for m, v in times.items()}
        result = {
            "world_size": a.world,
            "backend": "gloo (CPU)",
            "threads_per_process": a.threads,
            "model": f"GPT-2, {a.layers} layers, 256 wide (demo size)",
            "prompts_per_rank": a.prompts,
            "new_tokens": a.new_tokens,
            "repeats": a.repeats,
            "median_s_per_generate": med,
            "speedup": med["per_step"] / med["per_call"],
            "same_tokens": texts["per_step"] == texts["per_call"],
        }
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
    dist.barrier()  # no rank tears the group down while another still writes (gloo aborts then)
    dist.destroy_process_group()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(ROOT / "data/demo"), help="demo data directory (its tokenizer/)")
    p.add_argument("--world", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=str(ROOT / "bench/results/fsdp2_generation.json"))
    a = p.parse_args()
    if not (Path(a.data) / "tokenizer").is_dir():
        raise SystemExit(
            f"{a.data}/tokenizer is missing: run `python main.py demo-data --out {a.data}` first"
        )
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(worker, args=(a, port, Path(a.out)), nprocs=a.world, join=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
