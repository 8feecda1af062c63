"""`trainer.logger` in a stage's YAML: one tracker or a list, added beside the run directory's own logger.

Each tracker runs offline and is read back: TensorBoard's event files, a W&B offline run, an MLflow file store.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from lit_rlhf.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _fit(demo_data: Path, tmp_path: Path, loggers: list[dict]) -> int:
    (tmp_path / "loggers.yaml").write_text(yaml.safe_dump({"trainer": {"logger": loggers}}))
    args = [
        "fit",
        "--config",
        str(ROOT / "configs/tiny/sft.yaml"),
        "--config",
        str(tmp_path / "loggers.yaml"),
    ]
    args += ["--model.init_args.backbone.tokenizer", str(demo_data / "tokenizer")]
    args += ["--model.init_args.samples.eval_prompts", str(demo_data / "eval_prompts.jsonl")]
    args += ["--data.init_args.train_path", str(demo_data / "sft_train.jsonl")]
    args += ["--data.init_args.val_path", str(demo_data / "sft_val.jsonl")]
    return main([*args, "--run.root", str(tmp_path / "runs"), "--trainer.max_steps", "6"])


def test_a_missing_tracker_package_is_one_line_naming_the_extra(tmp_path, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "tensorboard" else real(n, *a)
    )
    logger = {"class_path": "lightning.pytorch.loggers.TensorBoardLogger", "init_args": {"save_dir": "tb"}}
    assert _fit(tmp_path, tmp_path, [logger]) == 2
    err = capsys.readouterr().err
    assert "needs the `tensorboard` package" in err and ".[tensorboard]" in err and "Traceback" not in err


def test_each_tracker_receives_the_stages_metrics_and_the_sample_tables(demo_data, tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    pytest.importorskip("wandb")
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps file stores behind this switch
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    (tmp_path / "wandb").mkdir()
    loggers = [
        {
            "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
            "init_args": {"save_dir": str(tmp_path / "tb")},
        },
        {
            "class_path": "lightning.pytorch.loggers.WandbLogger",
            "init_args": {"offline": True, "save_dir": str(tmp_path / "wandb"), "project": "lit-rlhf-test"},
        },
        {
            "class_path": "lightning.pytorch.loggers.MLFlowLogger",
            "init_args": {"experiment_name": "lit-rlhf-test", "tracking_uri": f"file:{tmp_path / 'mlruns'}"},
        },
    ]
    assert _fit(demo_data, tmp_path, loggers) == 0
    run = tmp_path / "runs/sft/tiny"
    ours = set().union(*(json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines())) - {
        "step",
        "time",
    }
    assert {"sft/loss", "sft/val_loss", "sft/judge_score"} <= ours
    assert (run / "samples.jsonl").is_file()

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next((tmp_path / "tb").rglob("events.out.tfevents.*")).parent))
    events.Reload()
    assert {"sft/loss", "sft/val_loss", "sft/judge_score"} <= set(events.Tags()["scalars"])

    import wandb

    wandb.finish()  # flush the offline run file (Lightning leaves the run open for the process)
    records = next((tmp_path / "wandb").rglob("run-*.wandb")).read_bytes()  # history records, keys as JSON
    assert all(k.encode() in records for k in ("sft/loss", "sft/val_loss", "sft/judge_score"))
    tables = sorted((tmp_path / "wandb").rglob("samples_*.table.json"))
    assert tables and "completion" in json.loads(tables[0].read_text())["columns"]

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"file:{tmp_path / 'mlruns'}")
    (exp,) = [e for e in client.search_experiments() if e.name == "lit-rlhf-test"]
    (mlrun,) = client.search_runs([exp.experiment_id])
    assert {"sft/loss", "sft/val_loss", "sft/judge_score"} <= set(mlrun.data.metrics)
    tables = [a.path for a in client.list_artifacts(mlrun.info.run_id, "samples")]
    assert tables and all(p.endswith(".json") for p in tables)
    table = json.loads(
        Path(client.download_artifacts(mlrun.info.run_id, tables[0], str(tmp_path))).read_text()
    )
    assert "completion" in table["columns"] and table["data"]
