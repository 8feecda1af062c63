"""Sparrow's shared trunk on SmolLM2-135M-Instruct: PPO iteration time and peak memory, LoRA on every layer vs
LoRA on the top 8 / top 4 of its 30 decoder layers (``backbone.top_layers``), same prompts and steps.

Run by hand, not a test (see bench/README.md):

    python bench/shared_trunk.py                          # all, 8, 4; CPU, bf16-mixed like configs/smollm2
    python bench/shared_trunk.py --tops all,8 --iterations 4 --out bench/results/shared_trunk_quick.json

For each case the parent re-invokes this script with ``--one CASE`` in a fresh process (bench/harness.py's
driver, so each peak RSS belongs to one case): the child writes an SFT stage (a LoRA policy adapter, moved off
zero so the policy differs from the reference) and a reward stage (LoRA reward adapter + head) on the bundled
base, both with that case's ``top_layers``, then runs ``--iterations`` PPO iterations of the project's own
PPOModule on the demo world's chat prompts and reports the median seconds per iteration after ``--warmup``, the
share spent generating, and peak RSS.
With top_layers, the rollout's policy, reference, critic and reward passes share one pass of the lower layers (the
reward model on the rows whose sampled tokens are its own sequence: ``rm_rows_shared`` is their share), the updates
reuse that pass's output (no lower pass per minibatch) and never backpropagate through the lower layers; generation
still runs the whole model.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import harness

BUNDLED = "bundled:smollm2-135m-instruct"
LORA = {"r": 16, "alpha": 32, "dropout": 0.0}
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "shared_trunk.json"
TIMEOUT_S = 3600


def _top(case: str) -> int | None:
    return None if case == "all" else int(case)


def child(args: argparse.Namespace) -> dict[str, Any]:
    """One case in this process: stages, PPO iterations, figures."""
    import lightning as L
    import torch

    from lit_rlhf.backbone.build import Backbone
    from lit_rlhf.backbone.config import BackboneConfig, LoraSettings
    from lit_rlhf.backbone.generate import SamplingConfig
    from lit_rlhf.checkpoint.stage_dir import load_stage_dir, save_stage_dir
    from lit_rlhf.data.formatting import PromptFormat
    from lit_rlhf.data.prompts import PPODataModule
    from lit_rlhf.stages.ppo import EvalConfig, KLConfig, PPOConfig, PPOModule, PPOOptimConfig

    torch.set_num_threads(args.threads)
    work = Path(args.workdir) / args.one
    top = _top(args.one)
    torch.manual_seed(0)
    sft = Backbone.build(BackboneConfig(name_or_path=BUNDLED, lora=LoraSettings(**LORA), top_layers=top))
    sft.prompt_format = PromptFormat(system_prompt="Solve the task. Answer with the result only.")
    sft.add_adapter("policy")
    with torch.no_grad():
        for p in sft.adapter_parameters("policy"):
            p.add_(0.01 * torch.randn_like(p))
    save_stage_dir(work / "sft", sft, stage="sft")
    rm, _ = load_stage_dir(work / "sft")
    rm.add_adapter("reward", state=rm.adapter_state("policy"))
    rm.add_head("reward")
    save_stage_dir(
        work / "rm", rm, stage="reward", adapters=["reward"], heads={"reward": {"adapter": "reward"}}
    )
    del sft, rm
    module = PPOModule(
        str(work / "sft"),
        str(work / "rm"),
        optim=PPOOptimConfig(lr=1e-4),
        kl=KLConfig(init_coef=0.3),
        ppo=PPOConfig(ppo_epochs=2, minibatch_size=args.batch // 2),
        sampling=SamplingConfig(max_new_tokens=args.new_tokens),
        eval=EvalConfig(samples_per_step=0),
    )
    times: list[float] = []
    shares: list[float] = []
    rm_rows = {"shared": 0, "all": 0}  # rollout rows the reward model scored from the shared lower pass
    import lit_rlhf.stages.roles as roles_module

    same_tokens = roles_module.same_tokens

    def counted_same_tokens(*args):
        same = same_tokens(*args)
        rm_rows["shared"] += int(same.sum())
        rm_rows["all"] += len(same)
        return same

    roles_module.same_tokens = counted_same_tokens

    class Clock(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            times.append(time.perf_counter() - self.t0)
            shares.append(float(trainer.callback_metrics.get("ppo/gen_share", float("nan"))))

    trainer = harness.trainer(
        max_steps=args.iterations * 4,  # (batch / minibatch) x ppo_epochs optimizer steps per iteration
        accelerator="cpu",
        precision=args.precision,
        callbacks=[Clock()],
    )
    trainer.fit(
        module, PPODataModule(str(Path(args.workdir) / "data" / "rl_prompts.jsonl"), batch_size=args.batch)
    )
    timed = times[args.warmup :]
    return {
        "case": args.one,
        "top_layers": top,
        "trunk_shared": module.roles.shared.trunk is not None,
        "iterations": len(times),
        "seconds_per_iteration": statistics.median(timed),
        "gen_share": statistics.median(shares[args.warmup :]),
        "peak_rss_mb": harness.peak_rss_mb(),
        "rm_rows_shared": rm_rows["shared"] / rm_rows["all"] if rm_rows["all"] else None,
        "trainable_parameters": sum(p.numel() for p in module.roles.policy_parameters()),
    }


def table(rows: list[dict[str, Any]]) -> str:
    base = next((r for r in rows if r["case"] == "all" and "seconds_per_iteration" in r), None)
    lines = [
        "| LoRA on | s / PPO iteration | speed-up | generating | peak RSS (MB) | policy LoRA params |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['case']} | error: {r['error'][:80]} | | | | |")
            continue
        speed = base["seconds_per_iteration"] / r["seconds_per_iteration"] if base else float("nan")
        label = "every layer" if r["case"] == "all" else f"top {r['case']} of 30"
        lines.append(
            f"| {label} | {r['seconds_per_iteration']:.1f} | {speed:.2f}x | {100 * r['gen_share']:.0f}% "
            f"| {r['peak_rss_mb']:.0f} | {r['trainable_parameters']:,} |"
        )
    return "\n".join(lines)


def error_row(case: str, error: str) -> dict[str, Any]:
    """A failed case: its name and what went wrong (the table shows the error in place of the figures)."""
    return {"case": case, "error": error}


def main(argv: list[str] | None = None) -> None:
    p = harness.parser(__doc__)
    p.add_argument("--tops", default="all,8,4", help="cases: 'all' and top-layer counts, comma separated")
    p.add_argument("--iterations", type=int, default=6)
    p.add_argument("--warmup", type=int, default=1, help="iterations left out of the median")
    p.add_argument("--batch", type=int, default=16, help="prompts per rollout (two minibatches, two epochs)")
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--precision", default="bf16-mixed")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(DEFAULT_OUT))
    harness.add_child_flags(p)
    args = p.parse_args(argv)
    harness.check(p, harness.child_problems(args))
    if args.one:
        harness.run_child(args.row_out, lambda: child(args), lambda error: error_row(args.one, error))
        return
    with harness.temp_workdir("shared_trunk_", "the demo world's chat prompts") as work:
        from lit_rlhf.demo.datagen import write_demo_data

        write_demo_data(work / "data", n_train=8, n_val=8, n_rl=16 * args.batch, n_eval=8, row_format="chat")
        rows = harness.run_cases(
            __file__,
            [
                harness.Case((case,), case, lambda error, case=case: error_row(case, error))
                for case in args.tops.split(",")
            ],
            work,
            flags=harness.child_flags(
                args, ("iterations", "warmup", "batch", "new_tokens", "precision", "threads")
            ),
            threads=args.threads,
            timeout_s=TIMEOUT_S,
            status=json.dumps,
        )
    result = {
        "environment": harness.environment(args.threads, "cpu"),
        # the command line as before the harness: --row-out is the child's, not a setting
        "settings": {k: v for k, v in vars(args).items() if k != "row_out"}
        | {"out": harness.shown_path(args.out)},
        "rows": rows,
        "table": table(rows),
    }
    harness.write_json(Path(args.out), result)
    harness.write_text(Path(args.out).with_suffix(".md"), table(rows) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
