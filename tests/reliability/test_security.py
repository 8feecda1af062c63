"""Hostile input (issue 16): files written by someone else, or by a careless user, must never run code, touch
anything outside their folder, hang a reader or take the dashboard down. One section per defect of the issue;
each test failed on the code before the fix.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path

import pytest

from lit_rlhf.data.io import read_jsonl_tolerant
from lit_rlhf.data.rows import Comparison, DataError, ReadReport, read_rows, validate_row
from lit_rlhf.demo.labeler import Labeler

BIG = 5_000_000  # characters: a value this long must never be quoted whole in a message


def _finishes(fn, timeout: float = 20.0):
    """Run `fn` in a daemon thread; fail (instead of hanging the suite) when it blocks past `timeout`."""
    box: dict = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # handed to the test, which asserts on it
            box["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"blocked for more than {timeout} s"
    return box


# ---- 8. data readers ---------------------------------------------------------------------------------------
def test_error_messages_quote_at_most_a_few_hundred_characters(tmp_path, caplog):
    path = tmp_path / "rows.jsonl"
    with open(path, "w") as f:
        f.write(json.dumps({"prompt": "p", "responses": ["a", "b"], "ranking": ["x" * BIG, 1]}) + "\n")
        f.write(json.dumps({"prompt": "p", "responses": ["a", "b"], "ranking": [0, 1]}) + "\n")
        key = "y" * BIG
        f.write('{"prompt": "p", "' + key + '": 1, "' + key + '": 2}\n')  # ... repeated
    with pytest.raises(DataError) as err:
        read_rows(path, "comparison")
    assert len(str(err.value)) < 1000
    with caplog.at_level(logging.WARNING):
        rows, report = read_rows(path, "comparison", on_error="skip")
    assert len(rows) == 1 and len(report.skipped) == 2
    assert all(len(str(e)) < 1000 for e in report.skipped)
    assert max(len(r.getMessage()) for r in caplog.records) < 1000
    assert "characters)" in str(report.skipped[1])  # says the value was cut


def _hostile_paths(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """name -> (path, words the error must contain)."""
    folder = tmp_path / "folder.jsonl"
    folder.mkdir()
    loop = tmp_path / "loop.jsonl"
    os.symlink(loop, loop)
    fifo = tmp_path / "fifo.jsonl"
    os.mkfifo(fifo)
    zero = tmp_path / "zero.jsonl"
    os.symlink("/dev/zero", zero)
    return {
        "folder": (folder, "a folder, not a regular file"),
        "loop": (loop, "a symbolic link loop"),
        "fifo": (fifo, "a FIFO (named pipe), not a regular file"),
        "device": (zero, "a device, not a regular file"),
    }


@pytest.mark.parametrize("name", ["folder", "loop", "fifo", "device"])
def test_a_data_path_that_is_not_a_file_is_a_clear_error_not_a_hang(tmp_path, name):
    path, words = _hostile_paths(tmp_path)[name]
    box = _finishes(lambda: read_rows(path, "prompt"))
    assert isinstance(box.get("error"), DataError), box
    assert str(box["error"]) == f"{path}: {words}"
    box = _finishes(lambda: read_jsonl_tolerant(path))
    assert isinstance(box.get("error"), OSError) and words in str(box["error"]), box


def _comparison(responses, ranking):
    return validate_row({"prompt": "p", "responses": responses, "ranking": ranking}, "comparison", "f", 1)


def test_contradictory_labels_are_refused_with_the_field():
    with pytest.raises(DataError, match=r"^f:1: field 'rejected': identical to 'chosen'"):
        validate_row({"prompt": "p", "chosen": "a", "rejected": "a"}, "comparison", "f", 1)
    with pytest.raises(
        DataError, match=r"^f:1: field 'ranking\[2\]': responses\[2\] repeats a response ranked 0"
    ):
        _comparison(["a", "b", "a"], [0, 1, 2])
    assert _comparison(["a", "b", "a"], [0, 1, 0]).ranking == (0, 1, 0)  # a repeat with its own rank is fine


def test_the_dashboard_does_not_write_contradictory_labels(tmp_path):
    from dashboard.labeling import save_ranking

    path = tmp_path / "labels.jsonl"
    with pytest.raises(DataError, match="contradictory labels"):
        save_ranking(path, "p", ["same", "same"], [0, 1])
    assert not path.exists()


def test_rank_noise_never_writes_a_contradictory_row():
    for seed in range(5):
        ranking = Labeler(seed=seed, rank_noise=2.0).rank("reverse c a b =", ["x", "x", "y", "x"])
        assert ranking[0] == ranking[1] == ranking[3], ranking
        _comparison(["x", "x", "y", "x"], ranking)  # what collect-comparisons writes must read back


def _rows(ks: list[int]) -> list[Comparison]:
    return [
        Comparison("p", tuple(f"r{i}" for i in range(k)), tuple(range(k)), source=f"c.jsonl:{n + 1}")
        for n, k in enumerate(ks)
    ]


def test_k_is_capped_with_a_message_naming_the_row_and_the_setting():
    from lit_rlhf.data.limits import MAX_RESPONSES, cap_responses

    report = ReadReport("c.jsonl", "comparison", read=2, kept=2, skipped=[])
    with pytest.raises(
        DataError, match=r"^c.jsonl:2: field 'responses': 4000 responses is more than max_responses=16"
    ):
        cap_responses(_rows([4, 4000]), report, MAX_RESPONSES, "raise")
    kept = cap_responses(_rows([4, 4000]), report, MAX_RESPONSES, "skip")
    assert [r.k for r in kept] == [4] and report.kept == 1 and len(report.skipped) == 1
    assert [r.k for r in cap_responses(_rows([4, 40]), report, 64, "raise")] == [4, 40]  # configurable


def test_comparison_data_module_applies_the_cap_and_counts_contradictions(tmp_path, tiny_dir, caplog):
    from lit_rlhf.backbone.build import load_tokenizer
    from lit_rlhf.data.comparisons import ComparisonDataModule
    from lit_rlhf.data.limits import contradicting_pairs

    path = tmp_path / "c.jsonl"
    rows = [
        {"prompt": "a b =", "responses": ["a", "b"], "ranking": [0, 1]},
        {"prompt": "a b =", "responses": ["b", "a"], "ranking": [0, 1]},  # the other labeler disagrees
        {"prompt": "c =", "responses": [*"abcdefgh", "x", "y"], "ranking": list(range(10))},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tok = load_tokenizer(str(tiny_dir / "tokenizer"))
    with pytest.raises(
        DataError, match=r"c.jsonl:3: field 'responses': 10 responses is more than max_responses=8"
    ):
        ComparisonDataModule(str(path), tokenizer=tok, max_responses=8).setup("fit")
    with caplog.at_level(logging.WARNING):
        dm = ComparisonDataModule(str(path), tokenizer=tok, max_responses=10)
        dm.setup("fit")
    assert len(dm.data["train"]) == 3
    assert "1 response pairs are ranked one way in one row and the other way in another" in caplog.text
    assert contradicting_pairs(_rows([3, 3])) == 0
    with pytest.raises(ValueError, match="max_responses must be >= 2"):
        ComparisonDataModule(str(path), max_responses=1)


# ---- stage directories: helpers ------------------------------------------------------------------------------
LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": None}


def _lora_stage(tiny_dir: Path, out: Path, heads: bool = False) -> Path:
    """A LoRA stage on the tiny GPT-2 (pretrained base: a path outside the directory), with a reward head."""
    from lit_rlhf.backbone.build import Backbone
    from lit_rlhf.backbone.config import BackboneConfig, LoraSettings
    from lit_rlhf.checkpoint.stage_dir import save_stage_dir

    bb = Backbone.build(BackboneConfig(name_or_path=str(tiny_dir / "gpt2"), lora=LoraSettings(**LORA)))
    bb.add_adapter("policy")
    if heads:
        bb.add_head("reward")
    save_stage_dir(out, bb, stage="sft", heads={"reward": {"adapter": "policy"}} if heads else None)
    return out


def _full_stage(tiny_dir: Path, out: Path) -> Path:
    """A full-weights stage: its base lives in its own base/ folder."""
    from lit_rlhf.backbone.build import Backbone
    from lit_rlhf.backbone.config import BackboneConfig
    from lit_rlhf.checkpoint.stage_dir import save_stage_dir

    save_stage_dir(out, Backbone.build(BackboneConfig(name_or_path=str(tiny_dir / "gpt2"))), stage="sft")
    return out


def _manifest(stage: Path) -> dict:
    return json.loads((stage / "manifest.json").read_text())


def _write_manifest(stage: Path, m: dict) -> None:
    (stage / "manifest.json").write_text(json.dumps(m))


def _relist(stage: Path) -> None:
    """Record the current files and sizes in the manifest, as a careful tamperer would."""
    from lit_rlhf.checkpoint.manifest import list_files

    m = _manifest(stage)
    m["files"] = {k: v for k, v in list_files(stage).items() if not k.endswith(".py")}
    _write_manifest(stage, m)


# ---- 2. links in a stage directory ---------------------------------------------------------------------------
def test_a_link_in_a_parent_base_is_refused_before_training_and_never_chmod_ed(tiny_dir, tmp_path):
    from lit_rlhf.checkpoint.manifest import ManifestError
    from lit_rlhf.checkpoint.stage_dir import load_stage_dir, save_stage_dir

    key = tmp_path / "id_rsa"
    key.write_text("PRIVATE")
    key.chmod(0o600)
    parent = _full_stage(tiny_dir, tmp_path / "parent")
    os.symlink(key, parent / "base" / "id_rsa")
    with pytest.raises(
        ManifestError, match=r"parent/base/id_rsa: a symbolic link; a stage directory holds only"
    ):
        # what the reward stage does with a full-weights SFT parent: load with LoRA on, then save (copies base/)
        net, _ = load_stage_dir(parent, backbone_overrides={"lora": LORA})
        net.add_adapter("reward")
        save_stage_dir(tmp_path / "child", net, stage="reward")
    assert key.stat().st_mode & 0o777 == 0o600
    assert not (tmp_path / "child").exists()


def test_copying_a_base_folder_refuses_links_and_fifos(tiny_dir, tmp_path):
    from lit_rlhf.backbone.build import Backbone
    from lit_rlhf.backbone.config import BackboneConfig, LoraSettings
    from lit_rlhf.checkpoint.manifest import ManifestError
    from lit_rlhf.checkpoint.stage_dir import save_stage_dir

    base = tmp_path / "weights"
    base.mkdir()
    for f in ("config.json", "model.safetensors"):
        (base / f).write_bytes((tiny_dir / "gpt2" / f).read_bytes())
    cfg = BackboneConfig(name_or_path=str(tiny_dir / "gpt2"), lora=LoraSettings(**LORA))
    bb = Backbone.build(cfg, weights_dir=base, tokenizer_dir=tiny_dir / "tokenizer")
    bb.add_adapter("policy")
    os.mkfifo(base / "pipe")
    with pytest.raises(ManifestError, match=r"weights/pipe: not a regular file"):
        save_stage_dir(tmp_path / "s", bb, stage="sft")
    (base / "pipe").unlink()
    os.symlink(tmp_path / "elsewhere", base / "link")
    with pytest.raises(ManifestError, match=r"weights/link: a symbolic link"):
        save_stage_dir(tmp_path / "s", bb, stage="sft")
    assert not (tmp_path / "s").exists()


# ---- 7. tampered stage directories ---------------------------------------------------------------------------
def _rewrite_header(path: Path, edit) -> None:
    import struct

    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    edit(header)
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])


def _truncate_and_relist(s: Path) -> None:
    f = s / "adapters" / "policy.safetensors"
    f.write_bytes(f.read_bytes()[:-10])
    _relist(s)


def _wrong_shape(s: Path) -> None:
    def edit(header):
        name = sorted(k for k in header if k != "__metadata__")[0]
        header[name]["shape"] = [x + 1 for x in header[name]["shape"]]

    _rewrite_header(s / "adapters" / "policy.safetensors", edit)
    _relist(s)


def _edit(**changes):
    def tamper(s: Path) -> None:
        m = _manifest(s)
        for dotted, value in changes.items():
            *parents, last = dotted.split("__")
            target = m
            for key in parents:
                target = target[key]
            target[last] = value
        _write_manifest(s, m)

    return tamper


def _no_tokenizer(s: Path) -> None:
    import shutil

    shutil.rmtree(s / "tokenizer")
    _relist(s)


def _raw(text_of):
    def tamper(s: Path) -> None:
        (s / "manifest.json").write_text(text_of(json.dumps(_manifest(s))))

    return tamper


TAMPERED = {
    "truncated, size updated": (
        _truncate_and_relist,
        r"adapters/policy.safetensors: tensor '.*': field 'data_offsets': \[\d+, \d+\] is past the \d+ data bytes",
    ),
    "shape does not fit the bytes": (
        _wrong_shape,
        r"adapters/policy.safetensors: tensor '.*': field 'shape'",
    ),
    "dtype float64": (
        _edit(backbone__dtype="float64"),
        r"manifest.json: field 'backbone.dtype': 'float64' is not one of float32, bfloat16, float16",
    ),
    "unknown quantization": (
        _edit(backbone__quantization="2bit"),
        r"manifest.json: field 'backbone.quantization': '2bit' is not one of none, 8bit, 4bit",
    ),
    "head is a string": (
        _edit(heads__reward="heads/reward.safetensors"),
        r"field 'heads.reward' has type string",
    ),
    "head is a list": (
        _edit(heads__reward=["heads/reward.safetensors"]),
        r"field 'heads.reward' has type array",
    ),
    "adapter is a number": (_edit(adapters__policy=3), r"field 'adapters.policy' has type integer"),
    "format_version true": (
        _edit(format_version=True),
        r"manifest.json: field 'format_version' has type boolean",
    ),
    "missing tokenizer folder": (
        _no_tokenizer,
        r"folder 'tokenizer' \(field 'tokenizer' of manifest.json\) is missing",
    ),
    "NaN": (
        _raw(lambda t: t.replace('"step": 0', '"step": NaN')),
        r"manifest.json: field 'step': NaN is not valid",
    ),
    "duplicate key": (
        _raw(lambda t: t.replace('"step": 0', '"step": 0, "step": 5')),
        r"manifest.json: field 'step': key appears more than once",
    ),
    "deeply nested": (
        _raw(lambda t: t.replace('"extra": {}', '"extra": ' + "[" * 100_000 + "]" * 100_000)),
        r"manifest.json: nested too deeply",
    ),
    "nested past 64": (
        _raw(lambda t: t.replace('"extra": {}', '"extra": ' + "[" * 100 + "]" * 100)),
        r"manifest.json: nested deeper than 64 levels",
    ),
}


@pytest.mark.parametrize("case", list(TAMPERED))
def test_a_tampered_stage_directory_is_refused_naming_the_file_and_field(tiny_dir, tmp_path, case):
    from lit_rlhf.checkpoint.manifest import ManifestError
    from lit_rlhf.checkpoint.stage_dir import load_stage_dir

    tamper, message = TAMPERED[case]
    stage = _lora_stage(tiny_dir, tmp_path / "s", heads=True)
    tamper(stage)
    with pytest.raises(ManifestError, match=message):
        load_stage_dir(stage)


def test_a_head_of_the_wrong_width_is_named(tiny_dir, tmp_path):
    import torch
    from safetensors.torch import save_file

    from lit_rlhf.checkpoint.manifest import ManifestError
    from lit_rlhf.checkpoint.stage_dir import load_stage_dir

    stage = _lora_stage(tiny_dir, tmp_path / "s", heads=True)
    save_file(
        {"proj.weight": torch.zeros(1, 32), "proj.bias": torch.zeros(1)},
        str(stage / "heads" / "reward.safetensors"),
    )
    _relist(stage)
    with pytest.raises(ManifestError, match=r"heads/reward.safetensors: head 'reward' does not fit the base"):
        load_stage_dir(stage)


# ---- 1. code in a stage directory never runs unless the user says so ------------------------------------------
def _hostile_stage(tiny_dir: Path, out: Path, marker: Path) -> Path:
    """A full-weights stage whose tokenizer folder ships code (auto_map) and whose manifest asks to trust it."""
    stage = _full_stage(tiny_dir, out)
    code = (
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
        "from transformers import PreTrainedTokenizerFast\n\n\nclass EvilTokenizer(PreTrainedTokenizerFast):\n    pass\n"
    )
    (stage / "tokenizer" / "tokenization_evil.py").write_text(code)
    config = stage / "tokenizer" / "tokenizer_config.json"
    cfg = json.loads(config.read_text())
    cfg.update(
        tokenizer_class="EvilTokenizer", auto_map={"AutoTokenizer": [None, "tokenization_evil.EvilTokenizer"]}
    )
    config.write_text(json.dumps(cfg))
    m = _manifest(stage)
    m["backbone"]["trust_remote_code"] = True
    _write_manifest(stage, m)
    _relist(stage)
    return stage


def test_a_manifest_asking_for_remote_code_runs_none_anywhere(tiny_dir, tmp_path, monkeypatch):
    from dashboard.modeling import load_model
    from lit_rlhf.checkpoint.manifest import ManifestError, read_manifest
    from lit_rlhf.checkpoint.stage_dir import export_stage_dir, load_stage_dir
    from lit_rlhf.cli import main
    from lit_rlhf.evaluation.command import check_same_tokenizer
    from lit_rlhf.evaluation.reward_model import RewardScorer
    from lit_rlhf.stages.sft import SFTModule

    marker = tmp_path / "PWNED"
    stage = _hostile_stage(tiny_dir, tmp_path / "stage", marker)
    refused = r"tokenizer_config.json: field 'auto_map' names code shipped in the stage directory \(tokenizer/tokenization_evil.py\)"
    loaders = {
        "load_stage_dir": lambda: load_stage_dir(stage),
        "export_stage_dir": lambda: export_stage_dir(stage, tmp_path / "hf"),
        "dashboard": lambda: load_model(stage, device="cpu"),
        "evaluate": lambda: check_same_tokenizer(
            {str(stage): read_manifest(stage)}, str(stage), read_manifest(stage)
        ),
        "reward scorer": lambda: RewardScorer(stage),
        "sft init_from": lambda: SFTModule(init_from=str(stage)).configure_model(),
    }
    for name, load in loaders.items():
        with pytest.raises(ManifestError, match=refused):
            load()
        assert not marker.exists(), name
    assert main(["export", "--ckpt", str(stage), "--out", str(tmp_path / "hf")]) == 2
    assert not marker.exists() and not (tmp_path / "hf").exists()


def test_the_callers_trust_flag_is_what_decides(tiny_dir, tmp_path, caplog):
    from lit_rlhf.checkpoint.stage_dir import export_stage_dir, load_stage_dir

    marker = tmp_path / "ran"
    stage = _hostile_stage(tiny_dir, tmp_path / "stage", marker)
    backbone, _ = load_stage_dir(stage, trust_remote_code=True)  # the user's own, explicit choice
    assert marker.exists() and type(backbone.tokenizer).__name__ == "EvilTokenizer"
    m = _manifest(stage)
    m["backbone"]["trust_remote_code"] = (
        False  # and a manifest saying no does not stop a trusting user either
    )
    _write_manifest(stage, m)
    with caplog.at_level(logging.WARNING):
        out = export_stage_dir(stage, tmp_path / "hf", trust_remote_code=True)
    assert not list(out.rglob("*.py")), "an export never hands shipped code on"
    assert "auto_map" not in json.loads((out / "tokenizer_config.json").read_text())
    assert "left out shipped code (tokenization_evil.py, tokenizer_config.json: auto_map)" in caplog.text


def test_a_base_outside_the_stage_directory_is_logged_and_can_be_refused(
    tiny_dir, tmp_path, caplog, monkeypatch
):
    from lit_rlhf.checkpoint.manifest import ManifestError
    from lit_rlhf.checkpoint.stage_dir import load_stage_dir
    from lit_rlhf.cli import main

    stage = _lora_stage(tiny_dir, tmp_path / "s")
    with caplog.at_level(logging.WARNING):
        load_stage_dir(stage)
    assert f"the base is the folder {str(tiny_dir / 'gpt2')!r}, outside the stage directory" in caplog.text
    refused = r"manifest.json: field 'base': the base is the folder .* refused because only bases inside"
    with pytest.raises(ManifestError, match=refused):
        load_stage_dir(stage, allow_external_base=False)
    monkeypatch.setenv("LIT_RLHF_LOCAL_BASES_ONLY", "1")
    with pytest.raises(ManifestError, match=refused):
        load_stage_dir(stage)
    load_stage_dir(_full_stage(tiny_dir, tmp_path / "full"))  # a base inside the directory is fine
    monkeypatch.delenv("LIT_RLHF_LOCAL_BASES_ONLY")
    assert main(["export", "--ckpt", str(stage), "--out", str(tmp_path / "hf"), "--local-bases-only"]) == 2
    m = _manifest(stage)
    m["base"] = {"kind": "pretrained", "name_or_path": "someone/model", "revision": "abc"}
    _write_manifest(stage, m)
    with pytest.raises(
        ManifestError, match=r"the base is the Hugging Face model 'someone/model' at revision abc"
    ):
        load_stage_dir(stage, allow_external_base=False)


# ---- 4. export never deletes a folder it did not write --------------------------------------------------------
def test_export_refuses_to_replace_a_folder_that_is_not_an_earlier_export(tiny_dir, tmp_path, capsys):
    from lit_rlhf.checkpoint.stage_dir import export_stage_dir
    from lit_rlhf.cli import main

    stage = _full_stage(tiny_dir, tmp_path / "s")
    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "chapter1.tex").write_text("\\chapter{One}")
    assert main(["export", "--ckpt", str(stage), "--out", str(thesis)]) == 2
    assert "a non-empty folder that is not an earlier export" in capsys.readouterr().err
    assert (thesis / "chapter1.tex").read_text() == "\\chapter{One}"
    with pytest.raises(FileExistsError, match="is not a folder"):
        export_stage_dir(stage, thesis / "chapter1.tex")
    out = tmp_path / "hf"
    out.mkdir()  # an empty folder is fine
    export_stage_dir(stage, out)
    export_stage_dir(stage, out)  # so is an earlier export (it carries the marker)
    assert (out / ".lit-rlhf-export").is_file() and (out / "config.json").is_file()
    assert main(["export", "--ckpt", str(stage), "--out", str(thesis), "--overwrite"]) == 0
    assert not (thesis / "chapter1.tex").exists() and (thesis / "config.json").is_file()


# ---- 11. torch floor, .ckpt files, and what a manifest tells about its writer -----------------------------------
def test_the_torch_floor_loads_checkpoints_weights_only_by_default():
    from packaging.requirements import Requirement

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    root = Path(__file__).resolve().parents[2]
    deps = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    (torch_req,) = [Requirement(d) for d in deps if Requirement(d).name == "torch"]
    assert "2.6.0" in torch_req.specifier and "2.5.1" not in torch_req.specifier
    assert (root / "constraints.txt").read_text().strip() == "torch==2.13.0"  # the install pin is untouched


def test_resuming_from_a_planted_last_ckpt_does_not_unpickle_code(tmp_path):
    """What `--ckpt_path` (and `pipeline`'s automatic resume) calls: Lightning's loader, under torch's default."""
    import pickle

    import torch
    from lightning.fabric.utilities.cloud_io import _load

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').write('ran')",))

    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": {}, "payload": Payload()}, ckpt)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        _load(ckpt)
    assert not marker.exists()


def test_manifests_record_other_stages_relative_to_themselves(tiny_dir, tmp_path):
    import shutil

    from dashboard import loaders
    from lit_rlhf.backbone.build import Backbone
    from lit_rlhf.backbone.config import BackboneConfig
    from lit_rlhf.checkpoint.manifest import read_manifest
    from lit_rlhf.checkpoint.stage_dir import save_stage_dir
    from lit_rlhf.evaluation.command import resolve_rm, resolve_sft

    runs = tmp_path / "home" / "alice" / "runs"
    sft, rm, ppo = runs / "sft/a/stage", runs / "reward/r/stage", runs / "ppo/p/stage"
    bb = Backbone.build(BackboneConfig(name_or_path=str(tiny_dir / "gpt2")))
    save_stage_dir(sft, bb, stage="sft", parent=str(tiny_dir / "elsewhere"))  # outside the runs root
    save_stage_dir(rm, bb, stage="reward", parent=str(sft))
    save_stage_dir(ppo, bb, stage="ppo", parent=str(sft), extra={"reward_from": str(rm), "ptx_coef": 0.5})
    raw = _manifest(ppo)
    assert (raw["parent"], raw["extra"]) == (
        "../../../sft/a/stage",
        {"reward_from": "../../../reward/r/stage", "ptx_coef": 0.5},
    )
    assert "alice" not in raw["parent"] + raw["extra"]["reward_from"]
    assert _manifest(sft)["parent"] == str(tiny_dir / "elsewhere")  # outside the runs root: stays absolute

    moved = tmp_path / "bob" / "runs"
    shutil.move(runs, moved)  # someone else's copy of the runs root
    m = read_manifest(moved / "ppo/p/stage")
    assert (m.parent, m.extra["reward_from"]) == (str(moved / "sft/a/stage"), str(moved / "reward/r/stage"))
    assert resolve_sft({"ppo": m}, None) == str(moved / "sft/a/stage")
    assert resolve_rm({"ppo": m}, None) == str(moved / "reward/r/stage")
    found = {d.label: d for d in loaders.find_stage_dirs(moved)[0]}
    assert found["ppo/p"].parent == str(moved / "sft/a/stage")


def test_manifests_written_with_absolute_paths_still_load(tiny_dir, tmp_path):
    from lit_rlhf.checkpoint.manifest import read_manifest

    stage = _full_stage(tiny_dir, tmp_path / "runs/reward/r/stage")
    m = _manifest(stage)
    del m["relative_links"]  # as written before links were recorded relative
    m["parent"], m["extra"] = "/old/home/runs/sft/a/stage", {"reward_from": "runs/reward/x/stage"}
    _write_manifest(stage, m)
    read = read_manifest(stage)
    assert (read.parent, read.extra["reward_from"]) == ("/old/home/runs/sft/a/stage", "runs/reward/x/stage")
