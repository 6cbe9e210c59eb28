"""The MoE layer: route each token to k experts, run them, and add their outputs weighted by the router.

Backends compute the same function in different ways; ``loop`` is the readable reference the others are held to.
"""

import torch
from torch import nn

from .capacity import POLICIES, capacity_keep, expert_capacity
from .checks import check_choice, check_hidden, check_non_negative_int, check_number, check_positive_int
from .dispatch import permute, sort_by_expert, unpermute_and_combine
from .experts import FFN, Experts
from .routing import Router, Routing


def loop_moe(x: torch.Tensor, routing: Routing, experts: Experts) -> torch.Tensor:
    """Reference: for each expert, find its kept (token, slot) pairs, run it, and add the weighted outputs.

    x: [T, d_model] -> [T, d_model]
    """
    y = torch.zeros_like(x)
    kept = routing.kept()
    for e in range(experts.E):
        token, slot = torch.where((routing.indices == e) & kept)
        if token.numel() == 0:
            continue  # an expert no token chose does no work
        out = experts.expert(e, x[token]) * routing.weights[token, slot].unsqueeze(-1).to(x.dtype)
        y.index_add_(0, token, out)
    return y


def vectorized_moe(x: torch.Tensor, routing: Routing, experts: Experts) -> torch.Tensor:
    """Sort the T·k (token, slot) pairs by expert, run each expert on its contiguous block, un-permute, combine.

    x: [T, d_model] -> [T, d_model]. One gather and one scatter replace the loop's E masks and index-adds.
    """
    dispatch = sort_by_expert(routing.indices, experts.E, routing.keep)
    blocks = torch.split(permute(x, dispatch), dispatch.counts.tolist())
    y_sorted = torch.cat([experts.expert(e, block) for e, block in enumerate(blocks)])
    return unpermute_and_combine(y_sorted, dispatch, routing.weights)


def triton_moe(x: torch.Tensor, routing: Routing, experts: Experts) -> torch.Tensor:
    """The fused Triton kernels (:mod:`moe_course.kernels`): gather, both GEMMs, activation and weighted combine.

    x: [T, d_model] -> [T, d_model]. Imported on first use: importing the kernels picks Triton's interpreter on a
    machine without a GPU, and Triton is not installed where it has no wheels (macOS).
    """
    from .kernels import fused_experts

    return fused_experts(
        x.contiguous(), routing.indices, routing.weights, experts.w1, experts.w2, experts.activation, routing.keep
    )


BACKENDS = {"loop": loop_moe, "vectorized": vectorized_moe, "triton": triton_moe}


class MoELayer(nn.Module):
    """A routed MoE FFN: ``y_t = Σ_j weights[t, j] · expert_{indices[t, j]}(x_t)`` over the kept pairs, plus
    ``n_shared`` always-on shared experts (one FFN of width ``n_shared · d_ff``, the same function).

    ``router`` names a method of :class:`~moe_course.routing.Router` (extra ``router_options`` go to it).
    ``capacity_factor``: for token-choice routers, each expert takes at most ``ceil(cf · T · k / E)`` pairs and
    the rest are dropped under ``drop_policy``; for ``"expert_choice"`` it sets each expert's capacity.
    After each call, ``last_routing`` holds the routing of the flattened batch and ``last_stats`` what happened:
    ``counts`` [E] (pairs each expert processed), ``dropped_pairs`` (removed by the capacity limit) and
    ``unprocessed_tokens`` (tokens no expert processed).
    """

    def __init__(
        self,
        d_model: int,
        d_ff: int,
        E: int,
        k: int,
        activation: str = "swiglu",
        backend: str = "vectorized",
        router: str = "topk",
        n_shared: int = 0,
        capacity_factor: float | None = None,
        drop_policy: str = "arrival",
        **router_options,
    ):
        super().__init__()
        check_choice("backend", backend, BACKENDS)
        check_non_negative_int("n_shared", n_shared)
        check_choice("drop_policy", drop_policy, POLICIES)
        if capacity_factor is not None:
            check_number("capacity_factor", capacity_factor, positive=True)
        if router == "expert_choice":
            router_options["capacity_factor"] = 1.0 if capacity_factor is None else capacity_factor
        self.router = Router(d_model, E, k, router, **router_options)
        self.experts = Experts(E, d_model, d_ff, activation)
        self.shared = FFN(d_model, n_shared * d_ff, activation) if n_shared else None
        self.d_model, self.E, self.k, self.backend = d_model, E, k, backend
        self.capacity_factor = None if router == "expert_choice" else capacity_factor
        self.drop_policy = drop_policy
        self.last_routing: Routing | None = None
        self.last_stats: dict = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., d_model] -> [..., d_model]; leading dimensions are flattened into T tokens."""
        check_hidden("x", x, self.d_model)
        check_choice("backend", self.backend, BACKENDS)
        tokens = x.reshape(-1, self.d_model)
        routing = self.router(tokens)
        if self.capacity_factor is not None:
            capacity = expert_capacity(tokens.shape[0], self.E, self.k, self.capacity_factor)
            routing.keep = capacity_keep(routing.indices, routing.weights, self.E, capacity, self.drop_policy)
        kept = routing.kept()
        self.last_routing = routing
        self.last_stats = {
            "counts": torch.bincount(routing.indices[kept], minlength=self.E),
            "dropped_pairs": int((~kept).sum()) if self.capacity_factor is not None else 0,
            "unprocessed_tokens": int((~kept.any(dim=1)).sum()),
        }
        y = BACKENDS[self.backend](tokens, routing, self.experts)
        if self.shared is not None:
            y = y + self.shared(tokens)
        return y.reshape(x.shape)


def MoE(
    hidden_size: int,
    expert: FFN | str = "swiglu",
    num_experts: int = 8,
    k: int = 2,
    d_ff: int | None = None,
    ep_size: int = 1,
    **layer_options,
) -> nn.Module:
    """One-call constructor in the spirit of DeepSpeed's ``MoE(hidden_size, expert, num_experts, k)``.

    ``expert`` is a template: an :class:`~moe_course.experts.FFN` (its d_ff and activation are used; each of
    the ``num_experts`` experts gets fresh weights) or an activation name, ``"swiglu"`` or ``"gelu"``, with
    ``d_ff`` defaulting to ``4 · hidden_size``. ``layer_options`` go to :class:`MoELayer` (``backend``,
    ``router``, ``n_shared``, ``capacity_factor``, router options such as ``renormalize``). With k=1 and
    renormalization the weight is always 1 and the router gets no gradient, so top-1 layers use
    ``router="switch"`` or ``renormalize=False``. ``ep_size`` > 1 shards the experts over that many ranks: an
    :class:`~moe_course.parallel.ExpertParallelMoE` in this rank's group of ``ep_size`` consecutive ranks of the
    initialized world (the whole world when they are equal; see
    :func:`~moe_course.parallel.comm.expert_parallel_group`).
    """
    check_positive_int("hidden_size", hidden_size)
    check_positive_int("ep_size", ep_size)
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
    if ep_size == 1:
        return MoELayer(hidden_size, d_ff, num_experts, k, activation, **layer_options)
    from .parallel import ExpertParallelMoE, expert_parallel_group  # on use: they build on this module

    group = expert_parallel_group(ep_size)
    return ExpertParallelMoE(hidden_size, d_ff, num_experts, k, activation, group=group, **layer_options)
