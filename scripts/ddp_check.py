"""Distributed check: the tiny SFT and reward stages under DDP (2 CPU processes, gloo), outside pytest.

    python scripts/ddp_check.py --stage sft --out DIR
    python scripts/ddp_check.py --stage reward --out DIR
    python scripts/ddp_check.py --stage ppo --out DIR
    python scripts/ddp_check.py --stage fsdp2 --out DIR

Writes DIR/ddp_<stage>.json, which tests/reliability/test_ddp.py reads. Under pytest, Lightning's ``ddp``
strategy re-launches pytest itself in the child process, hence a standalone script.

Lightning's launcher re-executes ``sys.argv`` for rank 1, so every DDP run is its own ``--phase``
invocation in a subprocess: a phase is fully determined by its arguments and writes nothing before the
Trainer call that the second copy of it could race on. The orchestrating invocation (no ``--phase``)
prepares the data, starts the phases and compares their results.

For the reward stage the validation accuracy of one finished reward stage directory is measured with 1 and
with 2 processes. Lightning gives validation a DistributedSampler, which pads the set with copies of its
first items until it divides evenly, so with an odd number of comparisons one is counted twice. The script
predicts that padded figure from per-comparison results of the 1-process run and reports all three.

For PPO (SFT and reward stages trained on one process first) each rank writes what it ended with: the KL
coefficient, the score-normalisation moments, a checksum of its trainable weights and the prompts of its first
rollout. Rollouts are per rank (different prompts); everything steered by statistics must agree across ranks.

For FSDP2 (``--stage fsdp2``) each stage is fitted twice on 2 processes, under ``ddp`` and under ``fsdp2``, from
the same parents (single-process SFT and reward stages). Both see the same batches and average the same
gradients, so the two stage directories and metric rows must agree up to float summation order.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {
    "sft": ROOT / "configs/tiny/sft.yaml",
    "reward": ROOT / "configs/tiny/rm.yaml",
    "ppo": ROOT / "configs/tiny/ppo.yaml",
}
WORLD = 2
MAX_STEPS = {"sft": 12, "reward": 8, "ppo": 8}  # the tiny configs' own values, repeated on the command line
STALL_S, TIMEOUT_S = 30, 90  # a healthy tiny DDP fit takes 9-15 s here and writes something every second
SMALL_DEMO = {"n_train": 256, "n_val": 48, "n_rl": 32, "n_eval": 16, "n_pretrain": 48}


def run_name(devices: int, strategy: str = "ddp", full: bool = False) -> str:
    """Run directory name: the strategy (or "single"), "-full" for the full-weight variant."""
    return (strategy if devices > 1 else "single") + ("-full" if full else "")


# ---- the phases (each runs in its own process; the fit and 2-device validate phases in two) -----------------
def fit_args(
    stage: str, out: Path, sft_stage: Path | None, devices: int, strategy: str = "ddp", full: bool = False
) -> list[str]:
    """The `main.py fit` arguments of the tiny `stage` run over the data in `out/data`.

    `full`: the reward model trains all its weights (no LoRA), and PPO starts from that one, which gives PPO four
    separate full-weight roles instead of adapters on one shared base.
    """
    d = out / "data"
    args = ["fit", "--config", str(CONFIGS[stage]), "--run.root", str(out / "runs")]
    args += ["--run.name", run_name(devices, strategy, full)]
    args += ["--trainer.max_steps", str(MAX_STEPS[stage]), "--trainer.devices", str(devices)]
    if devices > 1:
        args += ["--trainer.strategy", strategy]
    if stage == "sft":
        return args + [
            *("--model.init_args.backbone.tokenizer", str(d / "tokenizer")),
            *("--model.init_args.samples.eval_prompts", str(d / "eval_prompts.jsonl")),
            *("--data.init_args.train_path", str(d / "sft_train.jsonl")),
            *("--data.init_args.val_path", str(d / "sft_val.jsonl")),
        ]
    if stage == "ppo":
        return args + [
            *("--model.init_args.policy_from", str(sft_stage)),
            *(
                "--model.init_args.reward_from",
                str(out / "runs" / "reward" / run_name(1, full=full) / "stage"),
            ),
            *("--model.init_args.eval.prompts", str(d / "eval_prompts.jsonl")),
            *("--model.init_args.ppo.normalize_scores", "true"),
            # two backward passes per update (micro-batches of 2 of a minibatch of 4, ptx with the second): every
            # one must reach every trained parameter under DDP
            *("--model.init_args.ppo.update_micro_batch_size", "2"),
            *("--data.init_args.prompts_path", str(d / "rl_prompts.jsonl")),
            *("--data.init_args.pretrain_path", str(d / "pretrain.jsonl")),
        ]
    full_weights = ["--model.init_args.lora", "null", "--model.init_args.optim.lr", "1e-4"] if full else []
    return args + [
        *("--model.init_args.init_from", str(sft_stage)),
        *("--model.init_args.bias_from", str(d / "sft_val.jsonl")),
        *("--data.init_args.train_path", str(out / "cmp_train.jsonl")),
        *("--data.init_args.val_path", str(out / "cmp_val.jsonl")),
        *full_weights,
    ]


def phase_fit(
    stage: str, out: Path, sft_stage: Path | None, devices: int, strategy: str = "ddp", full: bool = False
) -> None:
    """`main.py fit` through the project's CLI, then tear the process group down explicitly.

    docs/platform-notes.md: DDP on CPU sometimes aborted at interpreter exit unless the group was destroyed first.
    """
    import torch.distributed as dist

    from lit_rlhf.cli import lightning_cli

    cli = lightning_cli(fit_args(stage, out, sft_stage, devices, strategy, full))
    if stage == "ppo" and strategy == "ddp":  # (the checksum reads whole parameters, not FSDP2 shards)
        write_rank_state(cli, out / f"ppo_rank{cli.trainer.global_rank}_{devices}.json")
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def write_rank_state(cli, path: Path) -> None:
    """What this PPO rank ended with: the figures every rank must share, and its own first prompts."""
    import torch

    from lit_rlhf.atomic import write_json

    module, data = cli.model, cli.datamodule
    params = [p for p in module.parameters() if p.requires_grad]
    data.consumed = 0  # the first batch this rank trained on
    first = next(iter(data.train_dataloader()))["prompts"]
    write_json(
        path,
        {
            "rank": cli.trainer.global_rank,
            "rollouts_done": module.rollouts_done,
            "global_step": cli.trainer.global_step,
            "kl_coef": module.kl_ctl.value,
            "score_moments": module.score_moments.state_dict(),
            "trainable_checksum": float(
                sum(torch.sum(p.detach().double() * (i + 1)) for i, p in enumerate(params))
            ),
            "first_prompts": first,
        },
    )


def _stored_reward_module(stage_dir: Path, max_length: int):
    """A RewardModule whose weights are a finished reward stage directory, for validation only."""
    from lit_rlhf.checkpoint.stage_dir import load_stage_dir
    from lit_rlhf.stages.reward import RewardModule

    class StoredReward(RewardModule):
        def configure_model(self) -> None:
            if self.net is None:  # the stage's own reward adapter and head, not fresh ones
                self.net, _ = load_stage_dir(self.init_from, device=self._target_device())
                self.net.eval()

    return StoredReward(init_from=str(stage_dir), max_length=max_length, rankings_limit=0)


def per_comparison_results(module, datamodule) -> list[list[int]]:
    """[pairs, pairs ranked right] of each validation comparison, in file order, scored one at a time."""
    import torch

    from lit_rlhf.data.comparisons import collate_comparisons
    from lit_rlhf.rl.losses import kwise_ranking_loss

    pad = datamodule.tokenizer.pad_token_id
    out = []
    with torch.no_grad():
        for item in datamodule.data["val"]:
            batch = collate_comparisons([item], pad)
            r = kwise_ranking_loss(module._scores(batch).float(), batch["ranks"], batch["group"])
            n = int(r.n_pairs)
            out.append([n, round(float(r.accuracy) * n) if n else 0])
    return out


def phase_validate(rm_stage: Path, val_path: Path, devices: int, result: Path) -> None:
    """`trainer.validate` of a fixed reward stage directory on `val_path` with 1 or 2 processes."""
    import lightning as L
    import torch.distributed as dist

    from lit_rlhf.atomic import write_json
    from lit_rlhf.data.comparisons import ComparisonDataModule

    L.seed_everything(0)
    module = _stored_reward_module(rm_stage, max_length=64)
    data = ComparisonDataModule(str(val_path), str(val_path), batch_size=4, max_length=64)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    (metrics,) = trainer.validate(module, datamodule=data, verbose=False)
    if trainer.is_global_zero:
        row: dict[str, Any] = {"devices": devices, "val_accuracy": float(metrics["reward/val_accuracy"])}
        if devices == 1:
            row["per_comparison"] = per_comparison_results(module, data)
        write_json(result, row)
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# ---- the orchestrator --------------------------------------------------------------------------------------
def _last_change(paths: list[Path]) -> float:
    """The newest modification time of any file under `paths` (0 when there is none yet)."""
    times = [0.0]
    for root in paths:
        files = [root] if root.is_file() else (root.rglob("*") if root.is_dir() else [])
        times += [f.stat().st_mtime for f in files if f.is_file()]
    return max(times)


def run_phase(args: list[str], log: Path, watch: list[Path]) -> dict[str, Any]:
    """Run this script with `args` in a subprocess (output to `log`); its exit code and wall time.

    A DDP deadlock shows as silence, not as an error: the phase is killed, launcher and rank 1 together,
    when neither `log` nor any file under `watch` changed for STALL_S seconds, or after TIMEOUT_S.
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    start = time.time()
    with open(log, "wb") as f:
        proc = subprocess.Popen(  # its own session, so killing it also ends the rank the launcher started
            [sys.executable, __file__, *args],
            stdout=f,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        killed = None
        while proc.poll() is None:
            time.sleep(0.5)
            now = time.time()
            if now - max(start, _last_change([log, *watch])) > STALL_S:
                killed = f"no output for {STALL_S} s"
            elif now - start > TIMEOUT_S:
                killed = f"over {TIMEOUT_S} s"
            if killed:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return {
        "returncode": proc.returncode,
        "killed": killed,
        "wall_s": round(time.time() - start, 1),
        "log": str(log),
    }


def check_run_dir(run_dir: Path, max_steps: int) -> dict[str, Any]:
    """What the DDP fit left: status.json fields, and whether its stage directory loads completely."""
    from lit_rlhf.checkpoint.manifest import ManifestError, read_manifest

    status_path = run_dir / "status.json"
    status = json.loads(status_path.read_text()) if status_path.is_file() else {}
    try:
        manifest_step: int | None = read_manifest(run_dir / "stage").step
        stage_error = None
    except ManifestError as e:
        manifest_step, stage_error = None, str(e)
    return {
        "status": status.get("status"),
        "step": status.get("step"),
        "max_steps": max_steps,
        "manifest_step": manifest_step,
        "stage_error": stage_error,
    }


def fit(
    stage: str,
    out: Path,
    devices: int,
    sft_stage: Path | None = None,
    strategy: str = "ddp",
    full: bool = False,
) -> dict[str, Any]:
    """One `fit` phase (2 processes when devices > 1); what it returned and what it left in its run directory."""
    args = ["--phase", "fit", "--stage", stage, "--out", str(out), "--devices", str(devices)]
    args += ["--strategy", strategy] + (["--full-weights"] if full else [])
    if sft_stage is not None:
        args += ["--sft-stage", str(sft_stage)]
    name = run_name(devices, strategy, full)
    run_dir = out / "runs" / stage / name
    result = run_phase(args, out / f"fit_{stage}_{name}.log", watch=[run_dir])
    result.update(check_run_dir(run_dir, MAX_STEPS[stage]))
    return result


def prepare_demo(out: Path) -> None:
    from lit_rlhf.demo.datagen import write_demo_data

    write_demo_data(out / "data", seed=0, **SMALL_DEMO)


def collect(out: Path, sft_stage: Path) -> int:
    """Labeler-ranked comparisons sampled from the SFT stage; the validation set is cut to an odd size.

    An odd size makes the DistributedSampler pad the 2-process validation with one duplicate.
    Returns the number of validation comparisons.
    """
    from lit_rlhf.backbone.generate import SamplingConfig
    from lit_rlhf.collect import collect_comparisons
    from lit_rlhf.data.io import write_jsonl

    sampling = SamplingConfig(max_new_tokens=8, do_sample=True, temperature=1.5)
    for split, src, seed in (("train", "sft_train.jsonl", 0), ("val", "sft_val.jsonl", 1)):
        collect_comparisons(
            sft_stage,
            out / "data" / src,
            out / f"cmp_{split}.jsonl",
            k=4,
            sampling=sampling,
            limit=48,
            seed=seed,
            judge="demo",
        )
    val = (out / "cmp_val.jsonl").read_text(encoding="utf-8").splitlines()
    val = val[: len(val) - (len(val) % 2 == 0)]
    write_jsonl(out / "cmp_val.jsonl", [json.loads(x) for x in val])
    return len(val)


def wrong_first(val_path: Path, per_item: list[list[int]], dest: Path) -> list[list[int]]:
    """Copy the validation set with a comparison the RM ranks least well first (the one padding repeats).

    Returns the per-comparison results in the new order.
    """
    from lit_rlhf.data.io import write_jsonl

    rows = [json.loads(x) for x in val_path.read_text(encoding="utf-8").splitlines()]
    with_pairs = [i for i, (n, _) in enumerate(per_item) if n]
    worst = min(with_pairs, key=lambda i: per_item[i][1] / per_item[i][0])
    order = [worst, *(i for i in range(len(rows)) if i != worst)]
    write_jsonl(dest, [rows[i] for i in order])
    return [per_item[i] for i in order]


def padded_accuracy(per_item: list[list[int]], world: int) -> float:
    """Pairwise accuracy over the set as DistributedSampler feeds it to `world` ranks (first items repeated)."""
    pad = (-len(per_item)) % world
    items = per_item + per_item[:pad]
    return sum(c for _, c in items) / sum(n for n, _ in items)


def validate(out: Path, rm_stage: Path, val: Path, devices: int) -> dict[str, Any]:
    """One `validate` phase; its result row, or the phase's outcome when it wrote none."""
    result = out / f"validate_{devices}.json"
    args = ["--phase", "validate", "--rm-stage", str(rm_stage), "--val", str(val)]
    outcome = run_phase(
        [*args, "--devices", str(devices), "--result", str(result)], result.with_suffix(".log"), []
    )
    return json.loads(result.read_text()) if outcome["returncode"] == 0 else {"error": outcome}


def reward_validation(out: Path, rm_stage: Path, n_val: int) -> dict[str, Any]:
    """1-process vs 2-process validation accuracy of the same reward stage directory and comparisons."""
    one = validate(out, rm_stage, out / "cmp_val.jsonl", 1)
    if "error" in one:
        return {"error_1proc": one["error"]}
    reordered = out / "cmp_val_wrong_first.jsonl"
    per_item = wrong_first(out / "cmp_val.jsonl", one["per_comparison"], reordered)
    two = validate(out, rm_stage, reordered, WORLD)
    return {
        "n_val_comparisons": n_val,
        "n_pairs": sum(n for n, _ in per_item),
        "padded_duplicates": (-n_val) % WORLD,
        "first_comparison": per_item[0],
        "accuracy_1proc": one["val_accuracy"],
        "accuracy_1proc_from_per_comparison": padded_accuracy(per_item, 1),
        "accuracy_2proc": two.get("val_accuracy"),
        "accuracy_2proc_predicted_with_padding": padded_accuracy(per_item, WORLD),
        "error_2proc": two.get("error"),
    }


def single_parents(out: Path) -> tuple[Path, dict[str, Any] | None]:
    """SFT, collected comparisons and a reward stage on one process: the parents of the 2-process runs.

    Returns the SFT stage directory (the reward stage is found by `fit_args`), and an error entry or None.
    """
    sft = fit("sft", out, 1)
    sft_stage = out / "runs" / "sft" / run_name(1) / "stage"
    if sft["stage_error"] is not None:
        return sft_stage, {"single-process sft": sft}
    collect(out, sft_stage)
    rm = fit("reward", out, 1, sft_stage)
    if rm["stage_error"] is not None:
        return sft_stage, {"single-process reward": rm}
    return sft_stage, None


def ppo_check(out: Path) -> dict[str, Any]:
    """SFT and reward stages on one process, then PPO on two; what each PPO rank ended with."""
    sft_stage, error = single_parents(out)
    if error is not None:
        return {"error": error}
    report: dict[str, Any] = {"fit": fit("ppo", out, WORLD, sft_stage)}
    ranks = [out / f"ppo_rank{r}_{WORLD}.json" for r in range(WORLD)]
    report["ranks"] = [json.loads(p.read_text()) if p.is_file() else None for p in ranks]
    rows = [json.loads(x) for x in (out / "runs/ppo/ddp/metrics.jsonl").read_text().splitlines() if x.strip()]
    report["kl_coef_rows"] = [r["ppo/kl_coef"] for r in rows if "ppo/kl_coef" in r]
    return report


def compare_runs(a: Path, b: Path) -> dict[str, Any]:
    """How far run directory `b` is from `a`: every stage tensor, the manifest metrics and the metric rows."""
    from safetensors.torch import load_file

    from lit_rlhf.checkpoint.manifest import read_manifest

    ma, mb = read_manifest(a / "stage"), read_manifest(b / "stage")
    tensors: dict[str, Any] = {
        "files": sorted(ma.files) == sorted(mb.files),
        "max_abs_diff": 0.0,
        "max_abs": 0.0,
    }
    for rel in (f for f in ma.files if f.endswith(".safetensors")):
        ta, tb = load_file(str(a / "stage" / rel)), load_file(str(b / "stage" / rel))
        if sorted(ta) != sorted(tb):
            tensors["keys_differ"] = rel
            continue
        for k in ta:
            diff = float((ta[k].double() - tb[k].double()).abs().max()) if ta[k].numel() else 0.0
            tensors["max_abs_diff"] = max(tensors["max_abs_diff"], diff)
            tensors["max_abs"] = max(tensors["max_abs"], float(ta[k].abs().max()) if ta[k].numel() else 0.0)
    rows = [
        [json.loads(x) for x in (r / "metrics.jsonl").read_text().splitlines() if x.strip()] for r in (a, b)
    ]
    # Fractions of thresholded events (e.g. ppo/clip_frac: tokens whose ratio left the clip range) move in steps of
    # one token: a float-order difference can flip one, so they are compared on their own, in absolute terms.
    rel, frac = 0.0, 0.0
    for ra, rb in zip(*rows, strict=False):
        for k, v in ra.items():
            if not isinstance(v, float) or any(t in k for t in ("time", "per_s", "gen_share")) or k not in rb:
                continue
            if k.endswith("_frac"):
                frac = max(frac, abs(v - rb[k]))
            else:
                rel = max(rel, abs(v - rb[k]) / max(1.0, abs(v)))
    metrics = {k: (v, mb.metrics.get(k)) for k, v in ma.metrics.items()}
    return {
        "tensors": tensors,
        "rows": [len(rows[0]), len(rows[1])],
        "rows_max_rel_diff": rel,
        "rows_max_frac_diff": frac,
        "metrics": metrics,
        "metrics_max_rel_diff": max(
            (abs(x - y) / max(1.0, abs(x)) for x, y in metrics.values() if y is not None), default=0.0
        ),
    }


def uneven(path: Path, batch_size: int) -> int:
    """Cut a JSONL file to 2 k batch_size + 1 rows (rank 0: k + 1 batches, rank 1: k); the rows kept."""
    lines = path.read_text(encoding="utf-8").splitlines()
    keep = (len(lines) - 1) // (2 * batch_size) * 2 * batch_size + 1
    assert keep > 2 * batch_size, f"{path}: {len(lines)} rows are too few to cut"
    path.write_text("\n".join(lines[:keep]) + "\n", encoding="utf-8")
    return keep


def fsdp2_check(out: Path) -> dict[str, Any]:
    """Each stage under ddp and under fsdp2 (2 processes each) from the same parents; how far apart they end.

    The validation sets are cut so that an even split gives rank 0 one batch more than rank 1: under FSDP2 each
    forward is a collective, so a rank running a batch the other does not would wait forever.
    """
    sft_stage, error = single_parents(out)
    if error is not None:
        return {"error": error}
    val_rows = {  # (the parents above validated on the whole sets)
        "sft": uneven(out / "data" / "sft_val.jsonl", 8),  # the tiny SFT config's batch size
        "reward": uneven(out / "cmp_val.jsonl", 4),  # the tiny reward config's
    }
    report: dict[str, Any] = {"val_rows": val_rows}
    rm_full = fit("reward", out, 1, sft_stage, full=True)  # the parent of PPO with four separate roles
    if rm_full["stage_error"] is not None:
        return {"error": {"single-process full-weight reward": rm_full}}
    cases = [
        ("sft", "sft", False),
        ("reward", "reward", False),
        ("ppo", "ppo", False),
        ("ppo_separate", "ppo", True),
    ]
    for name, stage, full in cases:
        fits = {s: fit(stage, out, WORLD, sft_stage, strategy=s, full=full) for s in ("ddp", "fsdp2")}
        entry: dict[str, Any] = {"fit": fits}
        if all(f["stage_error"] is None for f in fits.values()):
            runs = out / "runs" / stage
            entry["compare"] = compare_runs(
                runs / run_name(WORLD, "ddp", full), runs / run_name(WORLD, "fsdp2", full)
            )
        report[name] = entry
    return report


def orchestrate(stage: str, out: Path) -> dict[str, Any]:
    """The whole check of one stage: data, the DDP fit and (reward) the 1-vs-2-process validation."""
    out.mkdir(parents=True, exist_ok=True)
    prepare_demo(out)
    report: dict[str, Any] = {"stage": stage, "world_size": WORLD}
    if stage == "sft":
        report["fit"] = fit("sft", out, WORLD)
        return report
    if stage == "ppo":
        return {**report, **ppo_check(out)}
    if stage == "fsdp2":
        return {**report, **fsdp2_check(out)}
    single_sft = fit("sft", out, 1)
    sft_stage = out / "runs" / "sft" / run_name(1) / "stage"
    if single_sft["stage_error"] is not None:
        return {**report, "error": {"single-process sft": single_sft}}
    n_val = collect(out, sft_stage)
    report["fit"] = fit("reward", out, WORLD, sft_stage)
    # The accuracy comparison needs one fixed reward stage: the DDP run's, or a single-process one without it.
    rm_devices = WORLD if report["fit"]["stage_error"] is None else 1
    if rm_devices == 1:
        single_rm = fit("reward", out, 1, sft_stage)
        if single_rm["stage_error"] is not None:
            return {**report, "error": {"single-process reward": single_rm}}
    rm_stage = out / "runs" / "reward" / run_name(rm_devices) / "stage"
    report["validation"] = {"rm_stage": str(rm_stage), **reward_validation(out, rm_stage, n_val)}
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stage", choices=("sft", "reward", "ppo", "fsdp2"), default="sft")
    p.add_argument("--strategy", choices=("ddp", "fsdp2"), default="ddp", help=argparse.SUPPRESS)
    p.add_argument("--full-weights", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, default=Path("ddp_check"))
    p.add_argument("--sft-stage", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--phase", choices=("fit", "validate"), default=None, help=argparse.SUPPRESS)
    p.add_argument("--devices", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--rm-stage", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--val", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.phase == "fit":
        phase_fit(a.stage, a.out.resolve(), a.sft_stage, a.devices, a.strategy, a.full_weights)
        return 0
    if a.phase == "validate":
        phase_validate(a.rm_stage, a.val, a.devices, a.result)
        return 0
    from lit_rlhf.atomic import write_json

    report = orchestrate(a.stage, a.out.resolve())
    write_json(a.out.resolve() / f"ddp_{a.stage}.json", report)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
