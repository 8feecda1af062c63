"""Command line: `lit-rlhf <command>` (or `python main.py <command>`): LightningCLI's fit/validate/test/predict
plus the tool commands.

Tool commands that are not Trainer methods (demo-data, export, ...) are dispatched before LightningCLI is built,
so they start fast; jsonargparse serves them from their typed functions (lit_rlhf.commands). Every run writes `runs/<stage>/<name>/` (lit_rlhf.runs). A user's
mistake (a bad data row, a missing file, a bad stage directory or setting) prints one line and exits 2;
`--debug` (or LIT_RLHF_DEBUG=1) shows the traceback instead.
"""

from __future__ import annotations

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


# `trainer.logger` classes -> (the module they need, the lit-rlhf extra that installs it)
TRACKERS = {
    "TensorBoardLogger": ("tensorboard", "tensorboard"),
    "WandbLogger": ("wandb", "wandb"),
    "MLFlowLogger": ("mlflow", "mlflow"),
}
STAGE_CLASSES = {  # short names for `--model <name>` and nested help
    "SFTModule": "lit_rlhf.stages.sft.SFTModule",
    "RewardModule": "lit_rlhf.stages.reward.RewardModule",
    "PPOModule": "lit_rlhf.stages.ppo.PPOModule",
}


class TrackerMissing(ValueError):
    """A `trainer.logger` names a tracker whose package is not installed."""


def check_trackers(loggers: Any) -> None:
    """Refuse, in one line, a configured tracker whose package is missing (instead of jsonargparse's traceback).

    `loggers`: the parsed `trainer.logger` value (None, a bool, one class_path mapping or a list of them).
    """
    import importlib.util

    items = loggers if isinstance(loggers, list) else [loggers]
    for item in items:
        path = item.get("class_path") if hasattr(item, "get") else None
        if not isinstance(path, str):
            continue
        module, extra = TRACKERS.get(path.rsplit(".", 1)[-1], (None, None))
        if module is not None and importlib.util.find_spec(module) is None:
            raise TrackerMissing(
                f"trainer.logger: {path} needs the `{module}` package: pip install -c constraints.txt "
                f"-e '.[{extra}]' (or pip install {module})"
            )


def _option_value(argv: list[str], *names: str) -> str | None:
    """The last value given to any of `names` (`--x v` or `--x=v`) in argv."""
    value = None
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name and i + 1 < len(argv):
                value = argv[i + 1]
            elif arg.startswith(name + "="):
                value = arg.split("=", 1)[1]
    return value


def _class_from_argv(argv: list[str], key: str) -> str | None:
    """The class path of `key` (model or data) that argv selects: `--<key> X`, `--<key>.class_path X`, else the
    last `--config` file's `<key>.class_path`."""
    import yaml

    given = _option_value(argv, f"--{key}", f"--{key}.class_path")
    if given is not None:
        return STAGE_CLASSES.get(given, given)
    for config in reversed([argv[i + 1] for i, a in enumerate(argv[:-1]) if a in ("--config", "-c")]):
        section = (yaml.safe_load(Path(config).read_text(encoding="utf-8")) or {}).get(key)
        if isinstance(section, dict) and section.get("class_path"):
            return STAGE_CLASSES.get(section["class_path"], section["class_path"])
        if isinstance(section, str):
            return STAGE_CLASSES.get(section, section)
    return None


def nested_help(argv: list[str]) -> str | None:
    """Help for `--model.<field>.help` / `--data.<field>.help` (also spelled `--model.init_args.<field>.help`).

    jsonargparse lists these options under `--model.help <Class>` but cannot reach them from the command line in
    subclass mode ("expected one argument"): the field's type is found here, from the class that `--model` or the
    config selects, and its options are printed as `--model.init_args.<field>.<option>`. None: no such flag.
    """
    import importlib
    import inspect
    import typing

    flag = next((a for a in argv if a.startswith(("--model.", "--data.")) and a.endswith(".help")), None)
    if flag is None or flag.count(".") < 2:
        return None
    key, *middle = flag[2:].split(".")[:-1]
    field = ".".join(m for m in middle if m != "init_args")
    path = _class_from_argv(argv, key)
    if path is None:
        raise ValueError(f"{flag}: name the {key} class first (--config <yaml> or --{key} <class path>)")
    module, _, name = path.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    hints = typing.get_type_hints(cls.__init__)
    if field not in hints:
        known = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        raise ValueError(f"{flag}: {name} has no option {field!r}; its options: {known}")
    kind = next((t for t in typing.get_args(hints[field]) if inspect.isclass(t)), hints[field])
    if not inspect.isclass(kind) or kind in (str, int, float, bool, type(None)):
        return f"--{key}.init_args.{field}: {hints[field]} (a plain value; see `{prog()} fit --{key}.help {name}`)"
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(prog=f"{prog()} fit", description=f"{name}.{field}: {kind.__name__}")
    parser.add_class_arguments(kind, f"{key}.init_args.{field}")
    return parser.format_help()


def quiet_third_party_noise() -> None:
    """Drop two notices Lightning prints on every run that say nothing about it.

    - "💡 Tip: ... try installing litlogger": every run of ours has a logger (the run directory's), so Lightning
      prints this advertisement at every trainer start (three times before a pipeline's first stage, again in each
      stage).
    - "`isinstance(treespec, LeafSpec)` is deprecated": Lightning's own use of a torch API, once per fit.
    """
    import logging
    import warnings

    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")

    class _NoAdvert(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "litlogger" not in str(record.msg)

    log = logging.getLogger("lightning.pytorch.utilities.rank_zero")  # where rank_zero_info writes
    if not any(type(f).__name__ == "_NoAdvert" for f in log.filters):  # once, however many trainers start
        log.addFilter(_NoAdvert())


def lightning_cli(args: list[str] | None, run: bool = True):
    """Build (and by default run) the LightningCLI; `run=False` parses and instantiates only (config tests)."""
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.cli import LightningCLI

    from lit_rlhf.distributed import register_strategy
    from lit_rlhf.runs import RunLogger, RunStatus
    from lit_rlhf.seeding import BatchSeeds
    from lit_rlhf.stages.base import StageModule

    register_strategy()  # `strategy: fsdp2`
    quiet_third_party_noise()

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

        def before_instantiate_classes(self) -> None:
            section = self.config[self.subcommand] if self.subcommand else self.config
            check_trackers(section["trainer"].get("logger"))  # one line, not jsonargparse's traceback

        def instantiate_trainer(self, **kwargs: Any):
            """The configured trainer, plus the run directory's logger and callbacks (LightningCLI's own method
            with extra trainer arguments; the configured loggers and callbacks are kept beside ours)."""
            config = self.config[self.subcommand] if self.subcommand else self.config
            init = self.config_init[self.subcommand] if self.subcommand else self.config_init
            stage = self.model.STAGE
            run_dir = Path(config["run"]["root"]) / stage / config["run"]["name"]
            user_loggers = kwargs.pop("logger", init["trainer"].get("logger"))
            extra = (
                []
                if user_loggers in (None, True, False)
                else (list(user_loggers) if isinstance(user_loggers, list) else [user_loggers])
            )
            user_callbacks = kwargs.pop("callbacks", init["trainer"].get("callbacks")) or []
            callbacks = [
                *(user_callbacks if isinstance(user_callbacks, list) else [user_callbacks]),
                RunStatus(stage, config["run"]["name"]),
                BatchSeeds(),  # exact resume: batch k's randomness depends on (seed, rank, k) only
                ModelCheckpoint(
                    dirpath=run_dir / "checkpoints",
                    save_last=True,
                    save_top_k=0,
                    every_n_train_steps=config["run"]["checkpoint_every"],
                ),
            ]
            return super().instantiate_trainer(
                logger=[RunLogger(run_dir), *extra], callbacks=callbacks, **kwargs
            )

        def after_fit(self) -> None:
            out = self.model.stage_dir_written  # a StageModule's, set by its end-of-fit export
            if out is not None and self.trainer.is_global_zero:
                print(f"\n[lit-rlhf] {self.model.STAGE} stage directory written: {out}")
                print(f"[lit-rlhf] run directory: {out.parent}")

    return LitRLHFCLI(
        StageModule,  # a run directory needs a stage (its name, its export): any other module is refused up front
        args=args,
        run=run,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        # a config mistake raises (cli.main prints its cause in one line) instead of a 50-line usage block
        parser_kwargs={"exit_on_error": False, **{c: {"exit_on_error": False} for c in LIGHTNING_COMMANDS}},
        auto_configure_optimizers=False,
    )


def config_error_line(message: str) -> str:
    """The cause in a jsonargparse parse error, in one line: `model.optim.lr (OptimConfig): Expected a float ...`.

    A mistake under `model:` or `data:` comes wrapped in nested union reports ("Parser key "model": Does not
    validate against any of the Union subtypes ... Problem with given class_path 'X': Parser key "optim": ...
    Expected a NoneType ... Given value ..."); the user needs the key path, the class and the innermost problem.
    """
    structural = (
        "Does not validate against any of the Union subtypes",
        "Subtypes:",
        "Errors:",
        "- Expected a <class 'NoneType'>",
        "Given value",
    )
    keys: list[str] = []
    cls = ""
    for raw in message.splitlines():
        line = raw.strip()
        if not line or line.startswith(structural):
            continue
        if line.startswith('Parser key "'):
            keys.append(line.split('"')[1])
            line = (
                line.split('"', 2)[2].lstrip(":").strip()
            )  # `Parser key "config": File does not exist: ...`
            if not line:
                continue
        if line.startswith("- Problem with given class_path '"):
            cls = line.split("'")[1].rpartition(".")[2]
        else:
            where = ".".join(keys) + (f" ({cls})" if cls else "")
            cause = line.removeprefix("- ").replace("<class '", "").replace("'>", "")
            return f"{where}: {cause}" if where else cause
    return " ".join(message.split())


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that report a user's mistake with a message naming the file, field or setting at fault."""
    from lit_rlhf.backbone.gguf import GGUFError
    from lit_rlhf.checkpoint.manifest import ManifestError
    from lit_rlhf.data.rows import DataError
    from lit_rlhf.evaluation.command import EvalError
    from lit_rlhf.judges import JudgeError

    return (DataError, ManifestError, EvalError, JudgeError, GGUFError, ValueError, OSError)


def _is_config_error(e: BaseException) -> bool:
    from jsonargparse import ArgumentError

    return isinstance(e, ArgumentError)


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
    except Exception as e:
        config_error = _is_config_error(e)
        if debug or not (config_error or isinstance(e, user_errors())):
            raise
        text = config_error_line(str(e)) if config_error else str(e)
        print(f"{prog()}: error: {text}", file=sys.stderr)
        print(f"({prog()} {argv[0]} ... --debug shows where it happened)", file=sys.stderr)
        return 2


def console() -> None:
    """The `lit-rlhf` console script."""
    sys.exit(main())


def _run(argv: list[str], from_sys: bool) -> int:
    if argv and argv[0] in TOOL_COMMANDS:
        from lit_rlhf.commands import run_command

        return run_command(argv[0], argv[1:], prog())
    help_text = nested_help(argv)
    if help_text is not None:
        print(help_text)
        return 0
    # `--model.help SFTModule`, `--model PPOModule`: jsonargparse wants the import path
    argv = [
        STAGE_CLASSES.get(a, a)
        if i and argv[i - 1] in ("--model", "--model.help", "--model.class_path")
        else a
        for i, a in enumerate(argv)
    ]
    if from_sys:
        sys.argv = [sys.argv[0], *argv]
    lightning_cli(None if from_sys else argv)
    return 0
