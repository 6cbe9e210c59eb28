"""The expert-parallel MoE layer: E experts spread over the P ranks of a process group, E/P on each.

Rank r holds experts ``r·E/P … (r+1)·E/P − 1``. Every call: route the local tokens; sort their (token, slot) pairs
by expert, which also groups them by destination rank; exchange the counts; send the rows (all-to-all, dispatch);
run the local experts on what arrived, with any of the layer's backends; send the results back (all-to-all,
combine); un-permute and take the weighted sum. Dropless by default; with a capacity, every rank sends exactly
C rows per expert (zero-padded), the fixed-size exchange of GShard and Switch, and the pairs that do not fit are
dropped.
"""

import torch
import torch.distributed as dist
from torch import nn

from ..capacity import POLICIES, capacity_keep, expert_capacity
from ..checks import check_choice, check_hidden, check_number, check_positive_int
from ..dispatch import permute, sort_by_expert, unpermute_and_combine
from ..experts import Experts
from ..layer import BACKENDS, MoELayer
from ..routing import Router, Routing
from .comm import all_to_all, exchange_counts


def run_local_experts(rows: torch.Tensor, local_ids: torch.Tensor, experts: Experts, backend: str) -> torch.Tensor:
    """Each row through its local expert, unweighted: rows [n, d], local_ids [n] -> [n, d]. The backend sorts the
    rows by expert itself, so the rows may arrive in any order."""
    n = rows.shape[0]
    scores = rows.new_zeros(n, experts.E)
    routing = Routing(local_ids.view(n, 1), rows.new_ones(n, 1), scores, scores)
    out = BACKENDS[backend](rows, routing, experts)
    if rows.requires_grad and not out.requires_grad:
        # no local expert ran (the loop returns fresh zeros): stay on the autograd graph all the same, because
        # the backward all-to-alls are collectives that every rank must join
        out = out + 0 * rows
    return out


def dispatch_bytes(indices: torch.Tensor, E: int, P: int, d_model: int, element_size: int, keep=None) -> list:
    """The cost model: bytes a rank sends to each of the P ranks in the dropless dispatch, one row of
    ``d_model · element_size`` bytes per kept pair, to the rank that holds the pair's expert (combine: the same,
    back). indices: [T, k] -> [P] ints."""
    check_positive_int("P", P)
    if E % P:
        raise ValueError(f"P={P} must divide E={E}")
    experts = indices.reshape(-1) if keep is None else indices[keep]
    rows = torch.bincount(torch.div(experts, E // P, rounding_mode="floor"), minlength=P)
    return [int(r) * d_model * element_size for r in rows]


def expert_parallel_moe(
    x: torch.Tensor,
    routing: Routing,
    experts: Experts,
    E: int,
    group=None,
    backend: str = "vectorized",
    capacity: int | None = None,
    drop_policy: str = "arrival",
) -> tuple:
    """One expert-parallel MoE call on this rank's tokens: x [T, d], routing over all E experts, ``experts`` the
    E/P local ones. Returns (y [T, d], stats): ``stats`` has, for the dispatch, ``sent_rows`` and ``sent_bytes``
    to each rank and ``received_rows``, ``received_bytes`` from each rank (the combine moves the same back), and
    ``dropped_pairs``. ``capacity``: rows each rank may send to each expert (fixed-size exchange)."""
    P = dist.get_world_size(group)
    E_local = experts.E
    if E_local * P != E:
        raise ValueError(f"experts must hold E/P = {E}/{P} experts on each rank, got {E_local}")
    check_choice("backend", backend, BACKENDS)
    check_choice("drop_policy", drop_policy, POLICIES)
    keep = routing.keep
    if capacity is not None:
        fits = capacity_keep(routing.indices, routing.weights, E, capacity, drop_policy)
        keep = fits if keep is None else fits & keep
    dispatch = sort_by_expert(routing.indices, E, keep)
    rows = permute(x, dispatch)  # [kept pairs, d], grouped by expert and so by destination rank
    if capacity is None:
        received_counts = exchange_counts(dispatch.counts, group)  # [P·E_local]: from rank s for local expert e
        sent = dispatch.counts.view(P, E_local).sum(dim=1).tolist()
        received = received_counts.view(P, E_local).sum(dim=1).tolist()
        local_ids = torch.arange(E_local, device=x.device).repeat(P).repeat_interleave(received_counts)
        arrived = all_to_all(rows, received, sent, group)
        returned = all_to_all(run_local_experts(arrived, local_ids, experts, backend), sent, received, group)
    else:
        expert = routing.indices.reshape(-1)[dispatch.order[: dispatch.num_kept]]
        slot = expert * capacity + torch.arange(dispatch.num_kept, device=x.device) - dispatch.offsets[expert]
        buffer = x.new_zeros(E * capacity, x.shape[1]).index_copy(0, slot, rows)  # [E, C] rows, zero-padded
        sent = received = [E_local * capacity] * P
        local_ids = torch.arange(E_local, device=x.device).repeat_interleave(capacity).repeat(P)
        arrived = all_to_all(buffer, received, sent, group)
        out = all_to_all(run_local_experts(arrived, local_ids, experts, backend), sent, received, group)
        returned = out.index_select(0, slot)
    y = unpermute_and_combine(returned, dispatch, routing.weights)
    row_bytes = x.shape[1] * x.element_size()
    stats = {
        "sent_rows": sent,
        "received_rows": received,
        "sent_bytes": [r * row_bytes for r in sent],
        "received_bytes": [r * row_bytes for r in received],
        "dropped_pairs": 0 if keep is None else int((~keep).sum()),
    }
    return y, stats


class ExpertParallelMoE(nn.Module):
    """An MoE layer whose E experts are sharded over the ``group``'s P ranks (E/P each); the router is replicated
    (the same weights on every rank, as data parallelism keeps them). ``capacity_factor`` switches to the
    fixed-size exchange with C = ceil(cf · T · k / E) rows per (rank, expert), T the largest batch of any rank.
    After each call ``last_routing`` and ``last_stats`` say what was routed and moved."""

    def __init__(
        self,
        d_model: int,
        d_ff: int,
        E: int,
        k: int,
        activation: str = "swiglu",
        backend: str = "vectorized",
        router: str = "topk",
        capacity_factor: float | None = None,
        drop_policy: str = "arrival",
        group=None,
        **router_options,
    ):
        super().__init__()
        if not dist.is_initialized():
            raise ValueError("group: expert parallelism needs an initialized torch.distributed process group")
        P = dist.get_world_size(group)
        if E % P:
            raise ValueError(f"E={E} must be a multiple of the number of ranks {P}")
        check_choice("backend", backend, BACKENDS)
        check_choice("drop_policy", drop_policy, POLICIES)
        if capacity_factor is not None:
            check_number("capacity_factor", capacity_factor, positive=True)
        if router == "expert_choice":
            raise ValueError("router='expert_choice' decides over the whole batch and is not expert-parallel here")
        self.router = Router(d_model, E, k, router, **router_options)
        self.experts = Experts(E // P, d_model, d_ff, activation)
        self.d_model, self.E, self.k, self.backend, self.group = d_model, E, k, backend, group
        self.capacity_factor, self.drop_policy = capacity_factor, drop_policy
        self.last_routing: Routing | None = None
        self.last_stats: dict = {}

    @classmethod
    def from_layer(cls, layer: MoELayer, group=None) -> "ExpertParallelMoE":
        """This rank's shard of a single-process ``layer``: its router and experts ``r·E/P … (r+1)·E/P − 1``."""
        r = layer.router
        ep = cls(layer.d_model, layer.experts.d_ff, layer.E, layer.k, layer.experts.activation, layer.backend,
                 r.method, layer.capacity_factor, layer.drop_policy, group, order=r.order, renormalize=r.renormalize,
                 n_groups=r.n_groups, topk_groups=r.topk_groups, jitter_eps=r.jitter_eps)  # fmt: skip
        ep.router.load_state_dict(layer.router.state_dict())
        shard = slice(dist.get_rank(group) * ep.experts.E, (dist.get_rank(group) + 1) * ep.experts.E)
        with torch.no_grad():
            ep.experts.w1.copy_(layer.experts.w1[shard])
            ep.experts.w2.copy_(layer.experts.w2[shard])
        return ep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., d_model] -> [..., d_model] for this rank's tokens."""
        check_hidden("x", x, self.d_model)
        tokens = x.reshape(-1, self.d_model)
        routing = self.router(tokens)
        capacity = None
        if self.capacity_factor is not None:
            T = torch.tensor(tokens.shape[0], device=tokens.device)
            dist.all_reduce(T, op=dist.ReduceOp.MAX, group=self.group)  # every rank must send the same C rows
            capacity = expert_capacity(int(T), self.E, self.k, self.capacity_factor)
        y, self.last_stats = expert_parallel_moe(
            tokens, routing, self.experts, self.E, self.group, self.backend, capacity, self.drop_policy
        )
        self.last_routing = routing
        return y.reshape(x.shape)
