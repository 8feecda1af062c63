"""Batched generation with the KV cache from left-padded prompts.

Returns token-level records (prompt, response, masks) that the SFT samples, comparison collection, PPO rollouts,
`evaluate` and the dashboard share, so every stage renders prompts, stops, decodes and masks responses the same
way.

Sampling is exactly what `SamplingConfig` says and nothing else: the model's own ``generation_config.json``
(repetition_penalty, no_repeat_ngram_size, min_new_tokens, suppress_tokens, a default top_k of 50, ...) is
set aside for the call. PPO's log-probabilities are those of the raw logits, so any processor that reshaped
the samples would make the rollouts off-policy and bias the KL and the gradient.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn


@dataclass
class SamplingConfig:
    """Sampling settings for generation.

    Attributes:
        max_new_tokens: Upper bound on response length; a response that reaches it without EOS is truncated.
        do_sample: False = greedy.
        temperature: Softmax temperature when sampling.
        top_k: Keep the k most likely tokens (0 = off).
        top_p: Nucleus sampling mass (1.0 = off).

    No other processor runs: the model's own generation config is set aside while lit-rlhf generates.
    """

    max_new_tokens: int = 32
    do_sample: bool = True
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0


@dataclass
class Generation:
    """A batch of prompts and their generated responses.

    Attributes:
        prompts: the B prompts (strings or chat messages) as given.
        prompt_ids: (B, P) left-padded prompt tokens.
        prompt_mask: (B, P) 1 on real prompt tokens.
        response_ids: (B, R) response tokens, right-padded with pad id after EOS.
        response_mask: (B, R) 1 on response tokens up to and including the stop token (end-of-turn or eos).
        ended: (B,) bool, True where the response stopped at a stop token (not at max_new_tokens).
        texts: decoded responses without special tokens, stripped (what a judge reads).
        scores: (B, R, V) float32 the scores each token was sampled from (only when asked for).
    """

    prompts: list[Any]
    prompt_ids: Tensor
    prompt_mask: Tensor
    response_ids: Tensor
    response_mask: Tensor
    ended: Tensor
    texts: list[str]
    scores: Tensor | None = None

    @property
    def input_ids(self) -> Tensor:
        """(B, P + R) prompt and response concatenated."""
        return torch.cat([self.prompt_ids, self.response_ids], dim=1)

    @property
    def attention_mask(self) -> Tensor:
        """(B, P + R)."""
        return torch.cat([self.prompt_mask, self.response_mask], dim=1)


def response_mask_from_ids(response_ids: Tensor, stop_ids: int | Sequence[int]) -> tuple[Tensor, Tensor]:
    """Mask of the response tokens up to and including the first stop token.

    Args:
        response_ids: (B, R) generated tokens.
        stop_ids: the id (or ids) that end a response: end-of-turn and eos.
    Returns:
        mask (B, R) long, ended (B,) bool.
    """
    stops = torch.as_tensor(
        [stop_ids] if isinstance(stop_ids, int) else list(stop_ids), device=response_ids.device
    )
    is_stop = torch.isin(response_ids, stops)  # (B, R)
    # count of stops strictly before position t; a token is in the response while none came before it
    before = torch.cumsum(is_stop.long(), dim=1) - is_stop.long()
    mask = (before == 0).long()
    return mask, is_stop.any(dim=1)


def encode_prompts(
    fmt: Any, prompts: Sequence[Any], device: torch.device | str = "cpu"
) -> tuple[Tensor, Tensor]:
    """Left-pad rendered prompts (so every row's next token sits at the same column).

    Args:
        fmt: a `lit_rlhf.data.formatting.TextFormat` (its `prompt_ids` is the one prompt tokenization).
        prompts: B prompts, strings or chat messages.
    Returns:
        ids, mask: (B, P) long.
    """
    rows = [fmt.prompt_ids(p) for p in prompts]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), fmt.pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r) :] = 1
    return ids.to(device), mask.to(device)


@contextlib.contextmanager
def seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Run a block with the torch RNG seeded, then restore the caller's RNG state.

    Evaluation inside a training run samples with fixed seeds; reseeding the global generator there would
    change every random draw of the training that follows it.
    """
    if seed is None:
        yield
        return
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _hf_model(model: nn.Module) -> nn.Module:
    """The transformers model under a peft wrapper (whose ``generate`` delegates to it)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


@contextlib.contextmanager
def own_generation_config(model: nn.Module, fmt: Any) -> Iterator[Any]:
    """Set the model's generation config aside: yields a clean GenerationConfig holding only the special ids.

    transformers fills every unset generation option from ``model.generation_config`` and then from its global
    defaults (top_k=50 among them), so a clean config stands in for the model's during the call, and the caller
    sets every sampling option explicitly.
    """
    from transformers import GenerationConfig

    hf = _hf_model(model)
    clean = GenerationConfig(
        bos_token_id=getattr(fmt.tokenizer, "bos_token_id", None),
        eos_token_id=list(fmt.stop_ids),
        pad_token_id=fmt.pad_id,
    )
    previous = hf.generation_config
    hf.generation_config = clean
    try:
        yield clean
    finally:
        hf.generation_config = previous


@torch.no_grad()
def generate(
    model: nn.Module,
    fmt: Any,
    prompts: Sequence[Any],
    sampling: SamplingConfig,
    generator_seed: int | None = None,
    return_scores: bool = False,
) -> Generation:
    """Generate responses for `prompts` with the model's KV cache.

    Args:
        model: anything with a transformers ``generate`` (a PreTrainedModel or PeftModel; the active adapter is
            used). It is put in eval mode for the call and restored afterwards.
        fmt: the `TextFormat` that renders the prompts and says which tokens end a response.
        prompts: B prompts, strings or chat messages.
        generator_seed: sample with this seed, leaving the caller's RNG state as it was.
        return_scores: keep the (B, R, V) scores each token was sampled from (``Generation.scores``).

    With FSDP2-sharded parameters this is a collective: every rank must call it, and ranks keep stepping together
    until all have finished.
    """
    from transformers import GenerationConfig

    from lit_rlhf.distributed import gathered_for_generation, is_sharded

    device = next(model.parameters()).device
    prompt_ids, prompt_mask = encode_prompts(fmt, prompts, device)
    options: dict[str, Any] = {"do_sample": sampling.do_sample}
    if sampling.do_sample:  # every option explicit: unset ones would be filled from defaults (top_k=50)
        options.update(temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p)
    config = GenerationConfig(
        max_new_tokens=sampling.max_new_tokens,
        eos_token_id=list(fmt.stop_ids),
        pad_token_id=fmt.pad_id,
        use_cache=True,
        output_scores=return_scores,
        return_dict_in_generate=True,
        **options,
    )
    was_training = model.training
    model.eval()
    try:
        with (
            seeded(generator_seed, device),
            own_generation_config(model, fmt),
            gathered_for_generation(model),
        ):
            out = model.generate(
                input_ids=prompt_ids,
                attention_mask=prompt_mask,
                generation_config=config,
                synced_gpus=is_sharded(model),
            )
    finally:
        model.train(was_training)
    response_ids = out.sequences[:, prompt_ids.shape[1] :]
    mask, ended = response_mask_from_ids(response_ids, fmt.stop_ids)
    response_ids = torch.where(mask.bool(), response_ids, torch.full_like(response_ids, fmt.pad_id))
    scores = torch.stack([s.float() for s in out.scores], dim=1) if return_scores else None  # (B, R, V)
    texts = [fmt.decode_response(row[m.bool()]) for row, m in zip(response_ids, mask, strict=True)]
    return Generation(list(prompts), prompt_ids, prompt_mask, response_ids, mask, ended, texts, scores)


def generate_batches(
    model: nn.Module,
    fmt: Any,
    prompts: Sequence[Any],
    sampling: SamplingConfig,
    batch_size: int,
    seed: int | None = None,
) -> list[Generation]:
    """Generate for many prompts, `batch_size` per call; batch i is seeded with seed + i (None: unseeded).

    Every evaluation path samples through here, so the same seed gives the same samples in SFT's held-out
    evaluation, PPO's in-run evaluation and `evaluate`.
    """
    return [
        generate(
            model,
            fmt,
            prompts[i : i + batch_size],
            sampling,
            generator_seed=None if seed is None else seed + i,
        )
        for i in range(0, len(prompts), batch_size)
    ]
