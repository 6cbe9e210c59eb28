"""The MoE layer: route each token to k experts, run them where they live, and add their outputs weighted by the
router. One module for one process and for expert parallelism: the exchange strategy
(:mod:`moe_course.exchange`) decides which experts are held here and how tokens reach them."""

from dataclasses import dataclass
from functools import cached_property

import torch
from torch import nn

from .backends import BACKENDS
from .capacity import capacity_of, keep_within_capacity
from .checks import check_hidden
from .config import MoEConfig
from .dispatch import count_pairs, pair_experts
from .exchange import LocalExchange, Traffic
from .experts import Experts, SharedExpert
from .routing import Router, Routing


@dataclass
class LayerStats:
    """What one call of the layer did with its T tokens' T·k (token, slot) pairs. The numbers are computed when
    first read (the ints need a host synchronization, which the forward pass itself avoids).

    counts:             [E] kept pairs per expert, over all E experts wherever they live
    dropped_pairs:      pairs a capacity limit removed (0 when dropless, and for expert choice)
    unprocessed_tokens: tokens no expert processed (they leave with the residual, and shared experts, only)
    traffic:            rows and bytes the dispatch moved between ranks, or None when nothing was exchanged
    """

    indices: torch.Tensor
    keep: torch.Tensor | None
    E: int
    drops_pairs: bool
    traffic: Traffic | None = None

    @cached_property
    def counts(self) -> torch.Tensor:
        return count_pairs(pair_experts(self.indices, self.E, self.keep), self.E)

    @cached_property
    def dropped_pairs(self) -> int:
        return int((~self.keep).sum()) if self.drops_pairs else 0

    @cached_property
    def unprocessed_tokens(self) -> int:
        return 0 if self.keep is None else int((~self.keep.any(dim=1)).sum())


class MoELayer(nn.Module):
    """A routed MoE FFN: ``y_t = Σ_j weights[t, j] · expert_{indices[t, j]}(x_t)`` over the kept pairs, plus
    the always-on shared expert(s) (:class:`~moe_course.experts.SharedExpert`: one FFN of width
    ``config.shared_width``, gated per token if ``config.shared_gate``).

    ``config`` fixes every size and choice (:class:`~moe_course.config.MoEConfig`). ``exchange``: where the
    experts live, :class:`~moe_course.exchange.LocalExchange` (all here, the default) or
    :class:`~moe_course.parallel.AllToAllExchange` (E/P on each of P ranks; see :func:`moe_course.MoE`).
    After each call, ``last_routing`` holds the routing of the flattened batch and ``last_stats`` what happened
    (:class:`LayerStats`).
    """

    def __init__(self, config: MoEConfig, exchange=None):
        super().__init__()
        if not isinstance(config, MoEConfig):
            raise ValueError(f"config must be an MoEConfig, got {type(config).__name__}")
        exchange = LocalExchange() if exchange is None else exchange
        if not callable(getattr(exchange, "shard", None)):
            raise ValueError(f"exchange must be None, a LocalExchange or an AllToAllExchange, got {exchange!r}")
        first, held = exchange.shard(config.E)
        if config.router == "expert_choice" and not exchange.local:
            raise ValueError("router='expert_choice' decides over the whole batch and is not expert-parallel here")
        self.config, self.exchange = config, exchange
        self.router = Router(config.d_model, config.E, config.k, config.router, **config.router_options())
        self.experts = Experts(held, config.d_model, config.d_ff, config.activation, first)
        self.shared = None
        if config.n_shared:
            self.shared = SharedExpert(config.d_model, config.shared_width, config.activation, config.shared_gate)
        self.backend = BACKENDS[config.backend]
        self.last_routing: Routing | None = None
        self.last_stats: LayerStats | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., d_model] -> [..., d_model]; leading dimensions are flattened into T tokens. x must have the
        dtype and device of the layer's weights (``layer.to(...)`` moves and converts them)."""
        c = self.config
        check_hidden("x", x, c.d_model, like=self.router.gate.weight)
        tokens = x.reshape(-1, c.d_model)
        routing = self.router.route(tokens)
        capacity = None
        if c.drops_pairs:
            capacity = capacity_of(self.exchange.capacity_tokens(tokens.shape[0]), c.E, c.k, c.capacity_factor)
            routing.keep = keep_within_capacity(routing.indices, c.E, capacity, c.drop_policy, routing.probs)
        y, traffic = self.exchange(
            tokens, routing.indices, routing.weights, routing.keep, self.experts, self.backend, capacity
        )
        if self.shared is not None:
            y = y + self.shared(tokens)
        self.last_routing = routing
        self.last_stats = LayerStats(routing.indices, routing.keep, c.E, c.drops_pairs, traffic)
        return y.reshape(x.shape)
