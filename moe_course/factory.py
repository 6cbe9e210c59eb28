"""``MoE(...)``: a whole MoE layer in one call, on one process or expert-parallel."""

from dataclasses import fields

from torch import nn

from .checks import check_choice, check_positive_int, check_top_k
from .config import MoEConfig
from .experts import ACTIVATIONS, FFN
from .layer import MoELayer
from .parallel import AllToAllExchange

# MoEConfig's fields that MoE's own arguments set: hidden_size, d_ff, num_experts, k, expert
SET_BY_ARGUMENTS = ("d_model", "d_ff", "E", "k", "activation")
OPTIONS = tuple(f.name for f in fields(MoEConfig) if f.name not in SET_BY_ARGUMENTS)


def MoE(
    hidden_size: int,
    expert: FFN | str = "swiglu",
    num_experts: int = 8,
    k: int = 2,
    d_ff: int | None = None,
    ep_size: int = 1,
    **options,
) -> nn.Module:
    """One-call constructor in the spirit of DeepSpeed's ``MoE(hidden_size, expert, num_experts, k)``.

    ``expert`` is a template: an :class:`~moe_course.experts.FFN` (its d_ff and activation are used; each of
    the ``num_experts`` experts gets fresh weights) or an activation name, ``"swiglu"``, ``"gelu"`` or
    ``"relu"``, with ``d_ff`` defaulting to ``4 · hidden_size`` (None). ``options`` are the other fields of
    :class:`~moe_course.config.MoEConfig` (``backend``, ``router``, ``n_shared``, ``capacity_factor``,
    ``renormalize``, ...). With k=1 and renormalization the weight is always 1 and the router gets no gradient,
    so top-1 layers use ``router="switch"`` or ``renormalize=False``. ``ep_size`` > 1 shards the experts over
    this rank's group of ``ep_size`` consecutive ranks of the initialized world, E/ep_size on each
    (:class:`~moe_course.parallel.AllToAllExchange`); the groups are data-parallel replicas of each other.
    """
    check_positive_int("hidden_size", hidden_size)
    check_top_k(k, num_experts, "num_experts")
    check_positive_int("ep_size", ep_size)
    unknown = [name for name in options if name not in OPTIONS]
    if unknown:
        raise ValueError(
            f"{unknown[0]} is not an option of MoE: the options are {list(OPTIONS)} (hidden_size, expert, "
            "num_experts, k and d_ff set the sizes and the activation)"
        )
    if isinstance(expert, FFN):
        if expert.d_model != hidden_size:
            raise ValueError(f"expert has d_model={expert.d_model}, which must equal hidden_size={hidden_size}")
        if d_ff is not None and d_ff != expert.d_ff:
            raise ValueError(f"d_ff={d_ff} disagrees with the expert template's d_ff={expert.d_ff}")
        d_ff, activation = expert.d_ff, expert.activation
    elif isinstance(expert, str):
        activation = check_choice("expert", expert, ACTIVATIONS)
        d_ff = 4 * hidden_size if d_ff is None else d_ff
    else:
        raise ValueError(f"expert must be an FFN or an activation name, got {type(expert).__name__}")
    config = MoEConfig(hidden_size, d_ff, num_experts, k, activation, **options)
    return MoELayer(config, None if ep_size == 1 else AllToAllExchange.for_ep_size(ep_size))
