"""Dispatch and combine: move (token, slot) pairs into contiguous per-expert blocks and back.

A batch of T tokens routed top-k has T·k (token, slot) pairs; pair ``p = t·k + j`` is token t's j-th choice.
Sorting the pairs by expert gives each expert one contiguous block of rows, the layout grouped GEMMs want.
"""

from dataclasses import dataclass

import torch

from .checks import check_expert_indices


@dataclass
class Dispatch:
    """The sort of T·k (token, slot) pairs by expert.

    order:     [T·k]  pair ids sorted by expert (stable: within an expert, in token order)
    token_ids: [T·k]  the token of each sorted pair, ``order // k``
    counts:    [E]    pairs per expert (the expert's load)
    offsets:   [E+1]  expert e's block is rows ``offsets[e]:offsets[e+1]`` of the sorted pairs
    """

    order: torch.Tensor
    token_ids: torch.Tensor
    counts: torch.Tensor
    offsets: torch.Tensor


def sort_by_expert(indices: torch.Tensor, E: int) -> Dispatch:
    """Sort the (token, slot) pairs of ``indices: [T, k]`` (expert ids in ``[0, E)``) by expert."""
    check_expert_indices(indices, E)
    k = indices.shape[1]
    flat = indices.reshape(-1)
    order = torch.sort(flat, stable=True).indices
    counts = torch.bincount(flat, minlength=E)
    offsets = torch.zeros(E + 1, dtype=torch.int64, device=indices.device)
    offsets[1:] = torch.cumsum(counts, dim=0)
    return Dispatch(order=order, token_ids=order // k, counts=counts, offsets=offsets)


def permute(x: torch.Tensor, dispatch: Dispatch) -> torch.Tensor:
    """Gather token rows into expert order: x: [T, d] -> [T·k, d] (a token appears once per chosen expert)."""
    return x[dispatch.token_ids]


def unpermute_and_combine(y_sorted: torch.Tensor, dispatch: Dispatch, weights: torch.Tensor) -> torch.Tensor:
    """Put expert outputs back in (token, slot) order and take the weighted sum over the k slots.

    y_sorted: [T·k, d] rows in expert order; weights: [T, k] -> [T, d].
    """
    T, k = weights.shape
    y = torch.empty_like(y_sorted)
    y[dispatch.order] = y_sorted  # row p of y is pair p = t·k + j
    return (y.view(T, k, y.shape[-1]) * weights.unsqueeze(-1).to(y.dtype)).sum(dim=1)
