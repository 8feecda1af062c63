"""The stage-directory manifest: reading, writing and validating it. Standard library only.

A stage directory is the one hand-off between stages and to the dashboard (docs/checkpoint-format.md):

    manifest.json      this file's schema (FORMAT_VERSION)
    config.yaml        the resolved config of the run that wrote it (optional)
    tokenizer/         tokenizer files (save_pretrained)
    base/              full base weights (config.json + model.safetensors) when the base is not a hub/path
                       reference: trained from scratch or fully fine-tuned
    adapters/<name>.safetensors   LoRA adapters by role name (policy, reward, critic, ...)
    heads/<name>.safetensors      scalar heads (reward, value)
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
STAGES = ("sft", "reward", "ppo")


class ManifestError(ValueError):
    """A stage directory that cannot be loaded; the message says which file and why."""


@dataclass
class Manifest:
    """Everything needed to rebuild a stage's model, and what the stage measured.

    Attributes:
        stage: ``sft`` | ``reward`` | ``ppo``.
        base: How to rebuild the base: ``{"kind": "pretrained", "name_or_path", "revision"}`` or
            ``{"kind": "local", "path": "base"}`` (weights inside this directory).
        backbone: The backbone settings (quantization, dtype, lora, ...) as a plain dict.
        adapters: role name -> relative path of its safetensors file.
        heads: head name -> ``{"path": ..., "adapter": <adapter it reads through or null>, "bias": float}``.
        tokenizer: relative path of the tokenizer directory.
        parent: the stage directory this one started from (informative; nothing is loaded from it).
        step: optimizer steps taken in this stage.
        metrics: key figures (e.g. ``exact_match``, ``val_accuracy``, ``win_rate_vs_sft``).
        files: relative path -> size in bytes of every file written, checked on load.
        prompt_format: how prompts are rendered for this model (``{"template", "system_prompt"}``); every
            later stage and every tool that loads the directory renders prompts the same way. Empty in
            directories written before it existed: the defaults.
        metric_steps: metric name -> the optimizer step at which it was measured.
    """

    stage: str
    base: dict[str, Any]
    backbone: dict[str, Any]
    adapters: dict[str, str] = field(default_factory=dict)
    heads: dict[str, dict[str, Any]] = field(default_factory=dict)
    tokenizer: str = "tokenizer"
    parent: str | None = None
    step: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    files: dict[str, int] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    extra: dict[str, Any] = field(default_factory=dict)
    prompt_format: dict[str, Any] = field(default_factory=dict)
    metric_steps: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True, allow_nan=False)


def _inside(rel: str, what: str, where: Path) -> str:
    """Refuse paths that could leave the stage directory (absolute, `..`, backslashes)."""
    p = PurePosixPath(rel)
    if not rel or p.is_absolute() or ".." in p.parts or "\\" in rel:
        raise ManifestError(f"{where / MANIFEST}: {what} path {rel!r} leaves the stage directory")
    return rel


def _require(d: dict[str, Any], key: str, typ: type | tuple[type, ...], where: Path) -> Any:
    if key not in d:
        raise ManifestError(f"{where / MANIFEST}: missing field '{key}'")
    if not isinstance(d[key], typ):
        raise ManifestError(f"{where / MANIFEST}: field '{key}' has type {type(d[key]).__name__}")
    return d[key]


def parse_manifest(raw: dict[str, Any], where: Path) -> Manifest:
    """Validate a manifest dict; every problem names the manifest file and the field."""
    version = _require(raw, "format_version", int, where)
    if version != FORMAT_VERSION:
        raise ManifestError(
            f"{where / MANIFEST}: format_version {version} is not supported (this lit-rlhf reads {FORMAT_VERSION})"
        )
    stage = _require(raw, "stage", str, where)
    if stage not in STAGES:
        raise ManifestError(f"{where / MANIFEST}: field 'stage' is {stage!r}, expected one of {STAGES}")
    base = _require(raw, "base", dict, where)
    if base.get("kind") == "local":
        _inside(str(base.get("path", "")), "base", where)
    elif base.get("kind") != "pretrained":
        raise ManifestError(f"{where / MANIFEST}: field 'base.kind' must be 'local' or 'pretrained'")
    _require(raw, "backbone", dict, where)
    for name, rel in _require(raw, "adapters", dict, where).items():
        _inside(str(rel), f"adapter {name!r}", where)
    for name, head in _require(raw, "heads", dict, where).items():
        _inside(str(head.get("path", "")), f"head {name!r}", where)
    _inside(_require(raw, "tokenizer", str, where), "tokenizer", where)
    for rel in _require(raw, "files", dict, where):
        _inside(rel, "file", where)
    known = set(Manifest.__dataclass_fields__)
    return Manifest(**{k: v for k, v in raw.items() if k in known})


def read_manifest(stage_dir: str | os.PathLike) -> Manifest:
    """Read and validate ``manifest.json``, then check every listed file exists with its recorded size."""
    where = Path(stage_dir)
    path = where / MANIFEST
    if not where.is_dir():
        raise ManifestError(f"{where}: not a directory (expected a stage directory with {MANIFEST})")
    if not path.is_file():
        raise ManifestError(f"{path}: missing; {where} is not a complete stage directory")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ManifestError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(raw, dict):
        raise ManifestError(f"{path}: expected a JSON object")
    manifest = parse_manifest(raw, where)
    for rel, size in manifest.files.items():
        f = where / rel
        if not f.is_file():
            raise ManifestError(f"{where}: file {rel!r} listed in {MANIFEST} is missing")
        if f.stat().st_size != size:
            raise ManifestError(f"{where}: file {rel!r} has {f.stat().st_size} bytes, manifest says {size}")
    return manifest


def list_files(root: Path) -> dict[str, int]:
    """Relative POSIX path -> size of every regular file under root (the manifest excluded)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            out[p.relative_to(root).as_posix()] = p.stat().st_size
    return out
