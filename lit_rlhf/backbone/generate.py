"""Batched generation with the KV cache from left-padded prompts.

Returns token-level records (prompt, response, masks) that the SFT samples, comparison collection and PPO
rollouts share, so every stage decodes and masks responses the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

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
        prompt_ids: (B, P) left-padded prompt tokens.
        prompt_mask: (B, P) 1 on real prompt tokens.
        response_ids: (B, R) response tokens, right-padded with pad id after EOS.
        response_mask: (B, R) 1 on response tokens up to and including EOS.
        ended: (B,) bool, True where the response stopped at EOS (not at max_new_tokens).
        texts: decoded responses without special tokens.
    """

    prompt_ids: Tensor
    prompt_mask: Tensor
    response_ids: Tensor
    response_mask: Tensor
    ended: Tensor
    texts: list[str]

    @property
    def input_ids(self) -> Tensor:
        """(B, P + R) prompt and response concatenated."""
        return torch.cat([self.prompt_ids, self.response_ids], dim=1)

    @property
    def attention_mask(self) -> Tensor:
        """(B, P + R)."""
        return torch.cat([self.prompt_mask, self.response_mask], dim=1)


def response_mask_from_ids(response_ids: Tensor, eos_id: int) -> tuple[Tensor, Tensor]:
    """Mask of the response tokens up to and including the first EOS.

    Args:
        response_ids: (B, R) generated tokens.
    Returns:
        mask (B, R) long, ended (B,) bool.
    """
    is_eos = response_ids == eos_id  # (B, R)
    # count of EOS strictly before position t; a token is in the response while none came before it
    before = torch.cumsum(is_eos.long(), dim=1) - is_eos.long()
    mask = (before == 0).long()
    return mask, is_eos.any(dim=1)


def encode_prompts(
    tokenizer, prompts: list[str], device: torch.device | str = "cpu"
) -> tuple[Tensor, Tensor]:
    """Left-pad prompts (so every row's next token sits at the same column). Returns ids, mask: (B, P)."""
    old = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        enc = tokenizer(prompts, return_tensors="pt", padding=True)
    finally:
        tokenizer.padding_side = old
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


@torch.no_grad()
def generate(
    model: nn.Module,
    tokenizer,
    prompts: list[str],
    sampling: SamplingConfig,
    generator_seed: int | None = None,
) -> Generation:
    """Generate responses for `prompts` with the model's KV cache.

    `model` is anything with a transformers ``generate`` (a PreTrainedModel or PeftModel; the active adapter is
    used). The model is put in eval mode for the call and restored afterwards. With FSDP2-sharded parameters this is
    a collective: every rank must call it, and ranks keep stepping together until all have finished.
    """
    from lit_rlhf.backbone.sharding import gathered_for_generation, is_sharded

    device = next(model.parameters()).device
    prompt_ids, prompt_mask = encode_prompts(tokenizer, prompts, device)
    was_training = model.training
    model.eval()
    try:
        if generator_seed is not None:
            torch.manual_seed(generator_seed)
        kwargs = {"do_sample": sampling.do_sample}
        if sampling.do_sample:
            kwargs.update(
                temperature=sampling.temperature, top_k=sampling.top_k or None, top_p=sampling.top_p
            )
        with gathered_for_generation(model):
            out = model.generate(
                input_ids=prompt_ids,
                attention_mask=prompt_mask,
                max_new_tokens=sampling.max_new_tokens,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
                use_cache=True,
                synced_gpus=is_sharded(model),
                **kwargs,
            )
    finally:
        model.train(was_training)
    response_ids = out[:, prompt_ids.shape[1] :]
    mask, ended = response_mask_from_ids(response_ids, tokenizer.eos_token_id)
    response_ids = torch.where(
        mask.bool(), response_ids, torch.full_like(response_ids, tokenizer.pad_token_id)
    )
    texts = tokenizer.batch_decode(response_ids, skip_special_tokens=True)
    return Generation(prompt_ids, prompt_mask, response_ids, mask, ended, [t.strip() for t in texts])
