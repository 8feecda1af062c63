"""Reward-model training cost per comparison: K-wise scoring vs scoring every pair on its own (issue 3).

Run by hand, not a test (see bench/README.md):

    python bench/rm_kwise.py                       # K=4 and K=9, both layouts, CPU, 2 threads
    python bench/rm_kwise.py --ks 9 --steps 60

InstructGPT scores each of a prompt's K responses once and learns from all C(K,2) pairs among them, so a
comparison costs K / C(K,2) = 2/(K-1) forward sequences; scoring each pair independently (the ``pairs``
layout of ComparisonDataModule) costs 2. The parent writes synthetic comparisons (random demo-world responses,
random rankings without ties, so every prompt yields exactly C(K,2) pairs) and saves a randomly initialised demo
GPT-2 as an SFT stage directory. It then re-invokes this script with ``--one K LAYOUT`` once per case, each in
a fresh process, where the real ``RewardModule`` + ``ComparisonDataModule`` train with a Lightning ``Trainer``
for ``--steps`` steps. Both layouts forward the same number of sequences per step (``--seqs-per-step``), so
their step times are alike and the comparisons per step carry the difference.

Sequences forwarded are counted by a hook on the transformer itself (not inferred from the batch); comparisons
are the (better, worse) pairs of each batch. The script checks, printing PASS/FAIL, that K-wise forwards at
least (K-1)/2 times fewer sequences per comparison than the pairs layout (theory: K-1 times).

What lives here: what this benchmark measures (its cases, rows, tables and training loop). The
subprocess-per-case driver, argument checks and host records are bench/harness.py's; the reward model, the data
layouts and the loss are the project's own (``lit_rlhf``); nothing here changes how they behave.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

import harness

LAYOUTS = ("kwise", "pairs")
MAX_LENGTH = 64  # the demo model's n_positions
DEMO_MODEL = {"model_type": "gpt2", "n_layer": 4, "n_embd": 256, "n_head": 4, "n_positions": 64}
LORA = {"r": 16, "alpha": 32, "dropout": 0.0}  # configs/demo/rm.yaml
RESPONSE_WORDS = (*"abcdefghijkl", *"0123456789", "sure", "here", ":", "done", "ok")
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "rm_kwise.json"
CASE_TIMEOUT_S = 1800


_fmt = harness.fmt_cell

# ---------------------------------------------------------------------------------------------------------
# Pure helpers
# ---------------------------------------------------------------------------------------------------------


def theory_seqs_per_comparison(k: int, layout: str) -> float:
    """Forward sequences per learned comparison: K / C(K,2) = 2/(K-1) for K-wise, 2 for independent pairs."""
    return 2.0 / (k - 1) if layout == "kwise" else 2.0


def prompts_per_step(seqs_per_step: int, k: int, layout: str) -> int:
    """DataModule batch size giving `seqs_per_step` sequences: prompts of K, or pair rows of 2."""
    per_item = k if layout == "kwise" else 2
    if seqs_per_step % per_item:
        raise ValueError(f"--seqs-per-step {seqs_per_step} is not a multiple of {per_item} ({layout}, K={k})")
    return seqs_per_step // per_item


def count_pairs(ranks: list[int], group: list[int]) -> int:
    """(better, worse) pairs in a flattened batch: unequal ranks within the same group.

    Args:
        ranks: (N,) rank of each sequence within its prompt (0 = best).
        group: (N,) prompt index of each sequence.
    """
    by_group: dict[int, list[int]] = {}
    for r, g in zip(ranks, group, strict=True):
        by_group.setdefault(g, []).append(r)
    return sum(
        1 for rs in by_group.values() for i in range(len(rs)) for j in range(i + 1, len(rs)) if rs[i] != rs[j]
    )


def synthetic_comparisons(prompts: list[str], k: int, rng: random.Random) -> list[dict[str, Any]]:
    """One comparison row per prompt: K distinct random demo-world responses and a random tie-free ranking."""
    rows = []
    for prompt in prompts:
        responses: list[str] = []
        while len(responses) < k:
            words = rng.choices(RESPONSE_WORDS, k=rng.randint(1, 8))
            text = " ".join(words)
            if text not in responses:
                responses.append(text)
        ranking = list(range(k))
        rng.shuffle(ranking)
        rows.append({"prompt": prompt, "responses": responses, "ranking": ranking})
    return rows


def rates(
    step_times: list[float], cpu_times: list[float], seqs: list[int], pairs: list[int], warmup: int
) -> dict[str, float]:
    """Comparisons/s, sequences/s and sequences per comparison over the steps after `warmup`.

    Args:
        step_times: (N,) seconds per step, end of the previous step to the end of this one.
        cpu_times: (N,) CPU seconds this process (all its threads) spent in the same intervals.
        seqs: (N,) sequences the transformer forwarded in each step.
        pairs: (N,) comparisons (pairs) each step's loss learned from.
    """
    timed = step_times[warmup:]
    if not timed:
        raise ValueError(f"no timed steps: {len(step_times)} steps recorded, warm-up {warmup}")
    seconds, n_seqs, n_pairs = sum(timed), sum(seqs[warmup:]), sum(pairs[warmup:])
    median = sorted(timed)[len(timed) // 2]
    return {
        "comparisons_per_s": n_pairs / seconds,
        # Robust to a neighbour process stealing the cores for a few steps; the mean is not.
        "comparisons_per_s_median_step": n_pairs / len(timed) / median,
        # CPU time barely grows when other processes take the cores, so its ratios compare layouts best.
        "comparisons_per_cpu_s": n_pairs / sum(cpu_times[warmup:]),
        "seqs_per_s": n_seqs / seconds,
        "seqs_per_comparison": n_seqs / n_pairs,
        "step_time_ms": 1000.0 * seconds / len(timed),
        "median_step_time_ms": 1000.0 * median,
        "timed_steps": len(timed),
        "timed_seqs": n_seqs,
        "timed_comparisons": n_pairs,
    }


def _over(a: dict[str, Any] | None, b: dict[str, Any] | None, key: str) -> float | None:
    """a[key] / b[key], or None when either case is missing or failed."""
    if a is None or b is None or not a.get(key) or not b.get(key):
        return None
    return a[key] / b[key]


def verdicts(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per K: forward passes per comparison, pairs over K-wise, against the (K-1)/2 bound; throughput ratio."""
    out = []
    for k in sorted({r["k"] for r in rows}):
        by = {r["layout"]: r for r in rows if r["k"] == k}
        kw, pw = by.get("kwise"), by.get("pairs")
        fewer = _over(pw, kw, "seqs_per_comparison")
        out.append(
            {
                "k": k,
                "fewer_forwards": fewer,
                "theory_fewer_forwards": float(k - 1),
                "required_fewer_forwards": (k - 1) / 2,
                "speedup_comparisons_per_s": _over(kw, pw, "comparisons_per_s"),
                "speedup_median_step": _over(kw, pw, "comparisons_per_s_median_step"),
                "speedup_cpu": _over(kw, pw, "comparisons_per_cpu_s"),
                "passed": fewer is not None and fewer >= (k - 1) / 2,
            }
        )
    return out


def empty_row(k: int, layout: str, error: str | None = None) -> dict[str, Any]:
    """A row with every measured field present and null (a failed case keeps the same columns)."""
    return {
        "k": k,
        "layout": layout,
        "batch_items": None,
        "comparisons_per_s": None,
        "comparisons_per_s_median_step": None,
        "comparisons_per_cpu_s": None,
        "seqs_per_s": None,
        "seqs_per_comparison": None,
        "theory_seqs_per_comparison": theory_seqs_per_comparison(k, layout),
        "step_time_ms": None,
        "median_step_time_ms": None,
        "timed_steps": None,
        "timed_seqs": None,
        "timed_comparisons": None,
        "peak_rss_mb": None,
        "final_loss": None,
        "final_accuracy": None,
        "error": error,
    }


def markdown_tables(rows: list[dict[str, Any]], checks: list[dict[str, Any]]) -> str:
    """The per-case table and the per-K verdict table, GitHub markdown."""
    columns = (
        "K", "layout", "batch", "seqs/step", "comparisons/step", "comparisons/s (mean / median step)",
        "comparisons per CPU-s", "seqs/comparison (measured)", "seqs/comparison (theory)", "step ms (mean)",
        "step ms (median)", "peak RSS MiB", "final loss", "error",
    )  # fmt: skip
    cells = []
    for r in rows:
        steps = r["timed_steps"] or 0
        cells.append(
            [
                str(r["k"]),
                r["layout"],
                _fmt(r["batch_items"]),
                _fmt(r["timed_seqs"] / steps if steps else None),
                _fmt(r["timed_comparisons"] / steps if steps else None),
                f"{_fmt(r['comparisons_per_s'])} / {_fmt(r['comparisons_per_s_median_step'])}",
                _fmt(r["comparisons_per_cpu_s"]),
                _fmt(r["seqs_per_comparison"], 3),
                _fmt(r["theory_seqs_per_comparison"], 3),
                _fmt(r["step_time_ms"], 1),
                _fmt(r["median_step_time_ms"], 1),
                _fmt(r["peak_rss_mb"]),
                _fmt(r["final_loss"], 3),
                harness.error_cell(r.get("error")),
            ]
        )
    check_columns = (
        "K", "fewer forwards per comparison (measured)", "theory K-1", "required (K-1)/2",
        "speedup: comparisons/s (mean / median step)", "speedup: comparisons per CPU-s", "check",
    )  # fmt: skip
    check_cells = [
        [
            str(c["k"]),
            _fmt(c["fewer_forwards"], 2),
            _fmt(c["theory_fewer_forwards"], 0),
            _fmt(c["required_fewer_forwards"], 1),
            f"{_fmt(c['speedup_comparisons_per_s'], 2)} / {_fmt(c['speedup_median_step'], 2)}",
            _fmt(c["speedup_cpu"], 2),
            _fmt(c["passed"]),
        ]
        for c in checks
    ]
    return harness.md_table(columns, cells) + "\n\n" + harness.md_table(check_columns, check_cells)


# ---------------------------------------------------------------------------------------------------------
# Parent: prepare the shared inputs once, then one subprocess per (K, layout)
# ---------------------------------------------------------------------------------------------------------


def prepare_workdir(workdir: Path, ks: list[int], n_prompts: int) -> Path:
    """Write synthetic comparisons for every K and a random-init demo GPT-2 SFT stage; return the stage dir."""
    from lit_rlhf.backbone.build import Backbone
    from lit_rlhf.backbone.config import BackboneConfig
    from lit_rlhf.checkpoint.stage_dir import save_stage_dir
    from lit_rlhf.data.io import write_jsonl
    from lit_rlhf.demo.datagen import write_demo_data

    paths = write_demo_data(
        workdir / "data", seed=0, n_train=n_prompts, n_val=16, n_rl=16, n_eval=16, n_pretrain=16
    )
    prompts = [json.loads(line)["prompt"] for line in paths["sft_train"].read_text().splitlines()]
    for k in ks:
        rows = synthetic_comparisons(prompts, k, random.Random(k))
        write_jsonl(workdir / f"comparisons_k{k}.jsonl", rows)
    net = Backbone.build(BackboneConfig(model_config=dict(DEMO_MODEL), tokenizer=str(paths["tokenizer"])))
    save_stage_dir(workdir / "sft", net, stage="sft")
    return workdir / "sft"


def run_all(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every requested (K, layout) in turn, each in its own subprocess, on the same comparisons."""
    # Enough prompts that the K-wise layout (fewest prompts per step at K=4) never repeats one.
    n_prompts = args.steps * max(prompts_per_step(args.seqs_per_step, k, "kwise") for k in args.ks)
    what = f"{n_prompts} synthetic comparisons per K and an SFT stage"
    with harness.temp_workdir("rm_kwise_bench_", what) as work:
        prepare_workdir(work, args.ks, n_prompts)
        cases = [
            harness.Case((str(k), layout), f"K={k} / {layout}", functools.partial(empty_row, k, layout))
            for k in args.ks
            for layout in args.layouts
        ]
        return harness.run_cases(
            __file__,
            cases,
            work,
            flags=harness.child_flags(
                args, ("steps", "warmup", "seqs_per_step", "precision", "threads", "device")
            ),
            threads=args.threads,
            timeout_s=CASE_TIMEOUT_S,
            status=lambda row: f"{row['comparisons_per_s']:,.0f} comparisons/s",
        )


# ---------------------------------------------------------------------------------------------------------
# Child: one K, one layout
# ---------------------------------------------------------------------------------------------------------


def _counter_class():
    """The Lightning callback class, defined lazily so the parent never imports lightning for it."""
    import lightning as L
    import torch

    class ForwardCounter(L.Callback):
        """Per step: seconds since the previous step ended, sequences forwarded, comparisons learned from.

        Sequences are counted by a forward pre-hook on the transformer, so every forward the reward model
        really runs is seen, whatever the module does with the batch.
        """

        def __init__(self) -> None:
            self.step_times: list[float] = []
            self.cpu_times: list[float] = []
            self.seqs: list[int] = []
            self.pairs: list[int] = []
            self._forwarded = 0
            self._last: float | None = None
            self._last_cpu = 0.0

        def on_fit_start(self, trainer, pl_module) -> None:
            hf = pl_module.net.hf_model
            decoder = getattr(hf, hf.base_model_prefix)
            decoder.register_forward_pre_hook(self._count, with_kwargs=True)

        def _count(self, module, args, kwargs) -> None:
            ids = kwargs.get("input_ids", args[0] if args else None)
            self._forwarded += int(ids.shape[0])

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self._forwarded = 0
            if self._last is None:  # the first step is timed from its own start
                self._sync(pl_module)
                self._last, self._last_cpu = time.perf_counter(), time.process_time()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self._sync(pl_module)
            now, cpu = time.perf_counter(), time.process_time()
            self.step_times.append(now - self._last)
            self.cpu_times.append(cpu - self._last_cpu)
            self._last, self._last_cpu = now, cpu
            self.seqs.append(self._forwarded)
            self.pairs.append(count_pairs(batch["ranks"].tolist(), batch["group"].tolist()))

        @staticmethod
        def _sync(pl_module) -> None:
            if pl_module.device.type == "cuda":  # CUDA runs ahead of Python: wait for the real end
                torch.cuda.synchronize(pl_module.device)

    return ForwardCounter()


def train_one(k: int, layout: str, args: argparse.Namespace) -> dict[str, Any]:
    """Fit the reward model for args.steps steps in this process and return the measured row."""
    import logging

    import lightning as L
    import torch

    from lit_rlhf.backbone.config import LoraSettings
    from lit_rlhf.data.comparisons import ComparisonDataModule
    from lit_rlhf.stages.common import OptimConfig
    from lit_rlhf.stages.reward import RewardModule

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    L.seed_everything(0, verbose=False)
    workdir = Path(args.workdir)
    batch = prompts_per_step(args.seqs_per_step, k, layout)
    module = RewardModule(
        init_from=str(workdir / "sft"),
        lora=LoraSettings(**LORA),
        center_coef=0.001,
        max_length=MAX_LENGTH,
        optim=OptimConfig(lr=1e-3, warmup_steps=args.warmup, weight_decay=0.0),
    )
    data = ComparisonDataModule(
        str(workdir / f"comparisons_k{k}.jsonl"), batch_size=batch, max_length=MAX_LENGTH, layout=layout
    )
    counter = _counter_class()
    trainer = harness.trainer(
        accelerator=args.device,
        precision=args.precision,
        max_steps=args.steps,
        gradient_clip_val=1.0,  # as configs/demo/rm.yaml
        callbacks=[counter],
    )
    trainer.fit(module, datamodule=data)
    row = empty_row(k, layout)
    row.update(rates(counter.step_times, counter.cpu_times, counter.seqs, counter.pairs, args.warmup))
    cm = trainer.callback_metrics
    row.update(
        batch_items=batch,
        peak_rss_mb=round(harness.peak_rss_mb(), 1),
        final_loss=round(float(cm["reward/loss"]), 4),
        final_accuracy=round(float(cm["reward/accuracy"]), 4) if "reward/accuracy" in cm else None,
    )
    rounded = ("comparisons_per_s", "comparisons_per_s_median_step", "comparisons_per_cpu_s", "seqs_per_s")
    for key in (*rounded, "step_time_ms", "median_step_time_ms"):
        row[key] = round(row[key], 1)
    row["seqs_per_comparison"] = round(row["seqs_per_comparison"], 4)
    return row


def measure_child(args: argparse.Namespace) -> None:
    """`--one K LAYOUT`: measure, and write the row (or the error) to --row-out."""
    k, layout = int(args.one[0]), args.one[1]

    def settings() -> dict[str, Any]:
        run = {
            "seqs_per_step": args.seqs_per_step,
            "pairs_per_prompt": math.comb(k, 2),
            "max_length": MAX_LENGTH,
        }
        return (
            run
            | harness.pick(args, ("precision", "steps", "warmup"))
            | harness.environment(args.threads, args.device)
        )

    harness.run_child(
        args.row_out, lambda: train_one(k, layout, args), functools.partial(empty_row, k, layout), settings
    )


# ---------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = harness.parser(__doc__)
    p.add_argument("--ks", type=harness.csv_ints(2, "K"), default=[4, 9], help="comma-separated K values")
    p.add_argument(
        "--layouts", type=harness.csv_choices(LAYOUTS), default=list(LAYOUTS), help="comma-separated subset"
    )
    p.add_argument("--steps", type=int, default=40, help="training steps per case, warm-up included")
    p.add_argument("--warmup", type=int, default=10, help="leading steps left out of the timing")
    p.add_argument(
        "--seqs-per-step",
        type=int,
        default=36,
        help="sequences forwarded per step in every case (K and 2 divide it)",
    )
    p.add_argument("--precision", default="bf16-mixed", help="Lightning precision (configs/demo/rm.yaml)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in every case")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    harness.add_child_flags(p, nargs=2, metavar=("K", "LAYOUT"))
    args = p.parse_args(argv)
    problems = []
    if args.steps <= args.warmup:
        problems.append(f"--steps ({args.steps}) must exceed --warmup ({args.warmup})")
    if args.warmup < 0 or args.threads < 1:
        problems.append("--warmup must be >= 0 and --threads >= 1")
    # A child measures one (K, layout), given by --one; the parent does not pass it --ks or --layouts.
    cases = (
        [(int(args.one[0]), args.one[1])] if args.one else [(k, lay) for k in args.ks for lay in args.layouts]
    )
    for k, layout in cases:
        if args.seqs_per_step % (k if layout == "kwise" else 2):
            problems.append(f"--seqs-per-step {args.seqs_per_step} is not a multiple of K={k} and of 2")
    harness.check(p, problems + harness.child_problems(args))
    return args


def measure_all(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """Every case, then (the cases and checks for --out, the tables and a verdict line per K printed)."""
    rows = run_all(args)
    checks = verdicts(rows)
    lines = [
        f"K={c['k']}: K-wise forwards {_fmt(c['fewer_forwards'], 2)}x fewer sequences per comparison "
        f"(required >= {c['required_fewer_forwards']:.1f}x): {_fmt(c['passed'])}"
        for c in checks
    ]
    return {"cases": rows, "checks": checks}, "\n".join([markdown_tables(rows, checks), *lines])


def main(argv: list[str] | None = None) -> None:
    result = harness.serve(parse_args(argv), measure_child, measure_all)
    if result is not None and not all(c["passed"] for c in result["checks"]):
        sys.exit(1)


if __name__ == "__main__":
    main()
