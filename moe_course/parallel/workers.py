"""Worker functions for :func:`~moe_course.parallel.launch.run_workers` (importable, as spawned workers need), and
the single-process references they are checked against.

A *case* is a dict that fixes everything by its seed: the layer's sizes (``d_model``, ``d_ff``, ``E``, ``k``,
``activation``, ``backend``), ``tokens`` per rank, optionally ``capacity_factor``, optionally a fixed routing
(``indices`` [T, k] over the concatenated batch, with router weights drawn from the seed, and optionally a fixed
``capacity``) instead of the router, and optionally ``ep_size`` (expert-parallel groups smaller than the world).
Every rank builds the same single-process layer and batch from it and runs its shard; the caller compares with
:func:`reference`.
"""

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..backends import loop_moe
from ..capacity import capacity_of, keep_within_capacity
from ..config import MoEConfig
from ..env import THREADS, torch_threads
from ..factory import MoE
from ..layer import MoELayer
from ..model import TinyLM
from .data import average_gradients, shard_state_dict
from .exchange import AllToAllExchange


def build_case(case: dict) -> tuple:
    """(single-process layer, x [T, d], weights [T, k] or None, dy [T, d]) for the concatenated batch."""
    torch.manual_seed(case["seed"])
    options = dict(capacity_factor=case.get("capacity_factor"), backend=case.get("backend", "vectorized"))
    config = MoEConfig(case["d_model"], case["d_ff"], case["E"], case["k"], case.get("activation", "swiglu"), **options)
    layer = MoELayer(config)
    T = sum(case["tokens"])
    x = torch.randn(T, case["d_model"])
    dy = torch.randn(T, case["d_model"])
    weights = torch.softmax(torch.randn(T, case["k"]), dim=-1) if "indices" in case else None
    return layer, x, weights, dy


def case_capacity(case: dict) -> int | None:
    """Rows each rank may send to each expert: the case's ``capacity``, or C from its ``capacity_factor`` and the
    largest rank's batch (as the layer computes it), or None (dropless)."""
    if "capacity_factor" in case:
        return capacity_of(max(case["tokens"]), case["E"], case["k"], case["capacity_factor"])
    return case.get("capacity")


def shard(layer: MoELayer, exchange: AllToAllExchange) -> MoELayer:
    """This rank's shard of a single-process ``layer``: the same configuration and router, the experts it holds."""
    ep = MoELayer(layer.config, exchange)
    ep.load_state_dict(shard_state_dict(ep, layer.state_dict()))
    return ep


def ep_case(rank: int, world_size: int, case: dict, backend=None) -> dict:
    """This rank's shard of the case, forward and backward: outputs, gradients, the routing's ``indices``, dropped
    pairs and the traffic.
    ``backend`` replaces the layer's for the experts held here, in a case with a fixed routing (a test's hook)."""
    layer, x, weights, dy = build_case(case)
    start = sum(case["tokens"][:rank])
    rows = slice(start, start + case["tokens"][rank])
    x_local = x[rows].clone().requires_grad_()
    ep = shard(layer, AllToAllExchange.for_ep_size(case.get("ep_size", world_size)))
    result = {}
    if "indices" in case:
        indices, w_local = case["indices"][rows], weights[rows].clone().requires_grad_()
        capacity = case_capacity(case)
        keep = None if capacity is None else keep_within_capacity(indices, case["E"], capacity, "arrival")
        y, traffic = ep.exchange(x_local, indices, w_local, keep, ep.experts, backend or ep.backend, capacity)
        result["dropped_pairs"] = 0 if keep is None else int((~keep).sum())
    else:
        y = ep(x_local)
        indices, traffic, result["dropped_pairs"] = (
            ep.last_routing.indices,
            ep.last_stats.traffic,
            ep.last_stats.dropped_pairs,
        )
    y.backward(dy[rows])
    w1, w2 = ep.experts.w1, ep.experts.w2  # experts that ran on no row at all have no gradient: zero
    dw1 = torch.zeros_like(w1) if w1.grad is None else w1.grad
    dw2 = torch.zeros_like(w2) if w2.grad is None else w2.grad
    result.update(y=y.detach(), dx=x_local.grad, dw1=dw1, dw2=dw2, traffic=traffic, indices=indices)
    if "indices" in case:
        result["dweights"] = w_local.grad
    else:
        result["router_grad"] = ep.router.gate.weight.grad
    return result


def ep_cases(rank: int, world_size: int, cases: list) -> list:
    """:func:`ep_case` for several cases in one launch."""
    return [ep_case(rank, world_size, case) for case in cases]


def reference(case: dict) -> tuple:
    """The single-process layer on the concatenated batch, each rank's capacity limit applied to its own tokens
    (each rank sends at most C rows per expert), on the loop backend: (results, keep masks). ``results`` has the
    output ``y``, ``dx``, ``dw1``, ``dw2``, and ``router_grad`` (the router's) or ``dweights`` (a fixed
    routing's); ``keeps`` has each rank's keep mask (None when dropless)."""
    layer, x, weights, dy = build_case(case)
    x.requires_grad_()
    if weights is not None:
        weights.requires_grad_()
    outputs, keeps = [], []
    capacity = case_capacity(case)
    for rows in torch.split(torch.arange(x.shape[0]), case["tokens"]):
        if weights is None:
            routing = layer.router(x[rows])
            indices, w = routing.indices, routing.weights
        else:
            indices, w = case["indices"][rows], weights[rows]
        keep = None if capacity is None else keep_within_capacity(indices, case["E"], capacity, "arrival")
        outputs.append(loop_moe(x[rows], indices, w, keep, layer.experts))
        keeps.append(keep)
    y = torch.cat(outputs)
    y.backward(dy)
    results = dict(y=y.detach(), dx=x.grad, dw1=layer.experts.w1.grad, dw2=layer.experts.w2.grad)
    if weights is None:
        results["router_grad"] = layer.router.gate.weight.grad
    else:
        results["dweights"] = weights.grad
    return results, keeps


def tinylm_case(case: dict) -> tuple:
    """(single-process TinyLM, inputs [W·B, S], targets [W·B, S]) from a case with ``seed``, ``world_size``,
    ``batch`` (sequences per rank) and ``config`` (a :class:`~moe_course.model.TinyLMConfig`)."""
    torch.manual_seed(case["seed"])
    config = case["config"]
    model = TinyLM(config)
    ids = torch.randint(0, config.vocab_size, (case["world_size"] * case["batch"], config.seq_len + 1))
    return model, ids[:, :-1], ids[:, 1:]


@torch_threads(THREADS)
def train_steps(model: TinyLM, x: torch.Tensor, y: torch.Tensor, steps: int, sync=None) -> list:
    """``steps`` SGD steps of next-token cross-entropy on one batch (plain SGD: a gradient off by a constant factor
    shows in the parameters, where Adam would normalize it away); ``sync(model)`` runs between the backward
    pass and the step (data parallelism's gradient averaging). Returns the parameters after each step. One torch
    thread, as :mod:`moe_course.train` trains: the matrices are too small to share, and ranks share the cores."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    snapshots = []
    for _ in range(steps):
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if sync is not None:
            sync(model)
        optimizer.step()
        snapshots.append({name: p.detach().clone() for name, p in model.named_parameters()})
    return snapshots


def data_parallel_tinylm(rank: int, world_size: int, case: dict) -> list:
    """This rank's replica of :func:`tinylm_case`'s model, its MoE experts sharded over an expert-parallel group of
    ``case["ep_size"]`` ranks, trained on its ``batch`` sequences with :func:`average_gradients` between backward
    and step: the parameters after each of ``case["steps"]`` steps."""
    full, x, y = tinylm_case(case)
    model = TinyLM(case["config"], AllToAllExchange.for_ep_size(case["ep_size"]))
    model.load_state_dict(shard_state_dict(model, full.state_dict()))
    rows = slice(rank * case["batch"], (rank + 1) * case["batch"])
    return train_steps(model, x[rows], y[rows], case["steps"], average_gradients)


def moe_layout(rank: int, world_size: int, ep_size: int) -> dict:
    """What ``MoE(..., ep_size=ep_size)`` builds on this rank: the layer and its exchange, the experts it holds, its
    expert-parallel group (the ranks it exchanges tokens with) and its replica group (the ranks holding the same
    experts, with which it sums their gradients)."""
    layer = MoE(16, num_experts=4, k=2, d_ff=24, ep_size=ep_size)
    if layer.exchange.local:  # every expert on every rank: plain data parallelism
        group, replicas = [rank], list(range(world_size))
    else:
        group, replicas = layer.exchange.group, layer.exchange.replicas
        group = list(range(world_size)) if group is None else dist.get_process_group_ranks(group)
        replicas = [] if replicas is None else dist.get_process_group_ranks(replicas)
    return dict(
        layer=f"{type(layer).__name__} with {type(layer.exchange).__name__}",
        experts=list(range(layer.experts.first, layer.experts.first + layer.experts.E)),
        group=group,
        replicas=replicas,
    )
