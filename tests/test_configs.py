"""Every YAML under configs/ (recursively) parses and instantiates through the CLI, without loading weights."""

from __future__ import annotations

from pathlib import Path

import pytest

from lit_rlhf.cli import lightning_cli

ROOT = Path(__file__).resolve().parents[1]
ALL = sorted((ROOT / "configs").rglob("*.yaml"))
PIPELINES = [p for p in ALL if p.name.startswith("pipeline")]
CONFIGS = [p for p in ALL if p not in PIPELINES]


def test_configs_are_found():
    names = {p.relative_to(p.parents[1]).as_posix() for p in CONFIGS}
    assert {"configs/sft.yaml", "demo/sft.yaml", "tiny/sft.yaml"} <= names | {
        p.relative_to(p.parents[2]).as_posix() for p in CONFIGS
    }


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.relative_to(p.parents[1]).as_posix())
def test_config_parses_and_instantiates(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # GPU templates are instantiated on CPU: the test checks the config, not the accelerator
    cli = lightning_cli(
        ["--config", str(path), "--trainer.accelerator", "cpu", "--trainer.devices", "1"], run=False
    )
    assert cli.model.STAGE in ("sft", "reward", "ppo")
    assert cli.datamodule is not None
    # nothing heavy loaded at construction
    assert getattr(cli.model, "net", None) is None and getattr(cli.model, "roles", None) is None


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.relative_to(p.parents[1]).as_posix())
def test_pipeline_config_parses_and_names_existing_stage_configs(path):
    from lit_rlhf.pipeline import PipelineConfig

    cfg = PipelineConfig.from_yaml(path)
    for stage_config in (cfg.sft_config, cfg.rm_config, cfg.ppo_config):
        assert (ROOT / stage_config) in CONFIGS, stage_config  # and so each is parsed by the test above


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.relative_to(p.parents[1]).as_posix())
def test_pipeline_extra_args_parse_with_their_stage_config(path, tmp_path, monkeypatch):
    """A pipeline's extra_args (e.g. PPO reward functions) are valid overrides of its stage configs."""
    from lit_rlhf.pipeline import PipelineConfig

    cfg = PipelineConfig.from_yaml(path)
    configs = {"sft": cfg.sft_config, "reward": cfg.rm_config, "ppo": cfg.ppo_config}
    monkeypatch.chdir(tmp_path)
    for stage, args in cfg.extra_args.items():
        cli = lightning_cli(["--config", str(ROOT / configs[stage]), *args], run=False)
        assert stage == cli.model.STAGE
