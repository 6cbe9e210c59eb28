"""The all-to-all exchange, differentiable.

``torch.distributed.all_to_all_single`` moves rows between ranks but is invisible to autograd: a loss computed
after it sends no gradient back to the rows that were sent. The backward of an all-to-all is the same exchange in
reverse: what rank r received from rank s goes back to s, so the split sizes swap.

The exchanges run inside an expert-parallel group: the whole world, or, with ``ep_size`` < W, one of the W/ep_size
groups of consecutive ranks that :func:`expert_parallel_group` makes. An all-to-all trusts every rank to send what
the others expect: :func:`check_ranks_agree` checks, once, that they agree on the sizes it relies on.
"""

import torch
import torch.distributed as dist

from ..checks import check_positive_int


class AllToAll(torch.autograd.Function):
    """Rows [sum(input_splits), ...] -> [sum(output_splits), ...]; ``input_splits[s]`` rows go to rank s and
    ``output_splits[s]`` rows arrive from rank s (Python ints, as the collective needs them)."""

    @staticmethod
    def forward(ctx, x, output_splits: list, input_splits: list, group):
        ctx.output_splits, ctx.input_splits, ctx.group = output_splits, input_splits, group
        out = x.new_empty((sum(output_splits), *x.shape[1:]))
        dist.all_to_all_single(out, x.contiguous(), output_splits, input_splits, group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        return all_to_all(grad, ctx.input_splits, ctx.output_splits, ctx.group), None, None, None


def all_to_all(x: torch.Tensor, output_splits: list, input_splits: list, group=None) -> torch.Tensor:
    """Differentiable ``all_to_all_single`` with uneven splits (see :class:`AllToAll`)."""
    return AllToAll.apply(x, [int(s) for s in output_splits], [int(s) for s in input_splits], group)


def exchange_counts(counts: torch.Tensor, group=None) -> torch.Tensor:
    """Every rank sends ``counts`` [P·n] in P equal chunks, chunk s to rank s: returns what arrived, [P·n]."""
    received = torch.empty_like(counts)
    dist.all_to_all_single(received, counts, group=group)
    return received


def check_ranks_agree(layout: dict, group=None) -> None:
    """Raise ``ValueError`` on every rank of ``group`` (None: the world) unless all of them pass the same ``layout``
    {name: value}, naming the first entry that differs and its value on each rank. A collective (one
    ``all_gather_object``): every rank of the group must call it, with the same names in the same order."""
    layouts = [None] * dist.get_world_size(group)
    dist.all_gather_object(layouts, layout, group=group)
    ranks = dist.get_process_group_ranks(dist.group.WORLD if group is None else group)
    for name, value in layout.items():
        values = [other[name] for other in layouts]
        if any(v != value for v in values):
            each = ", ".join(f"{name}={v} on rank {r}" for r, v in zip(ranks, values, strict=True))
            raise ValueError(f"the ranks of the expert-parallel group disagree on {name}: {each}")


_GROUPS: dict = {}  # ep_size -> (the world they were made in, expert-parallel group, replica group)


def _group(ranks: range, W: int):
    """A process group of ``ranks``: the world itself when it is all W."""
    return dist.group.WORLD if len(ranks) == W else dist.new_group(list(ranks))


def _groups(ep_size: int) -> tuple:
    """This rank's (expert-parallel group, replica group) for ``ep_size``, made once per world: every rank creates
    every group, in the same order, as ``new_group`` is collective (and costly)."""
    if not dist.is_initialized():
        raise ValueError(f"ep_size={ep_size} needs an initialized torch.distributed process group")
    W = dist.get_world_size()
    if W % check_positive_int("ep_size", ep_size):
        raise ValueError(f"ep_size={ep_size} must divide the world size {W}")
    world, *groups = _GROUPS.get(ep_size, (None, None, None))
    if world is not dist.group.WORLD:
        rank = dist.get_rank()
        ep_groups = [range(start, start + ep_size) for start in range(0, W, ep_size)]
        replica_groups = [range(place, W, ep_size) for place in range(ep_size)]
        if ep_size == W:
            replica_groups = []  # every rank alone: no replicas
        made = [_group(ranks, W) for ranks in ep_groups + replica_groups]
        replicas = made[len(ep_groups) + rank % ep_size] if replica_groups else None
        groups = [made[rank // ep_size], replicas]
        _GROUPS[ep_size] = (dist.group.WORLD, *groups)
    return tuple(groups)


def expert_parallel_group(ep_size: int):
    """This rank's expert-parallel group: the W ranks of the initialized world form W/ep_size groups of ep_size
    consecutive ranks, ``[0, ep_size)``, ``[ep_size, 2·ep_size)``, ...; each group holds all E experts, E/ep_size
    per rank. Returns None (the whole world) when ep_size = W. Every rank must call it with the same ep_size."""
    ep_group, _ = _groups(ep_size)
    return None if ep_group is dist.group.WORLD else ep_group


def expert_replica_group(ep_size: int):
    """The ranks at this rank's place in every expert-parallel group, ``{place, place + ep_size, ...}``: they hold
    the same experts, data-parallel replicas of each other; None when there is no other (ep_size = W)."""
    _, replicas = _groups(ep_size)
    return replicas
