import pytest
import torch

from moe_course.dispatch import order_by_expert, permute, sort_by_expert, unpermute_and_combine
from moe_course.load import balance_coefficient, expert_load


def test_sort_by_expert_blocks_are_contiguous_and_stable():
    indices = torch.tensor([[2, 0], [0, 1], [2, 1], [0, 2]])
    d = sort_by_expert(indices, E=4)
    assert d.counts.tolist() == [3, 2, 3, 0]
    assert d.offsets.tolist() == [0, 3, 5, 8, 8]
    # pair p = t·k + j; expert 0 is chosen by pairs 1, 2, 6 in that order
    assert d.order.tolist() == [1, 2, 6, 3, 5, 0, 4, 7]
    assert d.token_ids.tolist() == [0, 1, 3, 1, 2, 0, 2, 3]
    assert torch.equal(indices.reshape(-1)[d.order], torch.tensor([0, 0, 0, 1, 1, 2, 2, 2]))
    assert d.ranks.tolist() == [0, 1, 2, 0, 1, 0, 1, 2]  # each sorted pair's place in its expert's block


def test_order_by_expert_against_a_python_sort():
    g = torch.Generator().manual_seed(0)
    E = 5
    experts = torch.randint(0, E + 1, (200,), generator=g)  # E marks an entry left out
    s = order_by_expert(experts, E)
    expected = sorted(range(200), key=lambda i: experts[i].item())  # Python's sort is stable
    assert s.order.tolist() == expected
    assert s.counts.tolist() == [int((experts == e).sum()) for e in range(E)]
    assert s.offsets.tolist() == [0, *torch.cumsum(s.counts, 0).tolist()]
    seen = {}
    for row, i in enumerate(expected):  # rank: how many entries of the same expert came before
        e = experts[i].item()
        assert s.ranks[row] == seen.get(e, 0)
        seen[e] = seen.get(e, 0) + 1
    given = order_by_expert(experts, E, counts=s.counts.int())  # counts from elsewhere (a Triton histogram)
    assert torch.equal(given.ranks, s.ranks) and torch.equal(given.offsets, s.offsets)


def test_round_trip_returns_each_token_times_its_weights():
    torch.manual_seed(0)
    T, k, E = 50, 3, 7
    x = torch.randn(T, 5)
    indices = torch.stack([torch.randperm(E)[:k] for _ in range(T)])
    weights = torch.rand(T, k)
    d = sort_by_expert(indices, E)
    y = unpermute_and_combine(permute(x, d), d, weights)  # identity experts
    assert torch.allclose(y, x * weights.sum(-1, keepdim=True))
    assert int(d.counts.sum()) == T * k


def test_permute_gradient_is_each_tokens_sum_and_bit_reproducible():
    torch.manual_seed(0)
    T, k, E, d = 512, 4, 8, 16
    indices = torch.stack([torch.randperm(E)[:k] for _ in range(T)])
    dispatch = sort_by_expert(indices, E)
    grad_out = torch.randn(T * k, d)

    def grad():
        x = torch.zeros(T, d, requires_grad=True)
        permute(x, dispatch).backward(grad_out)
        return x.grad

    first = grad()
    # the gradient of a token is the sum of the gradients of its k copies
    expected = torch.zeros(T * k, d).index_copy(0, dispatch.order, grad_out).view(T, k, d).sum(1)
    assert torch.allclose(first, expected, atol=1e-6)
    assert all(torch.equal(first, grad()) for _ in range(5))


def test_empty_batch():
    d = sort_by_expert(torch.zeros(0, 2, dtype=torch.int64), E=4)
    assert d.counts.tolist() == [0, 0, 0, 0]
    assert unpermute_and_combine(torch.zeros(0, 3), d, torch.zeros(0, 2)).shape == (0, 3)


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: sort_by_expert(torch.tensor([[0, 4]]), E=4), "indices"),
        (lambda: sort_by_expert(torch.tensor([0, 1]), E=4), "indices"),
        (lambda: sort_by_expert(torch.tensor([[0, 1]]), E=0), "E"),
        (lambda: expert_load(torch.tensor([[0, 4]]), E=4), "indices"),
        (lambda: expert_load(torch.tensor([[0.0, 1.0]]), E=4), "indices"),
        (lambda: balance_coefficient(torch.zeros(4, dtype=torch.int64)), "counts"),
        (lambda: balance_coefficient(torch.zeros(2, 2, dtype=torch.int64)), "counts"),
    ],
)
def test_bad_arguments_are_named(call, name):
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        call()


def test_load_and_balance_coefficient():
    indices = torch.tensor([[0, 1], [0, 2], [0, 1], [0, 2]])
    counts = expert_load(indices, E=4)
    assert counts.tolist() == [4, 2, 2, 0]
    assert balance_coefficient(counts) == 0.0
    assert balance_coefficient(torch.tensor([2, 2, 2, 2])) == 1.0
    # ideal load is T·k/E = 4·2/4 = 2, the least loaded expert has 1
    assert balance_coefficient(expert_load(torch.tensor([[0, 1], [2, 3], [0, 1], [2, 0]]), 4)) == 0.5
