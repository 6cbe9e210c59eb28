"""Dispatch and combine: move (token, slot) pairs into contiguous per-expert blocks and back.

A batch of T tokens routed top-k has T·k (token, slot) pairs; pair ``p = t·k + j`` is token t's j-th choice.
Sorting the pairs by expert gives each expert one contiguous block of rows, the layout grouped GEMMs want.
:func:`order_by_expert` is that sort, and the position of each pair inside its expert's block; capacity limits,
the Triton kernels' alignment and expert parallelism all build on it.
"""

from dataclasses import dataclass

import torch

from .checks import check_expert_indices, check_keep


@dataclass
class ExpertOrder:
    """A stable sort of n entries by expert id, ids equal to E (pairs left out) last.

    order:   [n]    entry ids sorted by expert (within an expert, in entry order)
    counts:  [E]    entries per expert (those with id E not counted)
    offsets: [E+1]  expert e's block is rows ``offsets[e]:offsets[e+1]`` of the sorted order
    ranks:   [n]    row i of the sorted order is the ``ranks[i]``-th entry of its expert (counting from 0)
    """

    order: torch.Tensor
    counts: torch.Tensor
    offsets: torch.Tensor
    ranks: torch.Tensor


def count_pairs(experts: torch.Tensor, E: int) -> torch.Tensor:
    """Entries per expert: experts [n] (ids in ``[0, E]``, E not counted) -> [E] int64, by a scatter-add, which
    needs no host synchronization (``torch.bincount`` reads the largest id back first)."""
    counts = torch.zeros(E + 1, dtype=torch.int64, device=experts.device)
    return counts.scatter_add_(0, experts, torch.ones_like(experts))[:E]


def order_by_expert(experts: torch.Tensor, E: int, counts: torch.Tensor | None = None) -> ExpertOrder:
    """Sort ``experts: [n]`` (int64 ids in ``[0, E]``; E marks an entry left out) by expert. No host
    synchronization: the counts come from a scatter-add (or from ``counts`` [E], when the caller has them)."""
    order = torch.sort(experts, stable=True).indices
    counts = count_pairs(experts, E) if counts is None else counts
    offsets = torch.zeros(E + 1, dtype=torch.int64, device=experts.device)
    offsets[1:] = torch.cumsum(counts, dim=0)
    ranks = torch.arange(experts.numel(), device=experts.device) - offsets[experts[order]]
    return ExpertOrder(order, counts, offsets, ranks)


def pair_experts(indices: torch.Tensor, E: int, keep: torch.Tensor | None = None) -> torch.Tensor:
    """The expert of every pair, ``[T·k]``, with E for the pairs that are not kept."""
    flat = indices.reshape(-1)
    return flat if keep is None else flat.masked_fill(~keep.reshape(-1), E)


@dataclass
class Dispatch:
    """The sort of T·k (token, slot) pairs by expert.

    order:     [T·k]  pair ids sorted by expert (stable: within an expert, in token order); pairs that are not
                      kept (dropped) come last
    token_ids: [T·k]  the token of each sorted pair, ``order // k``
    counts:    [E]    kept pairs per expert (the expert's load)
    offsets:   [E+1]  expert e's block is rows ``offsets[e]:offsets[e+1]``; ``offsets[E]`` pairs are kept
    ranks:     [T·k]  each sorted pair's position inside its expert's block
    """

    order: torch.Tensor
    token_ids: torch.Tensor
    counts: torch.Tensor
    offsets: torch.Tensor
    ranks: torch.Tensor

    @property
    def num_kept(self) -> int:
        return int(self.offsets[-1])


def group_pairs(indices: torch.Tensor, E: int, keep: torch.Tensor | None = None) -> Dispatch:
    """:func:`sort_by_expert` without the argument checks, for callers whose indices come from a router."""
    s = order_by_expert(pair_experts(indices, E, keep), E)
    return Dispatch(s.order, s.order // indices.shape[1], s.counts, s.offsets, s.ranks)


def sort_by_expert(indices: torch.Tensor, E: int, keep: torch.Tensor | None = None) -> Dispatch:
    """Sort the (token, slot) pairs of ``indices: [T, k]`` (expert ids in ``[0, E)``) by expert.

    keep: [T, k] bool or None; pairs not kept are sorted behind every expert's block and never processed.
    """
    check_expert_indices(indices, E)
    check_keep(keep, indices)
    return group_pairs(indices, E, keep)


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
