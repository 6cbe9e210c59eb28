"""Argument checks shared by the public functions: each raises ``ValueError`` naming the argument."""

import torch


def check_positive_int(name: str, value) -> int:
    """Return ``value`` if it is an int >= 1, else raise ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def check_non_negative_int(name: str, value) -> int:
    """Return ``value`` if it is an int >= 0, else raise ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return value


def check_number(name: str, value, positive: bool = False) -> float:
    """Return ``value`` if it is a real number >= 0 (> 0 with ``positive``), else raise ``ValueError`` naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (positive and value == 0):
        raise ValueError(f"{name} must be a {'positive' if positive else 'non-negative'} number, got {value!r}")
    return value


def check_top_k(k, E) -> int:
    """Check 1 <= k <= E: a token cannot choose more distinct experts than exist."""
    check_positive_int("E", E)
    check_positive_int("k", k)
    if k > E:
        raise ValueError(f"k must be at most E (a token picks k distinct experts), got k={k}, E={E}")
    return k


def check_choice(name: str, value, choices) -> str:
    """Return ``value`` if it is one of ``choices``, else raise ``ValueError`` naming ``name``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {sorted(choices)}, got {value!r}")
    return value


def check_expert_indices(indices: torch.Tensor, E: int) -> None:
    """Check that ``indices`` is an int64 ``[T, k]`` tensor of expert ids in ``[0, E)``."""
    check_positive_int("E", E)
    if not isinstance(indices, torch.Tensor) or indices.dim() != 2 or indices.dtype != torch.int64:
        shape = tuple(indices.shape) if isinstance(indices, torch.Tensor) else type(indices).__name__
        raise ValueError(f"indices must be an int64 tensor of shape [T, k], got {shape}")
    if indices.numel() and (indices.min() < 0 or indices.max() >= E):
        raise ValueError(f"indices must lie in [0, E={E}), got values in [{indices.min()}, {indices.max()}]")


def check_hidden(name: str, x: torch.Tensor, d_model: int) -> None:
    """Check that ``x`` is a floating-point tensor whose last dimension is ``d_model``."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() < 1 or x.shape[-1] != d_model:
        raise ValueError(f"{name} must have last dimension d_model={d_model}, got shape {tuple(x.shape)}")
