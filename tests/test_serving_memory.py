import itertools
import math

import pytest
import torch

from moe_course.flops import MIXTRAL_8X7B, count_model_params, ffn_params
from moe_course.serving.memory import (
    compute_bound_batch,
    decode_time_bound,
    distinct_experts,
    expected_distinct_experts,
    expert_bytes,
    missing_expert_cost,
    resident_bytes,
    touched_bytes,
)

H100 = {"bandwidth": 3.35e12, "peak_flops": 989e12}  # HBM3 bytes/s, dense bf16 FLOP/s (SXM)


def test_the_seed_numbers_of_the_lesson():
    params = count_model_params(MIXTRAL_8X7B)
    assert f"{params['total']:.3g}" == "4.67e+10" and f"{params['active']:.3g}" == "1.29e+10"  # 46.7B, 12.9B
    one = expert_bytes(4096, 14336, bytes_per_param=2, gated=True)
    assert one == 2 * 4096 * 14336 * 3 == 352_321_536 and round(one / 1e6) == 352  # decimal MB, bf16
    assert resident_bytes(4096, 14336, 8, 2, gated=True) == 8 * one


def test_expected_distinct_experts_enumerated_exactly():
    # every way B tokens can each pick k distinct experts of E, all equally likely
    for E, k, B in [(3, 1, 2), (4, 2, 3), (5, 2, 2), (4, 3, 2), (6, 1, 4)]:
        choices = list(itertools.combinations(range(E), k))
        batches = list(itertools.product(choices, repeat=B))
        mean = sum(len(set().union(*batch)) for batch in batches) / len(batches)
        assert expected_distinct_experts(E, k, B) == pytest.approx(mean, rel=1e-12), (E, k, B)
    assert expected_distinct_experts(3, 1, 2) == pytest.approx(5 / 3)  # 3 of 9 pairs share their expert
    assert expected_distinct_experts(8, 2, 0) == 0 and expected_distinct_experts(8, 2, 1) == pytest.approx(2)
    assert expected_distinct_experts(8, 8, 5) == 8  # k = E: every token touches all


def routed_batches(n, B, E, k, skew, seed):
    """n batches of B tokens, each picking k distinct experts from softmax(skew · linspace(1, 0, E))."""
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(skew * torch.linspace(1, 0, E), -1).expand(n * B, E)
    return torch.multinomial(probs, k, generator=g).view(n, B, k)


@pytest.mark.parametrize("E, k, B", [(8, 2, 1), (8, 2, 4), (64, 6, 16), (128, 8, 32)])
def test_expected_distinct_experts_matches_a_uniform_router_and_a_skewed_one_touches_fewer(E, k, B):
    uniform = routed_batches(2000, B, E, k, skew=0.0, seed=B)
    measured = sum(distinct_experts(batch) for batch in uniform) / len(uniform)
    assert measured == pytest.approx(expected_distinct_experts(E, k, B), rel=0.02)
    if B > 1:  # one token always touches exactly k
        skewed = routed_batches(2000, B, E, k, skew=4.0, seed=B)
        assert sum(distinct_experts(batch) for batch in skewed) / len(skewed) < 0.95 * measured


def test_distinct_experts_counts_ids_not_pairs():
    assert distinct_experts(torch.tensor([[0, 1], [1, 0], [3, 1]])) == 3
    assert distinct_experts(torch.zeros(0, 2, dtype=torch.int64)) == 0


def test_touched_bytes_grow_from_k_experts_to_all_e():
    one = expert_bytes(1024, 4096)
    assert touched_bytes(1024, 4096, E=8, k=2, B=1) == pytest.approx(2 * one)
    assert touched_bytes(1024, 4096, E=8, k=2, B=200) == pytest.approx(resident_bytes(1024, 4096, 8))
    assert touched_bytes(1024, 4096, E=8, k=2, B=0) == 0


def test_a_small_decode_step_is_memory_bound_and_its_time_is_bytes_over_bandwidth():
    t = decode_time_bound(4096, 14336, 8, 2, 1, bytes_per_param=2, gated=True, **H100)
    assert t.bound == "memory" and t.memory_time == t.time
    assert t.memory_time == pytest.approx(2 * 352_321_536 / 3.35e12)  # two experts read: 0.21 ms
    assert t.compute_time == pytest.approx(2 * 2 * ffn_params(4096, 14336, True) / 989e12)
    big = decode_time_bound(4096, 14336, 8, 2, 4096, bytes_per_param=2, gated=True, **H100)
    assert big.bound == "compute" and big.time == big.compute_time


def test_a_dense_layer_turns_compute_bound_at_the_ridge_point():
    # reading 2 bytes per weight to spend 2 FLOPs per token on it: B = 2 · peak / (2 · bandwidth) = 295.2...
    assert compute_bound_batch(1, 1, **H100) == math.ceil(989e12 / 3.35e12) == 296
    assert compute_bound_batch(4, 4, **H100) == 296  # k = E is dense: every token touches every expert
    assert compute_bound_batch(1, 1, bandwidth=1.0, peak_flops=1.0, bytes_per_param=2) == 1
    assert compute_bound_batch(1, 1, bandwidth=1e12, peak_flops=100e12, bytes_per_param=0.5) == 25


@pytest.mark.parametrize("E, k", [(8, 2), (64, 6), (128, 8), (16, 1)])
def test_an_moe_turns_compute_bound_at_a_batch_e_over_k_times_larger(E, k):
    B = compute_bound_batch(E, k, **H100)
    args = (4096, 1024, E, k)
    assert decode_time_bound(*args, B, **H100).bound == "compute"
    assert decode_time_bound(*args, B - 1, **H100).bound == "memory"
    assert all(decode_time_bound(*args, b, **H100).bound == "compute" for b in (B + 1, 2 * B, 10 * B))
    dense = compute_bound_batch(1, 1, **H100)
    assert E / k * dense * 0.99 < B < E / k * dense + E  # distinct(B) is then E·(1 − e^(−kB/E)), just under E


def mixtral_miss(tokens, pcie_bandwidth, cpu_flops, cpu_bandwidth):
    """missing_expert_cost of one Mixtral 8x7B expert in bf16: 176,160,768 weights, 352,321,536 bytes."""
    return missing_expert_cost(4096, 14336, tokens, pcie_bandwidth, cpu_flops, cpu_bandwidth, 2, gated=True)


def test_a_missing_expert_runs_on_the_cpu_for_few_tokens_and_is_copied_for_many():
    # PCIe 4.0 x16 in practice; a many-core CPU with AVX-512 in bf16, reading 8-channel DDR5
    pcie, cpu, cpu_memory = 25e9, 1.6e12, 200e9
    one = mixtral_miss(1, pcie, cpu, cpu_memory)
    assert one.transfer_time == pytest.approx(14.09286144e-3)  # 352,321,536 B / 25e9 B/s
    # bandwidth-bound: reading 352 MB at 200 GB/s takes 1.76 ms, 2 · 176,160,768 FLOPs at 1.6 TFLOP/s 0.22 ms
    assert one.cpu_time == pytest.approx(1.76160768e-3) and one.cheaper == "cpu"
    # the CPU's ridge, 2 · 1.6e12 / (2 · 200e9) = 8 tokens; compute-bound beyond it
    assert mixtral_miss(8, pcie, cpu, cpu_memory).cpu_time == pytest.approx(1.76160768e-3)
    assert mixtral_miss(32, pcie, cpu, cpu_memory).cpu_time == pytest.approx(7.04643072e-3)  # 32 · 0.22 ms
    # the CPU's FLOPs take as long as the copy at 2 · 1.6e12 / (2 · 25e9) = 64 tokens
    assert one.crossover_tokens == 64
    at = mixtral_miss(64, pcie, cpu, cpu_memory)
    assert at.cpu_time == at.transfer_time and at.cheaper == "transfer"  # a tie goes to the transfer
    assert mixtral_miss(63, pcie, cpu, cpu_memory).cheaper == "cpu"
    assert mixtral_miss(65, pcie, cpu, cpu_memory).cheaper == "transfer"
    # the crossing does not depend on the expert's size
    assert missing_expert_cost(512, 1024, 1, pcie, cpu, cpu_memory).crossover_tokens == 64


def test_a_cpu_slow_to_compute_is_compute_bound_from_the_first_token():
    pcie, cpu, cpu_memory = 25e9, 0.1e12, 200e9  # the CPU's ridge: 2 · 0.1e12 / (2 · 200e9) = 0.5 tokens
    one = mixtral_miss(1, pcie, cpu, cpu_memory)
    assert one.cpu_time == pytest.approx(3.52321536e-3) and one.cheaper == "cpu"  # 2 · 176,160,768 / 1e11
    assert one.crossover_tokens == 4  # 2 · 0.1e12 / (2 · 25e9)
    assert mixtral_miss(3, pcie, cpu, cpu_memory).cheaper == "cpu"
    at = mixtral_miss(4, pcie, cpu, cpu_memory)
    assert at.cpu_time == at.transfer_time == pytest.approx(14.09286144e-3) and at.cheaper == "transfer"


@pytest.mark.parametrize("cpu_memory, one_token_ms", [(64e9, 5.505024), (60e9, 5.8720256), (30e9, 11.7440512)])
def test_a_cpu_whose_memory_is_no_faster_than_pcie_never_beats_the_copy(cpu_memory, one_token_ms):
    pcie, cpu = 64e9, 1.6e12  # PCIe 5.0 x16; a desktop's dual-channel DDR5 reads at about 60 GB/s
    costs = [mixtral_miss(tokens, pcie, cpu, cpu_memory) for tokens in (1, 2, 10, 100, 1000)]
    assert costs[0].transfer_time == pytest.approx(5.505024e-3)
    assert costs[0].cpu_time == pytest.approx(one_token_ms * 1e-3)  # reading the weights alone
    assert all(c.crossover_tokens == 0 and c.cheaper == "transfer" for c in costs)
    if cpu_memory == pcie:  # reading and copying tie until the CPU turns compute-bound, at 25 tokens
        assert all(c.cpu_time == c.transfer_time for c in costs[:3])


@pytest.mark.parametrize(
    "pcie, cpu, cpu_memory, bytes_per_param, crossover",
    [
        (25e9, 1.6e12, 200e9, 2, 64),
        (32e9, 3e12, 100e9, 0.5, 23.4375),
        (16e9, 0.7e12, 17e9, 1, 21.875),
        (64e9, 1e12, 60e9, 2, 0),
    ],
)
def test_the_cpu_is_cheaper_exactly_below_the_crossover(pcie, cpu, cpu_memory, bytes_per_param, crossover):
    for gated in (False, True):
        for tokens in range(1, 100):
            cost = missing_expert_cost(1024, 4096, tokens, pcie, cpu, cpu_memory, bytes_per_param, gated)
            assert cost.crossover_tokens == crossover
            assert cost.cheaper == ("cpu" if tokens < crossover else "transfer"), (tokens, gated)


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: expected_distinct_experts(8, 9, 1), "k"),
        (lambda: expected_distinct_experts(0, 1, 1), "E"),
        (lambda: expected_distinct_experts(8, 0, 1), "k"),
        (lambda: expected_distinct_experts(8, 2, -1), "B"),
        (lambda: expected_distinct_experts(8, 2, 1.5), "B"),
        (lambda: distinct_experts(torch.tensor([0, 1])), "indices"),
        (lambda: distinct_experts(torch.tensor([[0.0]])), "indices"),
        (lambda: expert_bytes(0, 4), "d_model"),
        (lambda: expert_bytes(4, -1), "d_ff"),
        (lambda: expert_bytes(4, 4, bytes_per_param=0), "bytes_per_param"),
        (lambda: resident_bytes(4, 4, 0), "E"),
        (lambda: touched_bytes(4, 4, 8, 2, -3), "B"),
        (lambda: decode_time_bound(4, 4, 8, 2, 1, bandwidth=0, peak_flops=1.0), "bandwidth"),
        (lambda: decode_time_bound(4, 4, 8, 2, 1, bandwidth=1.0, peak_flops=-1.0), "peak_flops"),
        (lambda: decode_time_bound(4, 4, 8, 2, 1, bandwidth=float("inf"), peak_flops=1.0), "bandwidth"),
        (lambda: compute_bound_batch(8, 2, bandwidth=-1.0, peak_flops=1.0), "bandwidth"),
        (lambda: compute_bound_batch(2, 3, bandwidth=1.0, peak_flops=1.0), "k"),
        (lambda: missing_expert_cost(4, 4, 0, 1.0, 1.0, 1.0), "tokens"),
        (lambda: missing_expert_cost(4, 4, 1, 0.0, 1.0, 1.0), "pcie_bandwidth"),
        (lambda: missing_expert_cost(4, 4, 1, 1.0, float("nan"), 1.0), "cpu_flops"),
        (lambda: missing_expert_cost(4, 4, 1, 1.0, 1.0, 0.0), "cpu_bandwidth"),
        (lambda: missing_expert_cost(4, 4, 1, 1.0, 1.0, -2e9), "cpu_bandwidth"),
        (lambda: missing_expert_cost(4, 4, 1, 1.0, 1.0, float("inf")), "cpu_bandwidth"),
        (lambda: missing_expert_cost(4, 4, 1, 1.0, 1.0, True), "cpu_bandwidth"),
        (lambda: missing_expert_cost(4, 4, 1, 1.0, 1.0, "100e9"), "cpu_bandwidth"),
        (lambda: missing_expert_cost(4, 4, 1, 1.0, 1.0, 1.0, bytes_per_param=0), "bytes_per_param"),
        (lambda: missing_expert_cost(0, 4, 1, 1.0, 1.0, 1.0), "d_model"),
    ],
)
def test_bad_arguments_are_named(call, name):
    with pytest.raises(ValueError, match=rf"^{name}\b"):
        call()
