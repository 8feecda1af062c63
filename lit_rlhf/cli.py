"""Command line: `lit-rlhf <command>` (or `python main.py <command>`): LightningCLI's fit/validate/test/predict
plus the tool commands.

Tool commands that are not Trainer methods (demo-data, export, ...) are dispatched before LightningCLI is built,
so they start fast and take their own flags. Every run writes `runs/<stage>/<name>/` (lit_rlhf.runs). A user's
mistake (a bad data row, a missing file, a bad stage directory or setting) prints one line and exits 2;
`--debug` (or LIT_RLHF_DEBUG=1) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

TOOL_COMMANDS = ("demo-data", "export", "collect-comparisons", "pipeline", "dashboard", "evaluate")
LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")
DEBUG_FLAG, DEBUG_ENV = "--debug", "LIT_RLHF_DEBUG"
OVERVIEW = """{prog}: InstructGPT's three stages (SFT, a K-wise reward model, PPO-ptx) for any Hugging Face causal LM, on
PyTorch Lightning, with a dashboard. `lit-rlhf <command>` and `python main.py <command>` are the same.

usage: {prog} <command> [options]      ({prog} <command> --help for a command's options)

train a stage (LightningCLI: --config <yaml>, --print_config, --help):
  fit                  train SFT, a reward model or PPO-ptx (the config's model class says which)
  validate, test, predict   Lightning's other loops on a stage config
tools:
  demo-data            write the built-in demo task world's data (--format plain|chat)
  collect-comparisons  sample K responses per prompt from a stage directory; a judge ranks them
  pipeline             the whole loop in order, resumable (configs/demo/pipeline.yaml, configs/smollm2/...)
  evaluate             compare stage directories on held-out prompts: report.md, report.json, report.png
  export               a stage directory as a plain transformers model (adapters merged)
  dashboard            the Streamlit dashboard (127.0.0.1:8501)

Add --debug to any command for the full traceback of an error.
"""


def prog() -> str:
    """How the user called us: `lit-rlhf`, or `main.py` for `python main.py`."""
    name = Path(sys.argv[0]).name
    return name if name in ("lit-rlhf", "main.py") else "lit-rlhf"


def _demo_data(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog=f"{prog()} demo-data", description="Write the built-in demo task world's data."
    )
    p.add_argument("--out", default="data/demo", help="output directory (default: data/demo)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-train", type=int, default=20000)
    p.add_argument("--n-val", type=int, default=500)
    p.add_argument("--n-rl", type=int, default=2000)
    p.add_argument("--n-eval", type=int, default=300)
    p.add_argument("--n-pretrain", type=int, default=5000)
    p.add_argument(
        "--n-eval-adversarial",
        type=int,
        default=200,
        help="held-out red-teaming prompts (eval_adversarial.jsonl)",
    )
    p.add_argument(
        "--adversarial-rate",
        type=float,
        default=0.1,
        help="share of sft_train/sft_val/rl_prompts rows that try to draw the banned word out (default: 0.1)",
    )
    p.add_argument(
        "--format",
        choices=("plain", "chat"),
        default="plain",
        help="plain: {prompt, response} rows; chat: {messages} conversations for a chat model's template",
    )
    a = p.parse_args(argv)
    from lit_rlhf.demo.datagen import write_demo_data

    paths = write_demo_data(
        a.out,
        seed=a.seed,
        n_train=a.n_train,
        n_val=a.n_val,
        n_rl=a.n_rl,
        n_eval=a.n_eval,
        n_pretrain=a.n_pretrain,
        n_eval_adversarial=a.n_eval_adversarial,
        adversarial_rate=a.adversarial_rate,
        row_format=a.format,
    )
    for name, path in paths.items():
        print(f"{name:>14}: {path}")
    return 0


def _export(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog=f"{prog()} export", description="Export a stage directory as a plain transformers model."
    )
    p.add_argument(
        "--ckpt",
        required=True,
        help="stage directory (runs/<stage>/<name>/stage), or a PPO run's kept checkpoint: runs/ppo/<name>@best "
        "(by the judge), @latest, @step-N",
    )
    p.add_argument("--out", required=True, help="output directory for the transformers model")
    p.add_argument("--adapter", default=None, help="adapter to merge (default: policy)")
    p.add_argument(
        "--overwrite", action="store_true", help="replace --out even if it is not an earlier export"
    )
    p.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="let code shipped in the stage directory run (trust it)",
    )
    p.add_argument(
        "--local-bases-only",
        action="store_true",
        help="refuse a base outside the stage directory (hub or path)",
    )
    a = p.parse_args(argv)
    from lit_rlhf.checkpoint.kept import resolve_stage_ref
    from lit_rlhf.checkpoint.manifest import ManifestError
    from lit_rlhf.checkpoint.stage_dir import export_stage_dir

    try:
        ckpt = resolve_stage_ref(a.ckpt)  # KeptError is a ManifestError naming the index
        out = export_stage_dir(
            ckpt,
            a.out,
            adapter=a.adapter,
            overwrite=a.overwrite,
            trust_remote_code=a.trust_remote_code,
            allow_external_base=False if a.local_bases_only else None,
        )
    except (FileExistsError, ManifestError) as e:  # each names the path at fault
        print(f"main.py export: error: {e}", file=sys.stderr)
        return 2
    print(f"exported {ckpt} -> {out} (load with AutoModelForCausalLM.from_pretrained({str(out)!r}))")
    return 0


def _collect(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog=f"{prog()} collect-comparisons",
        description="Sample K responses per prompt from a stage directory; a judge ranks them (without one, "
        "the samples are written unranked for people to rank).",
    )
    p.add_argument("--ckpt", required=True, help="stage directory to sample from (usually the SFT one)")
    p.add_argument("--prompts", required=True, help="prompts JSONL ({'prompt': ...} rows)")
    p.add_argument("--out", required=True, help="comparisons JSONL to write")
    p.add_argument("--k", type=int, default=4, help="responses per prompt (4 to 9 in InstructGPT)")
    p.add_argument("--limit", type=int, default=None, help="use at most this many prompts")
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=16, help="prompts per generate call")
    p.add_argument(
        "--judge",
        default=None,
        help="ranks the K samples: demo (the demo world's labeler) or package.module:callable "
        "(default: none: unranked samples)",
    )
    p.add_argument("--rank-noise", type=float, default=0.0, help="judge disagreement (score noise std)")
    p.add_argument(
        "--rules-out",
        default=None,
        help="also write rule-label rows (one per distinct sample) labeled by the judge's rules() (Sparrow)",
    )
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    from lit_rlhf.backbone.generate import SamplingConfig
    from lit_rlhf.collect import collect_comparisons

    sampling = SamplingConfig(
        max_new_tokens=a.max_new_tokens,
        do_sample=True,
        temperature=a.temperature,
        top_k=a.top_k,
        top_p=a.top_p,
    )
    report = collect_comparisons(
        a.ckpt,
        a.prompts,
        a.out,
        k=a.k,
        sampling=sampling,
        batch_size=a.batch_size,
        limit=a.limit,
        seed=a.seed,
        rank_noise=a.rank_noise,
        judge=a.judge,
        rules_out=a.rules_out,
    )
    print(report.summary())
    return 0


def _evaluate(argv: list[str]) -> int:
    from lit_rlhf.evaluation.command import cli_main

    return cli_main(argv)


def _dashboard(argv: list[str]) -> int:
    from lit_rlhf.dashboard_cmd import main as dashboard_main

    return dashboard_main(argv)


def _pipeline(argv: list[str]) -> int:
    from lit_rlhf.pipeline import cli_main

    return cli_main(argv)


def lightning_cli(args: list[str] | None, run: bool = True):
    """Build (and by default run) the LightningCLI; `run=False` parses and instantiates only (config tests)."""
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.cli import LightningCLI

    from lit_rlhf.distributed import register_strategy
    from lit_rlhf.runs import RunLogger, RunStatus
    from lit_rlhf.seeding import BatchSeeds

    register_strategy()  # `strategy: fsdp2`

    class LitRLHFCLI(LightningCLI):
        """LightningCLI whose runs always write the run directory the dashboard reads."""

        def add_arguments_to_parser(self, parser) -> None:
            parser.add_argument("--run.root", default="runs", help="root of run directories")
            parser.add_argument("--run.name", default="default", help="run name: runs/<stage>/<name>/")
            parser.add_argument(
                "--run.checkpoint_every",
                type=int,
                default=200,
                help="save checkpoints/last.ckpt every N optimizer steps (exact resume)",
            )

        def instantiate_trainer(self, **kwargs: Any):
            config = self.config[self.subcommand] if self.subcommand else self.config
            stage = getattr(self.model, "STAGE", "run")
            run_dir = Path(config["run"]["root"]) / stage / config["run"]["name"]
            trainer_config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
            user_loggers = trainer_config.get("logger")
            extra = (
                []
                if user_loggers in (None, True, False)
                else (list(user_loggers) if isinstance(user_loggers, list) else [user_loggers])
            )
            trainer_config["logger"] = [RunLogger(run_dir), *extra]
            callbacks = [self._get(self.config_init, c) for c in self._parser(self.subcommand).callback_keys]
            callbacks += [
                RunStatus(stage, config["run"]["name"]),
                BatchSeeds(),  # exact resume: batch k's randomness depends on (seed, rank, k) only
                ModelCheckpoint(
                    dirpath=run_dir / "checkpoints",
                    save_last=True,
                    save_top_k=0,
                    every_n_train_steps=config["run"]["checkpoint_every"],
                ),
            ]
            return self._instantiate_trainer(trainer_config, callbacks)

        def after_fit(self) -> None:
            out = getattr(self.model, "stage_dir_written", None)
            if out is not None and self.trainer.is_global_zero:
                print(f"\n[lit-rlhf] {self.model.STAGE} stage directory written: {out}")
                print(f"[lit-rlhf] run directory: {out.parent}")

    return LitRLHFCLI(
        args=args,
        run=run,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
    )


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that report a user's mistake with a message naming the file, field or setting at fault."""
    from lit_rlhf.backbone.gguf import GGUFError
    from lit_rlhf.checkpoint.manifest import ManifestError
    from lit_rlhf.data.rows import DataError
    from lit_rlhf.evaluation.command import EvalError
    from lit_rlhf.judges import JudgeError

    return (DataError, ManifestError, EvalError, JudgeError, GGUFError, ValueError, OSError)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `lit-rlhf` and `python main.py`: the command, or one line for a user's mistake."""
    from_sys = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    argv = [a for a in argv if a != DEBUG_FLAG]
    if from_sys:  # LightningCLI reads sys.argv itself (given args= as well, it warns)
        sys.argv = [sys.argv[0], *argv]
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(OVERVIEW.format(prog=prog()))
        return 0
    if argv[0] not in (*TOOL_COMMANDS, *LIGHTNING_COMMANDS) and not argv[0].startswith("-"):
        print(f"{prog()}: error: unknown command {argv[0]!r}\n", file=sys.stderr)
        print(OVERVIEW.format(prog=prog()), file=sys.stderr)
        return 2
    try:
        return _run(argv, from_sys)
    except user_errors() as e:
        if debug:
            raise
        print(f"{prog()}: error: {e}", file=sys.stderr)
        print(f"({prog()} {argv[0]} ... --debug shows where it happened)", file=sys.stderr)
        return 2


def console() -> None:
    """The `lit-rlhf` console script."""
    sys.exit(main())


def _run(argv: list[str], from_sys: bool) -> int:
    if argv and argv[0] in TOOL_COMMANDS:
        commands = {
            "demo-data": _demo_data,
            "export": _export,
            "collect-comparisons": _collect,
            "pipeline": _pipeline,
            "dashboard": _dashboard,
            "evaluate": _evaluate,
        }
        return commands[argv[0]](argv[1:])
    lightning_cli(None if from_sys else argv)
    return 0
