import math

import pytest
import torch

from moe_course.config import MoEConfig
from moe_course.experiments.specialization import (
    contingency,
    mutual_information,
    routed_experts,
    shuffled_mutual_information,
    specialization,
)
from moe_course.model import TinyLM, TinyLMConfig


def brute_force_mi(counts) -> float:
    """The definition, term by term: Σ p(x,y) log2(p(x,y) / (p(x) p(y))) over the cells with p(x,y) > 0."""
    rows = counts.tolist()
    total = sum(map(sum, rows))
    px = [sum(row) / total for row in rows]
    py = [sum(column) / total for column in zip(*rows, strict=True)]
    mi = 0.0
    for x, row in enumerate(rows):
        for y, n in enumerate(row):
            if n > 0:
                mi += n / total * math.log2(n / total / (px[x] * py[y]))
    return mi


def entropy(counts) -> float:
    total = sum(counts)
    return -sum(n / total * math.log2(n / total) for n in counts if n > 0)


def random_table(shape, seed, dtype=torch.int64):
    """Counts in [0, 6), with a row and a column of zeros when the table has more than one of them."""
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, 6, shape, generator=g).to(dtype)
    if dtype.is_floating_point:
        counts = counts * torch.rand(shape, generator=g, dtype=dtype)
    if shape[0] > 1:
        counts[seed % shape[0]] = 0
    if shape[1] > 1:
        counts[:, seed % shape[1]] = 0
    counts[-1, -1] += 1  # not all zero
    return counts


@pytest.mark.parametrize("shape", [(1, 1), (1, 4), (4, 1), (2, 2), (3, 5), (6, 4), (8, 8)])
@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("dtype", [torch.int64, torch.float32, torch.float64])
def test_mutual_information_is_the_definition(shape, seed, dtype):
    counts = random_table(shape, seed, dtype)
    assert mutual_information(counts) == pytest.approx(brute_force_mi(counts), abs=1e-12)


@pytest.mark.parametrize("n", [1, 2, 3, 7])
def test_a_table_where_each_determines_the_other_gives_their_entropy(n):
    sizes = torch.arange(1, n + 1)
    assert mutual_information(torch.diag(sizes)) == pytest.approx(entropy(sizes.tolist()), abs=1e-12)
    assert mutual_information(torch.eye(2) * 5) == 1.0  # one bit: bits, not nats


@pytest.mark.parametrize("seed", range(5))
def test_independent_and_scaled_tables(seed):
    g = torch.Generator().manual_seed(seed)
    px, py = torch.rand(5, generator=g, dtype=torch.float64), torch.rand(7, generator=g, dtype=torch.float64)
    assert mutual_information(torch.outer(px, py)) < 1e-12
    counts = random_table((4, 6), seed)
    mi = mutual_information(counts)
    for scale in (1e-300, 1e-3, 7.0, 1e307):  # 1e307: the sum of the counts overflows float64
        assert mutual_information(counts.double() * scale) == pytest.approx(mi, abs=1e-12)


@pytest.mark.parametrize(
    "counts",
    [
        torch.tensor([[1, -1], [2, 3]]),
        torch.zeros(2, 3),
        torch.zeros(0, 3),
        torch.tensor([[1.0, float("nan")]]),
        torch.tensor([[1.0, float("inf")]]),
        torch.ones(3),
        torch.ones(2, 2, 2),
        torch.ones(2, 2, dtype=torch.bool),
        [[1, 2], [3, 4]],
    ],
)
def test_bad_counts_are_named(counts):
    with pytest.raises(ValueError, match=r"^counts "):
        mutual_information(counts)


def test_contingency_counts_every_pair():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randint(0, 5, (300,), generator=g), torch.randint(0, 3, (300,), generator=g)
    expected = torch.zeros(6, 4, dtype=torch.int64)  # n_a and n_b above the largest labels: empty rows, columns
    for x, y in zip(a.tolist(), b.tolist(), strict=True):
        expected[x, y] += 1
    assert torch.equal(contingency(a, b, 6, 4), expected)


def test_unrelated_labels_look_like_their_shuffles():
    g = torch.Generator().manual_seed(0)
    N, n_a, n_b = 20_000, 8, 4
    a, b = torch.randint(0, n_a, (N,), generator=g), torch.randint(0, n_b, (N,), generator=g)
    mi = mutual_information(contingency(a, b, n_a, n_b))
    shuffled = shuffled_mutual_information(a, b, n_a, n_b, trials=100, seed=0)
    assert shuffled.shape == (100,) and shuffled.dtype == torch.float64
    # the finite-sample bias, (n_a - 1)(n_b - 1) / (2 N ln 2) bits: about 7.6e-4
    assert shuffled.mean() == pytest.approx((n_a - 1) * (n_b - 1) / (2 * N * math.log(2)), rel=0.2)
    assert mi < 3e-3 and shuffled.min() <= mi <= shuffled.max()
    assert torch.equal(shuffled, shuffled_mutual_information(a, b, n_a, n_b, trials=100, seed=0))


def test_related_labels_stand_far_above_their_shuffles():
    g = torch.Generator().manual_seed(1)
    N = 20_000
    a = torch.randint(0, 8, (N,), generator=g)
    noise = torch.rand(N, generator=g) < 0.3
    b = torch.where(noise, torch.randint(0, 4, (N,), generator=g), a % 4)  # b = a mod 4, 30% of it random
    mi = mutual_information(contingency(a, b, 8, 4))
    assert mi > 0.5 and mi > 100 * shuffled_mutual_information(a, b, 8, 4, trials=20, seed=0).max()


def tiny_model(**options) -> TinyLM:
    torch.manual_seed(0)
    return TinyLM(TinyLMConfig(vocab_size=20, seq_len=8, moe=MoEConfig(16, 16, E=4, k=2), **options))


@pytest.mark.parametrize("training", [True, False])
def test_routed_experts_are_the_models_choices(training):
    model = tiny_model()
    model.train(training)
    ids = torch.randint(0, 20, (8 * 7 + 5,), generator=torch.Generator().manual_seed(0))  # 7 windows and a tail
    experts, positions = routed_experts(model, ids, batch_size=3)
    assert model.training == training
    assert experts.dtype == positions.dtype == torch.int64
    assert experts.shape == (2, 56, 2) and torch.equal(positions, torch.arange(56))
    model.eval()
    with torch.no_grad():
        model(ids[positions].view(7, 8))  # every window in one batch
    chosen = torch.stack([layer.last_routing.indices for layer in model.moe_layers()])
    assert torch.equal(experts, chosen)
    assert len(set(experts.flatten().tolist())) > 1  # the check sees more than one expert


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: routed_experts(tiny_model(ffn="dense"), torch.zeros(16, dtype=torch.int64)), "model"),
        (lambda: routed_experts(torch.nn.Linear(2, 2), torch.zeros(16, dtype=torch.int64)), "model"),
        (lambda: routed_experts(tiny_model(), torch.zeros(7, dtype=torch.int64)), "ids"),
        (lambda: routed_experts(tiny_model(), torch.full((16,), 20)), "ids"),
        (lambda: routed_experts(tiny_model(), torch.zeros(16, dtype=torch.int64), batch_size=0), "batch_size"),
    ],
)
def test_bad_routed_experts_arguments_are_named(call, name):
    with pytest.raises(ValueError, match=rf"^{name} "):
        call()


def test_experts_that_are_the_labels_carry_all_their_information():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (5000,), generator=g)
    unrelated = torch.randint(0, 4, (5000,), generator=g)
    experts = torch.stack([labels, labels // 2, unrelated])  # E = 4 experts, 4 labels
    same, coarser, independent = specialization(experts, labels, n_labels=4, E=4, trials=20, seed=0)
    assert same.mi_bits == pytest.approx(entropy(labels.bincount().tolist()), abs=1e-12)
    assert same.max_bits == pytest.approx(same.mi_bits, abs=1e-12)
    assert torch.equal(same.counts, torch.diag(labels.bincount()))
    # half the label: the expert is determined by it, so the bound is the expert's entropy, and it is reached
    assert coarser.mi_bits == pytest.approx(entropy((labels // 2).bincount().tolist()), abs=1e-12)
    assert coarser.max_bits == pytest.approx(coarser.mi_bits, abs=1e-12)
    assert independent.mi_bits < 0.01 and independent.shuffled_bits < 0.01 and independent.max_bits > 1.9
    for layer, chosen in zip((same, coarser, independent), experts, strict=True):
        assert torch.equal(layer.counts, contingency(chosen, labels, 4, 4))
        shuffled = shuffled_mutual_information(chosen, labels, 4, 4, trials=20, seed=0)
        assert layer.shuffled_bits == pytest.approx(float(shuffled.mean()))
        assert layer.shuffled_max_bits == float(shuffled.max())
        assert layer.shuffled_bits <= layer.shuffled_max_bits < 0.01


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: contingency(torch.tensor([0, 3]), torch.tensor([0, 1]), 3, 2), "a"),
        (lambda: contingency(torch.tensor([0, 1]), torch.tensor([0]), 3, 2), "b"),
        (lambda: contingency(torch.tensor([0, 1]), torch.tensor([0, 1], dtype=torch.int32), 3, 2), "b"),
        (lambda: contingency(torch.tensor([0]), torch.tensor([0]), 0, 2), "n_a"),
        (lambda: shuffled_mutual_information(torch.tensor([0]), torch.tensor([0]), 1, 1, 0, 0), "trials"),
        (lambda: shuffled_mutual_information(torch.tensor([0]), torch.tensor([0]), 1, 1, 2, -1), "seed"),
        (
            lambda: shuffled_mutual_information(
                torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64), 1, 1, 2, 0
            ),
            "a",
        ),
        (lambda: specialization(torch.tensor([[0, 4]]), torch.tensor([0, 1]), 2, 4), "experts"),
        (lambda: specialization(torch.tensor([0, 1]), torch.tensor([0, 1]), 2, 4), "experts"),
        (lambda: specialization(torch.zeros(2, 0, dtype=torch.int64), torch.tensor([]), 2, 4), "experts"),
        (lambda: specialization(torch.tensor([[0, 1]]), torch.tensor([0, 2]), 2, 4), "labels"),
        (lambda: specialization(torch.tensor([[0, 1]]), torch.tensor([0, 1]), 2, 4, trials=0), "trials"),
    ],
)
def test_bad_arguments_are_named(call, name):
    with pytest.raises(ValueError, match=rf"^{name} "):
        call()
