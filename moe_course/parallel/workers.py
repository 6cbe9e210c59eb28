"""Worker functions for :func:`~moe_course.parallel.launch.run_workers` (importable, as spawned workers need).

A *case* is a dict that fixes everything by its seed: the layer's sizes (``d_model``, ``d_ff``, ``E``, ``k``,
``activation``, ``backend``), ``tokens`` per rank, optionally ``capacity_factor``, optionally a fixed routing
(``indices`` [T, k] over the concatenated batch, with router weights drawn from the seed) instead of the router,
and optionally ``ep_size`` (expert-parallel groups smaller than the world). Every rank builds the same
single-process layer and batch from it and runs its shard; the caller compares.
"""

import torch
import torch.distributed as dist

from ..layer import MoELayer
from ..routing import Routing
from .comm import expert_parallel_group
from .layer import ExpertParallelMoE, expert_parallel_moe


def build_case(case: dict) -> tuple:
    """(single-process layer, x [T, d], weights [T, k] or None, dy [T, d]) for the concatenated batch."""
    torch.manual_seed(case["seed"])
    layer = MoELayer(case["d_model"], case["d_ff"], case["E"], case["k"], case.get("activation", "swiglu"),
                     case.get("backend", "vectorized"), capacity_factor=case.get("capacity_factor"))  # fmt: skip
    T = sum(case["tokens"])
    x = torch.randn(T, case["d_model"])
    dy = torch.randn(T, case["d_model"])
    weights = torch.softmax(torch.randn(T, case["k"]), dim=-1) if "indices" in case else None
    return layer, x, weights, dy


def ep_case(rank: int, world_size: int, case: dict) -> dict:
    """This rank's shard of the case, forward and backward: outputs, gradients and what was moved."""
    layer, x, weights, dy = build_case(case)
    start = sum(case["tokens"][:rank])
    rows = slice(start, start + case["tokens"][rank])
    x_local = x[rows].clone().requires_grad_()
    group = expert_parallel_group(case.get("ep_size", world_size))
    ep = ExpertParallelMoE.from_layer(layer, group)
    result = {}
    if weights is None:
        y = ep(x_local)
        stats = ep.last_stats
    else:
        w_local = weights[rows].clone().requires_grad_()
        scores = torch.zeros(x_local.shape[0], case["E"])
        routing = Routing(case["indices"][rows], w_local, scores, scores)
        capacity = case.get("capacity")
        y, stats = expert_parallel_moe(x_local, routing, ep.experts, case["E"], group, ep.backend, capacity)
    y.backward(dy[rows])
    w1, w2 = ep.experts.w1, ep.experts.w2  # experts that ran on no row at all have no gradient: zero
    dw1 = torch.zeros_like(w1) if w1.grad is None else w1.grad
    dw2 = torch.zeros_like(w2) if w2.grad is None else w2.grad
    result.update(y=y.detach(), dx=x_local.grad, dw1=dw1, dw2=dw2, stats=stats)
    if weights is None:
        result["router_grad"] = ep.router.gate.weight.grad
    else:
        result["dweights"] = w_local.grad
    return result


def failing_worker(rank: int, world_size: int) -> None:
    """Rank 1 raises; the others wait in a collective that will never complete."""
    if rank == 1:
        raise ValueError("rank 1 fails on purpose")
    dist.all_reduce(torch.ones(1))


def ep_cases(rank: int, world_size: int, cases: list) -> list:
    """:func:`ep_case` for several cases in one launch."""
    return [ep_case(rank, world_size, case) for case in cases]


def identity_round_trip(rank: int, world_size: int, case: dict) -> torch.Tensor:
    """Dispatch, experts that return their input unchanged, combine: the case's output on this rank's tokens,
    which must be each token times the sum of its kept weights."""
    from unittest import mock

    with mock.patch(f"{__package__}.layer.run_local_experts", lambda rows, local_ids, experts, backend: rows):
        return ep_case(rank, world_size, case)["y"]


def sleeping_worker(rank: int, world_size: int, seconds: float) -> None:
    """A worker that takes too long: the launcher's timeout must stop it."""
    import time

    time.sleep(seconds)


def ep_size_layers(rank: int, world_size: int, ep_sizes: list) -> list:
    """``MoE(16, num_experts=8, ep_size=P)`` on every rank for each P: (class name, experts held here, the size of
    this rank's expert-parallel group and its place in it), or the message of the ValueError it raised."""
    from ..layer import MoE

    built = []
    for P in ep_sizes:
        try:
            m = MoE(16, num_experts=8, k=2, ep_size=P)
            built.append((type(m).__name__, m.experts.E, dist.get_world_size(m.group), dist.get_rank(m.group)))
        except ValueError as error:
            built.append(str(error))
    return built
