"""Helpers the library's tests share (imported as ``tests.conftest``): routings that stress a backend, and one
forward-and-backward run."""

import torch


def make_indices(kind: str, T: int, k: int, E: int, g: torch.Generator) -> torch.Tensor:
    """[T, k] distinct experts per token: ``uniform`` random, ``one_expert`` (every token's first choice is
    expert E-1), ``half_idle`` (experts E/2.. get nothing)."""
    if kind == "uniform":
        return torch.stack([torch.randperm(E, generator=g)[:k] for _ in range(T)]).view(T, k)
    if kind == "one_expert":
        rest = torch.stack([torch.randperm(E - 1, generator=g)[: k - 1] for _ in range(T)]).view(T, k - 1)
        return torch.cat([torch.full((T, 1), E - 1), rest], dim=1)
    return torch.stack([torch.randperm(E // 2, generator=g)[:k] for _ in range(T)]).view(T, k)


def run_forward_backward(fn, inputs: list, params: list = (), dy: torch.Tensor | None = None, seed: int = 0) -> list:
    """``fn(*inputs)`` and its gradients: [output, d inputs..., d params...]. Inputs are copied (leaf tensors that
    require grad). The output's gradient is ``dy`` (cast to the output's dtype and device), or a random one fixed by
    ``seed`` (the same in any dtype). A leaf nothing flows to gets zeros, also when nothing ran at all (no graph)."""
    inputs = [t.detach().clone().requires_grad_() for t in inputs]
    leaves = [*inputs, *params]
    y = fn(*inputs)
    if not y.requires_grad:
        return [y.detach(), *(torch.zeros_like(leaf) for leaf in leaves)]
    if dy is None:
        dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    grads = torch.autograd.grad(y, leaves, dy.to(y.device, y.dtype), allow_unused=True, materialize_grads=True)
    return [y.detach(), *grads]
