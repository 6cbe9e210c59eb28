"""How evenly a routing spreads tokens over experts."""

import torch

from .checks import check_counts, check_expert_indices, check_scores


def expert_load(indices: torch.Tensor, E: int) -> torch.Tensor:
    """Tokens per expert: indices: [T, k] expert ids -> counts: [E] (int64), summing to T·k."""
    check_expert_indices(indices, E)
    return torch.bincount(indices.reshape(-1), minlength=E)


def balance_coefficient(counts: torch.Tensor) -> float:
    """Minimum expert load over the ideal load (T·k/E): 1.0 when perfectly even, 0.0 when an expert is idle.

    counts: [E] tokens per expert, as from :func:`expert_load`.
    """
    check_counts("counts", counts)
    total = counts.sum().item()
    if total == 0:
        raise ValueError("counts must contain at least one routed token (the ideal load T·k/E is 0)")
    ideal = total / counts.numel()
    return counts.min().item() / ideal


def router_entropy(probs: torch.Tensor) -> float:
    """Mean over tokens of the entropy of the router's distribution ``probs: [T, E]``, in nats.

    ``log E`` for a router that cannot decide, 0 for one that is certain.
    """
    check_scores("probs", probs)
    if probs.shape[0] == 0:
        return 0.0
    return float(-(probs * probs.clamp_min(1e-12).log()).sum(dim=-1).mean())
