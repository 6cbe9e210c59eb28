"""Expert parallelism on gloo CPU ranks: the sharded layer against the single-process layer on the concatenated
batch (outputs and gradients), adversarial routings, token conservation, the bytes cost model, and a launcher
that fails fast and leaves no process behind."""

import multiprocessing
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from moe_course.capacity import capacity_keep, expert_capacity
from moe_course.env import has_triton
from moe_course.layer import MoE, loop_moe
from moe_course.parallel import ExpertParallelMoE, dispatch_bytes, run_workers
from moe_course.parallel.workers import (
    build_case,
    ep_cases,
    ep_size_layers,
    failing_worker,
    identity_round_trip,
    sleeping_worker,
)
from moe_course.routing import Routing

SIZES = dict(d_model=16, d_ff=24, E=8)


def cases(P: int) -> list:
    uneven = {1: [13], 2: [9, 0], 4: [10, 7, 0, 12]}[P]  # a rank with no tokens at all
    even = [11] * P
    T = sum(uneven)
    one_expert = torch.zeros(T, 1, dtype=torch.int64)  # every token on expert 0 (rank 0)
    half_idle = torch.stack([torch.randperm(4, generator=torch.Generator().manual_seed(t))[:2] for t in range(T)])
    triton = dict(SIZES, k=2, tokens=uneven, seed=5, indices=half_idle, backend="triton")  # experts 4-7 idle
    return [
        dict(SIZES, k=2, tokens=uneven, seed=1),  # the router, dropless
        dict(SIZES, k=2, tokens=even, seed=2, capacity_factor=1.0),  # the router, fixed capacity
        dict(SIZES, k=1, tokens=uneven, seed=3, indices=one_expert, backend="loop"),
        dict(SIZES, k=1, tokens=uneven, seed=4, indices=one_expert, capacity=3),  # most pairs dropped
    ] + ([triton] if has_triton() else [])


def reference(case: dict, P: int) -> tuple:
    """The single-process layer on the concatenated batch (capacity limits applied per rank, as each rank sends at
    most C rows per expert): output, gradients, and each rank's routing and keep mask."""
    layer, x, weights, dy = build_case(case)
    x.requires_grad_()
    if weights is not None:
        weights.requires_grad_()
    outputs, routings = [], []
    for rows in torch.split(torch.arange(x.shape[0]), case["tokens"]):
        if weights is None:
            routing = layer.router(x[rows])
        else:
            zeros = torch.zeros(len(rows), case["E"])
            routing = Routing(case["indices"][rows], weights[rows], zeros, zeros)
        capacity = case.get("capacity")
        if "capacity_factor" in case:
            capacity = expert_capacity(max(case["tokens"]), case["E"], case["k"], case["capacity_factor"])
        if capacity is not None:
            routing.keep = capacity_keep(routing.indices, routing.weights, case["E"], capacity)
        outputs.append(loop_moe(x[rows], routing, layer.experts))
        routings.append(routing)
    y = torch.cat(outputs)
    y.backward(dy)
    grads = dict(dx=x.grad, dw1=layer.experts.w1.grad, dw2=layer.experts.w2.grad)
    grads["router_grad" if weights is None else "dweights"] = (
        layer.router.gate.weight.grad if weights is None else weights.grad
    )
    return y.detach(), grads, routings


@pytest.mark.parametrize("P", [1, 2, 4])
def test_expert_parallel_equals_the_single_process_layer(P):
    all_cases = cases(P)
    results = run_workers(ep_cases, P, all_cases)
    for n, case in enumerate(all_cases):
        ranks = [r[n] for r in results]
        y, grads, routings = reference(case, P)
        message = f"P={P}, case {n}"
        assert torch.allclose(torch.cat([r["y"] for r in ranks]), y, atol=1e-5), message
        assert torch.allclose(torch.cat([r["dx"] for r in ranks]), grads["dx"], atol=1e-5), message
        for name in ("dw1", "dw2"):  # rank r holds experts r·E/P ... (r+1)·E/P - 1
            assert torch.allclose(torch.cat([r[name] for r in ranks]), grads[name], atol=1e-5), f"{message} {name}"
        if "router_grad" in grads:  # the replicated router: its gradient is the sum over ranks
            assert torch.allclose(sum(r["router_grad"] for r in ranks), grads["router_grad"], atol=1e-5), message
        else:
            assert torch.allclose(torch.cat([r["dweights"] for r in ranks]), grads["dweights"], atol=1e-5), message
        stats = [r["stats"] for r in ranks]
        for s in range(P):  # what s sent to r is what r received from s
            assert [stats[s]["sent_rows"][r] for r in range(P)] == [stats[r]["received_rows"][s] for r in range(P)]
        for rank_stats, routing in zip(stats, routings, strict=True):
            assert rank_stats["dropped_pairs"] == int((~routing.kept()).sum())
            if routing.keep is None:  # dropless: the bytes are the cost model's, exactly
                predicted = dispatch_bytes(routing.indices, case["E"], P, case["d_model"], 4)
                assert rank_stats["sent_bytes"] == predicted, message
            else:  # fixed capacity: C rows per expert to every rank, padding included
                C = case.get("capacity") or expert_capacity(
                    max(case["tokens"]), case["E"], case["k"], case["capacity_factor"]
                )
                assert rank_stats["sent_bytes"] == [C * case["E"] // P * case["d_model"] * 4] * P, message


def test_identity_experts_return_each_token_times_its_weights():
    case = cases(4)[0] | dict(indices=torch.randint(0, 8, (29, 1)).repeat(1, 2) % 8, k=2)
    case["indices"][:, 1] = (case["indices"][:, 0] + 3) % 8  # two distinct experts per token, often off-rank
    y = torch.cat(run_workers(identity_round_trip, 4, case))
    _, x, weights, _ = build_case(case)
    assert torch.allclose(y, x * weights.sum(dim=1, keepdim=True), atol=1e-6)


def test_a_failing_rank_raises_in_the_caller_quickly_and_leaves_no_process():
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="rank 1 failed"):
        run_workers(failing_worker, 2, timeout=60)
    assert time.monotonic() - start < 30
    assert multiprocessing.active_children() == []


def test_a_hanging_run_is_stopped_at_the_timeout():
    with pytest.raises(TimeoutError, match="timeout=3"):
        run_workers(sleeping_worker, 2, 60.0, timeout=3)
    assert multiprocessing.active_children() == []


def test_dispatch_bytes_cost_model():
    indices = torch.tensor([[0, 5], [1, 2], [7, 6]])  # E = 8 on P = 2 ranks: experts 0-3 on rank 0
    assert dispatch_bytes(indices, 8, 2, d_model=4096, element_size=2) == [3 * 8192, 3 * 8192]
    keep = torch.tensor([[True, False], [True, True], [False, True]])
    assert dispatch_bytes(indices, 8, 2, 4096, 2, keep) == [3 * 8192, 1 * 8192]
    with pytest.raises(ValueError, match="P=3"):
        dispatch_bytes(indices, 8, 3, 4096, 2)


def test_expert_parallel_groups_inside_a_larger_world():
    """4 ranks, ep_size 2: groups {0, 1} and {2, 3} each hold all 8 experts, ranks 0 and 2 experts 0-3."""
    case = dict(SIZES, k=2, tokens=[10, 7, 0, 12], seed=6, ep_size=2)
    ranks = [r[0] for r in run_workers(ep_cases, 4, [case])]
    y, grads, routings = reference(case, 2)
    assert torch.allclose(torch.cat([r["y"] for r in ranks]), y, atol=1e-5)
    assert torch.allclose(torch.cat([r["dx"] for r in ranks]), grads["dx"], atol=1e-5)
    for name in ("dw1", "dw2"):  # a shard's gradient from each group; data parallelism would sum (average) them
        shards = torch.cat([ranks[0][name] + ranks[2][name], ranks[1][name] + ranks[3][name]])
        assert torch.allclose(shards, grads[name], atol=1e-5), name
    assert torch.allclose(sum(r["router_grad"] for r in ranks), grads["router_grad"], atol=1e-5)
    stats = [r["stats"] for r in ranks]
    for a, b in [(0, 1), (2, 3)]:  # rows only move inside a group
        assert stats[a]["sent_rows"][1] == stats[b]["received_rows"][0]
        assert stats[b]["sent_rows"][0] == stats[a]["received_rows"][1]
    for rank_stats, routing in zip(stats, routings, strict=True):
        assert rank_stats["sent_bytes"] == dispatch_bytes(routing.indices, 8, 2, case["d_model"], 4)


def test_ep_size_builds_the_expert_parallel_layer_in_its_group():
    results = run_workers(ep_size_layers, 4, [4, 2, 3])
    assert [r[:2] for r in results] == [
        [("ExpertParallelMoE", 2, 4, rank), ("ExpertParallelMoE", 4, 2, rank % 2)] for rank in range(4)
    ]
    assert all(r[2] == "ep_size=3 must divide the world size 4" for r in results)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="ep_size"):
        MoE(16, num_experts=8, ep_size=2)  # no process group of that size
    with pytest.raises(ValueError, match="group"):
        ExpertParallelMoE(16, 24, 8, 2)  # no process group
    with pytest.raises(ValueError, match="world_size"):
        run_workers(failing_worker, 0)


def test_torchrun_entry_point_reports_bytes_equal_to_the_cost_model():
    torchrun = Path(sys.executable).parent / "torchrun"
    command = [str(torchrun), "--standalone", "--nproc-per-node=2", "-m", "moe_course.parallel", "--tokens", "40",
               "--d-model", "16", "--d-ff", "32", "--steps", "2"]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True).stdout
    assert "2 ranks (gloo)" in out
    reports = [line for line in out.splitlines() if line.startswith("rank ")]
    assert len(reports) == 2
    for line in reports:
        sent = int(line.split("sent ")[1].split(" bytes")[0])
        assert sent == int(line.split("cost model ")[1].split(";")[0]) == 40 * 2 * 16 * 4
