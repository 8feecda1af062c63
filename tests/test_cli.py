"""The command line: one overview of every command, one clean line for a user's mistake, --debug for the rest."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lit_rlhf.cli import LIGHTNING_COMMANDS, TOOL_COMMANDS, main

ROOT = Path(__file__).resolve().parents[1]


def test_help_lists_every_command_and_says_what_the_project_is(capsys):
    assert main([]) == 0 and main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "InstructGPT's three stages" in out
    assert all(f"\n  {c}" in out for c in TOOL_COMMANDS + ("fit",))
    assert all(c in out for c in LIGHTNING_COMMANDS)


def test_an_unknown_command_is_refused_with_the_overview(capsys):
    assert main(["fitt"]) == 2
    assert "unknown command 'fitt'" in capsys.readouterr().err


def _fit_bad_data(demo_data: Path, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    bad = tmp_path / "sft.jsonl"
    bad.write_text(
        json.dumps({"prompt": "copy a =", "response": "a"}) + "\n" + json.dumps({"prompt": "x"}) + "\n"
    )
    cmd = [sys.executable, str(ROOT / "main.py"), "fit", "--config", str(ROOT / "configs/tiny/sft.yaml")]
    cmd += ["--model.init_args.backbone.tokenizer", str(demo_data / "tokenizer")]
    cmd += ["--data.init_args.train_path", str(bad), "--data.init_args.val_path", str(bad)]
    cmd += ["--run.root", str(tmp_path / "runs"), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def test_a_bad_data_row_is_one_line_and_debug_shows_the_traceback(demo_data, tmp_path):
    proc = _fit_bad_data(demo_data, tmp_path)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert errors == [
        f"main.py: error: {tmp_path / 'sft.jsonl'}:2: field 'response': missing (a demonstration "
        "needs 'prompt' and 'response', or 'messages')"
    ]
    assert "Traceback" not in proc.stderr
    debug = _fit_bad_data(demo_data, tmp_path, "--debug")
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "DataError" in debug.stderr


def test_the_console_script_is_the_same_command():
    script = Path(sys.executable).parent / "lit-rlhf"
    proc = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("lit-rlhf: InstructGPT's three stages")


def test_nested_help_of_a_stage_field(capsys, monkeypatch):
    """`--model.backbone.help` (listed by `--model.help SFTModule`) prints the field's options, with the class
    from the config or from --model; jsonargparse alone fails on it in subclass mode."""
    monkeypatch.chdir(ROOT)
    assert main(["fit", "--config", "configs/demo/sft.yaml", "--model.backbone.help"]) == 0
    out = capsys.readouterr().out
    assert "--model.init_args.backbone.name_or_path" in out and "--model.init_args.backbone.lora" in out
    assert main(["fit", "--model", "PPOModule", "--model.init_args.kl.help"]) == 0
    assert "--model.init_args.kl." in capsys.readouterr().out
    assert main(["fit", "--model.samples.help"]) == 2  # no class to look in: one line saying so
    assert "name the model class first" in capsys.readouterr().err
    assert main(["fit", "--config", "configs/demo/sft.yaml", "--model.bogus.help"]) == 2
    assert "SFTModule has no option 'bogus'" in capsys.readouterr().err


def test_tool_commands_have_help_print_config_and_yaml_configs(capsys, tmp_path):
    """The tool commands are jsonargparse commands of typed functions: --help, --print_config, --config."""
    import pytest
    import yaml

    from lit_rlhf.commands import FUNCTIONS

    for command in FUNCTIONS:
        with pytest.raises(SystemExit) as e:
            main([command, "--help"])
        assert e.value.code == 0
        assert "--print_config" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # today's spellings: dashes, bare booleans, several values after a flag
        main(
            [
                "evaluate",
                "--ckpt",
                "a",
                "b",
                "--prompts",
                "p.jsonl",
                "--max-new-tokens",
                "3",
                "--base",
                "--print_config",
            ]
        )
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert (cfg["ckpt"], cfg["max_new_tokens"], cfg["base"], cfg["limit"]) == (["a", "b"], 3, True, 300)
    (tmp_path / "demo.yaml").write_text("n_train: 24\nn_val: 4\nn_rl: 4\nn_eval: 4\nn_pretrain: 4\n")
    args = [
        "--config",
        str(tmp_path / "demo.yaml"),
        "--n-eval-adversarial",
        "2",
        "--out",
        str(tmp_path / "d"),
    ]
    assert main(["demo-data", *args]) == 0
    assert len((tmp_path / "d/sft_train.jsonl").read_text().splitlines()) == 24


def test_demo_data_command_shows_the_library_defaults(capsys):
    """The command's defaults are write_demo_data's own (one place), and --print_config shows them."""
    import inspect

    import pytest
    import yaml

    from lit_rlhf.demo.datagen import write_demo_data

    with pytest.raises(SystemExit):
        main(["demo-data", "--print_config"])
    cfg = yaml.safe_load(capsys.readouterr().out)
    library = inspect.signature(write_demo_data).parameters
    for name in (
        "seed",
        "n_train",
        "n_val",
        "n_rl",
        "n_eval",
        "n_pretrain",
        "n_eval_adversarial",
        "adversarial_rate",
    ):
        assert cfg[name] == library[name].default, name
    assert cfg["format"] == library["row_format"].default


def test_normalize_argv_keeps_todays_spellings():
    from lit_rlhf.commands import normalize_argv

    kinds = {"ckpt": "list", "base": "bool", "max_new_tokens": ""}
    argv = ["--ckpt", "a", "b", "--base", "--max-new-tokens=3", "--ckpt", "c", "--base", "false"]
    assert normalize_argv(argv, kinds) == [
        '--ckpt=["a", "b", "c"]',
        "--base=true",
        "--max_new_tokens=3",
        "--base",
        "false",
    ]
    assert normalize_argv(["--ckpt=[x]"], kinds) == ["--ckpt=[x]"]  # jsonargparse's own list form


def test_pipeline_reads_its_config_with_its_parser_and_checks_overrides_up_front(
    tmp_path, monkeypatch, capsys
):
    """A typo in a stage override fails before any stage runs (demo data included), naming the stage."""
    import pytest

    from lit_rlhf.pipeline import Pipeline, PipelineConfig

    monkeypatch.chdir(ROOT)
    ran = []
    monkeypatch.setattr(Pipeline, "_run", lambda self, label, args: ran.append(label))
    cfg = tmp_path / "p.yaml"
    cfg.write_text(
        f"name: t\nruns_root: {tmp_path}\ndata_dir: {tmp_path}/data\nsft_config: configs/tiny/sft.yaml\n"
        "rm_config: configs/tiny/rm.yaml\nppo_config: configs/tiny/ppo.yaml\n"
        "overrides: {ppo: {trainer.max_stepz: 3}}\n"
    )
    assert main(["pipeline", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "ppo stage's config configs/tiny/ppo.yaml" in err and "max_stepz" in err and not ran
    good = PipelineConfig.from_yaml(cfg.with_name("p.yaml"))  # from_yaml and the command share the parser
    assert good.overrides == {"ppo": {"trainer.max_stepz": 3}}
    good.overrides = {"ppo": {"trainer.max_steps": 3, "model.init_args.kl.init_coef": 0.05}}
    assert good.stage_args("ppo") == ["--trainer.max_steps=3", "--model.init_args.kl.init_coef=0.05"]
    from lit_rlhf.pipeline import check_stage_overrides

    check_stage_overrides(good)  # parses and instantiates each stage config, no weights
    with pytest.raises(SystemExit):
        main(["pipeline", "--config", str(cfg), "--name", "other", "--collect.k", "5", "--print_config"])
    printed = capsys.readouterr().out
    assert "name: other" in printed and "k: 5" in printed


def test_a_config_mistake_is_one_line_naming_the_key_and_class(capsys, monkeypatch, tmp_path):
    """jsonargparse's 50-line usage block and nested union report become the key path, class and cause."""
    monkeypatch.chdir(ROOT)
    cases = {
        (
            "--model.init_args.optim.lr",
            "abc",
        ): "model.optim.lr (OptimConfig): Expected a float. Got value: abc",
        ("--model.init_args.bogus", "1"): "model (SFTModule): Option 'bogus' is not accepted",
        ("--data.init_args.batch_size", "x"): "data.batch_size (SFTDataModule): Expected a int. Got value: x",
        ("--trainer.max_stepz", "3"): "unrecognized arguments: --trainer.max_stepz 3",
    }
    for extra, expected in cases.items():
        assert main(["fit", "--config", "configs/demo/sft.yaml", *extra]) == 2
        err = capsys.readouterr().err
        assert err.splitlines()[0] == f"main.py: error: {expected}" or err.splitlines()[0].endswith(
            expected
        ), err
        assert len(err.splitlines()) == 2 and "usage:" not in err
    # a module that is not a stage cannot make a run directory: refused before anything is built
    (tmp_path / "bad.yaml").write_text(
        "model:\n  class_path: lightning.pytorch.demos.boring_classes.BoringModel\n"
    )
    assert main(["fit", "--config", str(tmp_path / "bad.yaml")]) == 2
    assert "does not correspond to a subclass of StageModule" in capsys.readouterr().err
    with pytest.raises(Exception, match="Option 'bogus' is not accepted"):  # --debug: the exception itself
        main(["fit", "--config", "configs/demo/sft.yaml", "--model.init_args.bogus", "1", "--debug"])
