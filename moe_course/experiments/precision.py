"""Router precision: how many tokens change their experts when the router runs in bfloat16 instead of float32.

MoE training is said to be unstable because small changes of the router's logits flip tokens from one expert to
another, which is why the router is kept in careful precision and why ST-MoE (Zoph et al. 2022) adds the router
z-loss, which keeps the logits small. This module measures, for one router and the inputs it received:

- ``flipped``: the tokens whose *set* of k experts in ``dtype`` differs from the set in float32 (the order within
  the k is ignored: the layer's output does not depend on it);
- ``weight_error``: the mean over tokens of ``max_e |probs_dtype[t, e] − probs_fp32[t, e]|``, the largest error of
  the router's probability over all E experts; the combine weights are these probabilities on the chosen experts
  (renormalized), so their error follows it. It is defined for every token, flipped or not, and so measures the
  arithmetic error apart from the discrete flips.

What the logit scale does: multiplying every logit by a power of two changes no mantissa, in bfloat16 as in
float32, and top-k is invariant to positive scaling in exact arithmetic; so a router that chooses its experts from
its logits (``order="topk_then_softmax"``) flips exactly the same tokens at any power-of-two scale (short of
overflow). What a larger scale changes is the absolute error of the logits (bfloat16 keeps 8 significant bits: each
rounding is off by up to ``|value| / 256``) and so the error of the softmax and of the combine weights. The course's
default order, ``"softmax_then_topk"``, chooses from the probabilities, which bfloat16 rounds too: logits that
bfloat16 still tells apart can give equal probabilities when they are close to each other in absolute terms, so there
small logits flip *more* tokens, and a power-of-two scale does change the count.

Which part runs in ``dtype`` (``part``): ``"gate"``, only the gate's product (its weight, the input, the logits),
then the softmax and the choice in float32 from those rounded logits, as Mixtral's reference code does
(``F.softmax(router_logits, dim=1, dtype=torch.float)``); ``"all"``, every step of the routing in ``dtype``. With
``"gate"`` the choice is made from the logits whatever the order, so only the logits' rounding flips tokens.

:func:`router_inputs` collects what each MoE layer's router received in a model's forward pass, :func:`route_in`
runs a router in another dtype, and :func:`routing_flips` compares the two precisions.
"""

import copy
from dataclasses import dataclass

import torch

from ..checks import FLOATING, check_choice, check_number, check_tensor
from ..model import TinyLM
from ..routing import Router, Routing


@dataclass
class PrecisionStats:
    """One router's routing of T tokens in ``dtype`` against float32.

    tokens:       T
    flipped:      tokens whose set of k experts differs between the two
    flip_rate:    flipped / tokens (0.0 for no tokens)
    weight_error: mean over tokens of the largest |probability difference| over the E experts (0.0 for no tokens)
    logit_scale:  mean over tokens of the standard deviation (over the E experts) of the float32 logits: how
                  large and spread the router's logits are (0.0 for no tokens)
    """

    tokens: int
    flipped: int
    flip_rate: float
    weight_error: float
    logit_scale: float


PARTS = ("gate", "all")


def router_inputs(model: TinyLM, idx: torch.Tensor) -> list:
    """What each MoE layer's router received in the forward pass of ``model`` on ``idx`` [B, S]: a list of L tensors
    [B·S, d_model] in float32, first layer first. Evaluation mode and no gradients (the tensors are detached); the
    model's mode is restored."""
    layers = model.moe_layers() if isinstance(model, TinyLM) else []
    if not layers:
        raise ValueError("model must be a TinyLM with MoE layers")
    inputs = []
    # a pre-hook sees the layer's input, the block's norm2 output; the router sees it flattened to tokens
    hooks = [layer.register_forward_pre_hook(lambda _, args: inputs.append(args[0].flatten(0, -2))) for layer in layers]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(idx)
        return [x.float() for x in inputs]
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()


def route_in(router: Router, x: torch.Tensor, dtype: torch.dtype, part: str = "all") -> Routing:
    """``router``'s routing of x [T, d_model] with ``part`` of it computed in ``dtype`` (``"all"``: its gate weight,
    its selection bias, the input and every step of the routing method; ``"gate"``: the gate's product only, the rest
    in float32), in evaluation mode (no jitter, no noise), without gradients. The router itself is left unchanged (a
    copy runs). The Routing's tensors have the dtype of its last step."""
    _check_routing_arguments(router, x, dtype, part)
    return _route_in(router, x, dtype, 1.0, part)


def routing_flips(
    router: Router, x: torch.Tensor, dtype=torch.bfloat16, scale: float = 1.0, part: str = "all"
) -> PrecisionStats:
    """Compare ``router``'s routing of x [T, d_model] with ``part`` of it in ``dtype`` against its routing in float32
    (see the module's docstring for the measures), both with the gate weight multiplied by ``scale``, which multiplies
    the logits by it. The router itself is left unchanged. For expert choice every token lists all E experts:
    nothing flips."""
    _check_routing_arguments(router, x, dtype, part)
    check_number("scale", scale, positive=True)
    tokens = x.shape[0]
    if tokens == 0:
        return PrecisionStats(tokens=0, flipped=0, flip_rate=0.0, weight_error=0.0, logit_scale=0.0)
    reference = _route_in(router, x, torch.float32, scale, "all")
    other = _route_in(router, x, dtype, scale, part)
    # indices are distinct within a row: sorted, they are the token's set of experts
    flipped = int((reference.indices.sort(dim=1).values != other.indices.sort(dim=1).values).any(dim=1).sum())
    error = (other.probs.double() - reference.probs.double()).abs().amax(dim=1)  # [T]
    return PrecisionStats(
        tokens=tokens,
        flipped=flipped,
        flip_rate=flipped / tokens,
        weight_error=error.mean().item(),
        logit_scale=reference.logits.std(dim=1, correction=0).mean().item(),
    )


def _check_routing_arguments(router, x, dtype, part) -> None:
    if not isinstance(router, Router):
        raise ValueError(f"router must be a Router, got {type(router).__name__}")
    check_tensor("x", x, ("T", router.d_model), "floating-point")
    if dtype not in FLOATING:
        raise ValueError(f"dtype must be a floating-point dtype, one of {list(FLOATING)}, got {dtype!r}")
    check_choice("part", part, PARTS)


def _route_in(router: Router, x: torch.Tensor, dtype: torch.dtype, scale: float, part: str) -> Routing:
    """:func:`route_in` with the gate weight multiplied by ``scale`` (in the router's dtype, before the conversion:
    a power of two then scales the converted weight exactly), unchecked."""
    copied = copy.deepcopy(router).eval()
    with torch.no_grad():
        copied.gate.weight.mul_(scale)
        if part == "gate":  # the product in dtype, the routing in float32 from its rounded logits
            logits = copied.gate.to(dtype)(x.to(copied.gate.weight.device, dtype))
            copied.float()
            return copied.select(logits.float(), x.float())
        copied.to(dtype)
        return copied.route(x.to(copied.gate.weight.device, dtype))
