"""Fixtures the library's tests share: routings that stress a backend, and one forward-and-backward run."""

import pytest
import torch

KINDS = ("uniform", "one_expert", "half_idle")


def make_indices(kind: str, T: int, k: int, E: int, g: torch.Generator) -> torch.Tensor:
    """[T, k] distinct experts per token: ``uniform`` random, ``one_expert`` (every token's first choice is
    expert E-1), ``half_idle`` (experts E/2.. get nothing)."""
    if kind == "uniform":
        return torch.stack([torch.randperm(E, generator=g)[:k] for _ in range(T)]).view(T, k)
    if kind == "one_expert":
        rest = torch.stack([torch.randperm(E - 1, generator=g)[: k - 1] for _ in range(T)]).view(T, k - 1)
        return torch.cat([torch.full((T, 1), E - 1), rest], dim=1)
    return torch.stack([torch.randperm(E // 2, generator=g)[:k] for _ in range(T)]).view(T, k)


def run_forward_backward(fn, inputs: list, params: list, seed: int = 0) -> list:
    """``fn(*inputs)`` and its gradients: [output, d inputs..., d params...]. Inputs are copied (leaf tensors that
    require grad); the output's gradient is a fixed random tensor (the same for a seed in any dtype); a parameter
    with no gradient reads as zeros."""
    inputs = [t.detach().clone().requires_grad_() for t in inputs]
    for p in params:
        p.grad = None
    y = fn(*inputs)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    y.backward(dy.to(y.device, y.dtype))  # the same dy, whatever the dtype and device
    grads = [t.grad for t in inputs] + [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in params]
    return [y.detach(), *grads]


@pytest.fixture
def routing_indices():
    """:func:`make_indices`: ``routing_indices(kind, T, k, E, generator)``."""
    return make_indices


@pytest.fixture
def forward_backward():
    """:func:`run_forward_backward`: ``forward_backward(fn, inputs, params)``."""
    return run_forward_backward
