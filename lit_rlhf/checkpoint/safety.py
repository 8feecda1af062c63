"""What loading, copying and exporting a stage directory may do on the user's machine. Standard library only.

A stage directory may come from someone else, so nothing in it decides whether code runs or where weights come
from. Lives here:
- `check_load`: code shipped in the directory (an `auto_map` naming a `.py` file) runs only when the *caller*
  passes trust_remote_code; a base outside the directory (a hub name or another folder) is logged, and refused
  when local bases only are asked for (`allow_external_base=False` or LIT_RLHF_LOCAL_BASES_ONLY=1).
- `refuse_links`: no link is followed when a folder is copied into a stage directory.
- `record_links`: other stage directories a manifest names, recorded relative to it where possible.
- `check_export_target` / `finish_export`: an export replaces only an earlier export (unless told to overwrite)
  and never carries code.
Must not live here: reading the manifest (`manifest.py`) or building models (`stage_dir.py`).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from lit_rlhf.checkpoint.manifest import LINKS_IN_EXTRA, MANIFEST, Manifest, ManifestError, link_for
from lit_rlhf.checkpoint.validate import tree_problems
from lit_rlhf.safe_io import StrictJSONError, UnreadableFile, clip, read_bounded, strict_json

log = logging.getLogger(__name__)

LOCAL_BASES_ONLY_ENV = "LIT_RLHF_LOCAL_BASES_ONLY"
EXPORT_MARKER = ".lit-rlhf-export"  # written into every export; `--out` may replace a folder holding it
# The files transformers reads an `auto_map` from (it names classes in .py files shipped next to them).
_CODE_MAPS = ("tokenizer_config.json", "config.json", "processor_config.json", "preprocessor_config.json")


def record_links(
    stage_dir: str | os.PathLike, parent: str | None, extra: dict[str, Any] | None
) -> tuple[str | None, dict[str, Any]]:
    """`parent` and the links in `extra` as the manifest of `stage_dir` records them (`manifest.link_for`).

    A manifest handed to someone else then says ``../../../sft/a/stage``, not an absolute path that exists only on
    the machine that wrote it.
    """
    extra = {k: link_for(stage_dir, v) if k in LINKS_IN_EXTRA else v for k, v in (extra or {}).items()}
    return link_for(stage_dir, parent), extra


def refuse_links(folder: str | os.PathLike) -> None:
    """Raise ManifestError naming the first link (or FIFO, device, ...) under `folder`; links are not followed."""
    problems = tree_problems(folder)
    if problems:
        raise ManifestError(problems[0])


def external_base(base: Any) -> str | None:
    """What a manifest's `base` block loads from outside the stage directory, in words; None for its own base/.

    Takes the raw block (the dashboard describes manifests it has not validated).
    """
    if not isinstance(base, dict) or base.get("kind") != "pretrained":
        return None
    name = str(base.get("name_or_path"))
    revision = base.get("revision")
    if os.path.isabs(name) or name.startswith(".") or os.path.isdir(name):
        where = "the folder"
    else:
        where = "the Hugging Face model"
    at = f" at revision {clip(str(revision))}" if revision else ""
    return f"the base is {where} {clip(repr(name))}{at}, outside the stage directory"


def local_bases_only(allow_external_base: bool | None = None) -> bool:
    """Whether bases outside a stage directory are refused: the argument when given, else the environment."""
    if allow_external_base is not None:
        return not allow_external_base
    return os.environ.get(LOCAL_BASES_ONLY_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _code_maps(root: Path, manifest: Manifest) -> list[str]:
    """`<file>: field 'auto_map'` for each config file in the directory that names shipped code."""
    folders = [root / manifest.tokenizer]
    if manifest.base.get("kind") == "local":
        folders.append(root / manifest.base["path"])
    found = []
    for folder in folders:
        for name in _CODE_MAPS:
            path = folder / name
            if not path.is_file():
                continue
            try:
                obj = strict_json(read_bounded(path, 16 * 1024 * 1024))
            except (UnreadableFile, StrictJSONError):
                continue  # transformers reports an unreadable config itself; code is what matters here
            if isinstance(obj, dict) and "auto_map" in obj:
                found.append(f"{path}: field 'auto_map'")
    return found


def check_code(root: str | os.PathLike, manifest: Manifest, trust_remote_code: bool) -> None:
    """Refuse a stage directory that ships code, unless the caller (never the manifest) trusts it."""
    if trust_remote_code:
        return
    root = Path(root)
    maps = _code_maps(root, manifest)
    if maps:
        shipped = sorted(str(p.relative_to(root)) for p in root.rglob("*.py"))
        raise ManifestError(
            f"{maps[0]} names code shipped in the stage directory ({', '.join(shipped) or 'no .py file'}); "
            "it would run on load. Load it only if you trust whoever wrote it, with trust_remote_code=True "
            "(the --trust-remote-code flag); the manifest's own trust_remote_code is never used"
        )


def check_load(
    root: str | os.PathLike, manifest: Manifest, trust_remote_code: bool, allow_external_base: bool | None
) -> None:
    """Everything `load_stage_dir` checks before it builds anything: shipped code, then where the base is from."""
    check_code(root, manifest, trust_remote_code)
    outside = external_base(manifest.base)
    if outside is None:
        return
    if local_bases_only(allow_external_base):
        raise ManifestError(
            f"{Path(root) / MANIFEST}: field 'base': {outside}; refused because only bases inside the stage "
            f"directory are allowed ({LOCAL_BASES_ONLY_ENV}=1 or --local-bases-only)"
        )
    log.warning("%s: %s", root, outside)


def check_export_target(out: str | os.PathLike, overwrite: bool) -> None:
    """Refuse an export over anything but an empty folder or an earlier export, unless `overwrite`.

    An export replaces its output folder whole: `--out thesis/` once deleted a user's chapter.
    """
    out = Path(out)
    if overwrite or not (out.exists() or out.is_symlink()):
        return
    if not out.is_dir() or out.is_symlink():
        raise FileExistsError(f"{out}: exists and is not a folder; choose another --out, or pass --overwrite")
    if any(out.iterdir()) and not (out / EXPORT_MARKER).is_file():
        raise FileExistsError(
            f"{out}: a non-empty folder that is not an earlier export (no {EXPORT_MARKER}); the export would "
            "delete everything in it. Choose another --out, or pass --overwrite"
        )


def strip_code(folder: Path) -> list[str]:
    """Delete `.py` files and `auto_map` entries from an export folder; returns what was removed.

    transformers copies the code of a class loaded with trust_remote_code next to what it saves; a plain
    transformers export must not hand that code on to whoever loads it next.
    """
    removed = []
    for py in sorted(folder.rglob("*.py")):
        py.unlink()
        removed.append(str(py.relative_to(folder)))
    for name in _CODE_MAPS:
        path = folder / name
        if path.is_file():
            obj = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(obj, dict) and obj.pop("auto_map", None) is not None:
                path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")
                removed.append(f"{name}: auto_map")
    return removed


def finish_export(folder: Path, stage_dir: str | os.PathLike, adapter: str | None) -> None:
    """Strip shipped code from an export and write the marker that lets a later export replace the folder."""
    removed = strip_code(folder)
    if removed:
        log.warning("export of %s: left out shipped code (%s)", stage_dir, ", ".join(removed))
    info = {"source": os.path.basename(os.path.abspath(stage_dir)), "adapter": adapter}
    (folder / EXPORT_MARKER).write_text(json.dumps(info) + "\n", encoding="utf-8")
