"""`python main.py pipeline --config configs/demo/pipeline.yaml`: the whole InstructGPT loop in order.

demo data -> SFT -> comparison collection from the SFT model -> reward model -> PPO-ptx -> evaluation.
With ``rules: true`` the judge also labels every sample against its rules and the reward model trains rule heads
(Sparrow), which PPO's combined reward then uses. With ``rounds: N`` (InstructGPT's iterated rounds), each later
round samples the current policy, has the judge rank the samples, trains the reward model further on old + new
comparisons and continues PPO from the current policy with it; round 1's run directories are ``<name>``, round r's
``<name>-round-<r>``. A rounds report (``runs/eval/<name>/rounds.md``) has one row per round.
Each stage's stage directory feeds the next. Re-running skips finished stages (their manifests load) and resumes an
interrupted one from its Lightning checkpoint (``--ckpt_path last``). Each stage runs in its own process, so a
crash in one leaves the others' outputs intact and memory is returned between stages.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

MAIN = str(Path(__file__).resolve().parents[1] / "main.py")


def ppo_stage_args(sft: Path, rm: Path, data: Path, policy: Path | None = None) -> list[str]:
    """`main.py fit` overrides that point a PPO config at its parent stages and the demo data directory `data`.

    `policy`: a PPO stage to continue (a later round); the KL reference stays the SFT stage.
    """
    start = ["--model.init_args.policy_from", str(sft)]
    if policy is not None:
        start = ["--model.init_args.policy_from", str(policy), "--model.init_args.reference_from", str(sft)]
    return [
        *start,
        *("--model.init_args.reward_from", str(rm)),
        *("--model.init_args.eval.prompts", str(data / "eval_prompts.jsonl")),
        *("--data.init_args.prompts_path", str(data / "rl_prompts.jsonl")),
        *("--data.init_args.pretrain_path", str(data / "pretrain.jsonl")),
    ]


@dataclass
class CollectSettings:
    """Comparison collection from the SFT model (InstructGPT step 2's data)."""

    train_prompts: str = "sft_train.jsonl"  # relative to data_dir
    train_limit: int = 5000
    val_prompts: str = "sft_val.jsonl"
    val_limit: int = 500
    k: int = 4
    temperature: float = 1.0
    max_new_tokens: int = 24
    batch_size: int = 64  # prompts per generate call (each repeated k times)


@dataclass
class PipelineConfig:
    """What the pipeline runs. Stage configs are ordinary `main.py fit` YAML files; the pipeline overrides their
    run root/name and the paths that connect the stages, and appends ``extra_args`` per stage."""

    name: str = "demo"
    runs_root: str = "runs"
    data_dir: str = "data/demo"
    seed: int = 0
    # `demo-data` options (n_train, n_val, ..., format)
    demo_data: dict[str, int | float | str] = field(default_factory=dict)
    sft_config: str = "configs/demo/sft.yaml"
    rm_config: str = "configs/demo/rm.yaml"
    ppo_config: str = "configs/demo/ppo.yaml"
    collect: CollectSettings = field(default_factory=CollectSettings)
    eval_limit: int = 300
    eval_max_new_tokens: int = 24
    eval_base: bool = (
        False  # also evaluate the SFT stage's pretrained base, adapters off (zero-shot): LoRA SFT only
    )
    demo_tokenizer: bool = True  # SFT uses the demo world's word-level tokenizer (false: the model's own)
    # ranks the comparisons and judges the evaluation (the demo world's labeler plays the human)
    judge: str = "demo"
    extra_args: dict[str, list[str]] = field(default_factory=dict)  # stage -> extra CLI args (every round)
    # stage -> {dotted key: value}, e.g. {ppo: {trainer.max_steps: 400, model.init_args.kl_coef: 0.05}}: typed
    # overrides of the stage config, checked with the stage's own parser before the first stage starts
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    rules: bool = False  # Sparrow: the judge labels the samples' rules; the reward model trains rule heads
    rounds: int = 1  # InstructGPT's iterated rounds of collect -> reward model -> PPO

    def __post_init__(self) -> None:
        if not isinstance(self.rounds, int) or isinstance(self.rounds, bool) or self.rounds < 1:
            raise ValueError(f"field 'rounds' must be an integer >= 1, got {self.rounds!r}")
        unknown = sorted((set(self.extra_args) | set(self.overrides)) - set(STAGES))
        if unknown:
            raise ValueError(f"extra_args/overrides: unknown stage(s) {unknown}; known: {list(STAGES)}")

    def stage_args(self, stage: str) -> list[str]:
        """The command-line overrides of `stage`: its ``overrides`` (values as JSON), then its ``extra_args``."""
        typed = [f"--{k}={json.dumps(v)}" for k, v in self.overrides.get(stage, {}).items()]
        return [*typed, *self.extra_args.get(stage, [])]

    def stage_config(self, stage: str) -> str:
        return {"sft": self.sft_config, "reward": self.rm_config, "ppo": self.ppo_config}[stage]

    @classmethod
    def from_namespace(cls, ns: Any) -> PipelineConfig:
        """The config from pipeline_parser()'s parse result (a jsonargparse Namespace)."""
        raw = ns.as_dict()
        raw.pop("config", None)
        raw["collect"] = CollectSettings(**(raw.get("collect") or {}))
        return cls(**raw)

    @classmethod
    def from_yaml(cls, path: str | Path) -> PipelineConfig:
        """Read a pipeline YAML with pipeline_parser(); a mistake is a ValueError naming the file and field."""
        from jsonargparse import ArgumentError

        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: expected a mapping at the top level")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)  # named here: jsonargparse reports only the first
        if unknown:
            raise ValueError(f"{path}: unknown field(s) {unknown}; known: {sorted(known)}")
        ckeys = {f.name for f in fields(CollectSettings)}
        if set(raw.get("collect") or {}) - ckeys:
            raise ValueError(f"{path}: unknown field(s) in 'collect': {sorted(set(raw['collect']) - ckeys)}")
        try:
            return cls.from_namespace(
                pipeline_parser(exit_on_error=False).parse_args(["--config", str(path)])
            )
        except (ArgumentError, ValueError) as e:
            lines = [x.strip() for x in str(e).strip().splitlines() if x.strip()]
            raise ValueError(f"{path}: {' '.join(lines[:4])}") from None


STAGES = ("sft", "reward", "ppo")


def pipeline_parser(prog: str = "lit-rlhf pipeline", exit_on_error: bool = True):
    """The jsonargparse parser of a pipeline: `--config <yaml>`, every PipelineConfig field as a flag
    (`--name`, `--collect.k`, `--overrides '{ppo: {trainer.max_steps: 10}}'`), `--print_config`."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(prog=prog, description=__doc__.splitlines()[0], exit_on_error=exit_on_error)
    parser.add_argument(
        "--config", action=ActionConfigFile, help="pipeline YAML (configs/demo/pipeline.yaml)"
    )
    parser.add_class_arguments(PipelineConfig, as_group=False)
    return parser


def check_stage_overrides(cfg: PipelineConfig) -> None:
    """Parse and instantiate each stage's config with its overrides (the stage's LightningCLI, run=False, on
    CPU, no weights loaded), so a wrong key or value fails now, not after the stages before it have run.

    Raises:
        ValueError: naming the stage, its config and the parser's message.
    """
    import contextlib
    import io
    import warnings

    from jsonargparse import ArgumentError

    from lit_rlhf.cli import config_error_line, lightning_cli

    dummy = Path(cfg.data_dir)
    links = {
        "sft": [],
        "reward": ["--model.init_args.init_from", str(dummy)],
        "ppo": ppo_stage_args(dummy, dummy, dummy),
    }
    for stage in STAGES:
        config = cfg.stage_config(stage)
        args = ["--config", config, *links[stage], *cfg.stage_args(stage)]
        args += ["--trainer.accelerator", "cpu", "--trainer.devices", "1", "--run.root", str(cfg.runs_root)]
        try:
            with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                warnings.simplefilter(
                    "ignore"
                )  # LightningCLI's "args and sys.argv both given": intended here
                cli = lightning_cli(args, run=False)
        except ArgumentError as e:  # the stage parsers raise instead of exiting (cli.lightning_cli)
            raise ValueError(
                f"pipeline: the {stage} stage's config {config} with the pipeline's overrides does not parse: "
                + config_error_line(str(e))
            ) from None
        if stage != cli.model.STAGE:
            raise ValueError(f"pipeline: {config} trains a {cli.model.STAGE} stage, not {stage}")


def _stage_done(stage_dir: Path) -> bool:
    from lit_rlhf.checkpoint.manifest import ManifestError, read_manifest

    try:
        read_manifest(stage_dir)
        return True
    except ManifestError:
        return False


def _newer_than(out: Path, inputs: list[Path]) -> bool:
    """Whether `out` exists and was written after every input: a stage directory (its manifest.json) or a file.

    The pipeline's file outputs (comparisons, evaluation reports) are made from stage directories and files; one
    written before an input was (re)made, e.g. comparisons of an SFT model retrained under another runs root with
    the same data folder, is stale and made again.
    """
    if not out.is_file():
        return False
    mtime = out.stat().st_mtime
    for source in inputs:
        marker = source / "manifest.json" if source.is_dir() else source
        if marker.is_file() and marker.stat().st_mtime > mtime:
            print(f"[pipeline] {out} is older than {source}: made again")
            return False
    return True


class Pipeline:
    """Runs the stages of a PipelineConfig, skipping what is already done (a file output only when it is newer
    than the stage directories it was made from)."""

    def __init__(self, cfg: PipelineConfig) -> None:
        self.cfg = cfg
        self.data = Path(cfg.data_dir)
        self.runs = Path(cfg.runs_root)
        self.timings: dict[str, float] = {}

    def run_dir(self, stage: str, name: str | None = None) -> Path:
        return self.runs / stage / (name or self.cfg.name)

    def round_name(self, r: int) -> str:
        """Round 1's runs are the pipeline's own name (a one-round pipeline is what it always was)."""
        return self.cfg.name if r == 1 else f"{self.cfg.name}-round-{r}"

    def _run(self, label: str, args: list[str]) -> None:
        print(f"\n[pipeline] {label}: python main.py {' '.join(args)}", flush=True)
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, MAIN, *args], env=os.environ.copy())
        self.timings[label] = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(
                f"[pipeline] {label} failed (exit {proc.returncode}); fix it and re-run: finished "
                "stages are skipped and this one resumes from its last checkpoint"
            )

    def _fit(self, stage: str, config: str, links: list[str], name: str | None = None) -> Path:
        name = name or self.cfg.name
        run = self.run_dir(stage, name)
        out = run / "stage"
        label = stage if name == self.cfg.name else f"{stage} ({name})"
        if _stage_done(out):
            print(f"[pipeline] {label}: done ({out}), skipped")
            return out
        args = [
            "fit",
            "--config",
            config,
            "--run.root",
            str(self.runs),
            "--run.name",
            name,
            "--seed_everything",
            str(self.cfg.seed),
            *links,
            *self.cfg.stage_args(stage),
        ]
        if (run / "checkpoints" / "last.ckpt").is_file():
            args += ["--ckpt_path", str(run / "checkpoints" / "last.ckpt")]  # resume the interrupted run
        self._run(label, args)
        return out

    def demo_data(self) -> None:
        world = self.data / "world.json"
        if world.is_file():  # written last: its presence means the data is complete
            from lit_rlhf.demo.datagen import FORMAT_VERSION

            version = json.loads(world.read_text(encoding="utf-8")).get("format_version")
            if version != FORMAT_VERSION:
                raise SystemExit(
                    f"[pipeline] {self.data} holds demo data of format {version}, this lit-rlhf writes "
                    f"{FORMAT_VERSION} (adversarial prompts, eval_adversarial.jsonl): delete the folder or set "
                    "another data_dir"
                )
            print(f"[pipeline] demo data: done ({self.data}), skipped")
            return
        sizes = [f"--{k.replace('_', '-')}={v}" for k, v in self.cfg.demo_data.items()]
        self._run("demo-data", ["demo-data", "--out", str(self.data), "--seed", str(self.cfg.seed), *sizes])

    def collect(
        self, ckpt: Path, tag: str, splits: tuple[str, ...] = ("train", "val"), offset: int = 0
    ) -> dict:
        """Comparisons (and, with rules, rule labels) of `ckpt`'s samples: split -> (comparisons, rules or None).

        `offset` shifts the sampling seeds, so a later round's samples are new draws of the same prompts.
        """
        c = self.cfg.collect
        outs = {}
        for split in splits:
            prompts, limit = (
                (c.train_prompts, c.train_limit) if split == "train" else (c.val_prompts, c.val_limit)
            )
            seed = self.cfg.seed + (0 if split == "train" else 1) + offset
            out = self.data / f"comparisons_{tag}_{split}.jsonl"
            rules = self.data / f"rules_{tag}_{split}.jsonl" if self.cfg.rules else None
            outs[split] = (out, rules)
            # written atomically: present = complete; and newer than the checkpoint it samples, else stale
            if _newer_than(out, [ckpt]) and (rules is None or _newer_than(rules, [ckpt])):
                print(f"[pipeline] comparisons ({tag}, {split}): done ({out}), skipped")
                continue
            args = [
                "collect-comparisons",
                *("--ckpt", str(ckpt), "--prompts", str(self.data / prompts), "--limit", str(limit)),
                *("--k", str(c.k), "--temperature", str(c.temperature)),
                *("--max-new-tokens", str(c.max_new_tokens), "--batch-size", str(c.batch_size)),
                *("--seed", str(seed)),
                *("--judge", self.cfg.judge, "--out", str(out)),
                *(("--rules-out", str(rules)) if rules is not None else ()),
            ]
            self._run(f"collect-{split}" if tag == self.cfg.name else f"collect-{split} ({tag})", args)
        return outs

    def merged(self, tag: str, files: list[Path]) -> Path:
        """The rows of every file in `files`, in order, as one file (old + new comparisons); written atomically."""
        out = self.data / tag
        if not out.is_file():
            from lit_rlhf.data.io import write_jsonl

            rows = [
                json.loads(line) for f in files for line in f.read_text(encoding="utf-8").splitlines() if line
            ]
            write_jsonl(out, rows)
        return out

    def reward_model(self, r: int, init_from: Path, data: list[dict]) -> Path:
        """Round r's reward model on every comparison (and rule label) collected so far."""
        if r == 1:
            (train, train_rules), (val, val_rules) = data[0]["train"], data[0]["val"]
        else:
            name = self.round_name(r)
            train = self.merged(f"comparisons_{name}_all_train.jsonl", [d["train"][0] for d in data])
            val = self.merged(f"comparisons_{name}_all_val.jsonl", [d["val"][0] for d in data])
            train_rules = val_rules = None
            if self.cfg.rules:
                train_rules = self.merged(f"rules_{name}_all_train.jsonl", [d["train"][1] for d in data])
                val_rules = self.merged(f"rules_{name}_all_val.jsonl", [d["val"][1] for d in data])
        links = [
            *("--model.init_args.init_from", str(init_from)),
            *("--model.init_args.bias_from", str(self.data / "sft_val.jsonl")),
            *("--data.init_args.train_path", str(train), "--data.init_args.val_path", str(val)),
        ]
        if train_rules is not None:
            links += ["--data.init_args.rules_train_path", str(train_rules)]
            links += ["--data.init_args.rules_val_path", str(val_rules)]
        return self._fit("reward", self.cfg.rm_config, links, self.round_name(r))

    def evaluate(
        self,
        out: Path,
        ckpts: list[Path],
        sft: Path,
        rm: Path,
        prompts: str = "eval_prompts.jsonl",
        base: bool = False,
    ) -> Path:
        """`main.py evaluate` of `ckpts` against the baseline `sft` on held-out `prompts` (report.json in `out`)."""
        if _newer_than(out / "report.json", [*ckpts, sft, rm]):
            print(f"[pipeline] evaluation: done ({out}), skipped")
            return out
        self._run(
            "evaluate" if out == self.runs / "eval" / self.cfg.name else f"evaluate ({out.name})",
            [
                "evaluate",
                *("--ckpt", *(str(c) for c in ckpts), "--sft", str(sft), "--rm", str(rm)),
                *("--prompts", str(self.data / prompts), "--pretrain", str(self.data / "pretrain.jsonl")),
                *("--limit", str(self.cfg.eval_limit), "--max-new-tokens", str(self.cfg.eval_max_new_tokens)),
                *(["--base"] if base else []),
                *("--judge", self.cfg.judge, "--out", str(out)),
            ],
        )
        return out

    def rounds_report(self, sft: Path, rounds: list, sft_val: Path) -> Path:
        """runs/eval/<name>/rounds.{md,json}: one row per round (lit_rlhf.rounds)."""
        from lit_rlhf.judges import load_judge
        from lit_rlhf.rounds import build_report, write_report

        out = self.runs / "eval" / self.cfg.name
        for r in rounds[1:]:  # round r's policy against round r - 1's, same prompts and seeds
            self.evaluate(
                out / f"vs-round-{r.round - 1}", [Path(r.ppo)], Path(rounds[r.round - 2].ppo), Path(r.rm)
            )
        inputs = [sft, sft_val, *(Path(p) for r in rounds for p in (r.rm, r.ppo, r.policy_val))]
        if _newer_than(out / "rounds.json", inputs):
            print(f"[pipeline] rounds report: done ({out / 'rounds.md'}), skipped")
            return out
        print("\n[pipeline] rounds report: scoring each round's held-out comparisons", flush=True)
        start = time.perf_counter()
        write_report(build_report(rounds, str(sft_val), out, load_judge(self.cfg.judge)), out)
        self.timings["rounds-report"] = time.perf_counter() - start
        return out

    def run(self) -> Path:
        from lit_rlhf.rounds import RoundStages

        start = time.perf_counter()
        d = self.data
        print("[pipeline] checking the stage configs and overrides", flush=True)
        check_stage_overrides(self.cfg)
        self.demo_data()
        sft = self._fit(
            "sft",
            self.cfg.sft_config,
            [
                *(
                    ["--model.init_args.backbone.tokenizer", str(d / "tokenizer")]
                    if self.cfg.demo_tokenizer
                    else []
                ),
                "--model.init_args.samples.eval_prompts",
                str(d / "eval_prompts.jsonl"),
                "--data.init_args.train_path",
                str(d / "sft_train.jsonl"),
                "--data.init_args.val_path",
                str(d / "sft_val.jsonl"),
            ],
        )
        data = [self.collect(sft, self.cfg.name)]  # comparisons of SFT samples, then of each round's policy
        rm, ppo, rounds = sft, None, []
        for r in range(1, self.cfg.rounds + 1):
            rm = self.reward_model(r, rm, data)
            args = ppo_stage_args(sft, rm, d, policy=ppo)
            ppo = self._fit("ppo", self.cfg.ppo_config, args, self.round_name(r))
            last = r == self.cfg.rounds  # the last policy's samples are for the report only
            data.append(
                self.collect(ppo, self.round_name(r + 1), ("val",) if last else ("train", "val"), 1000 * r)
            )
            rounds.append(RoundStages(r, str(rm), str(ppo), str(data[-1]["val"][0])))
        policies = [Path(x.ppo) for x in rounds]
        report = self.evaluate(
            self.runs / "eval" / self.cfg.name, [sft, *policies], sft, rm, base=self.cfg.eval_base
        )
        if (d / "eval_adversarial.jsonl").is_file():
            self.evaluate(report / "adversarial", [sft, *policies], sft, rm, "eval_adversarial.jsonl")
        self.rounds_report(sft, rounds, data[0]["val"][0])
        total = time.perf_counter() - start
        print(
            "\n[pipeline] finished in {:.1f} min ({})".format(
                total / 60,
                ", ".join(f"{k} {v:.0f}s" for k, v in self.timings.items()) or "everything was already done",
            )
        )
        print(f"[pipeline] report: {report / 'report.md'} (and report.json, report.png; rounds: rounds.md)")
        print(
            f"[pipeline] dashboard: python main.py dashboard --runs {self.runs}   (then open http://127.0.0.1:8501)"
        )
        return report


def cli_main(argv: list[str]) -> int:
    """`main.py pipeline ...` (lit_rlhf.commands.pipeline)."""
    from lit_rlhf.commands import pipeline

    return pipeline(argv)
