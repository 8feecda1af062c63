"""The names of the files in a run directory, `runs/<stage>/<name>/` (docs/run-directory.md): one list that the
writers (lit_rlhf.runs, the stages) and the readers (the dashboard, the pipeline) share.

Standard library only: the dashboard imports it and must not import torch.

    status.json     {"stage", "name", "status": running|finished|failed, "step", "started", "updated",
                     "stage_dir", "parent", "error"}; rewritten atomically
    metrics.jsonl   one JSON object per logging step: {"step", "time", "<stage>/<metric>": value, ...};
                    append-only, so a reader polling during training never sees a rewritten file
    hparams.yaml    the module's hyperparameters
    config.yaml     the resolved config (written by LightningCLI)
    samples.jsonl   {"step", "prompt", "completion", "mode", ...scores}; append-only
    rankings.jsonl  (reward stage) validation rankings tables; append-only
    checkpoints/    Lightning .ckpt files for exact resume (last.ckpt)
    stage/          the stage directory (lit_rlhf.checkpoint), written atomically at the end of fit
    kept/           (ppo) stage directories kept at evaluation points (lit_rlhf.checkpoint.kept)
"""

from __future__ import annotations

STAGES = ("sft", "reward", "ppo")  # the run-directory layout's first level, in pipeline order

STATUS = "status.json"
METRICS = "metrics.jsonl"
HPARAMS = "hparams.yaml"
SAMPLES = "samples.jsonl"
RANKINGS = "rankings.jsonl"
STAGE_DIR = "stage"
