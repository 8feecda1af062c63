"""Write and read stage directories (safetensors + JSON, never pickle), and export to plain transformers.

Writes are atomic: everything goes to a hidden temporary sibling, the manifest last, then one rename. A crash
leaves either the old directory or the new one, never a half one that has a manifest.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Collection
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from lit_rlhf.atomic import atomic_dir
from lit_rlhf.backbone.build import Backbone
from lit_rlhf.backbone.config import BackboneConfig
from lit_rlhf.checkpoint.manifest import MANIFEST, Manifest, ManifestError, list_files, read_manifest
from lit_rlhf.checkpoint.safety import (
    check_export_target,
    check_load,
    finish_export,
    record_links,
    refuse_links,
)
from lit_rlhf.data.formatting import PromptFormat


def _copy_tree(src: Path, dst: Path) -> None:
    """Copy a directory, hard-linking files where the filesystem allows (base weights can be large)."""
    refuse_links(src)
    dst.mkdir(parents=True)
    for f in src.rglob("*"):
        target = dst / f.relative_to(src)
        if f.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(f, target)
        except OSError:
            shutil.copy2(f, target)


def _strip(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _untied(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` without the second names of tied parameters (e.g. ``lm_head.weight`` = the input embedding).

    A gathered state holds a separate copy under each name; save_pretrained would then store both, which a plain
    model's own state dict never does.
    """
    first: dict[int, str] = {}
    later = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            later.add(name)
        else:
            first[id(p)] = name
    return {k: v for k, v in state.items() if k not in later}


def _save_base(backbone: Backbone, tmp: Path, state: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
    source = backbone.source
    trained_base = backbone.cfg.lora is None  # full fine-tuning changed the base itself
    if trained_base or source.kind == "config":
        # a base is only written without adapters (config-built bases cannot take LoRA), so `model.` + the
        # transformers keys is the whole mapping from a gathered Backbone state
        kwargs = {} if state is None else {"state_dict": _untied(backbone.hf_model, _strip(state, "model."))}
        backbone.hf_model.save_pretrained(tmp / "base", safe_serialization=True, **kwargs)
        return {"kind": "local", "path": "base"}
    if source.kind == "local":
        _copy_tree(Path(source.name_or_path), tmp / "base")
        return {"kind": "local", "path": "base"}
    base = {"kind": "pretrained", "name_or_path": source.name_or_path, "revision": source.revision}
    if source.gguf_file is not None:
        base["gguf_file"] = source.gguf_file
    return base


def save_stage_dir(
    out: str | os.PathLike,
    backbone: Backbone,
    *,
    stage: str,
    adapters: list[str] | None = None,
    heads: dict[str, dict[str, Any]] | None = None,
    step: int = 0,
    metrics: dict[str, float] | None = None,
    metric_steps: dict[str, int] | None = None,
    parent: str | None = None,
    config_text: str | None = None,
    extra: dict[str, Any] | None = None,
    state: dict[str, torch.Tensor] | None = None,
) -> Manifest:
    """Write `backbone` as a stage directory at `out` (atomically).

    Args:
        adapters: Adapter names to save (default: all the backbone has).
        heads: head name -> {"adapter": adapter it reads through or None, "bias": float added to its output}; a
            multi-label head's output names are recorded as "outputs".
        metrics: Key figures for the manifest; must be finite numbers.
        metric_steps: The optimizer step each metric was measured at (default: `step` for every metric).
        config_text: The resolved YAML config of the run.
        state: The backbone's whole tensors (``lit_rlhf.distributed.full_state``) when its parameters are
            sharded across ranks; None reads them from `backbone` itself.
    """
    adapters = list(backbone.adapters) if adapters is None else adapters
    heads = heads or {}
    with atomic_dir(out) as tmp:
        backbone.tokenizer.save_pretrained(str(tmp / "tokenizer"))
        base = _save_base(backbone, tmp, state)
        saved_adapters = {}
        for name in adapters:
            (tmp / "adapters").mkdir(exist_ok=True)
            rel = f"adapters/{name}.safetensors"
            save_file(
                backbone.adapter_state(name, _strip(state, "model.") if state else None), str(tmp / rel)
            )
            saved_adapters[name] = rel
        saved_heads = {}
        for name, info in heads.items():
            (tmp / "heads").mkdir(exist_ok=True)
            rel = f"heads/{name}.safetensors"
            head = backbone.heads[name].state_dict() if state is None else _strip(state, f"heads.{name}.")
            save_file({k: v.detach().cpu().contiguous() for k, v in head.items()}, str(tmp / rel))
            saved_heads[name] = {
                "path": rel,
                "adapter": info.get("adapter"),
                "bias": float(info.get("bias", 0.0)),
            }
            outputs = getattr(backbone.heads[name], "outputs", None)
            if outputs is not None:  # a multi-label (rule) head: its output names, in order
                saved_heads[name]["outputs"] = list(outputs)
        if config_text is not None:
            (tmp / "config.yaml").write_text(config_text, encoding="utf-8")
        parent, extra = record_links(out, parent, extra)  # relative to `out` where possible: no user names
        manifest = Manifest(
            stage=stage,
            base=base,
            backbone=backbone.cfg.to_dict(),
            adapters=saved_adapters,
            heads=saved_heads,
            parent=parent,
            step=int(step),
            metrics={k: float(v) for k, v in (metrics or {}).items()},
            metric_steps={k: int((metric_steps or {}).get(k, step)) for k in (metrics or {})},
            files=list_files(tmp),
            extra=extra or {},
            prompt_format=backbone.prompt_format.to_dict(),
            relative_links=True,
        )
        (tmp / MANIFEST).write_text(manifest.to_json(), encoding="utf-8")
    return manifest


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises several types for corrupt files
        raise ManifestError(f"{path}: cannot read safetensors ({e})") from e


def load_stage_dir(
    stage_dir: str | os.PathLike,
    *,
    device: torch.device | str = "cpu",
    quantize: bool = True,
    backbone_overrides: dict[str, Any] | None = None,
    trainable: tuple[str, ...] = (),
    trust_remote_code: bool = False,
    allow_external_base: bool | None = None,
    adapters: Collection[str] | None = None,
    heads: Collection[str] | None = None,
) -> tuple[Backbone, Manifest]:
    """Rebuild the backbone, adapters and heads a stage directory describes.

    Args:
        quantize: False loads the base in full precision whatever the stage used (export).
        backbone_overrides: Fields of the stored BackboneConfig to replace (e.g. quantization for a later stage).
        trainable: Adapter names to load as trainable (the others are frozen).
        trust_remote_code: Let code shipped in the directory or with its base run. The caller's choice (a flag or
            the user's own config); the manifest's own value is never used: a copied directory must not run code.
        allow_external_base: False refuses a base outside the directory (a hub name or another folder); None
            follows LIT_RLHF_LOCAL_BASES_ONLY. Such a base is logged either way.
        adapters, heads: Attach only these of the directory's adapters and heads (None: all). A later PPO round
            takes a PPO stage's policy and leaves its critic, which the new reward model replaces.
    """
    root = Path(stage_dir)
    manifest = read_manifest(root)
    check_load(root, manifest, trust_remote_code, allow_external_base)
    cfg_dict = {**manifest.backbone, **(backbone_overrides or {})}
    try:
        cfg = BackboneConfig.from_dict(cfg_dict)
    except (TypeError, ValueError) as e:
        raise ManifestError(f"{root / MANIFEST}: field 'backbone': {e}") from e
    cfg.trust_remote_code = trust_remote_code
    weights_dir = root / manifest.base["path"] if manifest.base["kind"] == "local" else None
    if weights_dir is None:
        cfg.name_or_path = manifest.base["name_or_path"]
        cfg.revision = manifest.base.get("revision")
        cfg.gguf_file = manifest.base.get("gguf_file")
    backbone = Backbone.build(
        cfg,
        weights_dir=weights_dir,
        tokenizer_dir=root / manifest.tokenizer,
        device=device,
        quantize=quantize,
    )
    try:
        backbone.prompt_format = PromptFormat.from_dict(manifest.prompt_format)
    except (TypeError, ValueError) as e:
        raise ManifestError(f"{root / MANIFEST}: field 'prompt_format': {e}") from e
    for name, rel in manifest.adapters.items():
        if adapters is not None and name not in adapters:
            continue
        try:
            backbone.add_adapter(name, trainable=name in trainable, state=_load_tensors(root / rel))
        except (RuntimeError, ValueError) as e:
            raise ManifestError(f"{root / rel}: adapter {name!r} does not fit the base: {e}") from e
    if "policy" in backbone.adapters:  # adding adapters activates the last one; generation wants the policy
        backbone.use_adapter_("policy")
    for name, info in manifest.heads.items():
        if heads is not None and name not in heads:
            continue
        try:
            backbone.add_head(name, _load_tensors(root / info["path"]), outputs=info.get("outputs"))
        except RuntimeError as e:
            raise ManifestError(f"{root / info['path']}: head {name!r} does not fit the base: {e}") from e
    return backbone.to(device) if not backbone.is_quantized else backbone, manifest


def export_stage_dir(
    stage_dir: str | os.PathLike,
    out: str | os.PathLike,
    adapter: str | None = None,
    *,
    overwrite: bool = False,
    trust_remote_code: bool = False,
    allow_external_base: bool | None = None,
) -> Path:
    """Write a plain transformers model: the base in full precision with `adapter` merged into it.

    With a quantized stage the adapter is merged into the original-precision base weights (the usual QLoRA
    export); the base is never saved quantized. `adapter` defaults to ``policy`` when the stage has one.
    `out` is replaced whole: it must be absent, empty or an earlier export, unless `overwrite`. The export never
    carries code (``.py`` files, ``auto_map``). The other keywords are `load_stage_dir`'s.
    """
    check_export_target(out, overwrite)
    backbone, manifest = load_stage_dir(
        stage_dir,
        quantize=False,
        trust_remote_code=trust_remote_code,
        allow_external_base=allow_external_base,
    )
    model = backbone.model
    if backbone.adapters:
        if adapter is None:
            if "policy" not in backbone.adapters:
                raise ValueError(
                    f"{stage_dir}: choose an adapter to export among {sorted(backbone.adapters)}"
                )
            adapter = "policy"
        if adapter not in backbone.adapters:
            raise ValueError(f"{stage_dir}: no adapter {adapter!r}; have {sorted(backbone.adapters)}")
        model.set_adapter(adapter)
        model = model.merge_and_unload(adapter_names=[adapter])
    with atomic_dir(out) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        backbone.tokenizer.save_pretrained(str(tmp))
        finish_export(tmp, stage_dir, adapter)
    return Path(out)
