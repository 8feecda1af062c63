"""Checks of a stage directory's contents that run before anything is built from it. Standard library only.

Lives here: the file tree (regular files and folders only, no links), safetensors headers (every tensor's dtype,
shape and byte range fit the file), and the manifest's backbone block (types and allowed values). Each check
returns problem strings naming the file and the field; `manifest.read_manifest` turns them into ManifestError.
Must not live here: torch, safetensors, transformers (a tampered file is refused before any of them reads it).
"""

from __future__ import annotations

import math
import os
import stat
import struct
from pathlib import Path
from typing import Any, get_args

from lit_rlhf.backbone.config import DType, Quantization
from lit_rlhf.safe_io import StrictJSONError, UnreadableFile, clip, open_regular, strict_json

# Bytes per element of every safetensors dtype lit-rlhf or transformers write.
SAFETENSORS_DTYPES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}
# A header is a JSON index of the tensors: large bases have a few hundred KB of it; past this it is not ours.
MAX_HEADER_BYTES = 64 * 1024 * 1024


def tree_problems(root: str | os.PathLike) -> list[str]:
    """Every entry under `root` that is a symbolic link or neither a regular file nor a folder.

    Links are never followed: a link in a parent stage's `base/` was hard-linked into the next stage and then
    chmod-ed through, changing the permissions of whatever it pointed at.
    """
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                out.append(f"{path}: a symbolic link; a stage directory holds only regular files and folders")
            elif not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                out.append(
                    f"{path}: not a regular file; a stage directory holds only regular files and folders"
                )
    return out


def _tensor_problem(name: str, info: Any, data_len: int) -> str | None:
    if not isinstance(info, dict):
        return f"tensor '{name}': expected an object"
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype not in SAFETENSORS_DTYPES:
        return f"tensor '{name}': field 'dtype': unknown dtype {clip(repr(dtype))}"
    if not isinstance(shape, list) or not all(_count(n) for n in shape):
        return f"tensor '{name}': field 'shape': expected a list of non-negative integers"
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_count(n) for n in offsets):
        return f"tensor '{name}': field 'data_offsets': expected [begin, end]"
    begin, end = offsets
    if not begin <= end <= data_len:
        return f"tensor '{name}': field 'data_offsets': [{begin}, {end}] is past the {data_len} data bytes"
    if end - begin != math.prod(shape) * SAFETENSORS_DTYPES[dtype]:
        return f"tensor '{name}': field 'shape': {shape} of {dtype} does not fill its {end - begin} bytes"
    return None


def _count(n: Any) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and n >= 0


def safetensors_problems(path: Path) -> list[str]:
    """What is wrong with a safetensors file's header (empty when it is sound).

    Checks what safetensors would otherwise report as an opaque error, or torch only at the first use: the
    header's JSON, each tensor's dtype, shape and byte range, and that the ranges tile the data exactly (a
    truncated file whose size was also updated in the manifest fails here).
    """
    try:
        with open_regular(path) as f:
            size = os.fstat(f.fileno()).st_size
            if size < 8:
                return [f"{path}: {size} bytes, too short for a safetensors file"]
            (n,) = struct.unpack("<Q", f.read(8))
            if n > min(MAX_HEADER_BYTES, size - 8):
                return [f"{path}: header length {n} does not fit the file ({size} bytes)"]
            header = strict_json(f.read(n))
    except (UnreadableFile, StrictJSONError) as e:
        return [f"{path}: cannot read the safetensors header ({e})"]
    if not isinstance(header, dict):
        return [f"{path}: the safetensors header is not a JSON object"]
    data_len = size - 8 - n
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    problems = [p for k, v in tensors.items() if (p := _tensor_problem(clip(k), v, data_len)) is not None]
    if problems:
        return [f"{path}: {p}" for p in problems]
    spans = sorted(tuple(v["data_offsets"]) for v in tensors.values())
    position = 0
    for begin, end in spans:
        if begin != position:
            return [
                f"{path}: tensor data has a gap or overlap at byte {position} (next tensor starts at {begin})"
            ]
        position = end
    if position != data_len:
        return [f"{path}: tensors cover {position} of the {data_len} data bytes (truncated or padded file)"]
    return []


# BackboneConfig fields a manifest may set, and the JSON types each may hold (None = null allowed).
_STR_OR_NULL = ("name_or_path", "tokenizer", "revision", "gguf_file")
_BOOLS = ("trust_remote_code", "gradient_checkpointing")
_CHOICES = {"dtype": get_args(DType), "quantization": get_args(Quantization)}


def _lora_problems(lora: Any) -> list[str]:
    if lora is None:
        return []
    if not isinstance(lora, dict):
        return ["field 'backbone.lora': expected an object or null"]
    out = []
    for key in ("r", "alpha"):
        if key in lora and not (isinstance(lora[key], int) and not isinstance(lora[key], bool)):
            out.append(f"field 'backbone.lora.{key}': expected an integer")
    dropout = lora.get("dropout", 0.0)
    if isinstance(dropout, bool) or not isinstance(dropout, int | float):
        out.append("field 'backbone.lora.dropout': expected a number")
    for key in ("target_modules", "modules_to_save"):
        names = lora.get(key)
        if names is not None and not (isinstance(names, list) and all(isinstance(t, str) for t in names)):
            out.append(f"field 'backbone.lora.{key}': expected a list of strings or null")
    return out


def backbone_problems(backbone: dict[str, Any]) -> list[str]:
    """Type and value problems of a manifest's backbone block; fields it does not know are left to
    `BackboneConfig.from_dict`, which refuses unknown names."""
    out = []
    for key in _STR_OR_NULL:
        if backbone.get(key) is not None and not isinstance(backbone[key], str):
            out.append(f"field 'backbone.{key}': expected a string or null")
    for key in _BOOLS:
        if key in backbone and not isinstance(backbone[key], bool):
            out.append(f"field 'backbone.{key}': expected true or false")
    for key, allowed in _CHOICES.items():
        if key in backbone and backbone[key] not in allowed:
            out.append(
                f"field 'backbone.{key}': {clip(repr(backbone[key]))} is not one of {', '.join(allowed)}"
            )
    if backbone.get("model_config") is not None and not isinstance(backbone["model_config"], dict):
        out.append("field 'backbone.model_config': expected an object or null")
    return out + _lora_problems(backbone.get("lora"))
