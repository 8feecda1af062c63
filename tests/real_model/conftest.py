"""The bundled SmolLM2 GGUF, converted once per test run (the cache is content-addressed, so later runs reuse it).

A missing model is a failure, not a skip: scripts/setup.sh installs it, and CI must run these tests. Set
LIT_RLHF_SKIP_REAL_MODEL=1 to skip them on a machine set up with REAL_MODEL=0.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def smollm_folder() -> Path:
    from lit_rlhf.backbone.gguf import resolve_gguf

    if os.environ.get("LIT_RLHF_SKIP_REAL_MODEL") == "1":
        pytest.skip("LIT_RLHF_SKIP_REAL_MODEL=1")
    return resolve_gguf("bundled:smollm2-135m-instruct")
