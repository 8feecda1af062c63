"""pad_right by hand."""

import pytest

from lit_rlhf.data.padding import pad_right


def test_pad_right_by_hand():
    ids, mask = pad_right([[5, 6, 7], [8], [9, 9]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0], [9, 9, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0], [1, 1, 0]]


def test_pad_right_needs_rows():
    with pytest.raises(ValueError, match="at least one row"):
        pad_right([], pad_id=0)
