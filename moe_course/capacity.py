"""Expert capacity: how many (token, slot) pairs an expert may take, which pairs are dropped, and the cost of
padding every expert's queue to a fixed size.

A dropped pair is simply not processed: its weight contributes nothing, so a token whose every pair is dropped
leaves the MoE layer with output 0 and continues on the residual path only.
"""

import math

import torch

from .checks import (
    check_choice,
    check_counts,
    check_expert_indices,
    check_non_negative_int,
    check_number,
    check_positive_int,
    check_tensor,
)
from .dispatch import order_by_expert

POLICIES = ("arrival", "batch_priority")


def expert_capacity(T: int, E: int, k: int, capacity_factor: float) -> int:
    """C = ceil(capacity_factor · T · k / E): the pairs one expert may take when the load were perfectly even
    (T·k/E), times the slack ``capacity_factor``. Computed in floating point in this order, as GShard- and
    Switch-style code does, so a product a hair above an integer rounds up (1.1 · 50 / 5 → 12)."""
    check_non_negative_int("T", T)
    check_positive_int("E", E)
    check_positive_int("k", k)
    check_number("capacity_factor", capacity_factor, positive=True)
    return capacity_of(T, E, k, capacity_factor)


def capacity_of(T: int, E: int, k: int, capacity_factor: float) -> int:
    """:func:`expert_capacity` without the argument checks (the layer checked its configuration once)."""
    return math.ceil(capacity_factor * T * k / E)


def capacity_keep(
    indices: torch.Tensor, E: int, capacity: int, policy: str = "arrival", probs: torch.Tensor | None = None
) -> torch.Tensor:
    """Which pairs fit: indices: [T, k] -> keep: [T, k] bool, at most ``capacity`` kept per expert.

    Experts fill their queues in a fixed sequence of pairs; every token's first choice comes before any second
    choice, and so on:
    - ``"arrival"`` (GShard, Switch): within each choice, tokens in batch order — pair (t, j) is the (j·T + t)-th;
    - ``"batch_priority"`` (batch-prioritized routing, Riquelme et al. 2021, as V-MoE's ``batch_priority``):
      within each choice, tokens by their **top-1 router probability**, largest first (ties in batch order).
      ``probs: [T, E]``, the router's probabilities (``Routing.probs``), gives it: the raw probabilities, not the
      renormalized weights, whose maximum ranks tokens differently.
    """
    check_expert_indices(indices, E)
    check_non_negative_int("capacity", capacity)
    check_choice("policy", policy, POLICIES)
    if policy == "batch_priority":
        check_tensor("probs", probs, (indices.shape[0], E), "real")
    elif probs is not None:
        raise ValueError("probs is used by policy='batch_priority' only")
    return keep_within_capacity(indices, E, capacity, policy, probs)


def keep_within_capacity(indices: torch.Tensor, E: int, capacity: int, policy: str, probs=None) -> torch.Tensor:
    """:func:`capacity_keep` without the argument checks: each expert keeps the first ``capacity`` pairs of its
    queue, the pairs ranked within their expert in the policy's sequence."""
    T, k = indices.shape
    capacity = min(capacity, T * k)  # more room than pairs keeps the same pairs, and fits an int64
    tokens = torch.arange(T, device=indices.device)
    if policy == "batch_priority":
        tokens = torch.sort(-probs.detach().amax(dim=-1), stable=True).indices
    # pair ids (t·k + j) in the sequence: choice j = 0 for every token in order, then j = 1, ...
    sequence = (tokens * k + torch.arange(k, device=indices.device)[:, None]).reshape(-1)
    queues = order_by_expert(indices.reshape(-1)[sequence], E)
    keep = torch.zeros(T * k, dtype=torch.bool, device=indices.device)
    keep[sequence[queues.order]] = queues.ranks < capacity
    return keep.view(T, k)


def padding_waste(counts: torch.Tensor, capacity: int | None = None) -> float:
    """Fraction of an ``[E, C]`` expert buffer that is padding, when every expert's queue is padded to C rows.

    counts: [E] pairs each expert processes; C defaults to the longest queue (``max(counts)``).
    """
    check_counts("counts", counts, "integer")
    C = int(counts.max()) if capacity is None else check_non_negative_int("capacity", capacity)
    if C < int(counts.max()):
        raise ValueError(f"capacity must hold the longest queue ({int(counts.max())}), got {C}")
    slots = C * counts.numel()
    return 0.0 if slots == 0 else 1 - int(counts.sum()) / slots
