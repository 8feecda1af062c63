"""The run directory's writers: `RunLogger` (metrics.jsonl, hparams.yaml) and `RunStatus` (status.json).

The file names and what each holds: `lit_rlhf.run_files` (docs/run-directory.md); the dashboard reads exactly
those. No torch here beyond Lightning's logger base class.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers.logger import Logger
from lightning.pytorch.utilities import rank_zero_only

from lit_rlhf.atomic import write_json, write_text
from lit_rlhf.data.io import append_jsonl
from lit_rlhf.run_files import HPARAMS, METRICS, STATUS

if TYPE_CHECKING:  # the stages import this module
    from lit_rlhf.stages.base import StageModule


def run_dir(trainer: Any) -> Path | None:
    """The run directory of a trainer's RunLogger, found without communication.

    Not `trainer.log_dir`: under DDP that property broadcasts from rank 0, so calling it on rank 0 alone (as
    rank-zero-only writers do) deadlocks.
    """
    return next((Path(lg.log_dir) for lg in trainer.loggers if isinstance(lg, RunLogger)), None)


def _plain(value: Any) -> Any:
    """Turn tensors, dataclasses and paths into YAML/JSON-safe values."""
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    if hasattr(value, "__dataclass_fields__"):
        return {k: _plain(getattr(value, k)) for k in value.__dataclass_fields__}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def _cell(value: Any) -> Any:
    """A table cell: scalars as they are, anything else (chat prompts, lists) as JSON text."""
    value = _plain(value)
    return value if isinstance(value, str | int | float | bool) or value is None else json.dumps(value)


def log_rows(trainer: Any, file: str, rows: list[dict[str, Any]], step: int) -> None:
    """Append `rows` to the run directory's `file` (samples.jsonl, rankings.jsonl) and send them as one table to
    the configured trackers that have tables (W&B, MLflow); rank zero only, the caller checks.

    The table is keyed by the file's stem (``samples``, ``rankings``); its columns are every row's keys in order
    of first appearance.
    """
    root = run_dir(trainer)
    if root is None or not rows:
        return
    for row in rows:
        append_jsonl(root / file, row)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    data = [[_cell(row.get(c)) for c in columns] for row in rows]
    key = Path(file).stem
    for lg in trainer.loggers:
        kind = type(lg).__name__
        if kind == "WandbLogger":
            lg.log_table(key=key, columns=columns, data=data, step=step)
        elif kind == "MLFlowLogger" and hasattr(lg.experiment, "log_table"):
            table = {c: [r[i] for r in data] for i, c in enumerate(columns)}
            lg.experiment.log_table(data=table, artifact_file=f"{key}/step-{step}.json", run_id=lg.run_id)


class RunLogger(Logger):
    """Lightning logger writing the run directory's append-only `metrics.jsonl` and `hparams.yaml`."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        super().__init__()
        self._run_dir = Path(run_dir)

    @property
    def name(self) -> str:
        return self._run_dir.name

    @property
    def version(self) -> str:
        return ""

    @property
    def save_dir(self) -> str:
        # Trainer.log_dir is the first logger's save_dir for custom loggers: make it the run directory.
        return str(self._run_dir)

    @property
    def log_dir(self) -> str:
        return str(self._run_dir)

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        self._run_dir.mkdir(parents=True, exist_ok=True)
        params = params if isinstance(params, dict) else vars(params)
        text = yaml.safe_dump(_plain(dict(params)), sort_keys=True)
        write_text(self._run_dir / HPARAMS, text)

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        row: dict[str, Any] = {"step": step, "time": round(time.time(), 3)}
        for k, v in metrics.items():
            v = float(v)
            # JSON has no NaN/inf; keep the key so a reader sees the step happened, value null.
            row[k] = v if math.isfinite(v) else None
        append_jsonl(self._run_dir / METRICS, row)


class RunStatus(Callback):
    """Keeps `status.json` of the run directory current: running -> finished | failed (rank zero only).

    The stage module may add fields (e.g. PPO's ``alarms``) through its `status_fields` dict; a change to it is
    written at the end of that batch, not only every `every_n_steps`.
    """

    def __init__(self, stage: str, name: str, every_n_steps: int = 10) -> None:
        self.stage, self.name, self.every = stage, name, every_n_steps
        self.state: dict[str, Any] = {}
        self._module_fields: dict[str, Any] = {}

    def _write(self, trainer: Any, pl_module: StageModule, **fields: Any) -> None:
        root = run_dir(trainer)
        if not trainer.is_global_zero or root is None:
            return
        self._module_fields = dict(pl_module.status_fields)
        self.state.update(self._module_fields)
        self.state.update(fields, step=int(trainer.global_step), updated=round(time.time(), 3))
        path = root / STATUS
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, self.state)

    def on_fit_start(self, trainer: Any, pl_module: StageModule) -> None:
        self.state = {
            "stage": self.stage,
            "name": self.name,
            "started": round(time.time(), 3),
            "stage_dir": None,
            "parent": pl_module.parent_dir,
            "error": None,
        }
        self._write(trainer, pl_module, status="running")

    def on_train_batch_end(self, trainer: Any, pl_module: StageModule, *args: Any) -> None:
        changed = pl_module.status_fields != self._module_fields
        if trainer.global_step % self.every == 0 or changed:
            self._write(trainer, pl_module, status="running")

    def on_fit_end(self, trainer: Any, pl_module: StageModule) -> None:
        stage_dir = pl_module.stage_dir_written
        self._write(trainer, pl_module, status="finished", stage_dir=str(stage_dir) if stage_dir else None)

    def on_exception(self, trainer: Any, pl_module: StageModule, exception: BaseException) -> None:
        self._write(
            trainer, pl_module, status="failed", error=f"{type(exception).__name__}: {exception}"[:2000]
        )
