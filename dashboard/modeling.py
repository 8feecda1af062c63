"""Side-by-side generation and per-token KL for the Compare page: the only dashboard module that imports torch.

Lives here: loading a stage directory for generation, generating one prompt with each chosen model, and the
log-probability of every generated token under that model and under a reference model, whose difference is
the k1 KL estimate KL_t = log pi(y_t) - log pi_ref(y_t) (the per-token penalty of InstructGPT eq. 2).
Must not live here: Streamlit (the page caches `load_model` with st.cache_resource) and file reading.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from lit_rlhf.backbone.build import POLICY, Backbone
from lit_rlhf.backbone.generate import SamplingConfig, generate
from lit_rlhf.checkpoint.stage_dir import load_stage_dir


@dataclass
class LoadedModel:
    """A stage directory loaded for generation."""

    path: str
    label: str
    stage: str
    backbone: Backbone
    adapter: str | None  # the adapter that generates and is scored; None = the base with adapters off


def load_model(
    stage_dir: str | os.PathLike,
    label: str | None = None,
    device: str | None = None,
    *,
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Load a stage directory; its ``policy`` adapter generates when it has one, else the bare base does.

    A reward stage has no policy adapter, so it generates with its base: the model its RM was built on.
    `device` defaults to the first GPU when there is one. `trust_remote_code` is the dashboard's start-up flag,
    never the manifest's.
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    backbone, manifest = load_stage_dir(stage_dir, device=device, trust_remote_code=trust_remote_code)
    backbone.eval()
    adapter = POLICY if POLICY in backbone.adapters else None
    return LoadedModel(str(stage_dir), label or str(stage_dir), manifest.stage, backbone, adapter)


@torch.no_grad()
def token_logprobs(model: LoadedModel, input_ids: Tensor, prompt_len: int) -> Tensor:
    """(R,) log-probabilities of the response tokens of `input_ids` (1, P + R) under `model` (float32 logits,
    as PPO and `evaluate` compute them)."""
    if not 1 <= prompt_len < input_ids.shape[1]:
        raise ValueError(f"prompt_len must be in [1, {input_ids.shape[1] - 1}], got {prompt_len}")
    ids = input_ids.to(next(model.backbone.parameters()).device)
    with model.backbone.use_adapter(model.adapter):
        return model.backbone.response_logprobs(ids, torch.ones_like(ids), prompt_len)[0].cpu()


@dataclass
class Completion:
    """One model's completion of the prompt, token by token."""

    label: str
    text: str
    tokens: list[str]  # (R,) response tokens as the tokenizer spells them, EOS included when generated
    logprobs: list[float]  # (R,) log pi(y_t) under the model that wrote it
    ref_logprobs: list[float] | None  # (R,) log pi_ref(y_t); None when the reference's vocabulary differs

    @property
    def kl(self) -> list[float] | None:
        """(R,) k1 estimate per token: log pi(y_t) - log pi_ref(y_t)."""
        if self.ref_logprobs is None:
            return None
        return [p - q for p, q in zip(self.logprobs, self.ref_logprobs, strict=True)]

    @property
    def kl_sum(self) -> float | None:
        """The sequence-level KL estimate (the sum over tokens, as the PPO penalty adds it up)."""
        kl = self.kl
        return None if kl is None else float(sum(kl))


def same_vocabulary(tokenizer_a, tokenizer_b) -> bool:
    """Whether token ids mean the same strings in both: the condition for scoring one's tokens with the other."""
    return tokenizer_a is tokenizer_b or tokenizer_a.get_vocab() == tokenizer_b.get_vocab()


def generate_ids(
    model: LoadedModel, prompt: str, sampling: SamplingConfig, seed: int
) -> tuple[Tensor, int, str]:
    """Generate one completion: (input_ids (1, P + R) without padding, P, decoded response text).

    The prompt is rendered in the stage's own prompt format (its chat template, if it was trained with one),
    exactly as in training and `evaluate`.
    """
    backbone = model.backbone
    with backbone.use_adapter(model.adapter):
        gen = generate(backbone.model, backbone.text_format, [prompt], sampling, generator_seed=seed)
    prompt_ids = gen.prompt_ids[0][gen.prompt_mask[0].bool()]  # (P,)
    response_ids = gen.response_ids[0][gen.response_mask[0].bool()]  # (R,) up to and including EOS
    return torch.cat([prompt_ids, response_ids]).unsqueeze(0).cpu(), int(prompt_ids.numel()), gen.texts[0]


def compare(
    models: Sequence[LoadedModel],
    prompt: str,
    sampling: SamplingConfig,
    reference: LoadedModel | None,
    seed: int = 0,
) -> list[Completion]:
    """Each model completes `prompt` (same seed for all); each token is scored by the model and `reference`."""
    if not prompt.strip():
        raise ValueError("the prompt is empty")
    out = []
    for model in models:
        input_ids, prompt_len, text = generate_ids(model, prompt, sampling, seed)
        tokenizer = model.backbone.tokenizer
        ref = None
        if reference is not None and same_vocabulary(tokenizer, reference.backbone.tokenizer):
            ref = token_logprobs(reference, input_ids, prompt_len).tolist()
        out.append(
            Completion(
                label=model.label,
                text=text,
                tokens=tokenizer.convert_ids_to_tokens(input_ids[0, prompt_len:].tolist()),
                logprobs=token_logprobs(model, input_ids, prompt_len).tolist(),
                ref_logprobs=ref,
            )
        )
    return out
