"""SFT training throughput and peak memory of the demo model, per quantization mode and precision.

Run by hand, not a test (see bench/README.md):

    python bench/sft_throughput.py                 # every mode, CPU, 2 threads
    python bench/sft_throughput.py --modes lora,4bit-lora --precisions bf16-mixed

The parent process writes a small demo data set and saves a randomly initialised demo GPT-2 with
``save_pretrained`` (quantized modes need weights to load), then re-invokes this script with ``--one MODE``
once per (mode, precision) so that each peak RSS belongs to one mode alone. Each child trains the real
``SFTModule`` + ``SFTDataModule`` with a Lightning ``Trainer`` for ``--steps`` steps and times every step
after the first ``--warmup``. Rows go to ``--out`` as JSON (written atomically) and to stdout as a markdown
table. A mode that fails records its error text instead of numbers.

What lives here: what this benchmark measures (its modes, rows, table and training loop). The
subprocess-per-case driver, argument checks and host records are bench/harness.py's; model building, data and
the training step are the project's own (``lit_rlhf``); nothing here changes how they behave.
"""

from __future__ import annotations

import argparse
import functools
import time
from pathlib import Path
from typing import Any

import harness

# mode -> (backbone quantization, LoRA on). "full" is the full fine-tune of the unquantized base.
MODES: dict[str, tuple[str, bool]] = {
    "full": ("none", False),
    "lora": ("none", True),
    "8bit-lora": ("8bit", True),
    "4bit-lora": ("4bit", True),
}
PRECISIONS = ("32-true", "bf16-mixed")
MAX_LENGTH = 64  # the demo model's n_positions
DEMO_MODEL = {"model_type": "gpt2", "n_layer": 4, "n_embd": 256, "n_head": 4, "n_positions": 64}
LORA = {"r": 16, "alpha": 32, "dropout": 0.0}
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "sft_throughput.json"
MODE_TIMEOUT_S = 1800


_fmt = harness.fmt_cell

# ---------------------------------------------------------------------------------------------------------
# Pure helpers
# ---------------------------------------------------------------------------------------------------------


def throughput(
    step_times: list[float], tokens: list[int], response_tokens: list[int], warmup: int
) -> dict[str, float]:
    """Tokens per second and mean step time over the steps after `warmup`.

    Args:
        step_times: (N,) seconds of each step, end of the previous step to end of this one.
        tokens: (N,) non-pad tokens of each step's batch.
        response_tokens: (N,) tokens of each batch that carry a label (response + eos).
        warmup: leading steps left out (allocator growth, autocast caches, lazy kernel choice).
    """
    timed = step_times[warmup:]
    if not timed:
        raise ValueError(f"no timed steps: {len(step_times)} steps recorded, warm-up {warmup}")
    seconds = sum(timed)
    middle = sorted(timed)[len(timed) // 2]
    return {
        "tokens_per_s": sum(tokens[warmup:]) / seconds,
        "response_tokens_per_s": sum(response_tokens[warmup:]) / seconds,
        "step_time_ms": 1000.0 * seconds / len(timed),
        # Robust to a neighbour process stealing the cores for a few steps; the mean is not.
        "median_step_time_ms": 1000.0 * middle,
        "timed_steps": len(timed),
    }


def empty_row(mode: str, precision: str, error: str | None = None) -> dict[str, Any]:
    """A row with every measured field present and null (a failed mode keeps the same columns)."""
    quantization, lora = MODES[mode]
    return {
        "mode": mode,
        "quantization": quantization,
        "lora": lora,
        "precision": precision,
        "tokens_per_s": None,
        "response_tokens_per_s": None,
        "step_time_ms": None,
        "median_step_time_ms": None,
        "timed_steps": None,
        "peak_rss_mb": None,
        "rss_delta_mb": None,
        "cuda_peak_mb": None,
        "trainable_params": None,
        "final_loss": None,
        "error": error,
    }


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a GitHub markdown table; a failed row shows its error in the last column."""
    columns = (
        "mode", "precision", "tokens/s", "response tokens/s", "step ms (mean)", "step ms (median)",
        "peak RSS MiB", "RSS delta MiB", "CUDA peak MiB", "trainable params", "error",
    )  # fmt: skip
    cells = [
        [
            r["mode"],
            r["precision"],
            _fmt(r["tokens_per_s"]),
            _fmt(r["response_tokens_per_s"]),
            _fmt(r["step_time_ms"], 1),
            _fmt(r["median_step_time_ms"], 1),
            _fmt(r["peak_rss_mb"]),
            _fmt(r["rss_delta_mb"]),
            _fmt(r["cuda_peak_mb"], 1),
            _fmt(r["trainable_params"]),
            harness.error_cell(r.get("error")),
        ]
        for r in rows
    ]
    return harness.md_table(columns, cells)


# ---------------------------------------------------------------------------------------------------------
# Parent: prepare the shared inputs once, then one subprocess per mode
# ---------------------------------------------------------------------------------------------------------


def prepare_workdir(workdir: Path, n_train: int) -> tuple[Path, Path]:
    """Write demo data and a saved random-init demo GPT-2 (+ tokenizer); return (train file, base dir).

    The base is saved with ``save_pretrained`` so every mode, quantized or not, loads the same weights
    through ``name_or_path``.
    """
    from lit_rlhf.backbone.build import Backbone
    from lit_rlhf.backbone.config import BackboneConfig
    from lit_rlhf.demo.datagen import write_demo_data

    paths = write_demo_data(
        workdir / "data", seed=0, n_train=n_train, n_val=16, n_rl=16, n_eval=16, n_pretrain=16
    )
    cfg = BackboneConfig(model_config=dict(DEMO_MODEL), tokenizer=str(paths["tokenizer"]))
    net = Backbone.build(cfg)
    base = workdir / "base"
    net.model.save_pretrained(base)
    net.tokenizer.save_pretrained(base)
    return paths["sft_train"], base


def run_all(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every requested (mode, precision) in turn, each in its own subprocess."""
    with harness.temp_workdir("sft_bench_", "demo data and base model") as work:
        prepare_workdir(work, n_train=args.steps * args.batch_size)
        cases = [
            harness.Case(
                (mode,),
                f"{mode} / {precision}",
                functools.partial(empty_row, mode, precision),
                ("--precision", precision),
            )
            for mode in args.modes
            for precision in args.precisions
        ]
        return harness.run_cases(
            __file__,
            cases,
            work,
            flags=harness.child_flags(args, ("steps", "warmup", "batch_size", "threads", "device")),
            threads=args.threads,
            timeout_s=MODE_TIMEOUT_S,
            status=lambda row: f"{row['tokens_per_s']:,.0f} tokens/s",
        )


# ---------------------------------------------------------------------------------------------------------
# Child: one mode, one precision
# ---------------------------------------------------------------------------------------------------------


def _step_timer_class():
    """The Lightning callback class, defined lazily so the parent never imports lightning for it."""
    import lightning as L
    import torch

    class StepTimer(L.Callback):
        """Records per step: seconds since the previous step ended, non-pad tokens, response tokens.

        End-to-end per step on purpose: the interval covers data loading, forward, backward, gradient
        clipping and the optimizer step, which is what tokens/s means to someone training.
        """

        def __init__(self) -> None:
            self.step_times: list[float] = []
            self.tokens: list[int] = []
            self.response_tokens: list[int] = []
            self._last: float | None = None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if self._last is None:  # the first step is timed from its own start
                self._sync(pl_module)
                self._last = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self._sync(pl_module)
            now = time.perf_counter()
            self.step_times.append(now - self._last)
            self._last = now
            self.tokens.append(int(batch["attention_mask"].sum()))
            self.response_tokens.append(int((batch["labels"] != -100).sum()))

        @staticmethod
        def _sync(pl_module) -> None:
            if pl_module.device.type == "cuda":  # CUDA runs ahead of Python: wait for the real end
                torch.cuda.synchronize(pl_module.device)

    return StepTimer()


def _warm_imports() -> None:
    # Import everything the fit will import lazily, so the RSS delta measures the model and the training,
    # not ~400 MiB of library code (peft pulls in bitsandbytes).
    import bitsandbytes  # noqa: F401
    import peft  # noqa: F401
    from transformers import GPT2LMHeadModel  # noqa: F401

    import lit_rlhf.backbone.build  # noqa: F401


def train_one(mode: str, precision: str, args: argparse.Namespace) -> dict[str, Any]:
    """Fit SFT for args.steps steps in this process and return the measured row."""
    import logging

    import lightning as L
    import torch

    from lit_rlhf.backbone.config import BackboneConfig, LoraSettings
    from lit_rlhf.data.sft import SFTDataModule
    from lit_rlhf.stages.sft import SFTModule

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    _warm_imports()
    L.seed_everything(0, verbose=False)
    quantization, lora = MODES[mode]
    workdir = Path(args.workdir)
    backbone = BackboneConfig(
        name_or_path=str(workdir / "base"),
        quantization=quantization,
        lora=LoraSettings(**LORA) if lora else None,
    )
    module = SFTModule(backbone=backbone)
    data = SFTDataModule(
        str(workdir / "data" / "sft_train.jsonl"), batch_size=args.batch_size, max_length=MAX_LENGTH
    )
    timer = _step_timer_class()
    trainer = harness.trainer(
        accelerator=args.device,
        precision=precision,
        max_steps=args.steps,
        gradient_clip_val=1.0,  # as configs/demo/sft.yaml: clipping is part of a real step's cost
        callbacks=[timer],
    )
    cuda = args.device == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    baseline = harness.peak_rss_mb()
    trainer.fit(module, datamodule=data)
    peak = harness.peak_rss_mb()
    row = empty_row(mode, precision)
    row.update(throughput(timer.step_times, timer.tokens, timer.response_tokens, args.warmup))
    row.update(
        peak_rss_mb=round(peak, 1),
        rss_delta_mb=round(peak - baseline, 1),
        cuda_peak_mb=round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda else None,
        trainable_params=sum(p.numel() for p in module.parameters() if p.requires_grad),
        final_loss=round(float(trainer.callback_metrics["sft/loss"]), 4),
    )
    for key in ("tokens_per_s", "response_tokens_per_s", "step_time_ms", "median_step_time_ms"):
        row[key] = round(row[key], 1)
    return row


def measure_child(args: argparse.Namespace) -> None:
    """`--one MODE`: measure, and write the row (or the error) to --row-out."""

    def settings() -> dict[str, Any]:
        run = (
            harness.pick(args, ("batch_size",))
            | {"max_length": MAX_LENGTH}
            | harness.pick(args, ("steps", "warmup"))
        )
        return run | harness.environment(args.threads, args.device)

    harness.run_child(
        args.row_out,
        lambda: train_one(args.one, args.precision, args),
        functools.partial(empty_row, args.one, args.precision),
        settings,
    )


# ---------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = harness.parser(__doc__)
    p.add_argument("--steps", type=int, default=60, help="training steps per mode, warm-up included")
    p.add_argument("--warmup", type=int, default=10, help="leading steps left out of the timing")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in every mode")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    p.add_argument(
        "--modes", type=harness.csv_choices(list(MODES)), default=list(MODES), help="comma-separated subset"
    )
    p.add_argument(
        "--precisions", type=harness.csv_choices(PRECISIONS), default=list(PRECISIONS), help="comma-separated"
    )
    harness.add_child_flags(p, choices=list(MODES))
    p.add_argument("--precision", choices=PRECISIONS, help=argparse.SUPPRESS)  # the child's one precision
    args = p.parse_args(argv)
    problems = []
    if args.steps <= args.warmup:
        problems.append(f"--steps ({args.steps}) must exceed --warmup ({args.warmup})")
    if args.warmup < 0 or args.batch_size < 1 or args.threads < 1:
        problems.append("--warmup must be >= 0, --batch-size and --threads >= 1")
    harness.check(p, problems + harness.child_problems(args, also=("precision",)))
    return args


def measure_all(args: argparse.Namespace) -> tuple[list[dict[str, Any]], str]:
    """Every case, then (the rows for --out, the table printed)."""
    rows = run_all(args)
    return rows, markdown_table(rows)


def main(argv: list[str] | None = None) -> None:
    harness.serve(parse_args(argv), measure_child, measure_all)


if __name__ == "__main__":
    main()
