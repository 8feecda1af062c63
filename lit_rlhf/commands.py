"""The tool commands of `lit-rlhf` (demo-data, export, collect-comparisons, evaluate, dashboard, pipeline).

Each command is a typed function: its signature holds the defaults, its docstring the help, and jsonargparse
builds the command line from it (`run_command`), so `--help`, `--print_config` and `--config x.yaml` work as
they do for `fit`. Only `pipeline` takes its options from a dataclass (`PipelineConfig`), the same one its
YAML files fill.

Today's spellings keep working: `--max-new-tokens` is read as `--max_new_tokens`, a bare boolean flag
(`--overwrite`) as `--overwrite true`, and a list option takes several values (`--ckpt a b`) or repeats.
Heavy imports (torch) happen inside the commands, so `--help` is instant.
"""

from __future__ import annotations

import inspect
import json
import os
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal


def _demo_default(name: str) -> Any:
    """write_demo_data's default for `name`: the demo-data command shows and uses the library's own values."""
    from lit_rlhf.demo.datagen import write_demo_data  # pure Python: --help stays instant

    return inspect.signature(write_demo_data).parameters[name].default


def demo_data(
    out: str = "data/demo",
    seed: int = _demo_default("seed"),
    n_train: int = _demo_default("n_train"),
    n_val: int = _demo_default("n_val"),
    n_rl: int = _demo_default("n_rl"),
    n_eval: int = _demo_default("n_eval"),
    n_pretrain: int = _demo_default("n_pretrain"),
    n_eval_adversarial: int = _demo_default("n_eval_adversarial"),
    adversarial_rate: float = _demo_default("adversarial_rate"),
    format: Literal["plain", "chat"] = _demo_default("row_format"),
) -> int:
    """Write the built-in demo task world's data.

    Args:
        out: Output directory.
        seed: Seed of every generated row.
        n_train: SFT training demonstrations (sft_train.jsonl).
        n_val: SFT validation demonstrations (sft_val.jsonl).
        n_rl: PPO prompts (rl_prompts.jsonl).
        n_eval: Held-out evaluation prompts (eval_prompts.jsonl).
        n_pretrain: Pretraining text rows for PPO-ptx (pretrain.jsonl).
        n_eval_adversarial: Held-out red-teaming prompts (eval_adversarial.jsonl).
        adversarial_rate: Share of sft_train/sft_val/rl_prompts rows that try to draw the banned word out.
        format: plain: {prompt, response} rows; chat: {messages} conversations for a chat model's template.
    """
    from lit_rlhf.demo.datagen import write_demo_data

    paths = write_demo_data(
        out,
        seed=seed,
        n_train=n_train,
        n_val=n_val,
        n_rl=n_rl,
        n_eval=n_eval,
        n_pretrain=n_pretrain,
        n_eval_adversarial=n_eval_adversarial,
        adversarial_rate=adversarial_rate,
        row_format=format,
    )
    for name, path in paths.items():
        print(f"{name:>14}: {path}")
    return 0


def export(
    ckpt: str,
    out: str,
    adapter: str | None = None,
    overwrite: bool = False,
    trust_remote_code: bool = False,
    local_bases_only: bool = False,
) -> int:
    """Export a stage directory as a plain transformers model (adapters merged).

    Args:
        ckpt: Stage directory (runs/<stage>/<name>/stage), or a PPO run's kept checkpoint: runs/ppo/<name>@best
            (by the judge), @latest, @step-N.
        out: Output directory for the transformers model.
        adapter: Adapter to merge (default: policy).
        overwrite: Replace --out even if it is not an earlier export.
        trust_remote_code: Let code shipped in the stage directory run (trust it).
        local_bases_only: Refuse a base outside the stage directory (hub or path).
    """
    from lit_rlhf.checkpoint.kept import resolve_stage_ref
    from lit_rlhf.checkpoint.stage_dir import export_stage_dir

    stage = resolve_stage_ref(ckpt)  # KeptError is a ManifestError naming the index: one line (cli.main)
    done = export_stage_dir(
        stage,
        out,
        adapter=adapter,
        overwrite=overwrite,
        trust_remote_code=trust_remote_code,
        allow_external_base=False if local_bases_only else None,
    )
    print(f"exported {stage} -> {done} (load with AutoModelForCausalLM.from_pretrained({str(done)!r}))")
    return 0


def collect_comparisons(
    ckpt: str,
    prompts: str,
    out: str,
    k: int = 4,
    limit: int | None = None,
    max_new_tokens: int = 24,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    batch_size: int = 16,
    judge: str | None = None,
    rank_noise: float = 0.0,
    rules_out: str | None = None,
    seed: int = 0,
) -> int:
    """Sample K responses per prompt from a stage directory; a judge ranks them (without one, the samples are
    written unranked for people to rank).

    Args:
        ckpt: Stage directory to sample from (usually the SFT one).
        prompts: Prompts JSONL ({"prompt": ...} rows).
        out: Comparisons JSONL to write.
        k: Responses per prompt (4 to 9 in InstructGPT).
        limit: Use at most this many prompts.
        max_new_tokens: Longest sampled response.
        temperature: Sampling temperature.
        top_k: Keep the k most likely tokens (0 = off).
        top_p: Nucleus sampling mass (1.0 = off).
        batch_size: Prompts per generate call.
        judge: Ranks the K samples: demo (the demo world's labeler) or package.module:callable (none: unranked
            samples).
        rank_noise: Judge disagreement (score noise std).
        rules_out: Also write rule-label rows (one per distinct sample) labeled by the judge's rules() (Sparrow).
        seed: Sampling seed.
    """
    from lit_rlhf.backbone.generate import SamplingConfig
    from lit_rlhf.collect import collect_comparisons as collect

    sampling = SamplingConfig(
        max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature, top_k=top_k, top_p=top_p
    )
    report = collect(
        ckpt,
        prompts,
        out,
        k=k,
        sampling=sampling,
        batch_size=batch_size,
        limit=limit,
        seed=seed,
        rank_noise=rank_noise,
        judge=judge,
        rules_out=rules_out,
    )
    print(report.summary())
    return 0


def evaluate(
    ckpt: list[str],
    prompts: str,
    sft: str | None = None,
    rm: str | None = None,
    pretrain: str | None = None,
    pretrain_limit: int = 256,
    limit: int = 300,
    max_new_tokens: int = 24,
    temperature: float = 1.0,
    seed: int = 1234,
    batch_size: int = 32,
    device: str | None = None,
    base: bool = False,
    judge: str | None = None,
    out: str | None = None,
    name: str = "default",
    trust_remote_code: bool = False,
    local_bases_only: bool = False,
) -> int:
    """Compare stage directories on held-out prompts: report.md, report.json, report.png.

    Args:
        ckpt: Stage directories to evaluate (several: --ckpt a b, or repeat --ckpt), each a path or a PPO run's
            kept checkpoint (runs/ppo/<name>@best).
        prompts: Held-out prompts JSONL ({"prompt": ...} rows).
        sft: SFT baseline (default: the sft --ckpt, else a ppo one's parent).
        rm: Reward stage directory (default: a ppo manifest's reward_from).
        pretrain: Pretraining text JSONL ({"text": ...}) for the alignment tax.
        pretrain_limit: Use its last N rows, the ones PPO-ptx holds out.
        limit: Use the first N prompts.
        max_new_tokens: Longest sampled response.
        temperature: Sampling temperature; 0 = greedy.
        seed: The same for every checkpoint.
        batch_size: Prompts per generate call / forward pass.
        device: Where the models run (default: cuda when available, else cpu).
        base: Also evaluate the SFT stage's pretrained base with its adapters off (zero-shot; LoRA SFT only).
        judge: Judges the completions: demo, exact_match or package.module:callable (none: no judge score or win
            rate).
        out: Report directory (default: runs/eval/<name>).
        name: Report name, for the default --out.
        trust_remote_code: Let code shipped in the stage directories run.
        local_bases_only: Refuse bases outside the stage directories.
    """
    import logging

    from lit_rlhf.checkpoint.safety import LOCAL_BASES_ONLY_ENV
    from lit_rlhf.evaluation.command import EvalSettings, evaluate_checkpoints
    from lit_rlhf.evaluation.report import render_markdown, write_report

    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = EvalSettings(
        prompts=prompts,
        limit=limit,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        seed=seed,
        batch_size=batch_size,
        pretrain=pretrain,
        pretrain_limit=pretrain_limit,
        device=device,
        judge=judge,
        base=base,
        trust_remote_code=trust_remote_code,
    )
    if local_bases_only:  # read by every load_stage_dir of this process (policies, SFT, reward model)
        os.environ[LOCAL_BASES_ONLY_ENV] = "1"
    # EvalError, DataError and ManifestError name the file or flag at fault: one line (cli.main)
    report = evaluate_checkpoints(ckpt, settings, sft=sft, rm=rm)
    paths = write_report(report, out or Path("runs") / "eval" / name)
    print(render_markdown(report).split("\n## Settings")[0])
    print(
        f"\n[lit-rlhf] evaluation report: {paths['report.md']} (also {paths['report.json']}, {paths['report.png']})"
    )
    return 0


def dashboard(
    runs: str = "runs",
    port: int = 8501,
    host: str = "127.0.0.1",
    labels: str | None = None,
    trust_remote_code: bool = False,
    judge: str | None = None,
    local_bases_only: bool = False,
) -> int:
    """Start the lit-rlhf Streamlit dashboard.

    Args:
        runs: Runs root holding <stage>/<name>/ run directories.
        port: Port to serve on.
        host: Address to bind (127.0.0.1: this machine only; 0.0.0.0 exposes it to the network).
        labels: Folder the Compare page may save comparisons in (default: the runs root); it writes nowhere else.
        trust_remote_code: Let code shipped in a stage directory run when the Compare page loads it (only for ones
            you trust).
        judge: Judge that scores the Compare page's completions: demo, exact_match or package.module:callable.
        local_bases_only: Refuse to load stage directories whose base is a hub name or a folder outside them.
    """
    arguments = dict(locals())  # first: the parameters, which are the settings' fields one to one
    from lit_rlhf.dashboard_cmd import DashboardSettings, serve

    return serve(DashboardSettings(**arguments))


FUNCTIONS: dict[str, Callable[..., int]] = {
    "demo-data": demo_data,
    "export": export,
    "collect-comparisons": collect_comparisons,
    "evaluate": evaluate,
    "dashboard": dashboard,
}


def _kind(annotation: Any) -> str:
    """'bool', 'list' or '' for a (string or real) annotation: how a bare or repeated flag is read."""
    text = annotation if isinstance(annotation, str) else repr(annotation)
    if text == "bool" or annotation is bool:
        return "bool"
    return "list" if text.startswith("list[") or typing.get_origin(annotation) is list else ""


LIST_MARK = "\0"


def normalize_argv(argv: list[str], kinds: dict[str, str]) -> list[str]:
    """Today's spellings as jsonargparse reads them.

    `kinds` maps an option name (underscores) to 'bool' or 'list'. `--max-new-tokens 3` -> `--max_new_tokens 3`;
    a bare `--overwrite` -> `--overwrite=true`; `--ckpt a b --ckpt c` -> `--ckpt=["a", "b", "c"]` (at the place
    of the first --ckpt).
    """
    out: list[str] = []
    lists: dict[str, list[str]] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if not arg.startswith("--") or arg == "--":
            out.append(arg)
            continue
        name, eq, value = arg[2:].partition("=")
        name = name.replace("-", "_")
        kind = kinds.get(name.rstrip("+"), "")
        if kind == "bool" and not eq and (i >= len(argv) or argv[i].startswith("--")):
            out.append(f"--{name}=true")
        elif kind == "list" and not (eq and value.lstrip().startswith("[")):
            if name.rstrip("+") not in lists:
                lists[name.rstrip("+")] = []
                out.append(LIST_MARK + name.rstrip("+"))  # replaced by the whole list below
            values = [value] if eq else []
            while not eq and i < len(argv) and not argv[i].startswith("--"):
                values.append(argv[i])
                i += 1
            lists[name.rstrip("+")] += values
        else:
            out.append(f"--{name}{eq}{value}")
    return [f"--{a[1:]}={json.dumps(lists[a[1:]])}" if a.startswith(LIST_MARK) else a for a in out]


def _kinds_of(fn: Callable[..., Any]) -> dict[str, str]:
    hints = typing.get_type_hints(fn)
    return {n: _kind(hints.get(n, p.annotation)) for n, p in inspect.signature(fn).parameters.items()}


def run_command(command: str, argv: list[str], prog: str) -> int:
    """Parse `argv` for the tool `command` with jsonargparse from its function's signature, then run it."""
    from jsonargparse import auto_cli

    if command == "pipeline":
        return pipeline(argv, prog)
    fn = FUNCTIONS[command]
    args = normalize_argv(argv, _kinds_of(fn))
    result = auto_cli(fn, args=args, prog=f"{prog} {command}", as_positional=False)
    return int(result or 0)


def pipeline(argv: list[str], prog: str = "lit-rlhf") -> int:
    """`pipeline [--config configs/demo/pipeline.yaml] [--name N] [--<field> ...]`: the whole loop in order.

    The YAML and the flags fill one `PipelineConfig` through its jsonargparse parser (pipeline_parser).
    """
    from lit_rlhf.pipeline import Pipeline, PipelineConfig, pipeline_parser

    parser = pipeline_parser(prog=f"{prog} pipeline")
    args = [a.replace("-", "_", 1) if a.startswith("--print-config") else a for a in argv]
    if not any(a in ("--config", "-h", "--help") or a.startswith("--config=") for a in args):
        args = ["--config", "configs/demo/pipeline.yaml", *args]  # the documented default
    cfg = PipelineConfig.from_namespace(parser.parse_args(args))
    Pipeline(cfg).run()
    return 0


def tool_commands() -> tuple[str, ...]:
    return (*FUNCTIONS, "pipeline")
