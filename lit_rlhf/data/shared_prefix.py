"""One row per prompt for the reward model: the K responses' common prefix (the prompt) once, then each response.

A K-wise reward batch holds K sequences per prompt that begin with the same tokens (the rendered prompt). Run one
row per prompt instead, ``[prefix, rest_1, ..., rest_K]``, where token j of ``rest_i`` sits at the position it has in
sequence i and attends to the prefix and to ``rest_i``'s earlier tokens only. Every token then sees exactly what it
sees in its own sequence, so each response's last hidden state, and its reward, is the same as with K separate
sequences (tested), while the prefix runs once instead of K times. With chat templates and short responses the
prompt is most of each sequence: a SmolLM2 chat comparison of K=4 goes from about 4 x 40 tokens to 40 + 4 x 8.

`pack_shared_prefix` builds the rows from a padded (N, T) batch; `shared_prefix_mask` the 4D attention mask that
the transformers decoders take as given (a bool mask for SDPA, an additive one for eager attention).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

PADDING = -1  # segment id of padding columns


class SharedPrefixRows(NamedTuple):
    """G rows, one per prompt, for N sequences.

    Attributes:
        input_ids: (G, T) prefix, then each sequence's remainder, then padding.
        position_ids: (G, T) each token's position in its own sequence (padding: 0).
        segments: (G, T) 0 on the prefix, i + 1 on the remainder of the row's i-th sequence, -1 on padding.
        last: (N, 2) (row, column) of each sequence's last token, in the order of the input rows.
    """

    input_ids: Tensor
    position_ids: Tensor
    segments: Tensor
    last: Tensor


def _common_prefix(rows: list[list[int]]) -> int:
    """Length of the longest common prefix, leaving each row at least its last token of its own."""
    n = min(len(r) for r in rows) - 1
    for j in range(n):
        token = rows[0][j]
        if any(r[j] != token for r in rows[1:]):
            return j
    return max(n, 0)


def pack_shared_prefix(
    input_ids: Tensor, attention_mask: Tensor, group: Tensor, pad_id: int
) -> SharedPrefixRows:
    """Pack right-padded sequences into one row per group: the group's common prefix once, then each remainder.

    Args:
        input_ids: (N, T) right-padded sequences.
        attention_mask: (N, T) 1 on real tokens (a prefix of each row).
        group: (N,) group (prompt) index of each sequence; a group's sequences need not be adjacent.
        pad_id: id written on padding columns.

    Returns:
        `SharedPrefixRows` with G = the number of distinct groups, in order of first appearance.
    """
    lengths = attention_mask.sum(1).tolist()
    seqs = [input_ids[i, : lengths[i]].tolist() for i in range(input_ids.shape[0])]
    order: dict[int, list[int]] = {}
    for i, g in enumerate(group.tolist()):
        order.setdefault(g, []).append(i)
    rows, positions, segments = [], [], []
    last = [(0, 0)] * len(seqs)
    for r, members in enumerate(order.values()):
        c = _common_prefix([seqs[i] for i in members])
        ids, pos, seg = list(seqs[members[0]][:c]), list(range(c)), [0] * c
        for k, i in enumerate(members):
            rest = seqs[i][c:]
            ids += rest
            pos += range(c, c + len(rest))
            seg += [k + 1] * len(rest)
            last[i] = (r, len(ids) - 1)
        rows.append(ids)
        positions.append(pos)
        segments.append(seg)
    width = max(len(r) for r in rows)
    out_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    out_pos = torch.zeros((len(rows), width), dtype=torch.long)
    out_seg = torch.full((len(rows), width), PADDING, dtype=torch.long)
    for r, (ids, pos, seg) in enumerate(zip(rows, positions, segments, strict=True)):
        out_ids[r, : len(ids)] = torch.tensor(ids)
        out_pos[r, : len(pos)] = torch.tensor(pos)
        out_seg[r, : len(seg)] = torch.tensor(seg)
    device = input_ids.device
    return SharedPrefixRows(
        out_ids.to(device), out_pos.to(device), out_seg.to(device), torch.tensor(last, device=device)
    )


def shared_prefix_mask(segments: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """Which key each query attends to: (G, T) segments -> (G, 1, T, T).

    Causal, and a token attends to the prefix and to its own segment only; a padding column attends to itself
    (a query row with no key at all would make the softmax NaN, and NaN survives a zero gradient).

    Args:
        segments: (G, T) as in `SharedPrefixRows`.
        dtype: None for a bool mask (True = attend: SDPA), or a float dtype for an additive mask (0 = attend, the
            dtype's lowest value = not: eager attention adds it to the scores).
    """
    t = segments.shape[1]
    q, k = segments[:, :, None], segments[:, None, :]
    causal = torch.ones(t, t, dtype=torch.bool, device=segments.device).tril()
    allowed = causal & (((k == 0) & (q != PADDING)) | (q == k))
    allowed = allowed[:, None]
    if dtype is None:
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=segments.device).masked_fill(
        ~allowed, torch.finfo(dtype).min
    )
