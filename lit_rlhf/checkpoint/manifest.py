"""The stage-directory manifest: reading, writing and validating it. Standard library only (and lit_rlhf's
stdlib-only `safe_io`, `checkpoint.validate`, `backbone.config`).

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
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from lit_rlhf.checkpoint.validate import backbone_problems, safetensors_problems, tree_problems
from lit_rlhf.run_files import STAGES
from lit_rlhf.safe_io import StrictJSONError, UnreadableFile, clip, read_bounded, strict_json

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
KEPT = (
    "kept"  # <run dir>/kept/<point>/: stage directories kept at evaluation points (lit_rlhf.checkpoint.kept)
)
MAX_MANIFEST_BYTES = 16 * 1024 * 1024  # a manifest is a few KB; a huge one is not ours


class ManifestError(ValueError):
    """A stage directory that cannot be loaded; the message says which file and why."""


class ManifestUnreadable(ManifestError):
    """A manifest file that cannot be read as JSON at all; `str(err)` is "{path}: {reason}"."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        super().__init__(f"{os.fspath(path)}: {reason}")
        self.path, self.reason = os.fspath(path), reason


@dataclass
class Manifest:
    """Everything needed to rebuild a stage's model, and what the stage measured.

    Attributes:
        stage: ``sft`` | ``reward`` | ``ppo``.
        base: How to rebuild the base: ``{"kind": "pretrained", "name_or_path", "revision"}`` or
            ``{"kind": "local", "path": "base"}`` (weights inside this directory).
        backbone: The backbone settings (quantization, dtype, lora, ...) as a plain dict.
        adapters: role name -> relative path of its safetensors file.
        heads: head name -> ``{"path": ..., "adapter": <adapter it reads through or null>, "bias": float}``, plus
            ``"outputs": [names]`` for a multi-label (rule) head.
        tokenizer: relative path of the tokenizer directory.
        parent: the stage directory this one started from (informative; `evaluate` takes it as the SFT baseline).
        step: optimizer steps taken in this stage.
        metrics: key figures (e.g. ``exact_match``, ``val_accuracy``, ``win_rate_vs_sft``).
        files: relative path -> size in bytes of every file written, checked on load.
        prompt_format: how prompts are rendered for this model (``{"template", "system_prompt"}``); every
            later stage and every tool that loads the directory renders prompts the same way. Empty in
            directories written before it existed: the defaults.
        metric_steps: metric name -> the optimizer step at which it was measured.
        relative_links: True when `parent` and ``extra["reward_from"]`` were written relative to this stage
            directory (`link_for`); `read_manifest` resolves them, so a read manifest holds usable paths. Older
            manifests (False) hold them as their writer gave them: absolute, or relative to its working folder.
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
    relative_links: bool = False

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True, allow_nan=False)


LINKS_IN_EXTRA = ("reward_from", "reference_from")  # `extra` entries that name another stage directory


def link_for(stage_dir: str | os.PathLike, target: str | os.PathLike | None) -> str | None:
    """How the manifest of `stage_dir` records another stage directory `target`.

    Relative to `stage_dir` (``../../../sft/a/stage``) when `target` lies in the same runs root (the folder
    holding ``<stage>/<name>/stage``, or ``<stage>/<name>/kept/<point>``), so a manifest does not carry the
    writer's user name and folder layout and still points right when the runs root moves; absolute otherwise.
    """
    if target is None:
        return None
    out, to = os.path.abspath(stage_dir), os.path.abspath(target)
    runs_root = out
    for _ in range(4 if os.path.basename(os.path.dirname(out)) == KEPT else 3):
        runs_root = os.path.dirname(runs_root)
    if os.path.commonpath([runs_root, to]) != runs_root:
        return to
    return PurePosixPath(*Path(os.path.relpath(to, out)).parts).as_posix()


def resolve_link(stage_dir: str | os.PathLike, value: Any, relative: bool) -> Any:
    """A recorded link as a usable path: joined to `stage_dir` when written relative to it (`relative_links`)."""
    if not relative or not isinstance(value, str) or not value or os.path.isabs(value):
        return value
    return os.path.normpath(os.path.join(stage_dir, value))


def _resolve_links(manifest: Manifest, where: Path) -> None:
    manifest.parent = resolve_link(where, manifest.parent, manifest.relative_links)
    for key in LINKS_IN_EXTRA:
        if key in manifest.extra:
            manifest.extra[key] = resolve_link(where, manifest.extra[key], manifest.relative_links)


def _inside(rel: str, what: str, where: Path) -> str:
    """Refuse paths that could leave the stage directory (absolute, `..`, backslashes)."""
    p = PurePosixPath(rel)
    if not rel or p.is_absolute() or ".." in p.parts or "\\" in rel:
        raise ManifestError(f"{where / MANIFEST}: {what} path {clip(repr(rel))} leaves the stage directory")
    return rel


def _json_type(value: Any) -> str:
    names = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _require(
    d: dict[str, Any], key: str, typ: type | tuple[type, ...], where: Path, name: str | None = None
) -> Any:
    """d[key], which must have type `typ`; a bool never passes for an int (`format_version: true` is not 1)."""
    name = name or key
    if key not in d:
        raise ManifestError(f"{where / MANIFEST}: missing field '{name}'")
    value = d[key]
    allowed = typ if isinstance(typ, tuple) else (typ,)
    if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
        raise ManifestError(f"{where / MANIFEST}: field '{name}' has type {_json_type(value)}")
    return value


def _optional(d: dict[str, Any], key: str, typ: type | tuple[type, ...], where: Path) -> None:
    if key in d:
        _require(d, key, typ, where)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _parse_base(raw: dict[str, Any], where: Path) -> None:
    base = _require(raw, "base", dict, where)
    if base.get("kind") == "local":
        _inside(_require(base, "path", str, where, "base.path"), "base", where)
    elif base.get("kind") == "pretrained":
        _require(base, "name_or_path", str, where, "base.name_or_path")
        for key in ("revision", "gguf_file"):
            if base.get(key) is not None:
                _require(base, key, str, where, f"base.{key}")
    else:
        raise ManifestError(f"{where / MANIFEST}: field 'base.kind' must be 'local' or 'pretrained'")


def _parse_heads(raw: dict[str, Any], where: Path) -> None:
    for name, head in _require(raw, "heads", dict, where).items():
        field_name = f"heads.{clip(name)}"
        if not isinstance(head, dict):
            raise ManifestError(
                f"{where / MANIFEST}: field '{field_name}' has type {_json_type(head)}, "
                "expected an object with 'path', 'adapter' and 'bias'"
            )
        _inside(_require(head, "path", str, where, f"{field_name}.path"), f"head {clip(name)!r}", where)
        if head.get("adapter") is not None:
            _require(head, "adapter", str, where, f"{field_name}.adapter")
        if not _finite(head.get("bias", 0.0)):
            raise ManifestError(f"{where / MANIFEST}: field '{field_name}.bias' must be a finite number")
        outputs = head.get("outputs")
        if outputs is not None and not (
            isinstance(outputs, list)
            and outputs
            and all(isinstance(o, str) and o for o in outputs)
            and len(set(outputs)) == len(outputs)
        ):
            raise ManifestError(
                f"{where / MANIFEST}: field '{field_name}.outputs' must be a non-empty list of distinct names"
            )


def parse_manifest(raw: dict[str, Any], where: Path) -> Manifest:
    """Validate a manifest dict; every problem names the manifest file and the field."""
    version = _require(raw, "format_version", int, where)
    if version != FORMAT_VERSION:
        raise ManifestError(
            f"{where / MANIFEST}: format_version {version} is not supported (this lit-rlhf reads {FORMAT_VERSION})"
        )
    stage = _require(raw, "stage", str, where)
    if stage not in STAGES:
        raise ManifestError(
            f"{where / MANIFEST}: field 'stage' is {clip(repr(stage))}, expected one of {STAGES}"
        )
    _parse_base(raw, where)
    problems = backbone_problems(_require(raw, "backbone", dict, where))
    if problems:
        raise ManifestError(f"{where / MANIFEST}: {problems[0]}")
    adapters = _require(raw, "adapters", dict, where)
    for name in adapters:
        rel = _require(adapters, name, str, where, f"adapters.{clip(name)}")
        _inside(rel, f"adapter {clip(name)!r}", where)
    _parse_heads(raw, where)
    _inside(_require(raw, "tokenizer", str, where), "tokenizer", where)
    for rel, size in _require(raw, "files", dict, where).items():
        _inside(rel, "file", where)
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ManifestError(f"{where / MANIFEST}: field 'files.{clip(rel)}' must be a size in bytes")
    checks = (("parent", (str, type(None))), ("step", int), ("metrics", dict), ("created", str))
    for key, typ in (*checks, ("relative_links", bool)):
        _optional(raw, key, typ, where)
    for key in ("extra", "prompt_format", "metric_steps"):
        _optional(raw, key, dict, where)
    if not all(_finite(v) for v in raw.get("metrics", {}).values()):
        raise ManifestError(f"{where / MANIFEST}: field 'metrics' must map names to finite numbers")
    known = set(Manifest.__dataclass_fields__)
    return Manifest(**{k: v for k, v in raw.items() if k in known})


def _check_contents(manifest: Manifest, where: Path) -> None:
    """Every listed file has its recorded size, every file the manifest names exists, safetensors headers fit."""
    for rel, size in manifest.files.items():
        f = where / rel
        if not f.is_file():
            raise ManifestError(f"{where}: file {rel!r} listed in {MANIFEST} is missing")
        if f.stat().st_size != size:
            raise ManifestError(f"{where}: file {rel!r} has {f.stat().st_size} bytes, manifest says {size}")
    named = {f"adapters.{k}": v for k, v in manifest.adapters.items()}
    named.update({f"heads.{k}.path": h["path"] for k, h in manifest.heads.items()})
    for field_name, rel in named.items():
        if not (where / rel).is_file():
            raise ManifestError(f"{where}: file {rel!r} (field '{field_name}' of {MANIFEST}) is missing")
    folders = {"tokenizer": manifest.tokenizer}
    if manifest.base["kind"] == "local":
        folders["base.path"] = manifest.base["path"]
    for field_name, rel in folders.items():
        if not (where / rel).is_dir():
            raise ManifestError(f"{where}: folder {rel!r} (field '{field_name}' of {MANIFEST}) is missing")
    for rel in manifest.files:
        if rel.endswith(".safetensors") and (problems := safetensors_problems(where / rel)):
            raise ManifestError(problems[0])


def read_manifest_json(stage_dir: str | os.PathLike) -> dict[str, Any]:
    """The raw JSON object of a stage directory's manifest: strict (no NaN, repeated keys or deep nesting) and
    bounded, but neither validated nor checked against the folder (`read_manifest` does both).

    For readers that only show what a manifest says (the dashboard lists stage directories without loading
    them). FileNotFoundError when there is no manifest; ManifestUnreadable for a file that cannot be read as
    JSON, ManifestError for JSON that is not an object; each names the file.
    """
    path = Path(stage_dir) / MANIFEST
    try:
        raw = strict_json(read_bounded(path, MAX_MANIFEST_BYTES))
    except FileNotFoundError:
        raise
    except UnreadableFile as e:
        raise ManifestUnreadable(path, e.reason) from e
    except (OSError, StrictJSONError) as e:
        raise ManifestUnreadable(path, str(e)) from e
    if not isinstance(raw, dict):
        raise ManifestError(f"{path}: expected a JSON object")
    return raw


def manifest_link(stage_dir: str | os.PathLike, raw: dict[str, Any], key: str) -> str | None:
    """A link of a raw manifest (`parent`, or an `extra` entry of LINKS_IN_EXTRA) as a usable path, or None.

    New manifests record links relative to their stage directory (`relative_links`); `resolve_link` joins them.
    """
    if key == "parent":
        value = raw.get("parent")
    else:
        extra = raw.get("extra")
        value = extra.get(key) if isinstance(extra, dict) else None
    path = resolve_link(stage_dir, value, raw.get("relative_links") is True)
    return path if isinstance(path, str) and path else None


def read_manifest(stage_dir: str | os.PathLike) -> Manifest:
    """Read and validate ``manifest.json``, then check the directory's contents against it.

    Before anything else, every entry of the directory must be a regular file or a folder: links are refused
    (never followed), so nothing outside the directory is read, copied or chmod-ed through one.
    """
    where = Path(stage_dir)
    path = where / MANIFEST
    if not where.is_dir():
        raise ManifestError(f"{where}: not a directory (expected a stage directory with {MANIFEST})")
    links = tree_problems(where)
    if links:
        raise ManifestError(links[0])
    if not path.is_file():
        raise ManifestError(f"{path}: missing; {where} is not a complete stage directory")
    manifest = parse_manifest(read_manifest_json(where), where)
    _check_contents(manifest, where)
    _resolve_links(manifest, where)
    return manifest


def list_files(root: Path) -> dict[str, int]:
    """Relative POSIX path -> size of every regular file under root (the manifest excluded)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink() and p.name != MANIFEST:
            out[p.relative_to(root).as_posix()] = p.stat().st_size
    return out
