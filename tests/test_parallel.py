"""Expert parallelism on gloo CPU ranks: the sharded layer against the single-process layer on the concatenated
batch (outputs and gradients), adversarial routings, token conservation, the bytes cost model, and a launcher
that fails fast and leaves no process behind."""

import math
import multiprocessing
import re
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch

from moe_course.config import MoEConfig
from moe_course.env import has_triton
from moe_course.factory import MoE
from moe_course.model import TinyLMConfig
from moe_course.parallel import AllToAllExchange, dispatch_bytes, exchange_bytes_per_token, run_workers
from moe_course.parallel.workers import (
    build_case,
    case_capacity,
    data_parallel_tinylm,
    ep_cases,
    reference,
    tinylm_case,
    train_steps,
)
from tests.parallel_workers import (
    dying_while_sending,
    ep_size_layers,
    exiting_silently,
    failing_worker,
    identity_round_trip,
    mismatched_layers,
    sleeping_worker,
    starting_a_child,
)

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


@pytest.mark.parametrize("P", [1, 2, 4])
def test_expert_parallel_equals_the_single_process_layer(P):
    all_cases = cases(P)
    results = run_workers(ep_cases, P, all_cases)
    for n, case in enumerate(all_cases):
        ranks = [r[n] for r in results]
        expected, keeps = reference(case)
        message = f"P={P}, case {n}"
        for name in ("y", "dx", "dw1", "dw2", "dweights"):  # rank r holds experts r·E/P ... (r+1)·E/P - 1
            if name in expected:
                got = torch.cat([r[name] for r in ranks])
                assert torch.allclose(got, expected[name], atol=1e-5), f"{message} {name}"
        if "router_grad" in expected:  # the replicated router: its gradient is the sum over ranks
            assert torch.allclose(sum(r["router_grad"] for r in ranks), expected["router_grad"], atol=1e-5), message
        traffic = [r["traffic"] for r in ranks]
        for s in range(P):  # what s sent to r is what r received from s
            assert [traffic[s].sent_rows[r] for r in range(P)] == [traffic[r].received_rows[s] for r in range(P)]
        for rank, keep in zip(ranks, keeps, strict=True):
            assert rank["dropped_pairs"] == (0 if keep is None else int((~keep).sum()))
        C = case_capacity(case)
        for rank in ranks:
            if C is None:  # dropless: the bytes are the cost model's, exactly
                predicted = dispatch_bytes(rank["indices"], case["E"], P, case["d_model"], 4)
                assert rank["traffic"].sent_bytes == predicted, message
            else:  # fixed capacity: C rows per expert to every rank, padding included
                assert rank["traffic"].sent_bytes == [C * case["E"] // P * case["d_model"] * 4] * P, message


def test_identity_experts_return_each_token_times_its_weights():
    case = cases(4)[0] | dict(indices=torch.randint(0, 8, (29, 1)).repeat(1, 2) % 8, k=2)
    case["indices"][:, 1] = (case["indices"][:, 0] + 3) % 8  # two distinct experts per token, often off-rank
    y = torch.cat(run_workers(identity_round_trip, 4, case))
    _, x, weights, _ = build_case(case)
    assert torch.allclose(y, x * weights.sum(dim=1, keepdim=True), atol=1e-6)


@pytest.mark.parametrize(
    "worker, message",
    [
        (failing_worker, "(?s)rank 1 failed:.*ValueError: rank 1 fails on purpose"),  # the others wait in a collective
        (exiting_silently, "rank 1 exited with code 0 before returning a result"),
        (dying_while_sending, "rank 1 was killed by signal 9 before returning a result"),
    ],
)
def test_a_failing_rank_is_reported_at_once_and_leaves_no_process(worker, message):
    start = time.monotonic()
    with pytest.raises(RuntimeError, match=message):
        run_workers(worker, 2, timeout=60)
    assert time.monotonic() - start < 20  # the others would run for 60 s
    assert multiprocessing.active_children() == []


def test_a_hanging_run_is_stopped_at_the_timeout():
    start = time.monotonic()
    with pytest.raises(TimeoutError, match=r"timeout=3 s \(ranks running: \[0, 1\]\)"):
        run_workers(sleeping_worker, 2, 60.0, timeout=3)
    assert time.monotonic() - start < 3 + 5
    assert multiprocessing.active_children() == []


def still_running(folder: Path, world_size: int) -> list:
    """The children that :func:`~tests.parallel_workers.starting_a_child` started (one per rank, its pid in
    ``folder``) still running 2 s on: a killed process takes a moment to go; a zombie, dead but not reaped, is gone."""
    pids = [int((folder / f"{rank}.pid").read_text()) for rank in range(world_size)]
    end = time.monotonic() + 2
    while True:
        states = [
            subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True).stdout for pid in pids
        ]
        alive = [pid for pid, state in zip(pids, states, strict=True) if state.strip()[:1] not in ("", "Z")]
        if not alive or time.monotonic() > end:
            return alive
        time.sleep(0.05)


def test_a_run_returns_large_results_whole_and_stops_what_its_workers_started(tmp_path):
    n = 8_000_000  # 32 MB from each rank
    results = run_workers(starting_a_child, 2, str(tmp_path), n)
    assert all(r.shape == (n,) and bool((r == rank).all()) for rank, r in enumerate(results))
    assert still_running(tmp_path, 2) == []


def test_a_failed_run_stops_what_its_workers_started(tmp_path):
    with pytest.raises(RuntimeError, match="rank 0 failed"):
        run_workers(starting_a_child, 1, str(tmp_path), 1, 0)
    assert still_running(tmp_path, 1) == []


def nested_worker():
    def worker(rank, world_size):
        return rank

    return worker


@pytest.fixture
def notebook(monkeypatch) -> types.ModuleType:
    """A notebook's or an interactive session's ``__main__`` (no file the workers could import), defining ``worker``
    and ``Setting``."""
    module = types.ModuleType("__main__")
    exec("def worker(rank, world_size):\n    return rank\n\nclass Setting:\n    pass", module.__dict__)
    monkeypatch.setitem(sys.modules, "__main__", module)
    return module


def test_a_worker_the_children_cannot_import_is_refused_before_any_starts(notebook):
    for fn in (notebook.worker, lambda rank, world_size: rank, nested_worker()):
        with pytest.raises(ValueError, match=f"^fn={re.escape(fn.__qualname__)} .*cannot (be )?import"):
            run_workers(fn, 2)
    assert multiprocessing.active_children() == []


def test_an_argument_the_children_cannot_import_fails_with_its_cause(notebook):
    with pytest.raises(RuntimeError, match="(?s)rank 0 failed:.*Can't get attribute 'Setting'"):
        run_workers(sleeping_worker, 1, notebook.Setting())


def test_ranks_that_disagree_on_a_size_the_exchange_relies_on_all_raise():
    """Rank 1 builds its layer with one size changed: every rank names it, instead of exchanging garbage."""
    differences = [dict(E=8), dict(d_model=32), dict(dtype=torch.float64), dict(capacity_factor=4.0), {}]
    results = run_workers(mismatched_layers, 2, differences)
    expected = [
        "E=4 on rank 0, E=8 on rank 1",
        "d_model=16 on rank 0, d_model=32 on rank 1",
        "dtype=torch.float32 on rank 0, dtype=torch.float64 on rank 1",
        "capacity=2 on rank 0, capacity=5 on rank 1",  # ceil(cf · T · k / E) with T=5, k=1, E=4
    ]
    messages = [f"the ranks of the expert-parallel group disagree on {each.split('=')[0]}: {each}" for each in expected]
    assert results == [messages + [1]] * 2  # agreeing ranks: three calls, one check (no host sync once agreed)


def test_dispatch_bytes_cost_model():
    indices = torch.tensor([[0, 5], [1, 2], [7, 6]])  # E = 8 on P = 2 ranks: experts 0-3 on rank 0
    assert dispatch_bytes(indices, 8, 2, d_model=4096, element_size=2) == [3 * 8192, 3 * 8192]
    keep = torch.tensor([[True, False], [True, True], [False, True]])
    assert dispatch_bytes(indices, 8, 2, 4096, 2, keep) == [3 * 8192, 1 * 8192]
    with pytest.raises(ValueError, match="P=3"):
        dispatch_bytes(indices, 8, 3, 4096, 2)


def test_bytes_per_token_is_the_dispatch_cost_model_under_even_routing():
    """Every expert chosen equally often: each rank receives the same rows, and per token the off-rank share of a
    dispatch, sent twice (dispatch and combine), is the per-token model."""
    E, P, k, T, d = 8, 4, 2, 64, 16
    indices = torch.arange(T * k).remainder(E).reshape(T, k)  # rank r sends these rows from its T tokens
    sent = dispatch_bytes(indices, E, P, d, 2)
    assert len(set(sent)) == 1
    off_rank = sum(sent) - sent[0]  # from the point of view of rank 0, the rows for the other ranks
    assert exchange_bytes_per_token(d, k, P, 2) == 2 * off_rank / T
    with pytest.raises(ValueError, match="^element_size"):
        exchange_bytes_per_token(d, k, P, 0)


def test_expert_parallel_groups_inside_a_larger_world():
    """4 ranks, ep_size 2: groups {0, 1} and {2, 3} each hold all 8 experts, ranks 0 and 2 experts 0-3."""
    case = dict(SIZES, k=2, tokens=[10, 7, 0, 12], seed=6, ep_size=2)
    ranks = [r[0] for r in run_workers(ep_cases, 4, [case])]
    expected, _ = reference(case)
    assert torch.allclose(torch.cat([r["y"] for r in ranks]), expected["y"], atol=1e-5)
    assert torch.allclose(torch.cat([r["dx"] for r in ranks]), expected["dx"], atol=1e-5)
    for name in ("dw1", "dw2"):  # a shard's gradient from each group: their sum is the whole batch's
        shards = torch.cat([ranks[0][name] + ranks[2][name], ranks[1][name] + ranks[3][name]])
        assert torch.allclose(shards, expected[name], atol=1e-5), name
    assert torch.allclose(sum(r["router_grad"] for r in ranks), expected["router_grad"], atol=1e-5)
    traffic = [r["traffic"] for r in ranks]
    for a, b in [(0, 1), (2, 3)]:  # rows only move inside a group
        assert traffic[a].sent_rows[1] == traffic[b].received_rows[0]
        assert traffic[b].sent_rows[0] == traffic[a].received_rows[1]
    for rank in ranks:
        assert rank["traffic"].sent_bytes == dispatch_bytes(rank["indices"], 8, 2, case["d_model"], 4)


def test_two_expert_parallel_groups_train_like_one_process():
    """A 4-rank world as 2 expert-parallel groups × 2 data-parallel replicas: after every SGD step each rank's
    parameters (its experts' rows) equal one process's trained on the concatenated batch."""
    config = TinyLMConfig(vocab_size=13, seq_len=8, n_layers=2, n_heads=2, moe=MoEConfig(16, 24, E=4, k=2))
    case = dict(seed=0, world_size=4, batch=2, config=config, ep_size=2, steps=3)
    runs = run_workers(data_parallel_tinylm, 4, case, timeout=120)
    full, x, y = tinylm_case(case)
    expected = train_steps(full, x, y, case["steps"])
    for step in range(case["steps"]):
        for rank, snapshots in enumerate(runs):
            for name, got in snapshots[step].items():
                want = expected[step][name]
                if ".experts." in name:  # rank r holds experts (r % 2)·2 and (r % 2)·2 + 1
                    want = want[(rank % 2) * 2 : (rank % 2) * 2 + 2]
                assert torch.allclose(got, want, rtol=0, atol=1e-6), f"step {step}, rank {rank}, {name}"
    assert not torch.allclose(expected[-1]["tok_emb.weight"], full_start(case)["tok_emb.weight"])  # it trained


def full_start(case: dict) -> dict:
    return dict(tinylm_case(case)[0].named_parameters())


def test_ep_size_builds_the_expert_parallel_layer_in_its_group():
    results = run_workers(ep_size_layers, 4, [4, 2, 1, 3])
    for rank, (whole, halves, alone, _) in enumerate(results):
        assert whole == dict(layer="MoELayer with AllToAllExchange", experts=[rank], group=[0, 1, 2, 3], replicas=[])
        assert halves["experts"] == [2 * (rank % 2), 2 * (rank % 2) + 1]
        assert halves["group"] == ([0, 1] if rank < 2 else [2, 3])
        assert halves["replicas"] == [rank % 2, rank % 2 + 2]
        assert alone == dict(
            layer="MoELayer with LocalExchange", experts=[0, 1, 2, 3], group=[rank], replicas=[0, 1, 2, 3]
        )
    assert all(r[3] == "ep_size=3 must divide the world size 4" for r in results)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="ep_size"):
        MoE(16, num_experts=8, ep_size=2)  # no process group of that size
    with pytest.raises(ValueError, match="group"):
        AllToAllExchange()  # no process group
    with pytest.raises(ValueError, match="world_size"):
        run_workers(failing_worker, 0)
    for timeout in (math.nan, math.inf, "5", 0, -1.0, True):
        with pytest.raises(ValueError, match="^timeout"):
            run_workers(failing_worker, 2, timeout=timeout)


@pytest.mark.parametrize("ep_size", [2, 1])
def test_torchrun_entry_point_reports_bytes_equal_to_the_cost_model(ep_size):
    torchrun = Path(sys.executable).parent / "torchrun"
    # One node: the rendezvous address is the loopback, not whatever this machine's hostname resolves to.
    command = [str(torchrun), "--standalone", "--local-addr=127.0.0.1", "--nproc-per-node=2", "-m",
               "moe_course.parallel", "--tokens", "40", "--d-model", "16", "--d-ff", "32", "--steps", "2",
               "--ep-size", str(ep_size)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-4000:]
    out = done.stdout
    assert f"2 ranks (gloo) in expert-parallel groups of {ep_size}" in out
    reports = [line for line in out.splitlines() if line.startswith("rank ")]
    assert len(reports) == 2
    for line in reports:
        sent = int(line.split("sent ")[1].split(" bytes")[0])
        assert sent == int(line.split("cost model ")[1].split(";")[0]) == 40 * 2 * 16 * 4
