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

    order:     [T·k]  pair ids sorted by expert (stable: within an expert, in token order); pairs that are not
                      kept (dropped) come last
    token_ids: [T·k]  the token of each sorted pair, ``order // k``
    counts:    [E]    kept pairs per expert (the expert's load)
    offsets:   [E+1]  expert e's block is rows ``offsets[e]:offsets[e+1]``; ``offsets[E]`` pairs are kept
    """

    order: torch.Tensor
    token_ids: torch.Tensor
    counts: torch.Tensor
    offsets: torch.Tensor

    @property
    def num_kept(self) -> int:
        return int(self.offsets[-1])


def sort_by_expert(indices: torch.Tensor, E: int, keep: torch.Tensor | None = None) -> Dispatch:
    """Sort the (token, slot) pairs of ``indices: [T, k]`` (expert ids in ``[0, E)``) by expert.

    keep: [T, k] bool or None; pairs not kept are sorted behind every expert's block and never processed.
    """
    check_expert_indices(indices, E)
    if keep is not None and keep.shape != indices.shape:
        raise ValueError(f"keep must have the shape of indices {tuple(indices.shape)}, got {tuple(keep.shape)}")
    k = indices.shape[1]
    flat = indices.reshape(-1) if keep is None else indices.reshape(-1).masked_fill(~keep.reshape(-1), E)
    order = torch.sort(flat, stable=True).indices
    counts = torch.bincount(flat, minlength=E + 1)[:E]
    offsets = torch.zeros(E + 1, dtype=torch.int64, device=indices.device)
    offsets[1:] = torch.cumsum(counts, dim=0)
    return Dispatch(order=order, token_ids=order // k, counts=counts, offsets=offsets)


def permute(x: torch.Tensor, dispatch: Dispatch) -> torch.Tensor:
    """Gather token rows into expert order: x: [T, d] -> [kept pairs, d] (a token once per kept expert).

    ``index_select`` rather than ``x[ids]``: its backward adds a token's k gradient rows in a fixed order, so a
    seeded training run is bit-for-bit reproducible."""
    return x.index_select(0, dispatch.token_ids[: dispatch.num_kept])


def unpermute_and_combine(y_sorted: torch.Tensor, dispatch: Dispatch, weights: torch.Tensor) -> torch.Tensor:
    """Put expert outputs back in (token, slot) order and take the weighted sum over the k slots.

    y_sorted: [kept pairs, d] rows in expert order; weights: [T, k] -> [T, d]. Dropped pairs contribute 0.
    """
    T, k = weights.shape
    y = y_sorted.new_zeros(T * k, y_sorted.shape[-1])
    y[dispatch.order[: dispatch.num_kept]] = y_sorted  # row p of y is pair p = t·k + j
    return (y.view(T, k, y.shape[-1]) * weights.unsqueeze(-1).to(y.dtype)).sum(dim=1)
