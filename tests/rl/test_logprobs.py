import math

import pytest
import torch
from torch.testing import assert_close

from lit_rlhf.rl.logprobs import entropy_from_logits, gather_logprobs, response_logprobs


def probs_logits(*probs: float) -> torch.Tensor:
    """Logits whose softmax is the given (normalised) distribution."""
    return torch.tensor(probs).log()


def test_gather_logprobs_picks_the_token_log_probability():
    # softmax(log [1, 2, 1]) = [1/4, 1/2, 1/4]
    logits = probs_logits(1, 2, 1).expand(1, 2, 3)  # (B=1, T=2, V=3)
    tokens = torch.tensor([[1, 0]])
    assert_close(gather_logprobs(logits, tokens), torch.tensor([[math.log(0.5), math.log(0.25)]]))


def test_gather_logprobs_is_shift_invariant_and_stable_for_large_logits():
    # Same distribution as logits [0, 1, 0]: log p(1) = 1 - log(e + 2), log p(0) = -log(e + 2).
    logits = torch.tensor([[[1000.0, 1001.0, 1000.0], [1000.0, 1001.0, 1000.0]]])
    tokens = torch.tensor([[1, 0]])
    assert_close(gather_logprobs(logits, tokens), torch.tensor([[-0.5514447, -1.5514447]]))


def test_gather_logprobs_of_bf16_logits_is_float32():
    # Logits 0, 1, 0 are exact in bf16: log p(1) = 1 - log(e + 2), log p(0) = -log(e + 2).
    logits = torch.tensor([[[0.0, 1.0, 0.0], [0.0, 1.0, 0.0]]], dtype=torch.bfloat16)
    out = gather_logprobs(logits, torch.tensor([[1, 0]]))
    assert out.dtype == torch.float32
    assert_close(out, torch.tensor([[-0.5514447, -1.5514447]]))


def test_gather_logprobs_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="disagree"):
        gather_logprobs(torch.zeros(2, 3, 4), torch.zeros(2, 2, dtype=torch.long))


def test_gather_logprobs_passes_gradients_to_the_logits():
    logits = torch.zeros(1, 1, 2, requires_grad=True)
    gather_logprobs(logits, torch.tensor([[0]])).sum().backward()
    # d log softmax(z)_0 / dz = onehot(0) - softmax(z) = [1 - 1/2, -1/2]
    assert_close(logits.grad, torch.tensor([[[0.5, -0.5]]]))


def test_entropy_from_logits():
    logits = torch.stack([probs_logits(1, 1, 1, 1), probs_logits(1, 2, 1, 0.0)])[None]  # (1, 2, 4)
    # uniform over 4: log 4; [1/4, 1/2, 1/4, 0]: 2 * (1/4) log 4 + (1/2) log 2, the zero adds nothing
    assert_close(entropy_from_logits(logits), torch.tensor([[1.3862944, 1.0397208]]))


def test_entropy_with_minus_inf_logits_is_finite():
    logits = torch.tensor([[[0.0, 0.0, -math.inf], [0.0, -math.inf, -math.inf]]])
    assert_close(entropy_from_logits(logits), torch.tensor([[math.log(2), 0.0]]))


def test_response_logprobs_by_hand():
    # response_logits are the full logits' columns P-1..L-2 (Backbone.response_logits)
    # V = 2. Column 0 of the result is predicted by logits[0]: softmax(0, 0) gives token 1 p = 1/2;
    # column 1 by logits[1]: softmax(ln 3, 0) gives token 0 p = 3/4. logits[2] predicts past the end.
    logits = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0], [5.0, -5.0]]])
    ids = torch.tensor([[0, 1, 0]])
    out = response_logprobs(logits[:, 0:-1], ids, prompt_len=1)
    torch.testing.assert_close(out, torch.tensor([[-0.6931472, -0.2876821]]))
    torch.testing.assert_close(
        response_logprobs(logits[:, 1:-1], ids, prompt_len=2), torch.tensor([[-0.2876821]])
    )


@pytest.mark.parametrize("prompt_len", [0, 3])
def test_response_logprobs_needs_a_prompt_and_a_response(prompt_len):
    with pytest.raises(ValueError, match="prompt_len"):
        response_logprobs(torch.zeros(1, 3, 2), torch.zeros(1, 3, dtype=torch.long), prompt_len)
