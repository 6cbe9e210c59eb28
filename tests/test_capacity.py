import pytest
import torch

from moe_course.capacity import POLICIES, capacity_keep, expert_capacity, padding_waste


def test_capacity_formula():
    assert expert_capacity(T=100, E=8, k=2, capacity_factor=1.0) == 25
    assert expert_capacity(T=100, E=8, k=2, capacity_factor=1.25) == 32  # ceil(31.25)
    assert expert_capacity(T=10, E=4, k=1, capacity_factor=1.0) == 3  # ceil(2.5)
    assert expert_capacity(T=0, E=4, k=1, capacity_factor=2.0) == 0


def random_routing(T, E, k, seed, skew=0.0):
    """indices: [T, k] and the router's probabilities [T, E] of a softmax top-k router."""
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(torch.randn(T, E, generator=g) + skew * torch.linspace(1, 0, E), -1)
    return torch.topk(probs, k).indices, probs


def reference_keep(indices, E, C, token_order):
    """Fill the experts' queues pair by pair, as the papers describe it: every token's first choice (tokens in
    ``token_order``), then every second choice in the same order, ...; an expert takes a pair while it has room."""
    T, k = indices.shape
    filled, keep = [0] * E, [[False] * k for _ in range(T)]
    for j in range(k):
        for t in token_order:
            e = int(indices[t, j])
            if filled[e] < C:
                keep[t][j], filled[e] = True, filled[e] + 1
    return torch.tensor(keep, dtype=torch.bool).view(T, k)


def batch_priority_order(probs):
    """V-MoE's batch priority: tokens by their top-1 router probability, largest first (Python's sort is stable)."""
    top1 = probs.max(dim=-1).values.tolist()
    return sorted(range(len(top1)), key=lambda t: -top1[t])


POLICY_PROBS = {"arrival": lambda probs: None, "batch_priority": lambda probs: probs}


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("T, E, k, C", [(50, 4, 2, 10), (64, 8, 1, 3), (30, 8, 3, 0), (40, 4, 2, 100), (0, 4, 2, 5)])
def test_every_pair_is_kept_once_or_dropped_and_no_expert_overflows(T, E, k, C, policy):
    indices, probs = random_routing(T, E, k, seed=T + C, skew=2.0)
    keep = capacity_keep(indices, E, C, policy, POLICY_PROBS[policy](probs))
    assert keep.shape == (T, k) and keep.dtype == torch.bool
    kept_per_expert = torch.bincount(indices[keep], minlength=E)
    routed_per_expert = torch.bincount(indices.reshape(-1), minlength=E)
    assert (kept_per_expert <= C).all()
    # an expert drops only when full: kept = min(routed, C)
    assert torch.equal(kept_per_expert, routed_per_expert.clamp(max=C))


@pytest.mark.parametrize("T, E, k, C, seed", [(50, 4, 2, 10, 0), (64, 8, 1, 3, 1), (33, 8, 3, 5, 2), (40, 6, 4, 20, 3)])
def test_both_policies_equal_the_published_queue_filling(T, E, k, C, seed):
    indices, probs = random_routing(T, E, k, seed, skew=1.0)
    assert torch.equal(capacity_keep(indices, E, C), reference_keep(indices, E, C, range(T)))
    expected = reference_keep(indices, E, C, batch_priority_order(probs))
    assert torch.equal(capacity_keep(indices, E, C, "batch_priority", probs), expected)


def test_arrival_serves_first_choices_before_second_choices():
    # expert 0 is everyone's second choice and token 2's first: with C=1 token 2 keeps it
    indices = torch.tensor([[1, 0], [2, 0], [0, 1]])
    keep = capacity_keep(indices, E=3, capacity=1)
    assert keep.tolist() == [[True, False], [True, False], [True, False]]


def test_batch_priority_serves_every_first_choice_before_any_second_choice():
    """Token 0 is surer than token 1, but its second choice still comes after token 1's first: each token keeps
    one pair. Ranking the (token, slot) pairs by their own weight instead (0.5, 0.48, 0.4, 0.35) would give both
    places to token 0 and none to token 1."""
    indices = torch.tensor([[0, 1], [1, 0]])
    probs = torch.tensor([[0.5, 0.48], [0.35, 0.4]])  # the router's probabilities over the E=2 experts
    keep = capacity_keep(indices, E=2, capacity=1, policy="batch_priority", probs=probs)
    assert keep.tolist() == [[True, False], [True, False]]


def test_batch_priority_ranks_tokens_by_their_top1_probability():
    indices = torch.tensor([[0], [0], [0], [0]])
    probs = torch.tensor([[0.1, 0.9], [0.9, 0.1], [0.5, 0.5], [0.9, 0.1]])  # top-1: 0.9, 0.9, 0.5, 0.9
    keep = capacity_keep(indices, E=2, capacity=2, policy="batch_priority", probs=probs)
    assert keep.flatten().tolist() == [True, True, False, False]  # ties in batch order: tokens 0 and 1 first
    assert capacity_keep(indices, E=2, capacity=2).flatten().tolist() == [True, True, False, False]
    keep = capacity_keep(indices, E=2, capacity=1, policy="batch_priority", probs=probs.flip(0))
    assert keep.flatten().tolist() == [True, False, False, False]  # token 0 of the flipped batch: top-1 0.9


def test_batch_priority_reads_the_raw_probabilities_not_the_renormalized_weights():
    """Token 0's top-1 probability (0.50) beats token 1's (0.40); renormalized over their top 2, token 1's weight
    (0.57) would beat token 0's (0.505). Both want expert 0, then expert 1, with room for one each."""
    probs = torch.tensor([[0.50, 0.49, 0.01, 0.00], [0.40, 0.30, 0.20, 0.10]])
    indices, top = torch.topk(probs, 2)[1], torch.topk(probs, 2)[0]
    renormalized = top / top.sum(dim=-1, keepdim=True)
    assert renormalized[1, 0] > renormalized[0, 0] and probs[0].max() > probs[1].max()
    keep = capacity_keep(indices, E=4, capacity=1, policy="batch_priority", probs=probs)
    assert keep.tolist() == [[True, True], [False, False]]


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
        (lambda: capacity_keep(torch.tensor([[0, 1]]), 2, -1), "capacity"),
        (lambda: capacity_keep(torch.tensor([[0, 1]]), 2, 1, "random"), "policy"),
        (lambda: capacity_keep(torch.tensor([[0, 1]]), 2, 1, "priority"), "policy"),  # the policy's old name
        (lambda: capacity_keep(torch.tensor([[0, 1]]), 2, 1, "batch_priority"), "probs"),  # it needs probs
        (lambda: capacity_keep(torch.tensor([[0, 1]]), 2, 1, "batch_priority", torch.ones(2, 2)), "probs"),
        (lambda: capacity_keep(torch.tensor([[0, 1]]), 2, 1, "arrival", torch.ones(1, 2)), "probs"),
        (lambda: padding_waste(torch.tensor([3, 1]), capacity=2), "capacity"),
    ],
)
def test_bad_arguments_are_named(call, name):
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        call()
