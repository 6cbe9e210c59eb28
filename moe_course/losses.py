"""Load balancing: auxiliary losses that push the router towards even loads, and the auxiliary-loss-free bias.

Notation: T tokens, E experts, k experts per token. ``f_i`` is the fraction of the T·k hard assignments that went
to expert i (so Σ f_i = 1); ``P_i`` is the mean over tokens of the router's *full* probability for expert i.
"""

import torch

from .checks import check_counts, check_expert_indices, check_number, check_positive_int, check_scores, check_tensor


def check_routing(probs: torch.Tensor, indices: torch.Tensor) -> None:
    """``probs: [T, E]`` and ``indices: [T, k]`` of the same T tokens, the expert ids in ``[0, E)``."""
    check_scores("probs", probs)
    check_expert_indices(indices, probs.shape[1])
    if indices.shape[0] != probs.shape[0]:
        raise ValueError(f"indices must have one row per row of probs ({probs.shape[0]}), got {indices.shape[0]}")


def switch_aux_loss(probs: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Switch Transformer balancing loss ``E · Σ_i f_i · P_i``.

    probs: [T, E] the full softmax (not the k renormalized weights); indices: [T, k] the hard choices.
    Normalized so that perfectly uniform routing gives exactly 1, whatever k; any imbalance that the router's
    probabilities follow gives more. Mixtral-style code counts f_i per token (Σ f_i = k) and so reports k times
    this value. Gradients flow through P_i only: f_i comes from a discrete choice.
    """
    check_routing(probs, indices)
    return _switch_aux_loss(probs, indices)


def _switch_aux_loss(probs: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """:func:`switch_aux_loss` without the argument checks."""
    T, E = probs.shape
    if T == 0:
        return probs.sum() * 0  # no tokens, no imbalance (and still a graph to backpropagate through)
    f = torch.bincount(indices.reshape(-1), minlength=E).to(probs.dtype) / indices.numel()
    P = probs.mean(dim=0)
    return E * (f * P).sum()


def sequence_aux_loss(probs: torch.Tensor, indices: torch.Tensor, seq_len: int) -> torch.Tensor:
    """The Switch loss computed per sequence and averaged (DeepSeek-V3's complementary sequence-wise loss).

    probs: [B·seq_len, E], indices: [B·seq_len, k], tokens of a sequence contiguous. It penalizes a sequence that
    puts all its tokens on few experts even when the batch as a whole is balanced.
    """
    check_positive_int("seq_len", seq_len)
    check_routing(probs, indices)
    if probs.shape[0] % seq_len:
        raise ValueError(f"seq_len={seq_len} must divide the number of tokens {probs.shape[0]}")
    losses = [_switch_aux_loss(p, i) for p, i in zip(probs.split(seq_len), indices.split(seq_len), strict=True)]
    return torch.stack(losses).mean() if losses else probs.sum() * 0


def z_loss(logits: torch.Tensor) -> torch.Tensor:
    """Router z-loss (ST-MoE, Zoph et al. 2022): mean over tokens of ``logsumexp(logits)²``.

    It keeps the router's logits small, where softmax is numerically stable and not saturated.
    """
    check_scores("logits", logits)
    if logits.shape[0] == 0:
        return logits.sum() * 0
    return torch.logsumexp(logits, dim=-1).pow(2).mean()


@torch.no_grad()
def update_bias(bias: torch.Tensor, counts: torch.Tensor, gamma: float) -> torch.Tensor:
    """Auxiliary-loss-free balancing (DeepSeek-V3), in place: ``bias += γ · sign(mean load − load)``.

    An overloaded expert's bias goes down and an underloaded one's up, so the next batch chooses it less or
    more; the bias changes only which experts are chosen, never their weights. bias, counts: [E].
    """
    check_tensor("bias", bias, ("E",), "floating-point")
    check_counts("counts", counts)
    if bias.shape != counts.shape:
        raise ValueError(f"bias and counts must both have shape [E], got {tuple(bias.shape)}, {tuple(counts.shape)}")
    check_number("gamma", gamma)
    load = counts.to(bias.dtype)
    bias += gamma * torch.sign(load.mean() - load)
    return bias
