"""`python main.py pipeline --config configs/demo/pipeline.yaml`: the whole InstructGPT loop in order.

demo data -> SFT -> comparison collection from the SFT model -> reward model -> PPO-ptx -> evaluation.
Each stage's stage directory feeds the next. Re-running skips finished stages (their manifests load) and resumes an
interrupted one from its Lightning checkpoint (``--ckpt_path last``). Each stage runs in its own process, so a
crash in one leaves the others' outputs intact and memory is returned between stages.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

MAIN = str(Path(__file__).resolve().parents[1] / "main.py")


def ppo_stage_args(sft: Path, rm: Path, data: Path) -> list[str]:
    """`main.py fit` overrides that point a PPO config at its parent stages and the demo data directory `data`."""
    return [
        *("--model.init_args.policy_from", str(sft)),
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


@dataclass
class PipelineConfig:
    """What the pipeline runs. Stage configs are ordinary `main.py fit` YAML files; the pipeline overrides their
    run root/name and the paths that connect the stages, and appends ``extra_args`` per stage."""

    name: str = "demo"
    runs_root: str = "runs"
    data_dir: str = "data/demo"
    seed: int = 0
    demo_data: dict[str, int] = field(default_factory=dict)  # write_demo_data sizes (n_train, n_val, ...)
    sft_config: str = "configs/demo/sft.yaml"
    rm_config: str = "configs/demo/rm.yaml"
    ppo_config: str = "configs/demo/ppo.yaml"
    collect: CollectSettings = field(default_factory=CollectSettings)
    eval_limit: int = 300
    judge: str = (
        "demo"  # ranks the comparisons and judges the evaluation (the demo world's labeler plays the human)
    )
    extra_args: dict[str, list[str]] = field(default_factory=dict)  # stage -> extra CLI args

    @classmethod
    def from_yaml(cls, path: str | Path) -> PipelineConfig:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: expected a mapping at the top level")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"{path}: unknown field(s) {unknown}; known: {sorted(known)}")
        collect = raw.pop("collect", {}) or {}
        ckeys = {f.name for f in fields(CollectSettings)}
        if set(collect) - ckeys:
            raise ValueError(f"{path}: unknown field(s) in 'collect': {sorted(set(collect) - ckeys)}")
        return cls(**raw, collect=CollectSettings(**collect))


def _stage_done(stage_dir: Path) -> bool:
    from lit_rlhf.checkpoint.manifest import ManifestError, read_manifest

    try:
        read_manifest(stage_dir)
        return True
    except ManifestError:
        return False


class Pipeline:
    """Runs the stages of a PipelineConfig, skipping what is already done."""

    def __init__(self, cfg: PipelineConfig) -> None:
        self.cfg = cfg
        self.data = Path(cfg.data_dir)
        self.runs = Path(cfg.runs_root)
        self.timings: dict[str, float] = {}

    def run_dir(self, stage: str) -> Path:
        return self.runs / stage / self.cfg.name

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

    def _fit(self, stage: str, config: str, links: list[str]) -> Path:
        run = self.run_dir(stage)
        out = run / "stage"
        if _stage_done(out):
            print(f"[pipeline] {stage}: done ({out}), skipped")
            return out
        args = [
            "fit",
            "--config",
            config,
            "--run.root",
            str(self.runs),
            "--run.name",
            self.cfg.name,
            "--seed_everything",
            str(self.cfg.seed),
            *links,
            *self.cfg.extra_args.get(stage, []),
        ]
        if (run / "checkpoints" / "last.ckpt").is_file():
            args += ["--ckpt_path", str(run / "checkpoints" / "last.ckpt")]  # resume the interrupted run
        self._run(stage, args)
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

    def collect(self, sft: Path) -> tuple[Path, Path]:
        c = self.cfg.collect
        outs = []
        for split, prompts, limit, seed in (
            ("train", c.train_prompts, c.train_limit, self.cfg.seed),
            ("val", c.val_prompts, c.val_limit, self.cfg.seed + 1),
        ):
            out = self.data / f"comparisons_{self.cfg.name}_{split}.jsonl"
            outs.append(out)
            if out.is_file():  # written atomically: present means complete
                print(f"[pipeline] comparisons ({split}): done ({out}), skipped")
                continue
            self._run(
                f"collect-{split}",
                [
                    "collect-comparisons",
                    "--ckpt",
                    str(sft),
                    "--prompts",
                    str(self.data / prompts),
                    "--limit",
                    str(limit),
                    "--k",
                    str(c.k),
                    "--temperature",
                    str(c.temperature),
                    "--max-new-tokens",
                    str(c.max_new_tokens),
                    "--batch-size",
                    "64",
                    "--seed",
                    str(seed),
                    "--judge",
                    self.cfg.judge,
                    "--out",
                    str(out),
                ],
            )
        return outs[0], outs[1]

    def evaluate(self, sft: Path, rm: Path, ppo: Path) -> Path:
        out = self.runs / "eval" / self.cfg.name
        if (out / "report.json").is_file():
            print(f"[pipeline] evaluation: done ({out}), skipped")
            return out
        self._run(
            "evaluate",
            [
                "evaluate",
                "--ckpt",
                str(sft),
                str(ppo),
                "--sft",
                str(sft),
                "--rm",
                str(rm),
                "--prompts",
                str(self.data / "eval_prompts.jsonl"),
                "--pretrain",
                str(self.data / "pretrain.jsonl"),
                "--limit",
                str(self.cfg.eval_limit),
                "--judge",
                self.cfg.judge,
                "--out",
                str(out),
            ],
        )
        return out

    def run(self) -> Path:
        start = time.perf_counter()
        d = self.data
        self.demo_data()
        sft = self._fit(
            "sft",
            self.cfg.sft_config,
            [
                "--model.init_args.backbone.tokenizer",
                str(d / "tokenizer"),
                "--model.init_args.samples.eval_prompts",
                str(d / "eval_prompts.jsonl"),
                "--data.init_args.train_path",
                str(d / "sft_train.jsonl"),
                "--data.init_args.val_path",
                str(d / "sft_val.jsonl"),
            ],
        )
        train, val = self.collect(sft)
        rm = self._fit(
            "reward",
            self.cfg.rm_config,
            [
                "--model.init_args.init_from",
                str(sft),
                "--model.init_args.bias_from",
                str(d / "sft_val.jsonl"),
                "--data.init_args.train_path",
                str(train),
                "--data.init_args.val_path",
                str(val),
            ],
        )
        ppo = self._fit("ppo", self.cfg.ppo_config, ppo_stage_args(sft, rm, d))
        report = self.evaluate(sft, rm, ppo)
        total = time.perf_counter() - start
        print(
            "\n[pipeline] finished in {:.1f} min ({})".format(
                total / 60,
                ", ".join(f"{k} {v:.0f}s" for k, v in self.timings.items()) or "everything was already done",
            )
        )
        print(f"[pipeline] report: {report / 'report.md'} (and report.json, report.png)")
        print(
            f"[pipeline] dashboard: python main.py dashboard --runs {self.runs}   (then open http://127.0.0.1:8501)"
        )
        return report


def cli_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="main.py pipeline", description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/demo/pipeline.yaml", help="pipeline YAML")
    p.add_argument("--name", default=None, help="override the run name")
    a = p.parse_args(argv)
    cfg = PipelineConfig.from_yaml(a.config)
    if a.name:
        cfg.name = a.name
    Pipeline(cfg).run()
    return 0
