"""The router: score every expert for every token, keep the top k, and weight them.

Shapes: T tokens, E experts, k experts per token.
"""

from dataclasses import dataclass

import torch
from torch import nn

from .checks import check_choice, check_hidden, check_positive_int, check_top_k

ORDERS = ("softmax_then_topk", "topk_then_softmax")


@dataclass
class Routing:
    """What a router decided for a batch.

    indices: [T, k]  the chosen experts of each token, distinct within a row (int64)
    weights: [T, k]  the combine weight of each chosen expert
    probs:   [T, E]  the full softmax over all experts (load-balancing losses need it)
    logits:  [T, E]  the router's raw scores
    """

    indices: torch.Tensor
    weights: torch.Tensor
    probs: torch.Tensor
    logits: torch.Tensor


def check_order(order: str, renormalize: bool) -> None:
    """``renormalize=False`` only exists for softmax-then-top-k: a softmax over the top k always sums to 1."""
    check_choice("order", order, ORDERS)
    if order == "topk_then_softmax" and not renormalize:
        raise ValueError("renormalize=False needs order='softmax_then_topk' (a softmax over the top k sums to 1)")


def top_k_routing(logits: torch.Tensor, k: int, order: str = "softmax_then_topk", renormalize: bool = True) -> Routing:
    """Pick each token's top-k experts from router ``logits: [T, E]`` and compute their weights.

    ``order="softmax_then_topk"``: softmax over all E experts, keep the k largest probabilities and, when
    ``renormalize``, divide them by their sum so the k weights add to 1.
    ``order="topk_then_softmax"`` (Mixtral): keep the k largest logits and softmax over those k only. Softmax is
    monotonic, so both orders choose the same experts, and with renormalization they give the same weights;
    they differ when ``renormalize=False``: then the first order's weights sum to less than 1.
    """
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or not logits.is_floating_point():
        raise ValueError(
            f"logits must be a floating-point tensor of shape [T, E], got {getattr(logits, 'shape', logits)}"
        )
    check_top_k(k, logits.shape[1])
    check_order(order, renormalize)
    probs = torch.softmax(logits, dim=-1)
    if order == "topk_then_softmax":
        top_logits, indices = torch.topk(logits, k, dim=-1)
        weights = torch.softmax(top_logits, dim=-1)
    else:
        weights, indices = torch.topk(probs, k, dim=-1)
        if renormalize:
            weights = weights / weights.sum(dim=-1, keepdim=True)
    return Routing(indices=indices, weights=weights, probs=probs, logits=logits)


class TopKRouter(nn.Module):
    """A linear gate ``W_g: [d_model, E]`` (no bias) followed by :func:`top_k_routing`."""

    def __init__(self, d_model: int, E: int, k: int, order: str = "softmax_then_topk", renormalize: bool = True):
        super().__init__()
        check_positive_int("d_model", d_model)
        check_top_k(k, E)
        check_order(order, renormalize)
        self.d_model, self.E, self.k, self.order, self.renormalize = d_model, E, k, order, renormalize
        self.gate = nn.Linear(d_model, E, bias=False)

    def forward(self, x: torch.Tensor) -> Routing:
        """x: [T, d_model] -> Routing for T tokens."""
        check_hidden("x", x, self.d_model)
        return top_k_routing(self.gate(x), self.k, self.order, self.renormalize)
