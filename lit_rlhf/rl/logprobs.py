"""Per-token log-probabilities and entropies from language-model logits.

Everything is computed in float32 whatever the logits' dtype (bf16 log-softmax loses the small differences
PPO ratios are made of). Work is done one batch row at a time so that the peak extra memory is one
``(T, V)`` float32 slice, not a second ``(B, T, V)`` tensor; that matters most in no-grad rollouts. With
gradients on, autograd still keeps each row's float32 copy for the backward pass.
No masking policy beyond the response mask lives here; no KL or loss.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def _per_row(fn: Callable[..., Tensor], logits: Tensor, *others: Tensor) -> Tensor:
    """Apply ``fn(row_logits_fp32 (T, V), *row_others) -> (T,)`` to every batch row; returns ``(B, T)``."""
    if logits.shape[0] == 0:
        return torch.zeros(logits.shape[:2], dtype=torch.float32, device=logits.device)
    rows = [fn(logits[i].float(), *(o[i] for o in others)) for i in range(logits.shape[0])]
    return torch.stack(rows)


def _row_logprobs(z: Tensor, tokens: Tensor) -> Tensor:
    """``log softmax(z)[t, tokens[t]]`` as ``z[token] - logsumexp(z)``, without a full log-softmax."""
    picked = z.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)  # (T,)
    return picked - torch.logsumexp(z, dim=-1)


def _row_entropy(z: Tensor) -> Tensor:
    logp = torch.log_softmax(z, dim=-1)  # (T, V)
    p = logp.exp()
    # Tokens banned with -inf logits have p = 0 and logp = -inf; their 0 * -inf must count as 0, not NaN.
    plogp = torch.where(p > 0, p * logp, torch.zeros((), dtype=z.dtype, device=z.device))
    return -plogp.sum(-1)


def gather_logprobs(logits: Tensor, tokens: Tensor) -> Tensor:
    """``log pi(tokens[b, t])`` under the distribution ``softmax(logits[b, t])``, with no shift.

    Args:
        logits: ``(B, T, V)``, any float dtype.
        tokens: ``(B, T)`` long, values in ``[0, V)``.

    Returns:
        ``(B, T)`` float32 log-probabilities.
    """
    if logits.shape[:2] != tokens.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and tokens {tuple(tokens.shape)} disagree on (B, T)")
    return _per_row(_row_logprobs, logits, tokens)


def response_logprobs(response_logits: Tensor, input_ids: Tensor, prompt_len: int) -> Tensor:
    """Log-probability of each response token given everything before it: the one definition PPO, `evaluate`,
    `Backbone.response_logprobs` and the dashboard share.

    Args:
        response_logits: ``(B, R, V)`` the predictions of tokens ``P..L-1``, i.e. a causal LM's logit columns
            ``P-1..L-2`` (`Backbone.response_logits`), any float dtype.
        input_ids: ``(B, L)`` prompt tokens, then response tokens; ``R = L - P``.
        prompt_len: the number of prompt tokens ``P``, at least 1 (the first response token needs a context).

    Returns:
        ``(B, R)`` float32: column ``t`` is ``log pi(input_ids[:, P + t] | input_ids[:, :P + t])``.
    """
    if not 1 <= prompt_len < input_ids.shape[1]:
        raise ValueError(f"prompt_len must be in [1, {input_ids.shape[1] - 1}], got {prompt_len}")
    return gather_logprobs(response_logits, input_ids[:, prompt_len:])


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy ``H = -sum_v p_v log p_v`` of each position's softmax distribution, in nats.

    Args:
        logits: ``(B, T, V)``, any float dtype.

    Returns:
        ``(B, T)`` float32.
    """
    return _per_row(_row_entropy, logits)
