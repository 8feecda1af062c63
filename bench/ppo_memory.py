"""Peak memory of SFT vs PPO with shared-base LoRA roles vs PPO with four full copies; PPO step timing (issue 4).

Run by hand, not a test (see bench/README.md):

    python bench/ppo_memory.py                     # every mode, CPU, 2 threads
    python bench/ppo_memory.py --update-micro-batch 16 --out bench/results/ppo_memory_micro16.json
    python bench/ppo_memory.py --device cuda --threads 8 --out bench/results/ppo_memory_cuda.json

The parent writes a small demo data set and three stage directories on one randomly initialised demo GPT-2:
an SFT stage (full weights), a reward stage holding a LoRA ``reward`` adapter + head on that base, and a
reward stage holding full weights + head. It then re-invokes this script with ``--one MODE`` once per mode,
each in a fresh process so that each peak RSS belongs to one mode alone:

    baseline      imports the same libraries as the others and stops: the RSS every process pays anyway
    sft           SFTModule, full fine-tune, a few steps
    ppo-shared    PPOModule on the LoRA reward stage: policy/reward/critic adapters on one frozen base,
                  reference = adapters off
    ppo-separate  PPOModule on the full-weight reward stage: four full copies, policy and critic trained

Every training mode forwards the same batch size (SFT batch = PPO rollout batch = PPO minibatch). Besides peak
RSS (and ``torch.cuda.max_memory_allocated`` with ``--device cuda``), each mode reports the bytes of tensor
storage it holds, counting a storage shared by several tensors once: weights (parameters + buffers),
gradients and optimizer state. At 3.2M parameters those are tiny next to the ~400 MiB the libraries cost, but
they are the part that scales with the model. PPO modes also report the rollout (generation) tokens/s, the
time per PPO iteration and the share of it spent generating, as PPOModule logs them.

What lives here: what this benchmark measures (its modes, rows, tables and training loop). The
subprocess-per-case driver, argument checks and host records are bench/harness.py's; models, roles, data and
training steps are the project's own (``lit_rlhf``); nothing here changes how they behave.
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import harness

MODES = ("baseline", "sft", "ppo-shared", "ppo-separate")
TRAINING_MODES = MODES[1:]
MAX_LENGTH = 64  # the demo model's n_positions
DEMO_MODEL = {"model_type": "gpt2", "n_layer": 4, "n_embd": 256, "n_head": 4, "n_positions": 64}
LORA = {"r": 16, "alpha": 32, "dropout": 0.0}  # configs/demo/rm.yaml
PTX_HOLDOUT = 16
TARGET_RATIO = 1.5  # issue 4: shared-base PPO should need at most 1.5x the memory of SFT
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "ppo_memory.json"
MODE_TIMEOUT_S = 1800
# what each row records of the command line besides batch_size (and every child is given, with threads, device)
SETTINGS = (
    "sft_steps",
    "ppo_iters",
    "ppo_epochs",
    "max_new_tokens",
    "warmup",
    "precision",
    "update_micro_batch",
)
MIB = 2**20


_fmt = harness.fmt_cell

# ---------------------------------------------------------------------------------------------------------
# Pure helpers
# ---------------------------------------------------------------------------------------------------------


def unique_storage_bytes(tensors: Iterable[Any]) -> int:
    """Bytes of the distinct storages behind `tensors` (tied weights and views counted once; None skipped)."""
    seen: dict[tuple[str, int], int] = {}
    for t in tensors:
        if t is None:
            continue
        storage = t.untyped_storage()
        seen[(str(t.device), storage.data_ptr())] = storage.nbytes()
    return sum(seen.values())


def ppo_timing(metrics: list[dict[str, float]], batch_size: int, warmup: int) -> dict[str, float]:
    """Rollout tokens/s, time per PPO iteration and generation share over the iterations after `warmup`.

    Args:
        metrics: per iteration, PPOModule's ``ppo/gen_tokens_per_s``, ``ppo/gen_share``, ``ppo/step_time``
            (seconds) and ``ppo/response_length`` (mean response tokens per sequence).
        batch_size: prompts per rollout, to turn the mean response length into the tokens generated.
    """
    timed = metrics[warmup:]
    if not timed:
        raise ValueError(f"no timed PPO iterations: {len(metrics)} recorded, warm-up {warmup}")
    tokens = [m["ppo/response_length"] * batch_size for m in timed]
    gen_seconds = [n / m["ppo/gen_tokens_per_s"] for n, m in zip(tokens, timed, strict=True)]
    step_seconds = [m["ppo/step_time"] for m in timed]
    return {
        # totals over totals: a mean of per-step rates would overweight the short, fast rollouts
        "gen_tokens_per_s": sum(tokens) / sum(gen_seconds),
        "ppo_step_ms": 1000.0 * sum(step_seconds) / len(timed),
        "ppo_step_ms_median": 1000.0 * sorted(step_seconds)[len(timed) // 2],
        "gen_share": sum(m["ppo/gen_share"] * m["ppo/step_time"] for m in timed) / sum(step_seconds),
        "timed_iterations": len(timed),
    }


MEASURES = (
    ("state_mb", "weights + grads + optimizer state MiB"),
    ("weights_mb", "weights (params + buffers) MiB"),
    ("rss_over_baseline_mb", "peak RSS over the baseline process MiB"),
    ("rss_start_over_baseline_mb", "peak RSS before the first step, over the baseline MiB"),
    ("peak_rss_mb", "peak RSS MiB"),
    ("cuda_peak_mb", "CUDA peak MiB"),
)


def _ratio(value: float | None, reference: float | None) -> float | None:
    return value / reference if value is not None and reference else None


def ratios(rows: list[dict[str, Any]], target: float = TARGET_RATIO) -> list[dict[str, Any]]:
    """Per memory measure: the SFT value, each PPO mode's value and ratio to SFT, and shared <= target x SFT."""
    by = {r["mode"]: r for r in rows}
    out = []
    for key, label in MEASURES:
        values = {m: by[m].get(key) if m in by else None for m in TRAINING_MODES}
        shared = _ratio(values["ppo-shared"], values["sft"])
        out.append(
            {
                "measure": key,
                "label": label,
                **values,
                "shared_over_sft": shared,
                "separate_over_sft": _ratio(values["ppo-separate"], values["sft"]),
                "target": target,
                "passed": None if shared is None else shared <= target,
            }
        )
    return out


def empty_row(mode: str, error: str | None = None) -> dict[str, Any]:
    """A row with every measured field present and null (a failed mode keeps the same columns)."""
    return {
        "mode": mode,
        "trainable_params": None,
        "weights_mb": None,
        "grads_mb": None,
        "optimizer_mb": None,
        "state_mb": None,
        "peak_rss_mb": None,
        "rss_before_fit_mb": None,
        "rss_train_start_mb": None,
        "rss_delta_in_process_mb": None,
        "rss_over_baseline_mb": None,
        "rss_start_over_baseline_mb": None,
        "cuda_peak_mb": None,
        "step_ms_median": None,
        "step_cpu_s": None,
        "gen_tokens_per_s": None,
        "ppo_step_ms": None,
        "ppo_step_ms_median": None,
        "gen_share": None,
        "timed_iterations": None,
        "final_loss": None,
        "error": error,
    }


def markdown_tables(rows: list[dict[str, Any]], checks: list[dict[str, Any]]) -> str:
    """The per-mode table and the ratio table, GitHub markdown."""
    columns = (
        "mode", "trainable params", "weights MiB", "grads MiB", "optimizer MiB", "state MiB", "peak RSS MiB",
        "RSS over baseline MiB: before 1st step / peak", "CUDA peak MiB", "step ms (median)", "step CPU-s (mean)",
        "rollout tokens/s", "PPO step ms (mean / median)", "generation share", "error",
    )  # fmt: skip
    cells = []
    for r in rows:
        ppo = (
            f"{_fmt(r['ppo_step_ms'])} / {_fmt(r['ppo_step_ms_median'])}"
            if r["ppo_step_ms"] is not None
            else "-"
        )
        share = f"{100 * r['gen_share']:.0f}%" if r["gen_share"] is not None else "-"
        cells.append(
            [
                r["mode"],
                _fmt(r["trainable_params"]),
                _fmt(r["weights_mb"], 2),
                _fmt(r["grads_mb"], 2),
                _fmt(r["optimizer_mb"], 2),
                _fmt(r["state_mb"], 2),
                _fmt(r["peak_rss_mb"]),
                f"{_fmt(r['rss_start_over_baseline_mb'])} / {_fmt(r['rss_over_baseline_mb'])}",
                _fmt(r["cuda_peak_mb"], 1),
                _fmt(r["step_ms_median"]),
                _fmt(r["step_cpu_s"], 2),
                _fmt(r["gen_tokens_per_s"]),
                ppo,
                share,
                harness.error_cell(r.get("error")),
            ]
        )
    ratio_columns = (
        "measure", "SFT", "PPO shared", "PPO separate", "shared / SFT", "separate / SFT", "shared <= 1.5x SFT",
    )  # fmt: skip
    ratio_cells = [
        [
            c["label"],
            _fmt(c["sft"], 2),
            _fmt(c["ppo-shared"], 2),
            _fmt(c["ppo-separate"], 2),
            _fmt(c["shared_over_sft"], 2),
            _fmt(c["separate_over_sft"], 2),
            _fmt(c["passed"]),
        ]
        for c in checks
        if c["sft"] is not None or c["ppo-shared"] is not None  # e.g. no CUDA peak on a CPU run
    ]
    return harness.md_table(columns, cells) + "\n\n" + harness.md_table(ratio_columns, ratio_cells)


# ---------------------------------------------------------------------------------------------------------
# Parent: prepare the shared inputs once, then one subprocess per mode
# ---------------------------------------------------------------------------------------------------------


def prepare_workdir(workdir: Path, n_sft: int, n_prompts: int) -> None:
    """Demo data, an SFT stage (full weights) and two reward stages on it: LoRA adapter + head, full + head."""
    import torch

    from lit_rlhf.backbone.build import Backbone
    from lit_rlhf.backbone.config import BackboneConfig
    from lit_rlhf.checkpoint.stage_dir import load_stage_dir, save_stage_dir
    from lit_rlhf.demo.datagen import write_demo_data

    paths = write_demo_data(
        workdir / "data", seed=0, n_train=n_sft, n_val=16, n_rl=n_prompts, n_eval=16,
        n_pretrain=n_prompts + PTX_HOLDOUT,
    )  # fmt: skip
    torch.manual_seed(0)
    sft = Backbone.build(BackboneConfig(model_config=dict(DEMO_MODEL), tokenizer=str(paths["tokenizer"])))
    save_stage_dir(workdir / "sft", sft, stage="sft")
    for name, lora in (("rm-lora", True), ("rm-full", False)):
        rm, _ = load_stage_dir(workdir / "sft", backbone_overrides={"lora": LORA} if lora else None)
        if lora:
            rm.add_adapter("reward")
        rm.add_head("reward")
        heads = {"reward": {"adapter": "reward" if lora else None, "bias": 0.0}}
        save_stage_dir(workdir / name, rm, stage="reward", heads=heads)


def run_all(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The baseline process first, then every requested mode, each in its own subprocess."""
    with harness.temp_workdir("ppo_memory_bench_", "demo data and stage directories") as work:
        prepare_workdir(
            work, n_sft=args.sft_steps * args.batch_size, n_prompts=args.ppo_iters * args.batch_size
        )
        rows = harness.run_cases(
            __file__,
            [
                harness.Case((mode,), mode, functools.partial(empty_row, mode))
                for mode in ("baseline", *args.modes)
            ],
            work,
            flags=harness.child_flags(args, ("batch_size", *SETTINGS, "threads", "device")),
            threads=args.threads,
            timeout_s=MODE_TIMEOUT_S,
            status=lambda row: f"peak RSS {row['peak_rss_mb']:,.0f} MiB",
        )
    baseline = rows[0]["peak_rss_mb"]
    for r in rows[1:]:
        for key, over in (
            ("peak_rss_mb", "rss_over_baseline_mb"),
            ("rss_train_start_mb", "rss_start_over_baseline_mb"),
        ):
            if baseline is not None and r[key] is not None:
                r[over] = round(r[key] - baseline, 1)
    return rows


# ---------------------------------------------------------------------------------------------------------
# Child: one mode
# ---------------------------------------------------------------------------------------------------------


def _warm_imports() -> None:
    # The same imports in every mode, the baseline included, so that RSS differences are the mode's own work.
    import bitsandbytes  # noqa: F401
    import lightning  # noqa: F401
    import peft  # noqa: F401
    from transformers import GPT2LMHeadModel  # noqa: F401

    import lit_rlhf.backbone.build  # noqa: F401
    import lit_rlhf.checkpoint.stage_dir  # noqa: F401
    import lit_rlhf.data.prompts  # noqa: F401
    import lit_rlhf.data.sft  # noqa: F401
    import lit_rlhf.stages.ppo  # noqa: F401
    import lit_rlhf.stages.roles  # noqa: F401
    import lit_rlhf.stages.sft  # noqa: F401


def _recorder_class():
    """The Lightning callback class, defined lazily so the parent never imports lightning for it."""
    import lightning as L
    import torch

    class Recorder(L.Callback):
        """Per training batch: wall and CPU seconds, the module's ppo/* metrics; at the end, the tensor bytes held.

        CPU seconds (all threads of this process) barely grow when other processes take the cores, so they
        compare modes better than wall time on a shared machine.
        """

        def __init__(self) -> None:
            self.step_times: list[float] = []
            self.cpu_times: list[float] = []
            self.ppo: list[dict[str, float]] = []
            self.held: dict[str, Any] = {}
            self.rss_train_start = 0.0
            self._last = self._last_cpu = 0.0

        def on_train_start(self, trainer, pl_module) -> None:
            # Models, optimizer and data are set up, no step has run: what the mode holds before activations.
            self.rss_train_start = harness.peak_rss_mb()

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self._sync(pl_module)
            self._last, self._last_cpu = time.perf_counter(), time.process_time()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self._sync(pl_module)
            self.step_times.append(time.perf_counter() - self._last)
            self.cpu_times.append(time.process_time() - self._last_cpu)
            cm = trainer.callback_metrics
            if "ppo/step_time" in cm:
                keys = ("ppo/gen_tokens_per_s", "ppo/gen_share", "ppo/step_time", "ppo/response_length")
                self.ppo.append({k: float(cm[k]) for k in keys})

        def on_train_end(self, trainer, pl_module) -> None:
            # Measured while the optimizer and the last step's gradients are still alive.
            params = list(pl_module.parameters())
            opt_state = [
                v
                for opt in trainer.optimizers
                for s in opt.state.values()
                for v in s.values()
                if torch.is_tensor(v)
            ]
            self.held = {
                "trainable_params": sum(p.numel() for p in params if p.requires_grad),
                "weights": unique_storage_bytes([*params, *pl_module.buffers()]),
                "grads": unique_storage_bytes(p.grad for p in params),
                "optimizer": unique_storage_bytes(opt_state),
            }

        @staticmethod
        def _sync(pl_module) -> None:
            if pl_module.device.type == "cuda":  # CUDA runs ahead of Python: wait for the real end
                torch.cuda.synchronize(pl_module.device)

    return Recorder()


def build_mode(mode: str, args: argparse.Namespace) -> tuple[Any, Any, int, str]:
    """(module, datamodule, max_steps, final-loss metric) of one training mode."""
    from lit_rlhf.backbone.generate import SamplingConfig
    from lit_rlhf.data.prompts import PPODataModule
    from lit_rlhf.data.sft import SFTDataModule
    from lit_rlhf.stages.ppo import EvalConfig, KLConfig, PPOConfig, PPOModule, PPOOptimConfig
    from lit_rlhf.stages.sft import SFTModule

    workdir = Path(args.workdir)
    if mode == "sft":
        # the same saved weights as the PPO modes, so every mode loads its base the same way (memory-mapped)
        module = SFTModule(init_from=str(workdir / "sft"))
        data = SFTDataModule(
            str(workdir / "data" / "sft_train.jsonl"), batch_size=args.batch_size, max_length=MAX_LENGTH
        )
        return module, data, args.sft_steps, "sft/loss"
    # configs/demo/ppo.yaml, with the minibatch equal to the rollout batch so every forward sees one batch size
    module = PPOModule(
        policy_from=str(workdir / "sft"),
        reward_from=str(workdir / ("rm-lora" if mode == "ppo-shared" else "rm-full")),
        ptx_coef=0.5,
        optim=PPOOptimConfig(lr=1e-4),
        kl=KLConfig(init_coef=0.6, adaptive=False),
        ppo=PPOConfig(
            ppo_epochs=args.ppo_epochs,
            minibatch_size=args.batch_size,
            critic_lr=3e-4,
            truncation_penalty=-1.0,
            update_micro_batch_size=args.update_micro_batch,
        ),
        sampling=SamplingConfig(max_new_tokens=args.max_new_tokens, do_sample=True, temperature=1.0),
        eval=EvalConfig(prompts=None, samples_per_step=0),
    )
    data = PPODataModule(
        str(workdir / "data" / "rl_prompts.jsonl"),
        str(workdir / "data" / "pretrain.jsonl"),
        batch_size=args.batch_size,
        ptx_batch_size=args.batch_size,
        ptx_max_length=MAX_LENGTH,
        ptx_holdout=PTX_HOLDOUT,
    )
    # manual optimization: Lightning counts optimizer steps, ppo_epochs per rollout batch
    return module, data, args.ppo_iters * args.ppo_epochs, "ppo/policy_loss"


def measure_one(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    """Import, and for a training mode fit it, in this process; return the measured row."""
    import logging

    import torch

    _warm_imports()
    row = empty_row(mode)
    if mode == "baseline":
        row["peak_rss_mb"] = round(harness.peak_rss_mb(), 1)
        return row
    import lightning as L

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    L.seed_everything(0, verbose=False)
    module, data, max_steps, loss_key = build_mode(mode, args)
    recorder = _recorder_class()
    trainer = harness.trainer(
        accelerator=args.device,
        precision=args.precision,
        max_steps=max_steps,
        gradient_clip_val=1.0 if mode == "sft" else None,  # PPO clips inside its manual step
        callbacks=[recorder],
    )
    cuda = args.device == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    before = harness.peak_rss_mb()
    trainer.fit(module, datamodule=data)
    peak = harness.peak_rss_mb()
    held = recorder.held
    times, cpu = recorder.step_times[args.warmup :], recorder.cpu_times[args.warmup :]
    row.update(
        trainable_params=held["trainable_params"],
        weights_mb=round(held["weights"] / MIB, 3),
        grads_mb=round(held["grads"] / MIB, 3),
        optimizer_mb=round(held["optimizer"] / MIB, 3),
        state_mb=round((held["weights"] + held["grads"] + held["optimizer"]) / MIB, 3),
        peak_rss_mb=round(peak, 1),
        rss_before_fit_mb=round(before, 1),
        rss_train_start_mb=round(recorder.rss_train_start, 1),
        rss_delta_in_process_mb=round(peak - before, 1),
        cuda_peak_mb=round(torch.cuda.max_memory_allocated() / MIB, 1) if cuda else None,
        step_ms_median=round(1000.0 * sorted(times)[len(times) // 2], 1),
        step_cpu_s=round(sum(cpu) / len(cpu), 2),
        final_loss=round(float(trainer.callback_metrics[loss_key]), 4),
    )
    if recorder.ppo:
        row.update(
            {k: round(v, 3) for k, v in ppo_timing(recorder.ppo, args.batch_size, args.warmup).items()}
        )
    return row


def measure_child(args: argparse.Namespace) -> None:
    """`--one MODE`: measure, and write the row (or the error) to --row-out."""

    def settings() -> dict[str, Any]:
        run = harness.pick(args, ("batch_size",)) | {"max_length": MAX_LENGTH} | harness.pick(args, SETTINGS)
        return run | harness.environment(args.threads, args.device)

    harness.run_child(
        args.row_out, lambda: measure_one(args.one, args), functools.partial(empty_row, args.one), settings
    )


# ---------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = harness.parser(__doc__)
    p.add_argument("--sft-steps", type=int, default=20, help="SFT optimizer steps, warm-up included")
    p.add_argument(
        "--ppo-iters", type=int, default=8, help="PPO iterations (rollout batches), warm-up included"
    )
    p.add_argument("--warmup", type=int, default=2, help="leading steps / iterations left out of the timing")
    p.add_argument("--batch-size", type=int, default=32, help="SFT batch = PPO rollout batch = PPO minibatch")
    p.add_argument("--ppo-epochs", type=int, default=2, help="PPO passes (updates) per rollout batch")
    p.add_argument("--max-new-tokens", type=int, default=16, help="rollout length (configs/demo/ppo.yaml)")
    p.add_argument("--precision", default="32-true", help="Lightning precision in every mode")
    p.add_argument(
        "--update-micro-batch",
        type=int,
        default=0,
        help="PPO modes: sequences per backward inside a minibatch (ppo.update_micro_batch_size; 0 = whole)",
    )
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in every mode")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument(
        "--modes",
        type=harness.csv_choices(TRAINING_MODES),
        default=list(TRAINING_MODES),
        help="comma-separated subset",
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    harness.add_child_flags(p, choices=MODES)
    args = p.parse_args(argv)
    problems = []
    if min(args.sft_steps, args.ppo_iters) <= args.warmup:
        problems.append(f"--sft-steps and --ppo-iters must exceed --warmup ({args.warmup})")
    if args.update_micro_batch < 0:
        problems.append("--update-micro-batch must be >= 0")
    if args.warmup < 0 or min(args.batch_size, args.ppo_epochs, args.max_new_tokens, args.threads) < 1:
        problems.append("--warmup must be >= 0; --batch-size, --ppo-epochs, --max-new-tokens, --threads >= 1")
    harness.check(p, problems + harness.child_problems(args))
    return args


def measure_all(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """Every mode, then (the modes and ratios for --out, the tables printed)."""
    rows = run_all(args)
    checks = ratios(rows)
    return {"modes": rows, "ratios": checks}, markdown_tables(rows, checks)


def main(argv: list[str] | None = None) -> None:
    harness.serve(parse_args(argv), measure_child, measure_all)


if __name__ == "__main__":
    main()
