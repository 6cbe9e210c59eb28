"""The expert-parallel exchange: E experts spread over the P ranks of a process group, E/P on each.

Rank r holds experts ``r·E/P … (r+1)·E/P − 1``. Every call: sort the local (token, slot) pairs by expert, which
also groups them by destination rank; exchange the counts; send the rows (all-to-all, dispatch); run the local
experts on what arrived, with any of the layer's backends; send the results back (all-to-all, combine);
un-permute and take the weighted sum. Dropless by default; with a capacity, every rank sends exactly C rows per
expert (zero-padded), the fixed-size exchange of GShard and Switch, the pairs that do not fit already dropped.
Before the first exchange of a layout (E, d_model, dtype, capacity) the ranks check that they all share it: a rank
built with another E would otherwise read garbage counts.
"""

import torch
import torch.distributed as dist

from ..checks import check_number, check_positive_int
from ..dispatch import group_pairs, permute, unpermute_and_combine
from ..exchange import Traffic
from ..experts import Experts
from .comm import all_to_all, check_ranks_agree, exchange_counts, expert_parallel_group, expert_replica_group


def run_local_experts(rows: torch.Tensor, local_ids: torch.Tensor, experts: Experts, backend) -> torch.Tensor:
    """Each row through its local expert, unweighted: rows [n, d], local_ids [n] -> [n, d]. The backend sorts the
    rows by expert itself, so the rows may arrive in any order."""
    n = rows.shape[0]
    out = backend(rows, local_ids.view(n, 1), rows.new_ones(n, 1), None, experts)
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


def exchange_bytes_per_token(d_model: int, k: int, P: int, element_size: float) -> float:
    """Lesson 07's cost model under even routing: bytes one token sends to other ranks in one MoE layer's forward,
    the dispatch and the combine, each ``k · d_model · element_size`` bytes of which (P - 1)/P leave the rank."""
    check_positive_int("d_model", d_model)
    check_positive_int("k", k)
    check_positive_int("P", P)
    check_number("element_size", element_size, positive=True)
    return 2 * k * d_model * element_size * (P - 1) / P


class AllToAllExchange:
    """The experts sharded over the ranks of ``group`` (None: the whole world), tokens moved by all-to-all.

    ``replicas``: the group of ranks that hold the same experts as this one (one per expert-parallel group), over
    which :func:`~moe_course.parallel.data.average_gradients` sums their gradients; None when there is no other.
    """

    local = False

    def __init__(self, group=None, replicas=None):
        if not dist.is_initialized():
            raise ValueError("group: expert parallelism needs an initialized torch.distributed process group")
        self.group, self.replicas = group, replicas
        self._agreed = set()  # the layouts every rank of the group was checked to share

    @classmethod
    def for_ep_size(cls, ep_size: int) -> "AllToAllExchange":
        """This rank's expert-parallel group of ``ep_size`` consecutive ranks (see
        :func:`~moe_course.parallel.comm.expert_parallel_group`), and its replicas."""
        return cls(expert_parallel_group(ep_size), expert_replica_group(ep_size))

    def shard(self, E: int) -> tuple:
        """(global id of the first expert held here, E/P)."""
        P = dist.get_world_size(self.group)
        if E % P:
            raise ValueError(f"E={E} must be a multiple of the number of ranks in the expert-parallel group, {P}")
        return dist.get_rank(self.group) * (E // P), E // P

    def capacity_tokens(self, T: int) -> int:
        """The largest batch of any rank of the group: every rank must send the same C rows per expert."""
        largest = torch.tensor(T)
        dist.all_reduce(largest, op=dist.ReduceOp.MAX, group=self.group)
        return int(largest)

    def _check_layout(self, E: int, x: torch.Tensor, capacity: int | None) -> None:
        """Every rank of the group must exchange rows of one width and dtype, for the same E experts and capacity.
        Checked once per layout (a collective), so the steady state adds no host sync; every rank must change its
        layout at the same call."""
        layout = dict(E=E, d_model=x.shape[1], dtype=x.dtype, capacity=capacity)
        key = tuple(layout.values())
        if key not in self._agreed:
            check_ranks_agree(layout, self.group)
            self._agreed.add(key)

    def __call__(self, x, indices, weights, keep, experts: Experts, backend, capacity: int | None) -> tuple:
        """(y [T, d], :class:`~moe_course.exchange.Traffic`) for this rank's tokens x [T, d] routed over all E
        experts; ``experts`` are the E/P held here. ``capacity``: rows each rank sends to each expert (fixed-size
        exchange); ``keep`` must already hold at most that many pairs per expert."""
        P = dist.get_world_size(self.group)
        E_local = experts.E
        E = E_local * P
        self._check_layout(E, x, capacity)
        dispatch = group_pairs(indices, E, keep)
        rows = permute(x, dispatch)  # [kept pairs, d], grouped by expert and so by destination rank
        if capacity is None:
            received_counts = exchange_counts(dispatch.counts, self.group)  # [P·E_local]: from rank s, expert e
            sent = dispatch.counts.view(P, E_local).sum(dim=1).tolist()
            received = received_counts.view(P, E_local).sum(dim=1).tolist()
            local_ids = torch.arange(E_local, device=x.device).repeat(P).repeat_interleave(received_counts)
            arrived = all_to_all(rows, received, sent, self.group)
            out = run_local_experts(arrived, local_ids, experts, backend)
            returned = all_to_all(out, sent, received, self.group)
        else:
            num_kept = dispatch.num_kept
            expert = indices.reshape(-1)[dispatch.order[:num_kept]]
            slot = expert * capacity + dispatch.ranks[:num_kept]
            buffer = x.new_zeros(E * capacity, x.shape[1]).index_copy(0, slot, rows)  # [E, C] rows, zero-padded
            sent = received = [E_local * capacity] * P
            local_ids = torch.arange(E_local, device=x.device).repeat_interleave(capacity).repeat(P)
            arrived = all_to_all(buffer, received, sent, self.group)
            out = all_to_all(run_local_experts(arrived, local_ids, experts, backend), sent, received, self.group)
            returned = out.index_select(0, slot)
        y = unpermute_and_combine(returned, dispatch, weights)
        return y, Traffic(sent, received, x.shape[1] * x.element_size())
