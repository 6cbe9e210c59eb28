import pytest
import torch

from moe_course.routing import Router, top_k_routing


def logits(T=32, E=8, seed=0):
    return torch.randn(T, E, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("E, k", [(1, 1), (4, 1), (8, 2), (16, 4), (8, 8)])
@pytest.mark.parametrize("order", ["softmax_then_topk", "topk_then_softmax"])
def test_router_properties(E, k, order):
    r = top_k_routing(logits(E=E), k, order)
    assert r.indices.shape == r.weights.shape == (32, k)
    assert r.indices.dtype == torch.int64
    assert r.probs.shape == (32, E)
    assert torch.allclose(r.weights.sum(-1), torch.ones(32))
    assert (r.weights >= 0).all()
    # distinct experts per token
    assert all(len(set(row.tolist())) == k for row in r.indices)
    # the chosen experts are the k largest logits
    assert torch.equal(r.indices.sort(-1).values, torch.topk(r.logits, k).indices.sort(-1).values)


def test_orders_agree_when_renormalized_and_differ_when_not():
    z = logits()
    a, b = top_k_routing(z, 2), top_k_routing(z, 2, "topk_then_softmax")
    assert torch.equal(a.indices, b.indices)
    assert torch.allclose(a.weights, b.weights, atol=1e-6)
    raw = top_k_routing(z, 2, renormalize=False)
    assert (raw.weights.sum(-1) < 1).all()
    assert torch.allclose(raw.weights, raw.probs.gather(1, raw.indices))


def test_top1_after_topk_softmax_gives_the_router_no_gradient():
    z = logits().requires_grad_()
    top_k_routing(z, 1, "topk_then_softmax").weights.sum().backward()
    assert torch.count_nonzero(z.grad) == 0


def test_router_gradient_reaches_the_gate():
    torch.manual_seed(0)
    router = Router(16, 8, 2)
    x = torch.randn(10, 16)
    r = router(x)
    (r.weights * torch.arange(2.0)).sum().backward()
    assert router.gate.weight.grad.abs().sum() > 0


def test_router_is_deterministic_under_a_seed():
    def run():
        torch.manual_seed(3)
        return Router(16, 8, 2)(torch.randn(5, 16))

    a, b = run(), run()
    assert torch.equal(a.indices, b.indices) and torch.equal(a.weights, b.weights)


def test_empty_batch():
    r = Router(16, 8, 2)(torch.randn(0, 16))
    assert r.indices.shape == (0, 2) and r.weights.shape == (0, 2)


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: top_k_routing(logits(E=4), 5), "k"),
        (lambda: top_k_routing(logits(E=4), 0), "k"),
        (lambda: top_k_routing(logits(E=4), 2, order="sideways"), "order"),
        (lambda: top_k_routing(torch.zeros(4, 4, dtype=torch.int64), 2), "logits"),
        (lambda: Router(16, 4, 5), "k"),
        (lambda: Router(16, 4, 2)(torch.randn(3, 15)), "x"),
        (lambda: Router(16, 4, 2)(torch.ones(3, 16, dtype=torch.int64)), "x"),
    ],
)
def test_bad_arguments_are_named(call, name):
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        call()


def test_unnormalized_top1_router_gets_a_gradient():
    torch.manual_seed(0)
    router = Router(16, 8, 1, renormalize=False)
    router(torch.randn(10, 16)).weights.sum().backward()
    assert router.gate.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "call",
    [
        lambda: top_k_routing(logits(), 2, "topk_then_softmax", renormalize=False),
        lambda: Router(16, 8, 2, order="topk_then_softmax", renormalize=False),
    ],
)
def test_topk_then_softmax_cannot_skip_renormalization(call):
    with pytest.raises(ValueError, match="renormalize"):
        call()
