"""Every router behind the common Routing interface."""

import math

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
SUMS_TO_ONE = {"topk", "noisy_topk", "sigmoid"}  # group_limited: DeepSeek-V2 does not renormalize


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


# DeepSeek's routers, token by token in plain Python from the released code (DeepSeek-V3's inference/model.py Gate;
# the Hugging Face MoEGate of DeepSeek-V2, topk_method="group_limited_greedy"), in float64.
def sigmoid(z):
    return 1 / (1 + math.exp(-z))


def best(candidates, score, n):
    """The n candidates with the highest score (the inputs below have no ties)."""
    return sorted(candidates, key=lambda c: -score[c])[:n]


def deepseek_v3(logits, k, bias, n_group, topk_group, norm_topk_prob, routed_scaling_factor):
    indices, weights = [], []
    for z in logits.tolist():
        E, size = len(z), len(z) // n_group
        s = [sigmoid(v) for v in z]
        biased = [v + b for v, b in zip(s, bias.tolist(), strict=True)]
        group_score = [sum(sorted(biased[g * size : (g + 1) * size], reverse=True)[:2]) for g in range(n_group)]
        kept = best(range(n_group), group_score, topk_group)
        chosen = best([e for e in range(E) if e // size in kept], biased, k)
        w = [s[e] for e in chosen]
        total = sum(w) if norm_topk_prob else 1.0
        indices.append(chosen)
        weights.append([v / total * routed_scaling_factor for v in w])
    return indices, weights


def deepseek_v2(logits, k, n_group, topk_group, routed_scaling_factor):
    indices, weights = [], []
    for z in logits.tolist():
        E, size = len(z), len(z) // n_group
        top = max(z)
        p = [math.exp(v - top) for v in z]
        p = [v / sum(p) for v in p]
        kept = best(range(n_group), [max(p[g * size : (g + 1) * size]) for g in range(n_group)], topk_group)
        chosen = best([e for e in range(E) if e // size in kept], p, k)
        indices.append(chosen)
        weights.append([p[e] * routed_scaling_factor for e in chosen])  # norm_topk_prob=False: no renormalization
    return indices, weights


def assert_same_routing(r, indices, weights):
    """Each token's set of experts, and each chosen expert's weight, whatever the order of the slots."""
    for t, (chosen, w) in enumerate(zip(indices, weights, strict=True)):
        ours = dict(zip(r.indices[t].tolist(), r.weights[t].tolist(), strict=True))
        assert set(ours) == set(chosen), t
        for e, v in zip(chosen, w, strict=True):
            assert math.isclose(ours[e], v, rel_tol=1e-12), (t, e)


@pytest.mark.parametrize("seed", range(3))
def test_sigmoid_routing_is_deepseek_v3s_router(seed):
    z = logits(seed, T=64, E=16).double()
    bias = torch.randn(16, generator=torch.Generator().manual_seed(seed + 10), dtype=torch.float64) * 0.1
    r = sigmoid_routing(z, 4, bias, n_groups=4, topk_groups=2, routed_scaling_factor=2.5)
    assert_same_routing(r, *deepseek_v3(z, 4, bias, 4, 2, True, 2.5))
    r = sigmoid_routing(z, 4, bias, n_groups=4, topk_groups=2, renormalize=False)
    assert_same_routing(r, *deepseek_v3(z, 4, bias, 4, 2, False, 1.0))
    # the group limit and the bias change the answer on these inputs: without them most tokens choose otherwise
    plain = sigmoid_routing(z, 4)
    differ = [set(a) != set(b) for a, b in zip(plain.indices.tolist(), r.indices.tolist(), strict=True)]
    assert sum(differ) > 16


@pytest.mark.parametrize("seed", range(3))
def test_group_limited_routing_is_deepseek_v2s_router(seed):
    z = logits(seed, T=64, E=16).double()
    # fewer groups than k: with at least k groups kept, the best-probability rule never excludes plain top-k
    r = group_limited_routing(z, 3, n_groups=8, topk_groups=2, routed_scaling_factor=16.0)
    assert_same_routing(r, *deepseek_v2(z, 3, 8, 2, 16.0))
    differ = [set(a) != set(b) for a, b in zip(top_k_routing(z, 3).indices.tolist(), r.indices.tolist(), strict=True)]
    assert sum(differ) > 4  # the group limit changes the answer on these inputs


def test_deepseek_v3_scores_a_group_by_its_two_best_experts():
    """Group 0 = experts {0, 1}, group 1 = {2, 3}. The best single expert is 2, but group 0's two best sum to more
    (σ(1) + σ(0.9) = 1.44 against σ(1.2) + σ(−3) = 0.82): V3 keeps group 0 and picks expert 0. Scoring a group by
    its best expert (DeepSeek-V2's rule) would keep group 1 and pick expert 2."""
    z = torch.tensor([[1.0, 0.9, 1.2, -3.0]])
    assert sigmoid_routing(z, 1, n_groups=2, topk_groups=1).indices.tolist() == [[0]]
    assert group_limited_routing(z, 1, n_groups=2, topk_groups=1).indices.tolist() == [[2]]


def test_deepseek_v2_does_not_renormalize_and_scales():
    z = torch.tensor([[2.0, 1.9, 0.0, 0.0]])
    p = torch.softmax(z, dim=-1)[0, :2]  # ≈ [0.460, 0.416]
    r = group_limited_routing(z, 2, n_groups=2, topk_groups=1, routed_scaling_factor=16.0)
    torch.testing.assert_close(r.weights[0], 16.0 * p)
    torch.testing.assert_close(r.weights[0] / 16.0, torch.tensor([0.4597, 0.4159]), atol=1e-4, rtol=0)
    renormalized = group_limited_routing(z, 2, n_groups=2, topk_groups=1, renormalize=True)
    torch.testing.assert_close(renormalized.weights[0], torch.tensor([0.5250, 0.4750]), atol=1e-4, rtol=0)


def test_jitter_stays_in_its_band():
    x = torch.ones(1000)
    y = jitter(x, 0.1, torch.Generator().manual_seed(0))
    assert y.min() >= 0.9 and y.max() <= 1.1 and y.std() > 0


@pytest.mark.parametrize("method", ["topk", "noisy_topk", "switch", "expert_choice", "sigmoid", "group_limited"])
def test_router_module_every_method(method):
    torch.manual_seed(0)
    options = {"n_groups": 4, "topk_groups": 2} if method in ("group_limited", "sigmoid") else {}
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
        (lambda: sigmoid_routing(logits(), 2, n_groups=4), "topk_groups"),
        (lambda: sigmoid_routing(logits(), 2, n_groups=8, topk_groups=2), "n_groups"),  # one expert per group
        (lambda: sigmoid_routing(logits(), 2, routed_scaling_factor=0.0), "routed_scaling_factor"),
        (lambda: group_limited_routing(logits(), 2, 4, 2, routed_scaling_factor=float("nan")), "routed_scaling_factor"),
        (lambda: group_limited_routing(logits(), 2, 4, 2, renormalize="yes"), "renormalize"),
        # an option the method does not use
        (lambda: Router(32, 16, 4, "topk", n_groups=4, topk_groups=2), "n_groups"),
        (lambda: Router(32, 16, 4, "sigmoid", order="topk_then_softmax"), "order"),
        (lambda: Router(32, 16, 4, "switch", renormalize=False), "renormalize"),
        (lambda: Router(32, 16, 4, "topk", capacity_factor=1.0), "capacity_factor"),
        (lambda: Router(32, 16, 4, "topk", routed_scaling_factor=2.5), "routed_scaling_factor"),
        (lambda: Router(32, 16, 4, "group_limited"), "n_groups"),
        (lambda: Router(32, 16, 5, "sigmoid", n_groups=4, topk_groups=1), "k"),  # 4 experts in the kept group
        (lambda: switch_routing(torch.zeros(3, 4, 5)), "logits"),
        (lambda: jitter(torch.ones(3), -0.1), "eps"),
    ],
)
def test_bad_arguments_are_named(call, name):
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        call()
