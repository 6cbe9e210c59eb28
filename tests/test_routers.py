"""Every router behind the common Routing interface."""

import pytest
import torch

from moe_course.routing import (
    Router,
    expert_choice_routing,
    group_limited_routing,
    jitter,
    noisy_top_k_routing,
    sigmoid_routing,
    switch_routing,
    top_k_routing,
)

T, E = 24, 8


def logits(seed=0, T=T, E=E):
    return torch.randn(T, E, generator=torch.Generator().manual_seed(seed))


TOKEN_CHOICE = {
    "topk": lambda z: top_k_routing(z, 2),
    "noisy_topk": lambda z: noisy_top_k_routing(z, 2, 1.0, torch.Generator().manual_seed(0)),
    "switch": switch_routing,
    "sigmoid": lambda z: sigmoid_routing(z, 2, bias=torch.linspace(-0.5, 0.5, E)),
    "group_limited": lambda z: group_limited_routing(z, 3, n_groups=4, topk_groups=2),
}
SUMS_TO_ONE = {"topk", "noisy_topk", "sigmoid", "group_limited"}


@pytest.mark.parametrize("name", TOKEN_CHOICE)
def test_token_choice_routers(name):
    r = TOKEN_CHOICE[name](logits())
    k = r.indices.shape[1]
    assert r.weights.shape == (T, k) and r.probs.shape == (T, E) and r.indices.dtype == torch.int64
    assert (r.weights >= 0).all()
    assert all(len(set(row)) == k for row in r.indices.tolist())
    assert torch.allclose(r.probs.sum(-1), torch.ones(T))
    if name in SUMS_TO_ONE:
        assert torch.allclose(r.weights.sum(-1), torch.ones(T))
    else:
        assert (r.weights.sum(-1) < 1).all()
    again = TOKEN_CHOICE[name](logits())
    assert torch.equal(r.indices, again.indices) and torch.equal(r.weights, again.weights)


def test_switch_weight_is_the_probability_and_trains_the_router():
    z = logits().requires_grad_()
    r = switch_routing(z)
    assert torch.equal(r.weights, r.probs.gather(1, r.indices))
    r.weights.sum().backward()
    assert z.grad.abs().sum() > 0


def test_noise_moves_choices_and_zero_noise_is_plain_top_k():
    z = logits()
    assert torch.equal(noisy_top_k_routing(z, 2, 0.0).indices, top_k_routing(z, 2).indices)
    noisy = noisy_top_k_routing(z, 2, 5.0, torch.Generator().manual_seed(1))
    assert not torch.equal(noisy.indices, top_k_routing(z, 2).indices)


@pytest.mark.parametrize("capacity", [0, 1, 5, T])
def test_expert_choice_fills_every_expert_exactly(capacity):
    r = expert_choice_routing(logits(), capacity)
    assert r.keep.sum(0).tolist() == [capacity] * E
    assert torch.equal(r.indices, torch.arange(E).expand(T, E))
    assert torch.equal(r.weights, r.probs * r.keep)
    # each expert holds its highest-affinity tokens
    for e in range(E):
        chosen = r.probs[r.keep[:, e], e]
        others = r.probs[~r.keep[:, e], e]
        if len(chosen) and len(others):
            assert chosen.min() >= others.max()


def test_sigmoid_bias_changes_the_choice_not_the_weights():
    z = logits()
    bias = torch.zeros(E)
    bias[0] = 10.0
    plain, biased = sigmoid_routing(z, 2), sigmoid_routing(z, 2, bias)
    assert (biased.indices == 0).any(dim=1).all()  # expert 0 is now always chosen
    scores = torch.sigmoid(z).gather(1, biased.indices)
    assert torch.allclose(biased.weights, scores / scores.sum(-1, keepdim=True))
    assert not torch.equal(plain.indices, biased.indices)


def test_top_k_bias_shifts_selection_only():
    z = logits()
    bias = torch.zeros(E)
    bias[3] = 1.0
    r = top_k_routing(z, 2, bias=bias)
    assert (r.indices == 3).any(dim=1).all()
    chosen = r.probs.gather(1, r.indices)
    assert torch.allclose(r.weights, chosen / chosen.sum(-1, keepdim=True))


def test_group_limited_stays_inside_the_best_groups():
    z = logits(T=200)
    r = group_limited_routing(z, 3, n_groups=4, topk_groups=2)
    groups = r.indices // 2
    assert all(len(set(row)) <= 2 for row in groups.tolist())
    best_groups = torch.topk(r.probs.view(200, 4, 2).amax(-1), 2).indices.sort(-1).values
    assert all(set(g) <= set(b) for g, b in zip(groups.tolist(), best_groups.tolist(), strict=True))
    # with all groups kept it is plain top-k
    assert torch.equal(group_limited_routing(z, 3, 4, 4).indices, top_k_routing(z, 3).indices)


def test_jitter_stays_in_its_band():
    x = torch.ones(1000)
    y = jitter(x, 0.1, torch.Generator().manual_seed(0))
    assert y.min() >= 0.9 and y.max() <= 1.1 and y.std() > 0


@pytest.mark.parametrize("method", ["topk", "noisy_topk", "switch", "expert_choice", "sigmoid", "group_limited"])
def test_router_module_every_method(method):
    torch.manual_seed(0)
    options = {"n_groups": 4, "topk_groups": 2} if method == "group_limited" else {}
    k = 1 if method == "switch" else 2
    router = Router(16, E, k, method, jitter_eps=0.01, **options)
    x = torch.randn(T, 16)
    r = router(x)
    (r.weights.sum() + r.probs.sum()).backward()
    assert router.gate.weight.grad.abs().sum() > 0
    assert r.kept().shape == r.indices.shape
    router.eval()
    assert torch.equal(router(x).indices, router(x).indices)  # no noise at evaluation
    assert router(torch.randn(0, 16)).weights.shape[0] == 0


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: Router(16, 8, 2, "magic"), "method"),
        (lambda: Router(16, 8, 2, "switch"), "k"),
        (lambda: Router(16, 8, 2, "group_limited", n_groups=3, topk_groups=1), "n_groups"),
        (lambda: Router(16, 8, 2, "group_limited", n_groups=4, topk_groups=5), "topk_groups"),
        (lambda: Router(16, 8, 2, capacity_factor=0), "capacity_factor"),
        (lambda: Router(16, 8, 2, jitter_eps=-1), "jitter_eps"),
        (lambda: group_limited_routing(logits(), 5, n_groups=4, topk_groups=2), "k"),
        (lambda: expert_choice_routing(logits(), T + 1), "capacity"),
        (lambda: sigmoid_routing(logits(), 9), "k"),
        (lambda: sigmoid_routing(logits(), 2, bias=torch.zeros(3)), "bias"),
        (lambda: switch_routing(torch.zeros(3, 4, 5)), "logits"),
        (lambda: jitter(torch.ones(3), -0.1), "eps"),
    ],
)
def test_bad_arguments_are_named(call, name):
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        call()
