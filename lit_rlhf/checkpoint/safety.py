"""What loading, copying and exporting a stage directory may do on the user's machine. Standard library only.

Lives here: the refusal of links when a folder is copied into a stage directory, ... (filled in below).
Must not live here: reading the manifest (`manifest.py`) or building models (`stage_dir.py`).
"""

from __future__ import annotations

import os

from lit_rlhf.checkpoint.manifest import ManifestError
from lit_rlhf.checkpoint.validate import tree_problems


def refuse_links(folder: str | os.PathLike) -> None:
    """Raise ManifestError naming the first link (or FIFO, device, ...) under `folder`; links are not followed."""
    problems = tree_problems(folder)
    if problems:
        raise ManifestError(problems[0])
