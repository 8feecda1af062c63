"""Shared fixtures: tiny tokenizers and tiny GPT-2 / Llama models the tests create and save locally.

Nothing is downloaded: `from_pretrained` is exercised on these local directories.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
import torch

# Two cores shared with other processes: torch with 2 threads sometimes slows 10x (docs/platform-notes.md).
torch.set_num_threads(int(os.environ.get("LIT_RLHF_TEST_THREADS", "1")))
warnings.filterwarnings("ignore", message=".*MatMul8bitLt.*")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may be downloaded; fail fast instead of retrying


def _no_progress_bars() -> None:
    # Loading bars add nothing to test logs, and tqdm's cross-process lock is a hazard in tests that fork.
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


_no_progress_bars()

WORDS = [*"abcdefgh", "=", "x", "y"]


def make_tokenizer(out: Path):
    """A word-level tokenizer (one token per letter) saved as a transformers tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[BOS]", "[EOS]", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="[BOS] $A", special_tokens=[("[BOS]", 2)])
    tok.decoder = decoders.WordPiece(prefix="##")  # joins tokens with spaces
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="[BOS]",
        eos_token="[EOS]",
        pad_token="[PAD]",
        unk_token="[UNK]",
        model_max_length=64,
    )
    fast.save_pretrained(str(out))
    return fast


def make_model(arch: str, out: Path, tokenizer) -> Path:
    """Save a tiny randomly initialised causal LM; sizes are multiples of 32 (the 4-bit CPU kernels need it)."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if arch == "gpt2":
        model = GPT2LMHeadModel(
            GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=len(tokenizer), n_positions=64, **ids)
        )
    else:
        model = LlamaForCausalLM(
            LlamaConfig(
                num_hidden_layers=2,
                hidden_size=64,
                intermediate_size=128,
                num_attention_heads=2,
                num_key_value_heads=2,
                vocab_size=len(tokenizer),
                max_position_embeddings=64,
                **ids,
            )
        )
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    return out


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    tok = make_tokenizer(root / "tokenizer")
    for arch in ("gpt2", "llama"):
        make_model(arch, root / arch, tok)
    return root


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> Path:
    """A small copy of the demo world's data (tokenizer included)."""
    from lit_rlhf.demo.datagen import write_demo_data

    out = tmp_path_factory.mktemp("demo")
    write_demo_data(out, seed=0, n_train=512, n_val=64, n_rl=64, n_eval=32, n_pretrain=128)
    return out
