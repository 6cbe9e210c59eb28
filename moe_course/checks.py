"""Argument checks shared by the public functions: each raises ``ValueError`` naming the argument.

A public function checks its arguments once, on entry, and then runs an unchecked core that trusts them.
"""

import operator

import torch

FLOATING = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
INTEGER = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
# the dtypes a tensor argument may be asked to have, by the name its error message gives them
KINDS = {
    "floating-point": FLOATING,
    "integer": INTEGER,
    "real": FLOATING + INTEGER,
    "int32 or int64": (torch.int32, torch.int64),
    "int64": (torch.int64,),
    "bool": (torch.bool,),
}


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


def check_index(name: str, value, n: int, of: str) -> int:
    """Return ``value`` as an int if it is an integer in ``[0, n)`` (a Python int, or an integer tensor of one
    element); ``of`` names n in the message (``"E"``)."""
    try:
        index = None if isinstance(value, bool) else operator.index(value)
    except TypeError:
        index = None
    if index is None or not 0 <= index < n:
        raise ValueError(f"{name} must be an integer in [0, {of}={n}), got {value!r}")
    return index


def check_number(name: str, value, positive: bool = False) -> float:
    """Return ``value`` if it is a finite real number >= 0 (> 0 with ``positive``), else raise ``ValueError`` naming
    it: NaN and ±inf are refused, so no setting can turn a computation into NaN."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not 0 <= value < float("inf")  # False for NaN too
        or (positive and value == 0)
    ):
        raise ValueError(f"{name} must be a finite {'positive' if positive else 'non-negative'} number, got {value!r}")
    return value


def check_bool(name: str, value) -> bool:
    """Return ``value`` if it is True or False (not merely truthy), else raise ``ValueError`` naming ``name``."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def check_top_k(k, E, experts: str = "E") -> int:
    """Check 1 <= k <= E: a token cannot choose more distinct experts than exist. ``experts``: E's name where the
    caller calls it something else (``MoE``'s ``num_experts``)."""
    check_positive_int(experts, E)
    check_positive_int("k", k)
    if k > E:
        raise ValueError(f"k must be at most {experts} (a token picks k distinct experts), got k={k}, {experts}={E}")
    return k


def check_choice(name: str, value, choices) -> str:
    """Return ``value`` if it is one of the names ``choices``, else raise ``ValueError`` naming ``name``."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {sorted(choices)}, got {value!r}")
    return value


def check_tensor(name: str, value, shape: tuple | None = None, kind: str | None = None) -> torch.Tensor:
    """Return ``value`` if it is a tensor that holds data (not a meta tensor) of ``shape`` and a dtype of ``kind``
    (a key of ``KINDS``; None: any dtype), else raise ``ValueError`` naming ``name``.

    shape: a tuple of sizes, an int for a size that must match and a name (``"T"``) for any size; None: any shape.
    """
    dims = "any" if shape is None else "[" + ", ".join(map(str, shape)) + "]"
    want = f"a tensor of shape {dims}" + (f" and {kind} dtype" if kind else "")
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{name} must be {want}, got {type(value).__name__}")
    if value.is_meta:
        raise ValueError(f"{name} must hold data, got a meta tensor (it has a shape and no values)")
    wrong_shape = shape is not None and (
        value.dim() != len(shape) or any(isinstance(n, int) and n != m for n, m in zip(shape, value.shape, strict=True))
    )
    if wrong_shape or (kind is not None and value.dtype not in KINDS[kind]):
        raise ValueError(f"{name} must be {want}, got {value.dtype} of shape {tuple(value.shape)}")
    return value


def check_ids(name: str, ids, shape: tuple, kind: str, n: int, of: str) -> None:
    """Check that ``ids`` is a tensor of ``shape`` and ``kind`` whose values lie in ``[0, n)``; ``of`` names n in
    the message (``"E"``, ``"vocab_size"``). Reads the values: a host synchronization on a GPU."""
    check_tensor(name, ids, shape, kind)
    if ids.numel() and (ids.min() < 0 or ids.max() >= n):
        raise ValueError(f"{name} must lie in [0, {of}={n}), got values in [{ids.min()}, {ids.max()}]")


def check_expert_indices(indices: torch.Tensor, E: int) -> None:
    """Check that ``indices`` is an int64 ``[T, k]`` tensor of expert ids in ``[0, E)``."""
    check_positive_int("E", E)
    check_ids("indices", indices, ("T", "k"), "int64", E, "E")


def check_keep(keep, indices: torch.Tensor) -> None:
    """Check that ``keep`` is None or a bool tensor of the shape of ``indices`` ([T, k])."""
    if keep is not None:
        check_tensor("keep", keep, tuple(indices.shape), "bool")


def check_scores(name: str, scores) -> None:
    """Check that ``scores`` (a router's logits or probabilities) is a floating-point ``[T, E]`` tensor, E >= 1."""
    check_tensor(name, scores, ("T", "E"), "floating-point")
    if scores.shape[1] == 0:
        raise ValueError(f"{name} must have one column per expert, at least one, got shape {tuple(scores.shape)}")


def check_counts(name: str, counts, kind: str = "real") -> None:
    """Check that ``counts`` is a 1-D tensor of ``kind`` with one finite, non-negative entry per expert (at least
    one)."""
    check_tensor(name, counts, ("E",), kind)
    if counts.numel() == 0:
        raise ValueError(f"{name} must hold one count per expert, got an empty tensor")
    if not bool((counts >= 0).all() and torch.isfinite(counts).all()):
        raise ValueError(f"{name} must hold finite counts >= 0, got values in [{counts.min()}, {counts.max()}]")


def check_hidden(name: str, x, d_model: int, like: torch.Tensor | None = None) -> None:
    """Check that ``x`` is a floating-point tensor holding data whose last dimension is ``d_model`` and, given a
    weight ``like``, of that weight's dtype and on its device. It calls no other check: a layer's forward pass
    makes exactly one call into this module."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.is_meta:
        raise ValueError(f"{name} must hold data, got a meta tensor (it has a shape and no values)")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() < 1 or x.shape[-1] != d_model:
        raise ValueError(f"{name} must have last dimension d_model={d_model}, got shape {tuple(x.shape)}")
    if like is not None and (x.dtype != like.dtype or x.device != like.device):
        raise ValueError(
            f"{name} must have the dtype and device of the weights, {like.dtype} on {like.device}, "
            f"got {x.dtype} on {x.device}"
        )
