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

What lives here: the benchmark driver only. Model building, data and the training step are the project's
own (``lit_rlhf``); nothing here changes how they behave.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

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
ERROR_CHARS = 600  # keep the JSON small when a mode fails with a long message


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


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def environment(threads: int, device: str) -> dict[str, Any]:
    """Library versions and host facts recorded with every row."""
    return {
        "torch": _version("torch"),
        "transformers": _version("transformers"),
        "bitsandbytes": _version("bitsandbytes"),
        "lightning": _version("lightning"),
        "peft": _version("peft"),
        "python": platform.python_version(),
        "host_cpu_count": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "threads": threads,
        "device": device,
        # Other processes share these cores: the 1-minute load average when the mode started says how busy.
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
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


def fmt_cell(value: Any, digits: int = 0, yes: str = "PASS", no: str = "FAIL") -> str:
    """One markdown table cell, shared by every bench script: None as '-', thousands separators, and a
    verdict word for booleans."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return yes if value else no
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


_fmt = fmt_cell


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a GitHub markdown table; a failed row shows its error in the last column."""
    head = (
        "| mode | precision | tokens/s | response tokens/s | step ms (mean) | step ms (median) "
        "| peak RSS MiB | RSS delta MiB | CUDA peak MiB | trainable params | error |"
    )
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        error = (r.get("error") or "").replace("|", "\\|").replace("\n", " ")[:120]
        cells = [
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
            error,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write `obj` as indented JSON, atomically (lit_rlhf.atomic)."""
    from lit_rlhf.atomic import write_json

    write_json(path, obj, newline=True)


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


def run_mode_subprocess(mode: str, precision: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Run one (mode, precision) in a fresh interpreter and return its row (an error row if it died)."""
    row_path = workdir / f"row-{mode}-{precision}.json"
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--one", mode,
        "--precision", precision,
        "--workdir", str(workdir),
        "--row-out", str(row_path),
        "--steps", str(args.steps),
        "--warmup", str(args.warmup),
        "--batch-size", str(args.batch_size),
        "--threads", str(args.threads),
        "--device", args.device,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=MODE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return empty_row(mode, precision, f"timed out after {MODE_TIMEOUT_S} s")
    if row_path.is_file():
        return json.loads(row_path.read_text())
    tail = (proc.stderr or proc.stdout).strip()[-ERROR_CHARS:]
    return empty_row(mode, precision, f"subprocess exited {proc.returncode}: {tail}")


def run_all(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every requested (mode, precision) in turn, each in its own subprocess."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="sft_bench_") as tmp:
        workdir = Path(tmp)
        print(f"preparing demo data and base model in {workdir} ...", flush=True)
        prepare_workdir(workdir, n_train=args.steps * args.batch_size)
        for mode in args.modes:
            for precision in args.precisions:
                print(f"running {mode} / {precision} ...", flush=True)
                row = run_mode_subprocess(mode, precision, args, workdir)
                status = row["error"] or f"{row['tokens_per_s']:,.0f} tokens/s"
                print(f"  {status}", flush=True)
                rows.append(row)
    return rows


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
    trainer = L.Trainer(
        accelerator=args.device,
        devices=1,
        precision=precision,
        max_steps=args.steps,
        gradient_clip_val=1.0,  # as configs/demo/sft.yaml: clipping is part of a real step's cost
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[timer],
    )
    cuda = args.device == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    baseline = peak_rss_mb()
    trainer.fit(module, datamodule=data)
    peak = peak_rss_mb()
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


def run_child(args: argparse.Namespace) -> None:
    """`--one MODE`: measure, and write the row (or the error) to --row-out."""
    try:
        row = train_one(args.one, args.precision, args)
    except Exception as exc:  # a mode the stack does not support must not sink the whole run
        traceback.print_exc()
        row = empty_row(args.one, args.precision, f"{type(exc).__name__}: {exc}"[:ERROR_CHARS])
    row.update(batch_size=args.batch_size, max_length=MAX_LENGTH, steps=args.steps, warmup=args.warmup)
    row.update(environment(args.threads, args.device))
    write_json_atomic(Path(args.row_out), row)


# ---------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------


def _csv(choices: tuple[str, ...] | list[str]):
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(choices)}; got {text!r}")
        return items

    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=60, help="training steps per mode, warm-up included")
    p.add_argument("--warmup", type=int, default=10, help="leading steps left out of the timing")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in every mode")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    p.add_argument("--modes", type=_csv(list(MODES)), default=list(MODES), help="comma-separated subset")
    p.add_argument("--precisions", type=_csv(PRECISIONS), default=list(PRECISIONS), help="comma-separated")
    # Internal: the parent re-invokes this script with these to measure one mode in a fresh process.
    p.add_argument("--one", choices=list(MODES), help=argparse.SUPPRESS)
    p.add_argument("--precision", choices=PRECISIONS, help=argparse.SUPPRESS)
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    p.add_argument("--row-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    problems = []
    if args.steps <= args.warmup:
        problems.append(f"--steps ({args.steps}) must exceed --warmup ({args.warmup})")
    if args.warmup < 0 or args.batch_size < 1 or args.threads < 1:
        problems.append("--warmup must be >= 0, --batch-size and --threads >= 1")
    if args.one is not None and None in (args.precision, args.workdir, args.row_out):
        problems.append("--one needs --precision, --workdir and --row-out")
    if problems:
        p.error("; ".join(problems))
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.one is not None:
        run_child(args)
        return
    started = time.perf_counter()
    rows = run_all(args)
    write_json_atomic(args.out, rows)
    print()
    print(markdown_table(rows))
    print(f"\nwrote {args.out} ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
