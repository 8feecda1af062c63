import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.testing import assert_close

from lit_rlhf.rl.kl import kl_penalty

# log r = ref - logp = [-1, +1]
LOGP = torch.tensor([[-1.0, -2.0]])
REF = torch.tensor([[-2.0, -1.0]])


def test_k1_is_the_log_ratio():
    assert_close(kl_penalty(LOGP, REF, "k1"), torch.tensor([[1.0, -1.0]]))
    assert_close(kl_penalty(LOGP, REF), torch.tensor([[1.0, -1.0]]))  # k1 is the default


def test_k2_is_half_the_squared_log_ratio():
    assert_close(kl_penalty(LOGP, REF, "k2"), torch.tensor([[0.5, 0.5]]))


def test_k3():
    # log r = -1: (e^-1 - 1) + 1 = e^-1;  log r = 1: (e - 1) - 1 = e - 2
    assert_close(kl_penalty(LOGP, REF, "k3"), torch.tensor([[0.36787944, 0.71828183]]))


def test_abs():
    assert_close(kl_penalty(LOGP, REF, "abs"), torch.tensor([[1.0, 1.0]]))


def test_unknown_kind_is_rejected():
    with pytest.raises(ValueError, match="k4"):
        kl_penalty(LOGP, REF, "k4")  # type: ignore[arg-type]


logps = st.lists(st.floats(-20, 0, allow_nan=False), min_size=1, max_size=8)


@settings(max_examples=50, deadline=None)
@given(logps, st.sampled_from(["k1", "k2", "k3", "abs"]))
def test_every_estimator_is_zero_when_policies_agree(values, kind):
    logp = torch.tensor([values], dtype=torch.float64)
    assert_close(kl_penalty(logp, logp.clone(), kind), torch.zeros_like(logp))


@settings(max_examples=50, deadline=None)
@given(st.data(), st.sampled_from(["k2", "k3"]))
def test_k2_and_k3_are_never_negative(data, kind):
    values = data.draw(logps)
    logp = torch.tensor([values], dtype=torch.float64)
    ref = torch.tensor([data.draw(st.lists(st.floats(-20, 0), min_size=len(values), max_size=len(values)))])
    assert bool((kl_penalty(logp, ref.double(), kind) >= 0).all())
