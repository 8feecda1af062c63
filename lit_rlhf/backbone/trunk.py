"""Sparrow's shared trunk: run a decoder's frozen lower layers once, and only its top layers per role.

When every adapter (policy, reference, reward, critic) adapts only the top N decoder layers, the lower layers compute
the same hidden states for every role. `TrunkSplit` runs the decoder with its layer list cut in two:
  - `lower`: embeddings and layers 0..L-N-1, once, without gradients; the hidden state entering layer L-N is kept;
  - `upper`: the decoder again with the lower layers replaced by one module that hands back the kept hidden state,
    so only layers L-N..L-1 and the final norm run, under whichever adapter is active, with gradients if asked.
The embeddings are looked up again in `upper` (cheap) because the decoder builds its attention mask and position
embeddings from them; everything else in the lower layers runs once.

Supported: decoders that keep their layers in an `nn.ModuleList` called ``layers`` (Llama, Mistral, Qwen2, Gemma,
...) or ``h`` (GPT-2, GPT-J, ...) whose layers return a hidden-state tensor (transformers 5). Anything else gets
None from `TrunkSplit.for_model`, and callers run the full forward.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

LAYER_LISTS = ("layers", "h")


@dataclass
class TrunkState:
    """The lower layers' output for one batch.

    Attributes:
        input_ids: (B, L) the ids it was computed for (the upper pass must be called with the same tensors).
        attention_mask: (B, L) or None.
        position_ids: (B, L) or None.
        hidden: (B, L, H) the hidden state entering the first upper layer (no gradient).
    """

    input_ids: Tensor
    attention_mask: Tensor | None
    position_ids: Tensor | None
    hidden: Tensor

    def serves(self, input_ids: Tensor, attention_mask: Tensor | None) -> bool:
        """Whether this state was computed for exactly these tensors."""
        return input_ids is self.input_ids and attention_mask is self.attention_mask


class _Handback(nn.Module):
    """Stands in for the lower layers in the upper pass: returns the kept hidden state, whatever it is given."""

    def __init__(self, hidden: Tensor) -> None:
        super().__init__()
        self.hidden = hidden

    def forward(self, hidden_states: Tensor, *args, **kwargs) -> Tensor:
        return self.hidden


class TrunkSplit:
    """Splits a transformers decoder (the model's ``base_model_prefix`` module) into lower and upper layers.

    Args:
        decoder: e.g. ``LlamaModel`` or ``GPT2Model``.
        attr: name of its layer list (``layers`` or ``h``).
        top: number of upper layers (the ones with adapters).
    """

    def __init__(self, decoder: nn.Module, attr: str, top: int) -> None:
        layers = getattr(decoder, attr)
        if not 1 <= top < len(layers):
            raise ValueError(
                f"top_layers must be in [1, {len(layers) - 1}] for {len(layers)} layers, got {top}"
            )
        self.decoder, self.attr, self.top = decoder, attr, top
        self.split = len(layers) - top  # index of the first upper layer

    @classmethod
    def for_model(cls, hf_model: nn.Module, top: int) -> TrunkSplit | None:
        """The split for a transformers causal LM, or None when its decoder is not of a supported shape."""
        decoder = getattr(hf_model, getattr(hf_model, "base_model_prefix", ""), None)
        if decoder is None:
            return None
        for attr in LAYER_LISTS:
            layers = getattr(decoder, attr, None)
            if isinstance(layers, nn.ModuleList) and len(layers) > 1:
                return cls(decoder, attr, top)
        return None

    @contextlib.contextmanager
    def _layers(self, modules: list[nn.Module]) -> Iterator[None]:
        full = getattr(self.decoder, self.attr)
        # Modules assigned through __setattr__ register as children; restoring the original list undoes it.
        setattr(self.decoder, self.attr, nn.ModuleList(modules))
        try:
            yield
        finally:
            setattr(self.decoder, self.attr, full)

    @torch.no_grad()
    def lower(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, position_ids: Tensor | None = None
    ) -> TrunkState:
        """Embeddings and the lower layers, once, without gradients: (B, L) -> TrunkState with (B, L, H)."""
        full = getattr(self.decoder, self.attr)
        kept: dict[str, Tensor] = {}

        def keep(_module, _args, output) -> None:
            kept["hidden"] = output[0] if isinstance(output, tuple) else output

        handle = full[self.split - 1].register_forward_hook(keep)
        try:
            with self._layers(list(full[: self.split])):
                self.decoder(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    position_ids=position_ids,
                    use_cache=False,
                )
        finally:
            handle.remove()
        return TrunkState(input_ids, attention_mask, position_ids, kept["hidden"].detach())

    def upper(self, state: TrunkState) -> Tensor:
        """The top layers and the final norm from a lower state, under the active adapter: -> (B, L, H)."""
        full = getattr(self.decoder, self.attr)
        with self._layers([_Handback(state.hidden), *full[self.split :]]):
            out = self.decoder(
                input_ids=state.input_ids,
                attention_mask=state.attention_mask,
                position_ids=state.position_ids,
                use_cache=False,
            )
        return out.last_hidden_state


# ---- scoring layouts: one lower pass for the policy's tokens and the reward model's sequence ----------------------
def closing_column(
    input_ids: Tensor, attention_mask: Tensor, ended: Tensor, end_of_turn_id: int, pad_id: int
) -> tuple[Tensor, Tensor]:
    """Generated sequences with one column more, holding the end-of-turn token on the rows that did not end.

    The reward model reads (prompt, response text, end-of-turn) (`reward_inputs`); a row that stopped at
    max_new_tokens lacks that last token. With it appended, a row's real tokens are the reward model's sequence
    whenever the response text tokenizes back to the sampled tokens, so one lower pass serves the policy,
    reference, critic and reward passes. The column comes last, so under causal attention it changes nothing at
    the earlier positions.

    Args:
        input_ids: (B, L) prompt (left-padded) + response (right-padded).
        attention_mask: (B, L) 1 on real tokens.
        ended: (B,) bool, True where the response stopped at a stop token.
        end_of_turn_id: the token that closes a turn. pad_id: the padding token.

    Returns:
        input_ids (B, L + 1) and attention_mask (B, L + 1): the new column is end_of_turn_id with mask 1 where
        ``ended`` is False, pad_id with mask 0 where it is True.
    """
    open_rows = ~ended.to(torch.bool)
    column = torch.where(open_rows, end_of_turn_id, pad_id).to(input_ids.dtype)
    return (
        torch.cat([input_ids, column[:, None]], dim=1),
        torch.cat([attention_mask, open_rows[:, None].to(attention_mask.dtype)], dim=1),
    )


def same_tokens(ids_a: Tensor, mask_a: Tensor, ids_b: Tensor, mask_b: Tensor) -> Tensor:
    """Which rows hold the same real tokens in two layouts (padding on either side, any widths).

    Args:
        ids_a, mask_a: (B, La). ids_b, mask_b: (B, Lb).

    Returns:
        (B,) bool: True where the tokens under mask 1, read left to right, are the same sequence.
    """
    out = torch.zeros(ids_a.shape[0], dtype=torch.bool, device=ids_a.device)
    for i in range(ids_a.shape[0]):
        a, b = ids_a[i][mask_a[i].bool()], ids_b[i][mask_b[i].bool()]
        out[i] = a.shape == b.shape and bool(torch.equal(a, b.to(a.device)))
    return out
