"""lit-rlhf side by side with TRL: SFT tokens/s, reward-model comparisons/s, one online RL step, peak RSS.

Run by hand, not a test (see bench/README.md). Needs the ``bench`` extra (TRL); lit-rlhf itself does not:

    python bench/vs_trl.py                                  # every measurement, ~2 min
    python bench/vs_trl.py --only lit-sft,trl-sft --sft-steps 20 --warmup 5
    python bench/vs_trl.py --model smollm2                  # SmolLM2-135M-Instruct, chat data, bf16, ~15 min

The parent writes one shared work directory: demo data, K=4 rankings of the demo prompts made by the demo
labeler, a randomly initialised demo GPT-2 saved with ``save_pretrained`` (+ the demo tokenizer), and the SFT
and reward stage directories that PPO starts from. It then re-invokes this script with ``--one NAME`` once
per measurement, so each peak RSS belongs to one framework and one stage alone. Both sides get the same
model, data, batch sizes, sequence lengths, precision and thread count; what differs is said in each
run's ``setup`` and in the README. ``--model smollm2`` swaps the demo model for SmolLM2-135M-Instruct (the
bundled GGUF, converted once by lit-rlhf into a plain transformers folder that both sides load), the demo
data for its chat format, rendered by the model's own chat template, and fp32 for bf16 autocast; SFT is LoRA
on every linear layer there, and SFT adds the packed / padding-free variants of both sides. Rows go to
``--out`` as JSON (written atomically), the table and the ratios to stdout and to a markdown file next to it.

What lives here: what this benchmark measures (its runs, rows, report and the measurements themselves); the
subprocess-per-run driver, argument checks and host records are bench/harness.py's. Neither lit-rlhf's nor
TRL's training code is changed; TRL's trainers are subclassed only to record each step's work and loss (and
GRPO's generation time and length), PPOModule only to time its rollout (generation + scoring), which splits
lit-rlhf's RL step.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the harness is a sibling module, not a package
import harness  # noqa: E402

DEMO_MODEL = {"model_type": "gpt2", "n_layer": 4, "n_embd": 256, "n_head": 4, "n_positions": 64}
LORA = {"r": 16, "alpha": 32, "dropout": 0.0}  # configs/demo/rm.yaml and configs/smollm2/*.yaml
K = 4  # responses per ranked prompt
GROUP = 2  # GRPO completions per prompt: the smallest group GRPO accepts
SFT_LR, RM_LR, RL_LR = 5e-4, 1e-3, 1e-4  # the demo configs' rates; they do not change the step cost
KL_COEF = 0.1
RUN_TIMEOUT_S = 900
# the libraries both sides run on, recorded with every row and named in the report
LIBRARIES = ("lit-rlhf", "trl", "transformers", "accelerate", "datasets", "peft", "torch", "lightning")
RESULTS = Path(__file__).resolve().parent / "results"

# name -> (stage, framework). Each lit/trl pair below is compared in RATIOS.
RUNS: dict[str, tuple[str, str]] = {
    "lit-sft": ("sft", "lit-rlhf"),
    "lit-sft-packed": ("sft", "lit-rlhf"),
    "trl-sft": ("sft", "trl"),
    "trl-sft-padfree": ("sft", "trl"),
    "trl-sft-packed": ("sft", "trl"),
    "lit-rm": ("reward", "lit-rlhf"),
    "lit-rm-prefix": ("reward", "lit-rlhf"),
    "trl-rm": ("reward", "trl"),
    "lit-ppo": ("rl", "lit-rlhf"),
    "trl-grpo": ("rl", "trl"),
    "trl-grpo-half": ("rl", "trl"),
}
TRL_SFT = ("trl-sft", "trl-sft-padfree", "trl-sft-packed")  # SFTTrainer configurations; ratios take the best
# (ratio name, lit run, trl runs, target for lit rate / trl rate). Of several trl runs the fastest measured one
# is compared. RL rates are RL steps per second.
RATIOS: tuple[tuple[str, str, tuple[str, ...], float], ...] = (
    ("SFT tokens/s", "lit-sft", TRL_SFT, 1.0),
    ("SFT tokens/s, lit-rlhf packed", "lit-sft-packed", TRL_SFT, 1.0),
    ("RM comparisons/s (K=4)", "lit-rm", ("trl-rm",), 3.0),
    ("RM comparisons/s (K=4), lit-rlhf shared prefix", "lit-rm-prefix", ("trl-rm",), 3.0),
    ("RL steps/s, equal prompts", "lit-ppo", ("trl-grpo",), 1.0),
    ("RL steps/s, equal completions", "lit-ppo", ("trl-grpo-half",), 1.0),
)
# (label, run, baseline run): what packing or padding-free does to each framework's own SFT rate
GAINS: tuple[tuple[str, str, str], ...] = (
    ("lit-rlhf packed / padded", "lit-sft-packed", "lit-sft"),
    ("TRL padding-free / padded", "trl-sft-padfree", "trl-sft"),
    ("TRL packed (bfd, padding-free) / padded", "trl-sft-packed", "trl-sft"),
    ("lit-rlhf RM shared prefix / one row per response", "lit-rm-prefix", "lit-rm"),
)


@dataclass(frozen=True)
class ModelSpec:
    """What `--model` changes: the base, the data format, the sequence length, precision and default sizes.

    Attributes:
        name: the `--model` value.
        title: the model in words, for the report.
        model_type: transformers' model_type (its classes are imported before the RSS baseline).
        bundled: lit-rlhf's bundled GGUF name (``bundled:<name>``) to load, converted once into a cached
            transformers folder; None builds the random demo GPT-2 instead.
        row_format: the demo data's row format, "plain" (prompt/response) or "chat" (messages).
        system_prompt: the system message every prompt is rendered with (None: none added).
        max_length: SFT / RM sequence length, and the packed rows' length; every example fits it.
        precision: "fp32", or "bf16" (autocast on CPU on both sides: Lightning bf16-mixed, TRL bf16=True).
        sft_lora: SFT trains LoRA adapters on every linear layer (else the full model).
        runs: the runs made when `--only` is not given.
        defaults: the sizes used when their flags are not given.
    """

    name: str
    title: str
    model_type: str
    bundled: str | None
    row_format: str
    system_prompt: str | None
    max_length: int
    precision: str
    sft_lora: bool
    runs: tuple[str, ...]
    defaults: dict[str, int] = field(default_factory=dict)

    @property
    def out(self) -> Path:
        return RESULTS / ("vs_trl.json" if self.name == "demo" else f"vs_trl_{self.name}.json")


SIZES = ("sft_steps", "rm_steps", "rl_steps", "warmup", "rl_warmup", "batch_size", "rm_prompts", "rl_prompts")
SIZES += ("max_new_tokens",)
MODELS: dict[str, ModelSpec] = {
    "demo": ModelSpec(
        name="demo",
        title="random demo GPT-2 (4 layers, 256 wide, 3.2M parameters)",
        model_type="gpt2",
        bundled=None,
        row_format="plain",
        system_prompt=None,
        max_length=64,  # the demo model's n_positions: every sequence on both sides fits it
        precision="fp32",
        sft_lora=False,  # configs/demo/sft.yaml fine-tunes the whole model
        runs=("lit-sft", "trl-sft", "lit-rm", "trl-rm", "lit-ppo", "trl-grpo", "trl-grpo-half"),
        defaults={
            "sft_steps": 40,
            "rm_steps": 30,
            "rl_steps": 5,
            "warmup": 6,
            "rl_warmup": 1,
            "batch_size": 32,
        }
        | {"rm_prompts": 16, "rl_prompts": 32, "max_new_tokens": 16},
    ),
    "smollm2": ModelSpec(
        name="smollm2",
        title="SmolLM2-135M-Instruct (bundled GGUF, dequantized to float32)",
        model_type="llama",
        bundled="smollm2-135m-instruct",
        row_format="chat",
        system_prompt="Solve the task. Answer with the result only.",  # configs/smollm2/sft.yaml
        # The chat rows are at most ~50 tokens with the system prompt; 128 fits every one and packs 3-4 per row.
        max_length=128,
        precision="bf16",  # configs/smollm2/*.yaml train with bf16-mixed
        sft_lora=True,
        runs=tuple(RUNS),
        defaults={
            "sft_steps": 12,
            "rm_steps": 10,
            "rl_steps": 3,
            "warmup": 3,
            "rl_warmup": 1,
            "batch_size": 8,
        }
        | {"rm_prompts": 4, "rl_prompts": 8, "max_new_tokens": 16},
    ),
}


# ---------------------------------------------------------------------------------------------------------
# Pure helpers
# ---------------------------------------------------------------------------------------------------------


def rate_stats(step_times: list[float], work: list[float], warmup: int) -> dict[str, float]:
    """Work per second and step times over the steps after `warmup`.

    Args:
        step_times: (N,) seconds of each step, end of the previous step to the end of this one.
        work: (N,) units done by each step (tokens, ranked pairs, or 1 for an RL step).
        warmup: leading steps left out (allocator growth, lazy kernel choice, first-call caches).
    """
    timed = step_times[warmup:]
    if not timed:
        raise ValueError(f"no timed steps: {len(step_times)} steps recorded, warm-up {warmup}")
    seconds = sum(timed)
    return {
        "rate": sum(work[warmup:]) / seconds,
        "work_per_step": sum(work[warmup:]) / len(timed),
        "step_time_ms": 1000.0 * seconds / len(timed),
        # Robust to a neighbour process taking the cores for a step or two; the mean is not.
        "median_step_time_ms": 1000.0 * sorted(timed)[len(timed) // 2],
        "timed_steps": len(timed),
    }


def ranked_pairs(ranks: list[int], group: list[int]) -> int:
    """Pairs of responses to the same prompt with unequal rank: what a K-wise batch learns from.

    Args:
        ranks: (N,) labeled rank per response (0 = best). group: (N,) prompt index per response.
    """
    n = len(ranks)
    return sum(1 for i in range(n) for j in range(n) if group[i] == group[j] and ranks[i] < ranks[j])


def group_steps(step_times: list[float], per_group: int) -> list[float]:
    """Sum consecutive optimizer-step times into RL-step times, `per_group` optimizer steps each.

    A trailing partial group (a run cut short) is dropped.
    """
    whole = len(step_times) // per_group
    return [sum(step_times[g * per_group : (g + 1) * per_group]) for g in range(whole)]


def non_pad_tokens(batch: dict[str, Any]) -> int:
    """Tokens of a batch that go through the model: the attention mask's ones, or every position when the
    batch has no mask (padding-free batches: examples back to back in one row, nothing padded)."""
    mask = batch.get("attention_mask")
    return int(mask.sum()) if mask is not None else int(batch["input_ids"].numel())


def best_run(rows: list[dict[str, Any]], names: tuple[str, ...]) -> str | None:
    """Of the runs `names`, the one with the highest measured rate; None when none was measured."""
    rates = {r["name"]: r.get("rate") for r in rows if r["name"] in names and r.get("rate")}
    return max(rates, key=rates.__getitem__) if rates else None


def extra_suffix(ours: list[int], theirs: list[int]) -> list[int] | None:
    """The ids `theirs` has after all of `ours` ([] when equal); None when `ours` is not a prefix of `theirs`."""
    return list(theirs[len(ours) :]) if list(theirs[: len(ours)]) == list(ours) else None


def _ratio(by_name: dict[str, dict[str, Any]], a: str | None, b: str | None, key: str) -> float | None:
    x, y = by_name.get(a or "", {}).get(key), by_name.get(b or "", {}).get(key)
    return round(x / y, 2) if x and y else None


def gain_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each GAINS entry: a packed / padding-free SFT run's (or a shared-prefix RM run's) rate and step time against
    its plain baseline."""
    by_name = {r["name"]: r for r in rows}
    return [
        {
            "comparison": label,
            "run": run,
            "baseline": base,
            "rate_ratio": _ratio(by_name, run, base, "rate"),
            "work_per_step_ratio": _ratio(by_name, run, base, "work_per_step"),
            "step_time_ratio": _ratio(by_name, run, base, "step_time_ms"),
        }
        for label, run, base in GAINS
        if run in by_name and base in by_name
    ]


def ratio_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each RATIOS entry evaluated on the measured rows (against the fastest of its TRL runs); None where
    either side is missing or failed. Entries whose lit-rlhf run was not made are left out."""
    by_name = {r["name"]: r for r in rows}

    def ratio(lit: str, trl: str | None, key: str) -> float | None:
        return _ratio(by_name, lit, trl, key)

    out = []
    for label, lit, candidates, target in RATIOS:
        if lit not in by_name:
            continue
        trl = best_run(rows, candidates) or next((c for c in candidates if c in by_name), candidates[0])
        value = ratio(lit, trl, "rate")
        out.append(
            {
                "comparison": label,
                "lit": lit,
                "trl": trl,
                "ratio": value,
                "work_per_step_ratio": ratio(lit, trl, "work_per_step"),
                # TRL / lit: above 1 means a lit-rlhf step takes less time
                "step_time_ratio_trl_over_lit": ratio(trl, lit, "step_time_ms"),
                "median_step_time_ratio_trl_over_lit": ratio(trl, lit, "median_step_time_ms"),
                "target": target,
                "met": None if value is None else value >= target,
                "rss_ratio_lit_over_trl": ratio(lit, trl, "peak_rss_mb"),
            }
        )
    return out


def versions() -> dict[str, str | None]:
    """The library versions both sides run on."""
    return harness.versions(LIBRARIES)


def empty_row(name: str, error: str | None = None) -> dict[str, Any]:
    """A row with every measured field present and null (a failed run keeps the same columns)."""
    stage, framework = RUNS[name]
    keys = ("rate", "work_per_step", "step_time_ms", "median_step_time_ms", "timed_steps", "peak_rss_mb")
    extra = ("rss_delta_mb", "trainable_params", "final_loss", "unit", "mean_response_tokens")
    extra += ("prompts_per_step", "completions_per_step", "generation_ms", "time_split_ms", "setup")
    return {
        "name": name,
        "stage": stage,
        "framework": framework,
        **dict.fromkeys(keys + extra),
        "error": error,
    }


_fmt = functools.partial(harness.fmt_cell, yes="yes", no="no")


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a GitHub markdown table; a failed row shows its error in the last column."""
    columns = (
        "run", "framework", "rate", "unit", "work/step", "step ms (mean)", "step ms (median)", "peak RSS MiB",
        "RSS delta MiB", "trainable", "final loss", "response tokens", "generation ms", "load 1m", "error",
    )  # fmt: skip
    lines = []
    for r in rows:
        cells = [r["name"], r["framework"], _fmt(r["rate"], 2), _fmt(r["unit"]), _fmt(r["work_per_step"], 1)]
        cells += [_fmt(r["step_time_ms"], 1), _fmt(r["median_step_time_ms"], 1), _fmt(r["peak_rss_mb"])]
        cells += [_fmt(r["rss_delta_mb"]), _fmt(r["trainable_params"]), _fmt(r["final_loss"], 3)]
        cells += [_fmt(r.get("mean_response_tokens"), 1), _fmt(r.get("generation_ms"), 0)]
        cells += [_fmt(r.get("load_avg_1m"), 2), harness.error_cell(r.get("error"))]
        lines.append(cells)
    return harness.md_table(columns, lines)


def markdown_ratios(ratios: list[dict[str, Any]]) -> str:
    """The ratios against their targets as a markdown table."""
    columns = (
        "comparison", "lit-rlhf run", "TRL run", "rate lit-rlhf ÷ TRL", "target", "met", "work/step lit ÷ TRL",
        "step time TRL ÷ lit (mean)", "(median)", "peak RSS lit ÷ TRL",
    )  # fmt: skip
    lines = []
    for r in ratios:
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        cells = [r["comparison"], r["lit"], r["trl"], ratio, f">= {r['target']:.1f}x", _fmt(r["met"])]
        cells += [_fmt(r["work_per_step_ratio"], 2), _fmt(r["step_time_ratio_trl_over_lit"], 2)]
        cells += [_fmt(r["median_step_time_ratio_trl_over_lit"], 2), _fmt(r["rss_ratio_lit_over_trl"], 2)]
        lines.append(cells)
    return harness.md_table(columns, lines)


def markdown_gains(gains: list[dict[str, Any]]) -> str:
    """What packing / padding-free does to each side's SFT rate (and a shared prefix to ours for the RM), as a
    markdown table."""
    columns = ("variant", "run", "baseline", "rate ratio", "work/step ratio", "step time ratio")
    lines = []
    for g in gains:
        cells = [g["comparison"], g["run"], g["baseline"], _fmt(g["rate_ratio"], 2)]
        cells += [_fmt(g["work_per_step_ratio"], 2), _fmt(g["step_time_ratio"], 2)]
        lines.append(cells)
    return harness.md_table(columns, lines)


# ---------------------------------------------------------------------------------------------------------
# Shared inputs: data, rankings, base model, stage directories
# ---------------------------------------------------------------------------------------------------------


def candidate_responses(answer: str, rng: random.Random) -> list[str]:
    """K distinct responses of graded quality to a demo task whose canonical answer is `answer`.

    Drawn from: the answer; the answer with one, two or three filler words; one answer word swapped for
    another word; the banned word inserted. The demo labeler ranks them (ties possible, e.g. a swap in a
    one-word answer and the banned word both score 0), as comparison collection would.
    """
    words = answer.split()
    swapped = list(words)
    i = rng.randrange(len(swapped))
    swapped[i] = rng.choice([w for w in "abcdefghijkl0123456789" if w != swapped[i]])
    banned = list(words)
    banned.insert(rng.randint(0, len(banned)), "dang")
    pool = [answer, f"ok {answer}", f"sure : {answer}", f"here : {answer} done", " ".join(swapped)]
    pool.append(" ".join(banned))
    return rng.sample(pool, K)


def user_prompt(row: dict[str, Any]) -> str:
    """The demo task of a plain row ("prompt") or a chat row (its last user message)."""
    if "prompt" in row:
        return row["prompt"]
    return [m["content"] for m in row["messages"] if m["role"] == "user"][-1]


def write_rankings(prompts_path: Path, out: Path, n: int, seed: int = 0) -> int:
    """K=4 labeler-ranked comparisons of the first `n` demo prompts in `prompts_path`; returns rows written.

    Rows keep the prompt's format: a plain prompt string, or the chat row's user turn as ``messages``.
    Prompts whose K responses all tie are left out, as collect_comparisons does.
    """
    from lit_rlhf.data.io import write_jsonl
    from lit_rlhf.demo.labeler import Labeler
    from lit_rlhf.demo.world import parse_prompt

    labeler, rng, rows = Labeler(seed=seed), random.Random(seed), []
    for line in prompts_path.read_text().splitlines()[:n]:
        row = json.loads(line)
        prompt = user_prompt(row)
        responses = candidate_responses(parse_prompt(prompt).answer, rng)
        ranking = labeler.rank(prompt, responses)
        if len(set(ranking)) > 1:
            asked = (
                {"prompt": prompt} if "prompt" in row else {"messages": [{"role": "user", "content": prompt}]}
            )
            rows.append(asked | {"responses": responses, "ranking": ranking})
    return write_jsonl(out, rows)


def build_stage_dirs(base: Path, workdir: Path, spec: ModelSpec) -> None:
    """The SFT stage (the base's full weights) and a reward stage (LoRA adapter + head) on it.

    Built like tests/stages/test_ppo.py `_stages`: the reward adapter is perturbed so that the critic and
    the policy differ; nothing is trained, as neither framework's speed depends on what the weights say.
    The SFT stage records the prompt format (system prompt), so the reward and PPO runs render prompts as
    the SFT run does. Full SFT weights (not an SFT adapter) keep PPO's reference = the base with adapters off,
    as GRPO's is.
    """
    import torch

    from lit_rlhf.backbone.build import Backbone
    from lit_rlhf.backbone.config import BackboneConfig
    from lit_rlhf.checkpoint.stage_dir import load_stage_dir, save_stage_dir
    from lit_rlhf.data.formatting import PromptFormat

    torch.manual_seed(0)
    sft = Backbone.build(BackboneConfig(name_or_path=str(base)))
    sft.prompt_format = PromptFormat(system_prompt=spec.system_prompt)
    save_stage_dir(workdir / "sft", sft, stage="sft")
    rm, _ = load_stage_dir(workdir / "sft", backbone_overrides={"lora": dict(LORA)})
    rm.add_adapter("reward")
    with torch.no_grad():
        for p in rm.adapter_parameters("reward"):
            p.add_(0.1 * torch.randn_like(p))
    rm.add_head("reward")
    save_stage_dir(workdir / "rm", rm, stage="reward", heads={"reward": {"adapter": "reward", "bias": 0.0}})


def prepare_workdir(workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Write every shared input once; return the sizes of what was written.

    ``workdir/base`` is the model folder every run loads with ``from_pretrained``: the random demo GPT-2 saved
    there, or a link to the transformers folder lit-rlhf converts the bundled GGUF into (cached after the
    first conversion), so both sides read the very same files.
    """
    from lit_rlhf.backbone.build import Backbone
    from lit_rlhf.backbone.config import BackboneConfig
    from lit_rlhf.backbone.gguf import BUNDLED_PREFIX, resolve_gguf
    from lit_rlhf.demo.datagen import write_demo_data

    spec = MODELS[args.model]
    # Packed rows hold several examples: enough rows that the packed runs, too, see each example once.
    n_sft = args.sft_steps * args.batch_size * (4 if any(n.endswith("-packed") for n in args.only) else 1)
    n_rank = (args.rm_steps + 1) * args.rm_prompts * 2  # spare rows: rows that tie completely are dropped
    n_rl = (args.rl_steps + 1) * args.rl_prompts
    paths = write_demo_data(
        workdir / "data",
        seed=0,
        n_train=max(n_sft, n_rank),
        n_val=16,
        n_rl=n_rl,
        n_eval=16,
        n_pretrain=16,
        row_format=spec.row_format,
    )
    if spec.bundled is None:
        cfg = BackboneConfig(model_config=dict(DEMO_MODEL), tokenizer=str(paths["tokenizer"]))
        net = Backbone.build(cfg)
        net.model.save_pretrained(workdir / "base")
        net.tokenizer.save_pretrained(workdir / "base")
        model = "demo GPT-2"
    else:
        folder = resolve_gguf(BUNDLED_PREFIX + spec.bundled)
        (workdir / "base").symlink_to(folder, target_is_directory=True)
        model = f"{BUNDLED_PREFIX}{spec.bundled} -> <lit-rlhf cache>/{folder.name}"
    rankings = write_rankings(paths["sft_train"], workdir / "data" / "rankings.jsonl", n_rank)
    build_stage_dirs(workdir / "base", workdir, spec)
    sizes = {"sft_rows": max(n_sft, n_rank), "ranked_prompts": rankings, "rl_prompts": n_rl}
    return sizes | {"model": model, "row_format": spec.row_format, "max_length": spec.max_length}


# ---------------------------------------------------------------------------------------------------------
# Parent: one subprocess per measurement
# ---------------------------------------------------------------------------------------------------------


def run_all(args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Every requested measurement in turn, each in its own subprocess, on one shared work directory."""
    with harness.temp_workdir("vs_trl_", "data, rankings, base model and stage directories") as work:
        sizes = prepare_workdir(work, args)
        rows = harness.run_cases(
            __file__,
            [harness.Case((name,), name, functools.partial(empty_row, name)) for name in args.only],
            work,
            flags=harness.child_flags(args, ("model", *SIZES, "threads")),
            threads=args.threads,
            timeout_s=RUN_TIMEOUT_S,
            status=lambda row: f"{row['rate']:,.2f} {row['unit']}/s, peak RSS {row['peak_rss_mb']:,.0f} MiB",
            # TRL and transformers otherwise look for a network and a telemetry endpoint on start.
            env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"},
            show_load=True,
        )
    return rows, sizes


# ---------------------------------------------------------------------------------------------------------
# Children: timing hooks
# ---------------------------------------------------------------------------------------------------------


def _lightning_timer(work_of, metrics: tuple[str, ...] = ()):
    """A Lightning callback recording each batch's seconds (end of the previous to end of this) and work.

    Defined lazily so the parent never imports lightning. `work_of(batch)` gives the batch's work units.
    Each of `metrics` (logged metric names) is read after every batch into `values[name]`.
    """
    import lightning as L

    class StepTimer(L.Callback):
        def __init__(self) -> None:
            self.step_times: list[float] = []
            self.work: list[float] = []
            self.values: dict[str, list[float]] = {m: [] for m in metrics}
            self._last: float | None = None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if self._last is None:  # the first step is timed from its own start
                self._last = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            now = time.perf_counter()
            self.step_times.append(now - self._last)
            self._last = now
            self.work.append(float(work_of(batch)))
            for m in metrics:
                self.values[m].append(float(trainer.callback_metrics.get(m, float("nan"))))

    return StepTimer()


def _hf_timer():
    """A transformers TrainerCallback recording each optimizer step's seconds, timed like StepTimer."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.step_times: list[float] = []
            self._last: float | None = None

        def on_step_begin(self, args, state, control, **kwargs) -> None:
            if self._last is None:
                self._last = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs) -> None:
            now = time.perf_counter()
            self.step_times.append(now - self._last)
            self._last = now

    return StepTimer()


def _recording(trainer_cls, work_of):
    """`trainer_cls` that also records, per training step, `work_of(inputs)` and the loss."""

    class Recording(trainer_cls):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.bench_work: list[float] = []
            self.bench_losses: list[float] = []

        def training_step(self, model, inputs, num_items_in_batch=None):
            self.bench_work.append(float(work_of(inputs)))
            loss = super().training_step(model, inputs, num_items_in_batch)
            self.bench_losses.append(float(loss))
            return loss

    return Recording


def _grpo_recording(grpo_cls):
    """`grpo_cls` that keeps each generation's mean completion length (tokens, eos included) and seconds.

    GRPOTrainer clears its metric lists whenever it logs; the last log comes at the end of training.
    `_generate` is TRL's private generation step (sampling only, no scoring), timed like lit-rlhf's gen_time.
    """

    class GRPORecording(grpo_cls):
        bench_lengths: list[float] = []
        bench_generation_s: list[float] = []

        def _generate(self, *args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            out = super()._generate(*args, **kwargs)
            self.bench_generation_s = [*self.bench_generation_s, time.perf_counter() - start]
            return out

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            self.bench_lengths = self.bench_lengths + self._metrics["train"]["completions/mean_length"]
            super().log(logs, start_time)

    return GRPORecording


def _lightning_trainer(max_steps: int, timer, clip: float | None, spec: ModelSpec):
    return harness.trainer(
        accelerator="cpu",
        precision="bf16-mixed" if spec.precision == "bf16" else "32-true",  # bf16: autocast, fp32 weights
        max_steps=max_steps,
        gradient_clip_val=clip,
        callbacks=[timer],
    )


def _hf_args(config_cls, workdir: Path, spec: ModelSpec, **kw):
    """TRL config with the settings every TRL run shares: CPU, the spec's precision (bf16 = autocast, as
    Lightning's bf16-mixed; the fp32 model is not cast), no checkpointing, nothing saved."""
    return config_cls(
        output_dir=str(workdir / "trl_out"),
        use_cpu=True,
        bf16=spec.precision == "bf16",
        fp16=False,
        activation_checkpointing=False,  # TRL turns it on by default; lit-rlhf's demo configs do not use it
        report_to="none",
        save_strategy="no",
        eval_strategy="no",
        logging_steps=10**6,  # TRL still computes its per-step metrics; only printing is skipped
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
        max_grad_norm=1.0,
        seed=0,
        **kw,
    )


def _trainable(module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _lora_targets(base: Path) -> list[str]:
    from transformers import AutoModelForCausalLM

    from lit_rlhf.backbone.build import detect_lora_targets

    return detect_lora_targets(AutoModelForCausalLM.from_pretrained(base))


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------------------
# Children: the measurements. Each returns its row's measured fields.
# ---------------------------------------------------------------------------------------------------------


def _setup(spec: ModelSpec, what: str) -> str:
    """A row's `setup`: what one step holds, then what every run of this model shares."""
    precision = "bf16 autocast on CPU (fp32 weights)" if spec.precision == "bf16" else "fp32"
    return f"{what}; {spec.name}, max_length {spec.max_length}, {precision}"


def _system(spec: ModelSpec) -> list[dict[str, str]]:
    """The system message TRL's conversational rows start with (lit-rlhf adds it through its PromptFormat)."""
    return [] if spec.system_prompt is None else [{"role": "system", "content": spec.system_prompt}]


def _trl_prompt(spec: ModelSpec, row: dict[str, Any]) -> str | list[dict[str, str]]:
    """A demo row's prompt as TRL takes it: the string, or the conversation before the answer."""
    if "prompt" in row:
        return row["prompt"]
    return _system(spec) + [m for m in row["messages"] if m["role"] != "assistant"]


def _trl_answer(spec: ModelSpec, text: str) -> str | list[dict[str, str]]:
    """An answer as TRL's prompt-completion rows take it. The demo language is space-separated words: a
    plain completion's leading space gives the tokens lit-rlhf gets by tokenizing prompt and response apart
    (checked by --check-tokens); chat answers are assistant messages the chat template renders."""
    return " " + text if spec.row_format == "plain" else [{"role": "assistant", "content": text}]


def _trl_sft_rows(spec: ModelSpec, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    def answer(row: dict[str, Any]) -> str:
        return row["response"] if "response" in row else row["messages"][-1]["content"]

    return [{"prompt": _trl_prompt(spec, r), "completion": _trl_answer(spec, answer(r))} for r in rows]


def _lit_prompt_format(spec: ModelSpec):
    from lit_rlhf.data.formatting import PromptFormat

    return PromptFormat(system_prompt=spec.system_prompt)


def lit_sft(args: argparse.Namespace, workdir: Path, packed: bool) -> dict[str, Any]:
    """SFTModule + SFTDataModule (packed rows or one example per row), loss on response + end-of-turn only;
    full fine-tune or LoRA as the model's configs do; unit: non-pad tokens."""
    from lit_rlhf.backbone.config import BackboneConfig, LoraSettings
    from lit_rlhf.data.sft import SFTDataModule
    from lit_rlhf.stages.common import OptimConfig
    from lit_rlhf.stages.sft import SFTModule

    spec = MODELS[args.model]
    lora = LoraSettings(**LORA) if spec.sft_lora else None
    module = SFTModule(
        backbone=BackboneConfig(name_or_path=str(workdir / "base"), lora=lora),
        optim=OptimConfig(lr=SFT_LR),
        prompt_format=_lit_prompt_format(spec),
    )
    data = SFTDataModule(
        str(workdir / "data" / "sft_train.jsonl"),
        batch_size=args.batch_size,
        max_length=spec.max_length,
        packing=packed,
    )
    timer = _lightning_timer(non_pad_tokens)
    trainer = _lightning_trainer(args.sft_steps, timer, clip=1.0, spec=spec)
    baseline = harness.peak_rss_mb()
    trainer.fit(module, datamodule=data)
    stats = rate_stats(timer.step_times, timer.work, args.warmup)
    loss = float(trainer.callback_metrics["sft/loss"])
    rows = f"batch {args.batch_size} packed rows (position_ids restart per example)" if packed else None
    what = rows or f"batch {args.batch_size} examples, padded to the batch's longest"
    what += ", LoRA" if spec.sft_lora else ", full fine-tune"
    return _finish(stats, baseline, "tokens", _trainable(module), loss, _setup(spec, what))


# name -> (SFTConfig options, what a step holds): TRL's configurations for the same data
TRL_SFT_OPTIONS: dict[str, tuple[dict[str, Any], str]] = {
    "trl-sft": ({"packing": False}, "examples, padded to the batch's longest"),
    # TRL refuses padding_free without packing unless max_length is None; every example fits max_length anyway
    "trl-sft-padfree": (
        {"packing": False, "padding_free": True, "max_length": None},
        "examples, padding-free",
    ),
    "trl-sft-packed": ({"packing": True, "packing_strategy": "bfd"}, "bfd-packed rows, padding-free"),
}


def trl_sft(args: argparse.Namespace, workdir: Path, name: str) -> dict[str, Any]:
    """SFTTrainer on the same demonstrations as prompt-completion rows (conversational for chat data);
    completion-only loss; one of TRL_SFT_OPTIONS."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    spec = MODELS[args.model]
    options, what = TRL_SFT_OPTIONS[name]
    ds = Dataset.from_list(_trl_sft_rows(spec, _read_jsonl(workdir / "data" / "sft_train.jsonl")))
    kw = {"max_length": spec.max_length, "completion_only_loss": True} | options
    cfg = _hf_args(
        SFTConfig,
        workdir,
        spec,
        max_steps=args.sft_steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=SFT_LR,
        **kw,
    )
    model = AutoModelForCausalLM.from_pretrained(workdir / "base")
    tok = AutoTokenizer.from_pretrained(workdir / "base")
    timer = _hf_timer()
    trainer_cls = _recording(SFTTrainer, non_pad_tokens)
    peft_cfg = _peft_config(workdir, "CAUSAL_LM") if spec.sft_lora else None
    trainer = trainer_cls(
        model=model,
        args=cfg,
        train_dataset=ds,
        processing_class=tok,
        peft_config=peft_cfg,
        callbacks=[timer],
    )
    baseline = harness.peak_rss_mb()
    trainer.train()
    stats = rate_stats(timer.step_times, trainer.bench_work, args.warmup)
    loss = trainer.bench_losses[-1]
    what = f"batch {args.batch_size} {what}" + (", LoRA" if spec.sft_lora else ", full fine-tune")
    return _finish(stats, baseline, "tokens", _trainable(trainer.model), loss, _setup(spec, what))


def _peft_config(workdir: Path, task_type: str):
    """The LoRA adapter TRL trains: LORA on every linear layer, as lit-rlhf detects them."""
    from peft import LoraConfig

    return LoraConfig(
        r=LORA["r"],
        lora_alpha=LORA["alpha"],
        lora_dropout=LORA["dropout"],
        target_modules=_lora_targets(workdir / "base"),
        task_type=task_type,
    )


def lit_rm(args: argparse.Namespace, workdir: Path, shared_prefix: bool = False) -> dict[str, Any]:
    """RewardModule on K=4 rankings, a prompt's K responses in one batch (with `shared_prefix`, one row per
    prompt: its tokens once); unit: ranked pairs."""
    from lit_rlhf.backbone.config import LoraSettings
    from lit_rlhf.data.comparisons import ComparisonDataModule
    from lit_rlhf.stages.common import OptimConfig
    from lit_rlhf.stages.reward import RewardModule

    spec = MODELS[args.model]
    module = RewardModule(
        init_from=str(workdir / "sft"),
        lora=LoraSettings(**LORA),
        center_coef=0.001,
        max_length=spec.max_length,
        optim=OptimConfig(lr=RM_LR, warmup_steps=20),
        shared_prefix=shared_prefix,
    )
    data = ComparisonDataModule(
        str(workdir / "data" / "rankings.jsonl"), batch_size=args.rm_prompts, max_length=spec.max_length
    )
    timer = _lightning_timer(lambda b: ranked_pairs(b["ranks"].tolist(), b["group"].tolist()))
    trainer = _lightning_trainer(args.rm_steps, timer, clip=1.0, spec=spec)
    baseline = harness.peak_rss_mb()
    trainer.fit(module, datamodule=data)
    stats = rate_stats(timer.step_times, timer.work, args.warmup)
    loss = float(trainer.callback_metrics["reward/loss"])
    layout = (
        f"{args.rm_prompts} rows, a prompt's tokens once"
        if shared_prefix
        else f"{args.rm_prompts * K} sequences"
    )
    setup = _setup(spec, f"{args.rm_prompts} prompts x K={K}: {layout}/step")
    return _finish(stats, baseline, "comparisons", _trainable(module), loss, setup)


def trl_rm(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """RewardTrainer on the same rankings expanded to (chosen, rejected) pairs; same sequences per step."""
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    from lit_rlhf.data.rows import Comparison

    spec = MODELS[args.model]
    pairs = []
    for r in _read_jsonl(workdir / "data" / "rankings.jsonl"):
        c = Comparison(user_prompt(r), tuple(r["responses"]), tuple(r["ranking"]))
        prompt = _trl_prompt(spec, r)
        for i, j in c.pairs():
            chosen, rejected = _trl_answer(spec, c.responses[i]), _trl_answer(spec, c.responses[j])
            pairs.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    pairs_per_step = args.rm_prompts * K // 2  # as many sequences per forward as the K-wise batch
    cfg = _hf_args(
        RewardConfig,
        workdir,
        spec,
        max_steps=args.rm_steps,
        per_device_train_batch_size=pairs_per_step,
        learning_rate=RM_LR,
        warmup_steps=20,
        max_length=spec.max_length,
        center_rewards_coefficient=0.001,
        disable_dropout=False,  # lit-rlhf's RewardModule trains with the model's dropout, as configured
    )
    model = AutoModelForSequenceClassification.from_pretrained(workdir / "base", num_labels=1)
    tok = AutoTokenizer.from_pretrained(workdir / "base")
    timer = _hf_timer()
    trainer_cls = _recording(RewardTrainer, lambda b: b["input_ids"].shape[0] // 2)
    trainer = trainer_cls(
        model=model,
        args=cfg,
        train_dataset=Dataset.from_list(pairs),
        processing_class=tok,
        peft_config=_peft_config(workdir, "SEQ_CLS"),  # SEQ_CLS trains the score head, as lit-rlhf's head
        callbacks=[timer],
    )
    baseline = harness.peak_rss_mb()
    trainer.train()
    stats = rate_stats(timer.step_times, trainer.bench_work, args.warmup)
    setup = _setup(spec, f"{pairs_per_step} pairs = {2 * pairs_per_step} sequences/step")
    return _finish(stats, baseline, "comparisons", _trainable(trainer.model), trainer.bench_losses[-1], setup)


def _timed_ppo(ppo_cls):
    """`ppo_cls` that also records each rollout's seconds (generation + scoring), to split the RL step."""

    class TimedPPO(ppo_cls):
        bench_rollout_s: list[float] = []

        def rollout(self, prompts: list[Any]) -> Any:
            start = time.perf_counter()
            out = super().rollout(prompts)
            self.bench_rollout_s = [*self.bench_rollout_s, time.perf_counter() - start]
            return out

    return TimedPPO


def lit_ppo(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """PPOModule from the SFT + reward stage dirs: one training step = one PPO iteration (an RL step)."""
    from lit_rlhf.backbone.generate import SamplingConfig
    from lit_rlhf.data.prompts import PPODataModule
    from lit_rlhf.stages.ppo import EvalConfig, KLConfig, PPOConfig, PPOModule, PPOOptimConfig

    spec = MODELS[args.model]
    minibatch, epochs = args.rl_prompts // 2, 2
    module = _timed_ppo(PPOModule)(
        str(workdir / "sft"),
        str(workdir / "rm"),
        ptx_coef=0.0,
        optim=PPOOptimConfig(lr=RL_LR),
        kl=KLConfig(init_coef=KL_COEF),
        ppo=PPOConfig(ppo_epochs=epochs, minibatch_size=minibatch),
        sampling=SamplingConfig(max_new_tokens=args.max_new_tokens, do_sample=True, temperature=1.0),
        eval=EvalConfig(prompts=None, samples_per_step=0),
    )
    data = PPODataModule(str(workdir / "data" / "rl_prompts.jsonl"), batch_size=args.rl_prompts)
    # work unit: one RL step; gen_share is generation seconds / training_step seconds (= ppo/step_time)
    metrics = ("ppo/response_length", "ppo/gen_share", "ppo/step_time")
    timer = _lightning_timer(lambda b: 1, metrics=metrics)
    updates = epochs * (args.rl_prompts // minibatch)
    trainer = _lightning_trainer(args.rl_steps * updates, timer, clip=None, spec=spec)  # PPO clips its own
    baseline = harness.peak_rss_mb()
    trainer.fit(module, datamodule=data)
    stats = rate_stats(timer.step_times, timer.work, args.rl_warmup)
    loss = float(trainer.callback_metrics["ppo/policy_loss"])
    setup = _setup(
        spec,
        f"{args.rl_prompts} prompts x 1 = {args.rl_prompts} completions, {args.max_new_tokens} new tokens, "
        f"{updates} updates of {minibatch}; policy+critic LoRA, reference = adapters off, RM on the same base",
    )
    roles = module.roles
    trainable = sum(p.numel() for p in [*roles.policy_parameters(), *roles.critic_parameters()])
    row = _finish(stats, baseline, "RL steps", trainable, loss, setup)
    row |= {"prompts_per_step": args.rl_prompts, "completions_per_step": args.rl_prompts}
    lengths = timer.values["ppo/response_length"]
    row["mean_response_tokens"] = round(sum(lengths) / len(lengths), 2)
    split = ppo_time_split(
        timer.values["ppo/step_time"], timer.values["ppo/gen_share"], module.bench_rollout_s, args.rl_warmup
    )
    return row | {"generation_ms": split["generate_ms"], "time_split_ms": split}


def ppo_time_split(
    step_s: list[float], gen_share: list[float], rollout_s: list[float], warmup: int
) -> dict[str, float]:
    """Mean milliseconds of a PPO step's generate / score / update parts over the steps after `warmup`.

    Args:
        step_s: (N,) ``ppo/step_time``: seconds of each training_step.
        gen_share: (N,) ``ppo/gen_share``: the generation's share of it.
        rollout_s: (N,) seconds of each rollout (generation, then policy/reference/critic/reward scoring and
            advantages); the update part is the step's rest (the PPO epochs' optimizer steps).
    """
    timed = list(zip(step_s, gen_share, rollout_s, strict=True))[warmup:]
    if not timed:
        raise ValueError(f"no timed PPO steps: {len(step_s)} recorded, warm-up {warmup}")
    n = len(timed)
    gen = sum(t * share for t, share, _ in timed) / n
    rollout = sum(r for _, _, r in timed) / n
    step = sum(t for t, _, _ in timed) / n
    ms = {"generate_ms": gen, "score_ms": rollout - gen, "update_ms": step - rollout, "step_ms": step}
    return {k: round(1000 * v, 1) for k, v in ms.items()}


def trl_grpo(args: argparse.Namespace, workdir: Path, prompts: int) -> dict[str, Any]:
    """GRPOTrainer with a LoRA policy on the SFT weights; the reward function calls lit-rlhf's RewardScorer.

    One RL step = one generation batch of `prompts` x GROUP completions, then 4 optimizer steps over it
    (2 minibatches x num_iterations 2), the same number of updates as the PPO iteration.
    """
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from lit_rlhf.data.formatting import as_prompt_spec
    from lit_rlhf.evaluation.reward_model import RewardScorer

    spec = MODELS[args.model]
    scorer = RewardScorer(workdir / "rm")

    def lit_reward_model(prompts: list[Any], completions: list[Any], **_: Any) -> list[float]:
        # conversational rows: prompts are message lists, completions [{"role": "assistant", ...}]
        texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
        return scorer.score([as_prompt_spec(p) for p in prompts], texts)

    completions = prompts * GROUP
    minibatches, iterations = 2, 2
    cfg = _hf_args(
        GRPOConfig,
        workdir,
        spec,
        max_steps=args.rl_steps * minibatches * iterations,
        per_device_train_batch_size=completions // minibatches,
        steps_per_generation=minibatches,
        num_iterations=iterations,
        num_generations=GROUP,
        max_completion_length=args.max_new_tokens,
        temperature=1.0,
        learning_rate=RL_LR,
        beta=KL_COEF,
        disable_dropout=True,  # lit-rlhf's PPO runs every role in eval mode
    )
    rl_rows = _read_jsonl(workdir / "data" / "rl_prompts.jsonl")
    policy = AutoModelForCausalLM.from_pretrained(workdir / "base")  # == the SFT stage's weights
    tok = AutoTokenizer.from_pretrained(workdir / "base")
    timer = _hf_timer()
    trainer = _grpo_recording(GRPOTrainer)(
        model=policy,
        reward_funcs=lit_reward_model,
        args=cfg,
        train_dataset=Dataset.from_list([{"prompt": _trl_prompt(spec, r)} for r in rl_rows]),
        processing_class=tok,
        peft_config=_peft_config(workdir, "CAUSAL_LM"),
        callbacks=[timer],
    )
    baseline = harness.peak_rss_mb()
    out = trainer.train()
    steps = group_steps(timer.step_times, minibatches * iterations)
    stats = rate_stats(steps, [1.0] * len(steps), args.rl_warmup)
    lengths = trainer.bench_lengths
    setup = _setup(
        spec,
        f"{prompts} prompts x {GROUP} = {completions} completions, {args.max_new_tokens} new tokens, "
        f"{minibatches * iterations} updates of {completions // minibatches}; LoRA policy, beta {KL_COEF} "
        "(reference = adapter off), no critic, RM = RewardScorer (a second copy of the base)",
    )
    row = _finish(stats, baseline, "RL steps", _trainable(trainer.model), float(out.training_loss), setup)
    row |= {"prompts_per_step": prompts, "completions_per_step": completions}
    row["mean_response_tokens"] = round(sum(lengths) / len(lengths), 2) if lengths else None
    gen_s = trainer.bench_generation_s[args.rl_warmup :]  # one generation per RL step
    return row | {"generation_ms": round(1000 * sum(gen_s) / len(gen_s), 1) if gen_s else None}


def _finish(
    stats: dict[str, float], baseline: float, unit: str, trainable: int, loss: float, setup: str
) -> dict[str, Any]:
    peak = harness.peak_rss_mb()
    row = {k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in stats.items()}
    row.update(peak_rss_mb=round(peak, 1), rss_delta_mb=round(peak - baseline, 1), unit=unit, setup=setup)
    row.update(trainable_params=trainable, final_loss=round(loss, 4))
    return row


CHILDREN = {
    "lit-sft": lambda args, workdir: lit_sft(args, workdir, packed=False),
    "lit-sft-packed": lambda args, workdir: lit_sft(args, workdir, packed=True),
    **{name: functools.partial(trl_sft, name=name) for name in TRL_SFT},
    "lit-rm": lit_rm,
    "lit-rm-prefix": functools.partial(lit_rm, shared_prefix=True),
    "trl-rm": trl_rm,
    "lit-ppo": lit_ppo,
    "trl-grpo": lambda args, workdir: trl_grpo(args, workdir, args.rl_prompts),
    "trl-grpo-half": lambda args, workdir: trl_grpo(args, workdir, args.rl_prompts // GROUP),
}


def _warm_imports(framework: str, model_type: str) -> None:
    # Import the whole stack before the baseline, so the RSS delta measures model, data and training,
    # not library code. Each side imports only what it runs with.
    import importlib

    import peft  # noqa: F401

    import lit_rlhf.backbone.build  # noqa: F401

    importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}")

    if framework == "trl":
        import datasets  # noqa: F401
        import trl  # noqa: F401
        from trl import GRPOTrainer, RewardTrainer, SFTTrainer  # noqa: F401
    else:
        import lightning  # noqa: F401


def measure_child(args: argparse.Namespace) -> None:
    """`--one NAME`: measure, and write the row (or the error) to --row-out."""
    import logging

    import torch

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    env = harness.host(args.threads)  # the load when this run starts

    def measure() -> dict[str, Any]:
        _warm_imports(RUNS[args.one][1], MODELS[args.model].model_type)
        torch.manual_seed(0)
        random.seed(0)
        return empty_row(args.one) | CHILDREN[args.one](args, Path(args.workdir))

    harness.run_child(args.row_out, measure, functools.partial(empty_row, args.one), lambda: env | versions())


# ---------------------------------------------------------------------------------------------------------
# Token parity check: both sides must train on the same ids
# ---------------------------------------------------------------------------------------------------------


def check_tokens(workdir: Path, spec: ModelSpec, n: int = 5) -> tuple[list[str], list[str]]:
    """Compare the first `n` SFT examples as lit-rlhf and TRL tokenize them: (mismatches, notes).

    A TRL sequence that is lit-rlhf's with tokens appended (a chat template's text after the end-of-turn
    token) is a note, not a mismatch, when the labels agree on lit-rlhf's part.
    """
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from lit_rlhf.data.formatting import TextFormat, as_prompt_spec
    from lit_rlhf.data.sft import tokenize_example

    tok = AutoTokenizer.from_pretrained(workdir / "base")
    rows = _read_jsonl(workdir / "data" / "sft_train.jsonl")[:n]
    ds = Dataset.from_list(_trl_sft_rows(spec, rows))
    cfg = _hf_args(
        SFTConfig, workdir, spec, max_steps=1, max_length=spec.max_length, completion_only_loss=True
    )
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(workdir / "base"), args=cfg, train_dataset=ds,
        processing_class=tok,
    )  # fmt: skip
    fmt = TextFormat(tok, _lit_prompt_format(spec))
    problems, notes = [], set()
    for r, t in zip(rows, trainer.train_dataset, strict=True):
        if "messages" in r:
            prompt, answer = as_prompt_spec(r["messages"][:-1]), r["messages"][-1]["content"]
        else:
            prompt, answer = r["prompt"], r["response"]
        ours = tokenize_example(prompt, answer, fmt, spec.max_length, "error")
        theirs, labels = list(t["input_ids"]), list(t["labels"])
        extra = extra_suffix(ours.input_ids, theirs)
        if extra is None or labels[: len(ours.labels)] != ours.labels:
            problems.append(f"{prompt!r}: lit-rlhf {ours} TRL {dict(t)}")
        elif extra:
            trained = sum(label != -100 for label in labels[len(ours.labels) :])
            notes.add(f"TRL appends {tok.decode(extra)!r} ({len(extra)} token(s), {trained} with a label)")
    return problems, sorted(notes)


# ---------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------


def size_problems(args: argparse.Namespace) -> list[str]:
    """What is wrong with the sizes of a parsed command line (empty when nothing is)."""
    problems = []
    small = [k for k in SIZES if getattr(args, k) < (0 if k.endswith("warmup") else 1)]
    if small:
        problems.append(
            "sizes must be >= 1 (warm-ups >= 0): " + ", ".join(f"--{k.replace('_', '-')}" for k in small)
        )
    if min(args.sft_steps, args.rm_steps) <= args.warmup or args.rl_steps <= args.rl_warmup:
        problems.append("each of --sft-steps/--rm-steps (--rl-steps) must exceed --warmup (--rl-warmup)")
    if args.rl_prompts % (2 * GROUP):
        problems.append(f"--rl-prompts must be a multiple of {2 * GROUP}")
    return problems


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    def default(name: str) -> str:
        values = ", ".join(f"{m} {spec.defaults[name]}" for m, spec in MODELS.items())
        return f"default: {values}"

    p = harness.parser(__doc__)
    p.add_argument(
        "--model", choices=list(MODELS), default="demo", help="demo GPT-2, or SmolLM2-135M-Instruct"
    )
    sizes = {
        "sft_steps": "SFT optimizer steps, warm-up included",
        "rm_steps": "reward-model optimizer steps, warm-up included",
        "rl_steps": "RL steps (generation + scoring + update)",
        "warmup": "SFT/RM steps left out of the timing",
        "rl_warmup": "RL steps left out of the timing",
        "batch_size": "SFT rows per step (packed rows in the packed runs)",
        "rm_prompts": "ranked prompts per RM step (x K sequences)",
        "rl_prompts": "prompts per RL step",
        "max_new_tokens": "new tokens per RL completion",
    }
    for name, text in sizes.items():
        p.add_argument(f"--{name.replace('_', '-')}", type=int, help=f"{text} ({default(name)})")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads in every run (see README)")
    p.add_argument(
        "--only",
        type=harness.csv_choices(list(RUNS)),
        help="comma-separated subset of the runs (default: the model's runs)",
    )
    p.add_argument("--out", type=Path, help="JSON results file (+ .md beside it; default: bench/results/...)")
    p.add_argument("--check-tokens", action="store_true", help="only compare SFT tokenization, then exit")
    harness.add_child_flags(p, choices=list(RUNS))
    args = p.parse_args(argv)
    spec = MODELS[args.model]
    for name in SIZES:  # a flag not given takes the model's default
        if getattr(args, name) is None:
            setattr(args, name, spec.defaults[name])
    args.only = args.only or list(spec.runs)
    args.out = args.out or spec.out
    harness.check(p, size_problems(args) + harness.child_problems(args))
    return args


def report(rows: list[dict[str, Any]], sizes: dict[str, Any], args: argparse.Namespace) -> str:
    """The markdown written beside the JSON: versions, settings, the table, the ratios and the SFT gains."""
    spec = MODELS[args.model]
    first = next((r for r in rows if r.get("torch")), {})
    vers = ", ".join(f"{k} {first.get(k)}" for k in versions())
    precision = "bf16 autocast (fp32 weights)" if spec.precision == "bf16" else "fp32"
    setups = "\n".join(f"- `{r['name']}`: {r.get('setup') or '-'}" for r in rows)
    parts = [
        f"# lit-rlhf vs TRL, {spec.title} ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)",
        f"Versions: {vers}. Host: {os.cpu_count()} CPUs, {args.threads} threads, {precision}.",
        f"Data: {sizes}.",
        "Rates count work over the timed steps (SFT: non-pad tokens that go through the model).",
        markdown_table(rows),
        "Setups:\n\n" + setups,
        markdown_ratios(ratio_rows(rows)),
    ]
    gains = gain_rows(rows)
    if gains:
        parts.append(
            "Packing, padding-free and shared prefixes, each against the same framework's plain run:\n\n"
            + markdown_gains(gains)
        )
    splits = [r for r in rows if r.get("time_split_ms")]
    for r in splits:
        t = r["time_split_ms"]
        parts.append(
            f"`{r['name']}` step split (mean of timed steps, ms): generate {t['generate_ms']:,.0f}, "
            f"score {t['score_ms']:,.0f}, update {t['update_ms']:,.0f} (step {t['step_ms']:,.0f})."
        )
    return "\n\n".join(parts)


def measure_all(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """Every run, then (rows, ratios, gains, data sizes and settings for --out, the report printed and
    written beside it)."""
    rows, sizes = run_all(args)
    internal = ("one", "workdir", "row_out", "check_tokens")
    settings = {k: v for k, v in vars(args).items() if k not in internal} | {
        "out": harness.shown_path(args.out)
    }
    payload = {"rows": rows, "ratios": ratio_rows(rows), "gains": gain_rows(rows), "data": sizes}
    return payload | {"settings": settings}, report(rows, sizes, args)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.one is None and args.check_tokens:
        with tempfile.TemporaryDirectory(prefix="vs_trl_") as tmp:
            prepare_workdir(Path(tmp), args)
            problems, notes = check_tokens(Path(tmp), MODELS[args.model])
        print("\n".join(problems) or "SFT tokenization: identical ids and labels")
        print("\n".join(notes))
        sys.exit(1 if problems else 0)
    harness.serve(args, measure_child, measure_all, markdown=True)


if __name__ == "__main__":
    main()
