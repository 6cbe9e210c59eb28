"""Routers: score every expert for every token, choose who processes what, and weight the answers.

Every router function takes the router's ``logits: [T, E]`` and returns a :class:`Routing`, so the MoE layer, the
losses and the capacity logic work with any of them. Shapes: T tokens, E experts, k experts per token.

| function                 | method                                                         | weights sum to 1 |
|--------------------------|----------------------------------------------------------------|------------------|
| ``top_k_routing``        | softmax, top-k, renormalize (or Mixtral's top-k then softmax)  | yes (if renorm.) |
| ``noisy_top_k_routing``  | Shazeer et al. 2017: Gaussian noise on the logits, then top-k  | yes              |
| ``switch_routing``       | Switch Transformer: top-1, weight = its softmax probability    | no               |
| ``expert_choice_routing``| Zhou et al. 2022: each expert picks its top-C tokens           | no               |
| ``sigmoid_routing``      | DeepSeek-V3: sigmoid scores, a bias that only affects selection | yes             |
| ``group_limited_routing``| DeepSeek-V2/V3: best groups (nodes) first, then experts in them | yes             |

Weights that sum to 1 are a softmax, over each token's chosen experts, of their log-scores (``log_softmax(logits)``
for the softmax routers, ``logsigmoid(logits)`` for sigmoid routing): the same numbers as ``s_i / Σ_chosen s_j``,
and finite where every chosen score ``s`` underflows to 0 and that quotient is 0/0 (in float32: the sigmoid of a
logit below about −104; a probability, chosen by a bias, whose logit lies about 104 below the token's largest).
Finite logits give finite weights and gradients. Non-finite logits: −inf is an expert the token cannot use
(probability 0, weight 0 if it is chosen all the same); NaN, and +inf in a softmax, give the token NaN weights.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .capacity import capacity_of
from .checks import (
    check_bool,
    check_choice,
    check_hidden,
    check_non_negative_int,
    check_number,
    check_positive_int,
    check_scores,
    check_tensor,
    check_top_k,
)

ORDERS = ("softmax_then_topk", "topk_then_softmax")


@dataclass
class Routing:
    """What a router decided for a batch.

    indices: [T, k]  each token's experts, distinct within a row (int64)
    weights: [T, k]  the combine weight of each (token, slot) pair
    probs:   [T, E]  the router's distribution over all experts (softmax, or normalized sigmoid scores);
                     load-balancing losses take their P_i from it
    logits:  [T, E]  the router's raw scores
    keep:    [T, k]  bool, which pairs are processed; ``None`` means all (expert choice and capacity limits
                     leave some pairs out: a dropped pair contributes nothing, the token keeps its residual)
    """

    indices: torch.Tensor
    weights: torch.Tensor
    probs: torch.Tensor
    logits: torch.Tensor
    keep: torch.Tensor | None = None

    def kept(self) -> torch.Tensor:
        """The keep mask, all True when every pair is processed: [T, k] bool."""
        return torch.ones_like(self.indices, dtype=torch.bool) if self.keep is None else self.keep


def check_order(order: str, renormalize: bool) -> None:
    """``renormalize=False`` only exists for softmax-then-top-k: a softmax over the top k always sums to 1."""
    check_choice("order", order, ORDERS)
    check_bool("renormalize", renormalize)
    if order == "topk_then_softmax" and not renormalize:
        raise ValueError("renormalize=False needs order='softmax_then_topk' (a softmax over the top k sums to 1)")


def check_bias(bias, E: int) -> None:
    """A selection bias is None or E finite numbers."""
    if bias is not None:
        check_tensor("bias", bias, (E,), "real")
        if not torch.isfinite(bias).all():
            raise ValueError(f"bias must be finite, got {bias.tolist()}")


def check_noise_std(noise_std, shape: torch.Size) -> None:
    """A float, or a floating-point tensor that broadcasts to the logits' ``shape``; finite and >= 0 either way."""
    if not isinstance(noise_std, torch.Tensor):
        check_number("noise_std", noise_std)
        return
    check_tensor("noise_std", noise_std, kind="floating-point")
    try:
        broadcasts = torch.broadcast_shapes(noise_std.shape, shape) == shape
    except RuntimeError:
        broadcasts = False
    if not broadcasts:
        raise ValueError(f"noise_std must broadcast to the logits' shape {tuple(shape)}, got {tuple(noise_std.shape)}")
    if not bool((noise_std >= 0).all() and torch.isfinite(noise_std).all()):
        raise ValueError("noise_std must be finite and >= 0 everywhere")


def top_k_routing(
    logits: torch.Tensor,
    k: int,
    order: str = "softmax_then_topk",
    renormalize: bool = True,
    bias: torch.Tensor | None = None,
) -> Routing:
    """Pick each token's top-k experts from ``logits: [T, E]`` and compute their weights.

    ``order="softmax_then_topk"``: softmax over all E experts, keep the k largest probabilities and, when
    ``renormalize``, divide them by their sum so the k weights add to 1.
    ``order="topk_then_softmax"`` (Mixtral): keep the k largest logits and softmax over those k only. Softmax is
    monotonic, so both orders choose the same experts, and with renormalization they give the same weights;
    they differ when ``renormalize=False``: then the first order's weights sum to less than 1.
    ``bias: [E]`` is added to the scores for the *choice* only; the weights come from the unbiased scores. The
    scores are probabilities for the first order and logits for the second, so a bias means different amounts.
    A bias may choose experts whose probabilities underflowed to 0: renormalized, their weights stay finite.
    A logit of −inf is an expert the token cannot use (probability 0, weight 0 if chosen all the same, NaN if every
    chosen logit is −inf); +inf or NaN in a row gives NaN weights.
    """
    check_scores("logits", logits)
    check_top_k(k, logits.shape[1])
    check_order(order, renormalize)
    check_bias(bias, logits.shape[1])
    return _top_k(logits, k, order, renormalize, bias)


# The routers' unchecked cores: what a Router runs after checking its settings once, at construction.


def _normalized(log_scores: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Each token's chosen scores over their sum, ``s_i / Σ_chosen s_j`` with ``s = exp(log_scores)``: a softmax of
    the chosen log-scores, finite where the quotient of the scores themselves would be 0/0. [T, E], [T, k] -> [T, k].
    A row of log-scores with a NaN (a softmax's, from a NaN or +inf logit) gives NaN weights, as the quotient did."""
    return torch.softmax(log_scores.gather(1, indices), dim=-1)


def _top_k(logits, k, order, renormalize, bias) -> Routing:
    probs = torch.softmax(logits, dim=-1)
    scores = probs if order == "softmax_then_topk" else logits
    indices = torch.topk(scores if bias is None else scores + bias, k, dim=-1).indices
    weights = _normalized(torch.log_softmax(logits, dim=-1), indices) if renormalize else probs.gather(1, indices)
    return Routing(indices=indices, weights=weights, probs=probs, logits=logits)


def noisy_top_k_routing(
    logits: torch.Tensor, k: int, noise_std: torch.Tensor | float, generator: torch.Generator | None = None
) -> Routing:
    """Noisy top-k gating (Shazeer et al. 2017): ``H = logits + N(0, 1) · noise_std``, keep the top k of H,
    softmax over them. ``noise_std`` ([T, E] or a float) is learned in the paper as ``softplus(x W_noise)``; the
    noise lets a token sometimes try an expert just below its top k, which spreads the load. ``logits`` of the
    returned Routing are the noisy ones. ``noise_std`` must be finite and >= 0; non-finite logits as in
    :func:`top_k_routing`."""
    check_scores("logits", logits)
    check_top_k(k, logits.shape[1])
    check_noise_std(noise_std, logits.shape)
    return _noisy_top_k(logits, k, noise_std, generator)


def _noisy_top_k(logits, k, noise_std, generator=None) -> Routing:
    noise = torch.randn(logits.shape, generator=generator, device=logits.device, dtype=logits.dtype)
    return _top_k(logits + noise * noise_std, k, "topk_then_softmax", True, None)


def switch_routing(logits: torch.Tensor) -> Routing:
    """Switch Transformer top-1: the best expert, weighted by its softmax probability (not renormalized, so the
    router gets a gradient through the weight)."""
    return top_k_routing(logits, 1, renormalize=False)


def expert_choice_routing(logits: torch.Tensor, capacity: int) -> Routing:
    """Expert choice (Zhou et al. 2022): every expert takes the ``capacity`` tokens with the highest affinity.

    Affinities are the softmax over experts. The result has one slot per expert: ``indices[t, e] = e``,
    ``keep[t, e]`` says whether expert e chose token t, ``weights[t, e]`` is its affinity there (0 elsewhere).
    Every expert processes exactly ``capacity`` tokens; a token may get several experts or none.
    Logits of −inf: affinity 0; +inf or NaN in a token's row: NaN affinities for that token.
    """
    check_scores("logits", logits)
    T, E = logits.shape
    check_non_negative_int("capacity", capacity)
    if capacity > T:
        raise ValueError(f"capacity must be at most the number of tokens T={T}, got {capacity}")
    return _expert_choice(logits, capacity)


def _expert_choice(logits, capacity) -> Routing:
    T, E = logits.shape
    probs = torch.softmax(logits, dim=-1)
    chosen = torch.topk(probs, capacity, dim=0).indices  # [capacity, E]: the tokens each expert takes
    keep = torch.zeros(T, E, dtype=torch.bool, device=logits.device)
    keep[chosen, torch.arange(E, device=logits.device)] = True
    indices = torch.arange(E, device=logits.device).expand(T, E)
    return Routing(indices=indices, weights=probs * keep, probs=probs, logits=logits, keep=keep)


def sigmoid_routing(logits: torch.Tensor, k: int, bias: torch.Tensor | None = None) -> Routing:
    """DeepSeek-V3 gating: affinities ``s = sigmoid(logits)``, the top k of ``s + bias`` are chosen, and their
    unbiased ``s`` normalized to sum to 1 are the weights. ``probs`` is ``s`` normalized over all experts.

    Both normalizations are softmaxes of ``logsigmoid(logits)``, the same numbers, finite for any finite logits:
    below about −104 (float32) every ``s`` is 0 and ``s / Σ s`` would be 0/0. Logits of +inf give ``s = 1``, of −inf
    ``s = 0`` (weight 0 unless every chosen logit is −inf: NaN weights, as for a NaN logit).
    """
    check_scores("logits", logits)
    check_top_k(k, logits.shape[1])
    check_bias(bias, logits.shape[1])
    return _sigmoid(logits, k, bias)


def _sigmoid(logits, k, bias) -> Routing:
    scores = torch.sigmoid(logits)
    indices = torch.topk(scores if bias is None else scores + bias, k, dim=-1).indices
    log_scores = F.logsigmoid(logits)
    probs = torch.softmax(log_scores, dim=-1)
    return Routing(indices=indices, weights=_normalized(log_scores, indices), probs=probs, logits=logits)


def group_limited_routing(logits: torch.Tensor, k: int, n_groups: int, topk_groups: int) -> Routing:
    """Group-limited routing (DeepSeek-V2): the E experts form ``n_groups`` equal groups (one per device or
    node); each token first keeps the ``topk_groups`` groups holding its highest expert probability, then its
    top k experts among those groups only. A token's experts then live on at most ``topk_groups`` devices,
    which bounds its communication. Non-finite logits as in :func:`top_k_routing`."""
    check_scores("logits", logits)
    T, E = logits.shape
    check_top_k(k, E)
    check_positive_int("n_groups", n_groups)
    check_positive_int("topk_groups", topk_groups)
    if E % n_groups:
        raise ValueError(f"n_groups must divide E={E}, got {n_groups}")
    if topk_groups > n_groups:
        raise ValueError(f"topk_groups must be at most n_groups={n_groups}, got {topk_groups}")
    if k > topk_groups * (E // n_groups):
        raise ValueError(f"k={k} must be at most the experts in the kept groups, {topk_groups * (E // n_groups)}")
    return _group_limited(logits, k, n_groups, topk_groups)


def _group_limited(logits, k, n_groups, topk_groups) -> Routing:
    T, E = logits.shape
    probs = torch.softmax(logits, dim=-1)
    group_scores = probs.view(T, n_groups, E // n_groups).amax(dim=-1)  # [T, n_groups]
    groups = torch.topk(group_scores, topk_groups, dim=-1).indices
    in_kept_group = torch.zeros(T, n_groups, dtype=torch.bool, device=logits.device)
    in_kept_group.scatter_(1, groups, True)
    masked = probs.masked_fill(~in_kept_group.repeat_interleave(E // n_groups, dim=1), -1.0)
    indices = torch.topk(masked, k, dim=-1).indices
    weights = _normalized(torch.log_softmax(logits, dim=-1), indices)
    return Routing(indices=indices, weights=weights, probs=probs, logits=logits)


def jitter(x: torch.Tensor, eps: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Router jitter (Switch Transformer): multiply the router's input by uniform noise in [1 - eps, 1 + eps]."""
    check_tensor("x", x, kind="floating-point")
    check_number("eps", eps)
    return _jitter(x, eps, generator)


def _jitter(x, eps, generator=None) -> torch.Tensor:
    noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x * (1 - eps + 2 * eps * noise)


METHODS = ("topk", "noisy_topk", "switch", "expert_choice", "sigmoid", "group_limited")


def check_router(E, k, method, order, renormalize, n_groups, topk_groups, capacity_factor, jitter_eps) -> None:
    """Every check of a router's settings (see :class:`Router`), raising ``ValueError`` naming the argument."""
    check_top_k(k, E)
    check_choice("method", method, METHODS)
    check_order(order, renormalize)
    if method == "switch" and k != 1:
        raise ValueError(f"k must be 1 for switch routing, got {k}")
    if method == "group_limited":
        group_limited_routing(torch.zeros(1, E), k, n_groups, topk_groups)  # validate the groups now
    elif n_groups is not None or topk_groups is not None:
        given = "n_groups" if n_groups is not None else "topk_groups"
        raise ValueError(f"{given} is an option of group-limited routing only, not of {method!r}")
    check_number("capacity_factor", capacity_factor, positive=True)
    check_number("jitter_eps", jitter_eps)


class Router(nn.Module):
    """A linear gate ``W_g: [d_model, E]`` (no bias) followed by one of the routing methods above.

    Options by method: ``topk`` takes ``order`` and ``renormalize``; ``group_limited`` needs ``n_groups`` and
    ``topk_groups``; ``expert_choice`` uses ``capacity_factor`` (capacity ``ceil(cf · T · k / E)``).
    ``noisy_topk`` adds a learned noise gate ``W_noise`` (noise only in training). ``jitter_eps`` > 0 applies
    router jitter in training. The buffer ``bias: [E]`` shifts the selection of ``topk`` and ``sigmoid``
    routing; :func:`moe_course.losses.update_bias` moves it (auxiliary-loss-free balancing).
    """

    def __init__(
        self,
        d_model: int,
        E: int,
        k: int,
        method: str = "topk",
        *,
        order: str = "softmax_then_topk",
        renormalize: bool = True,
        n_groups: int | None = None,
        topk_groups: int | None = None,
        capacity_factor: float = 1.0,
        jitter_eps: float = 0.0,
    ):
        super().__init__()
        check_positive_int("d_model", d_model)
        check_router(E, k, method, order, renormalize, n_groups, topk_groups, capacity_factor, jitter_eps)
        self.d_model, self.E, self.k, self.method = d_model, E, k, method
        self.order, self.renormalize = order, renormalize
        self.n_groups, self.topk_groups = n_groups, topk_groups
        self.capacity_factor, self.jitter_eps = capacity_factor, jitter_eps
        self.gate = nn.Linear(d_model, E, bias=False)
        self.noise_gate = nn.Linear(d_model, E, bias=False) if method == "noisy_topk" else None
        self.register_buffer("bias", torch.zeros(E))

    def forward(self, x: torch.Tensor) -> Routing:
        """x: [T, d_model], of the gate's dtype and on its device -> Routing for T tokens."""
        check_hidden("x", x, self.d_model, like=self.gate.weight)
        return self.route(x)

    def route(self, x: torch.Tensor) -> Routing:
        """:meth:`forward` without checking x (the MoE layer checked it)."""
        if self.training and self.jitter_eps > 0:
            x = _jitter(x, self.jitter_eps)
        logits = self.gate(x)
        if self.method == "topk":
            return _top_k(logits, self.k, self.order, self.renormalize, self.bias)
        if self.method == "noisy_topk":
            noise_std = F.softplus(self.noise_gate(x)) if self.training else 0.0
            return _noisy_top_k(logits, self.k, noise_std)
        if self.method == "switch":
            return _top_k(logits, 1, "softmax_then_topk", False, None)
        if self.method == "sigmoid":
            return _sigmoid(logits, self.k, self.bias)
        if self.method == "group_limited":
            return _group_limited(logits, self.k, self.n_groups, self.topk_groups)
        return _expert_choice(logits, min(capacity_of(x.shape[0], self.E, self.k, self.capacity_factor), x.shape[0]))
