import pytest
import torch

from moe_course.capacity import capacity_keep, expert_capacity, padding_waste


def test_capacity_formula():
    assert expert_capacity(T=100, E=8, k=2, capacity_factor=1.0) == 25
    assert expert_capacity(T=100, E=8, k=2, capacity_factor=1.25) == 32  # ceil(31.25)
    assert expert_capacity(T=10, E=4, k=1, capacity_factor=1.0) == 3  # ceil(2.5)
    assert expert_capacity(T=0, E=4, k=1, capacity_factor=2.0) == 0


def random_routing(T, E, k, seed, skew=0.0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(T, E, generator=g) + skew * torch.linspace(1, 0, E)
    weights, indices = torch.topk(torch.softmax(logits, -1), k)
    return indices, weights


@pytest.mark.parametrize("policy", ["arrival", "priority"])
@pytest.mark.parametrize("T, E, k, C", [(50, 4, 2, 10), (64, 8, 1, 3), (30, 8, 3, 0), (40, 4, 2, 100), (0, 4, 2, 5)])
def test_every_pair_is_kept_once_or_dropped_and_no_expert_overflows(T, E, k, C, policy):
    indices, weights = random_routing(T, E, k, seed=T + C, skew=2.0)
    keep = capacity_keep(indices, weights, E, C, policy)
    assert keep.shape == (T, k) and keep.dtype == torch.bool
    kept_per_expert = torch.bincount(indices[keep], minlength=E)
    routed_per_expert = torch.bincount(indices.reshape(-1), minlength=E)
    assert (kept_per_expert <= C).all()
    # an expert drops only when full: kept = min(routed, C)
    assert torch.equal(kept_per_expert, routed_per_expert.clamp(max=C))
    assert int(keep.sum()) + int((~keep).sum()) == T * k


def test_arrival_serves_first_choices_before_second_choices():
    # expert 0 is everyone's second choice and token 2's first: with C=1 token 2 keeps it
    indices = torch.tensor([[1, 0], [2, 0], [0, 1]])
    keep = capacity_keep(indices, torch.ones(3, 2), E=3, capacity=1)
    assert keep.tolist() == [[True, False], [True, False], [True, False]]


def test_priority_keeps_the_highest_weights():
    indices = torch.tensor([[0], [0], [0], [0]])
    weights = torch.tensor([[0.1], [0.9], [0.5], [0.9]])
    keep = capacity_keep(indices, weights, E=1, capacity=2, policy="priority")
    assert keep.flatten().tolist() == [False, True, False, True]  # ties: arrival order
    assert capacity_keep(indices, weights, E=1, capacity=2).flatten().tolist() == [True, True, False, False]


def test_padding_waste():
    counts = torch.tensor([4, 2, 2, 0])
    assert padding_waste(counts) == 0.5  # 16 slots, 8 used
    assert padding_waste(counts, capacity=8) == 0.75
    assert padding_waste(torch.tensor([3, 3])) == 0.0
    assert padding_waste(torch.zeros(3, dtype=torch.int64)) == 0.0


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: expert_capacity(10, 4, 2, 0), "capacity_factor"),
        (lambda: expert_capacity(10, 4, 2, -1.5), "capacity_factor"),
        (lambda: expert_capacity(10, 0, 2, 1.0), "E"),
        (lambda: capacity_keep(torch.tensor([[0, 1]]), torch.ones(1, 2), 2, -1), "capacity"),
        (lambda: capacity_keep(torch.tensor([[0, 1]]), torch.ones(1, 2), 2, 1, "random"), "policy"),
        (lambda: capacity_keep(torch.tensor([[0, 1]]), torch.ones(2, 2), 2, 1), "weights"),
        (lambda: padding_waste(torch.tensor([3, 1]), capacity=2), "capacity"),
    ],
)
def test_bad_arguments_are_named(call, name):
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        call()
