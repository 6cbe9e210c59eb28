"""The MoE layer: route each token to k experts, run them, and add their outputs weighted by the router.

Backends compute the same function in different ways; ``loop`` is the readable reference the others are held to.
"""

import torch
from torch import nn

from .checks import check_choice, check_hidden, check_positive_int
from .dispatch import permute, sort_by_expert, unpermute_and_combine
from .experts import FFN, Experts
from .routing import Routing, TopKRouter


def loop_moe(x: torch.Tensor, routing: Routing, experts: Experts) -> torch.Tensor:
    """Reference: for each expert, find its (token, slot) pairs, run it, and add the weighted outputs.

    x: [T, d_model] -> [T, d_model]
    """
    y = torch.zeros_like(x)
    for e in range(experts.E):
        token, slot = torch.where(routing.indices == e)
        if token.numel() == 0:
            continue  # an expert no token chose does no work
        out = experts.expert(e, x[token]) * routing.weights[token, slot].unsqueeze(-1).to(x.dtype)
        y.index_add_(0, token, out)
    return y


def vectorized_moe(x: torch.Tensor, routing: Routing, experts: Experts) -> torch.Tensor:
    """Sort the T·k (token, slot) pairs by expert, run each expert on its contiguous block, un-permute, combine.

    x: [T, d_model] -> [T, d_model]. One gather and one scatter replace the loop's E masks and index-adds.
    """
    dispatch = sort_by_expert(routing.indices, experts.E)
    blocks = torch.split(permute(x, dispatch), dispatch.counts.tolist())
    y_sorted = torch.cat([experts.expert(e, block) for e, block in enumerate(blocks)])
    return unpermute_and_combine(y_sorted, dispatch, routing.weights)


BACKENDS = {"loop": loop_moe, "vectorized": vectorized_moe}


class MoELayer(nn.Module):
    """A top-k routed MoE FFN: ``y = Σ_j weights[t, j] · expert_{indices[t, j]}(x_t)``.

    After each call, ``last_routing`` holds the :class:`~moe_course.routing.Routing` of the flattened batch.
    """

    def __init__(
        self,
        d_model: int,
        d_ff: int,
        E: int,
        k: int,
        activation: str = "swiglu",
        backend: str = "vectorized",
        order: str = "softmax_then_topk",
        renormalize: bool = True,
    ):
        super().__init__()
        check_choice("backend", backend, BACKENDS)
        self.router = TopKRouter(d_model, E, k, order, renormalize)
        self.experts = Experts(E, d_model, d_ff, activation)
        self.d_model, self.E, self.k, self.backend = d_model, E, k, backend
        self.last_routing: Routing | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., d_model] -> [..., d_model]; leading dimensions are flattened into T tokens."""
        check_hidden("x", x, self.d_model)
        check_choice("backend", self.backend, BACKENDS)
        tokens = x.reshape(-1, self.d_model)
        routing = self.router(tokens)
        self.last_routing = routing
        return BACKENDS[self.backend](tokens, routing, self.experts).reshape(x.shape)


def MoE(
    hidden_size: int,
    expert: FFN | str = "swiglu",
    num_experts: int = 8,
    k: int = 2,
    d_ff: int | None = None,
    backend: str = "vectorized",
    order: str = "softmax_then_topk",
    renormalize: bool = True,
) -> MoELayer:
    """One-call constructor in the spirit of DeepSpeed's ``MoE(hidden_size, expert, num_experts, k)``.

    ``expert`` is a template: an :class:`~moe_course.experts.FFN` (its d_ff and activation are used; each of
    the ``num_experts`` experts gets fresh weights) or an activation name, ``"swiglu"`` or ``"gelu"``, with
    ``d_ff`` defaulting to ``4 · hidden_size``. ``order`` and ``renormalize`` go to the router: with k=1 and
    renormalization the weight is always 1 and the router gets no gradient, so top-1 (Switch) layers use
    ``renormalize=False``.
    """
    check_positive_int("hidden_size", hidden_size)
    if isinstance(expert, FFN):
        if expert.d_model != hidden_size:
            raise ValueError(f"expert has d_model={expert.d_model}, which must equal hidden_size={hidden_size}")
        if d_ff is not None and d_ff != expert.d_ff:
            raise ValueError(f"d_ff={d_ff} disagrees with the expert template's d_ff={expert.d_ff}")
        d_ff, activation = expert.d_ff, expert.activation
    elif isinstance(expert, str):
        activation, d_ff = expert, d_ff or 4 * hidden_size
    else:
        raise ValueError(f"expert must be an FFN or an activation name, got {type(expert).__name__}")
    return MoELayer(hidden_size, d_ff, num_experts, k, activation, backend, order, renormalize)
