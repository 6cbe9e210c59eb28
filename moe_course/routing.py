"""Routers: score every expert for every token, choose who processes what, and weight the answers.

Every router function takes the router's ``logits: [T, E]`` and returns a :class:`Routing`, so the MoE layer, the
losses and the capacity logic work with any of them. Shapes: T tokens, E experts, k experts per token.

| function                 | method                                                         | weights sum to 1 |
|--------------------------|----------------------------------------------------------------|------------------|
| ``top_k_routing``        | softmax, top-k, renormalize (or Mixtral's top-k then softmax)  | yes (if renorm.) |
| ``noisy_top_k_routing``  | Shazeer et al. 2017: Gaussian noise on the logits, then top-k  | yes              |
| ``switch_routing``       | Switch Transformer: top-1, weight = its softmax probability    | no               |
| ``expert_choice_routing``| Zhou et al. 2022: each expert picks its top-C tokens           | no               |
| ``sigmoid_routing``      | DeepSeek-V3: sigmoid scores, a selection bias, groups scored by | yes (× scaling) |
|                          | their two best biased scores, weights × routed_scaling_factor  |                  |
| ``group_limited_routing``| DeepSeek-V2: softmax, groups scored by their best probability, | no (× scaling)   |
|                          | top-k inside the best groups, weights × routed_scaling_factor  |                  |

The DeepSeek routers follow the released code (DeepSeek-V3's ``inference/model.py`` ``Gate``, the Hugging Face
``MoEGate`` of DeepSeek-V2 and V3): ``n_groups``, ``topk_groups``, ``renormalize`` and ``routed_scaling_factor`` are
their ``n_group``, ``topk_group``, ``norm_topk_prob`` and ``routed_scaling_factor``.

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


def check_groups(E: int, k: int, n_groups, topk_groups, group_size: int = 1) -> None:
    """Groups of experts: ``n_groups`` contiguous groups of at least ``group_size`` experts each (E divisible by
    n_groups), ``topk_groups`` of them kept, holding at least k experts."""
    check_positive_int("n_groups", n_groups)
    check_positive_int("topk_groups", topk_groups)
    if E % n_groups:
        raise ValueError(f"n_groups must divide E={E}, got {n_groups}")
    if E // n_groups < group_size:
        raise ValueError(
            f"n_groups={n_groups} leaves {E // n_groups} experts per group; this router needs {group_size}"
        )
    if topk_groups > n_groups:
        raise ValueError(f"topk_groups must be at most n_groups={n_groups}, got {topk_groups}")
    if k > topk_groups * (E // n_groups):
        raise ValueError(f"k={k} must be at most the experts in the kept groups, {topk_groups * (E // n_groups)}")


def sigmoid_routing(
    logits: torch.Tensor,
    k: int,
    bias: torch.Tensor | None = None,
    n_groups: int | None = None,
    topk_groups: int | None = None,
    renormalize: bool = True,
    routed_scaling_factor: float = 1.0,
) -> Routing:
    """DeepSeek-V3's router. Affinities ``s = sigmoid(logits)``; the choice uses ``s + bias`` (the
    auxiliary-loss-free correction bias, ``e_score_correction_bias``), the weights the unbiased ``s``:

    1. with groups (``n_groups`` contiguous groups of E/n_groups experts, at least 2 each), each group is scored by
       the **sum of its two best biased affinities** and the ``topk_groups`` best groups are kept (the released
       code does so whenever its bias exists, as it always does in V3; a missing ``bias`` counts as zeros here);
    2. the top k of ``s + bias`` among the kept experts are chosen;
    3. their unbiased ``s`` are the weights, normalized to sum to 1 if ``renormalize`` (``norm_topk_prob``, True
       in V3), then multiplied by ``routed_scaling_factor`` (2.5 in DeepSeek-V3).

    ``probs`` is ``s`` normalized over all experts (what V3's sequence-wise balance loss reads). The normalization
    is a softmax of ``logsigmoid(logits)``, the same numbers as ``s / Σ s``, finite for any finite logits: below
    about −104 (float32) every ``s`` is 0 and the quotient would be 0/0. Logits of +inf give ``s = 1``, of −inf
    ``s = 0`` (weight 0 unless every chosen logit is −inf: NaN weights, as for a NaN logit).
    """
    check_scores("logits", logits)
    E = logits.shape[1]
    check_top_k(k, E)
    check_bias(bias, E)
    if (n_groups is None) != (topk_groups is None):
        given, missing = ("n_groups", "topk_groups") if topk_groups is None else ("topk_groups", "n_groups")
        raise ValueError(f"{given} needs {missing} too: group limits take both, or neither")
    if n_groups is not None:
        check_groups(E, k, n_groups, topk_groups, group_size=2)
    check_bool("renormalize", renormalize)
    check_number("routed_scaling_factor", routed_scaling_factor, positive=True)
    return _sigmoid(logits, k, bias, n_groups, topk_groups, renormalize, routed_scaling_factor)


def _sigmoid(logits, k, bias, n_groups=None, topk_groups=None, renormalize=True, routed_scaling_factor=1.0) -> Routing:
    scores = torch.sigmoid(logits)
    choice = scores if bias is None else scores + bias
    if n_groups is not None:
        group_scores = _grouped(choice, n_groups).topk(2, dim=-1).values.sum(dim=-1)  # [T, n_groups]
        choice = _outside_best_groups(choice, group_scores, topk_groups, -torch.inf)
    indices = torch.topk(choice, k, dim=-1).indices
    log_scores = F.logsigmoid(logits)
    weights = _normalized(log_scores, indices) if renormalize else scores.gather(1, indices)
    probs = torch.softmax(log_scores, dim=-1)
    return Routing(indices=indices, weights=weights * routed_scaling_factor, probs=probs, logits=logits)


def _grouped(scores: torch.Tensor, n_groups: int) -> torch.Tensor:
    """[T, E] -> [T, n_groups, E / n_groups]: group j holds experts j·E/n_groups, ..., (j+1)·E/n_groups − 1."""
    return scores.view(scores.shape[0], n_groups, scores.shape[1] // n_groups)


def _outside_best_groups(scores, group_scores, topk_groups, fill) -> torch.Tensor:
    """``scores: [T, E]`` with every expert outside each token's ``topk_groups`` best groups set to ``fill``."""
    T, n_groups = group_scores.shape
    best = torch.topk(group_scores, topk_groups, dim=-1).indices
    kept = torch.zeros(T, n_groups, dtype=torch.bool, device=scores.device).scatter_(1, best, True)
    return scores.masked_fill(~kept.repeat_interleave(scores.shape[1] // n_groups, dim=1), fill)


def group_limited_routing(
    logits: torch.Tensor,
    k: int,
    n_groups: int,
    topk_groups: int,
    renormalize: bool = False,
    routed_scaling_factor: float = 1.0,
) -> Routing:
    """DeepSeek-V2's device-limited routing (``group_limited_greedy``): the E experts form ``n_groups`` equal,
    contiguous groups (one per device); each token scores a group by its **best softmax probability**, keeps the
    ``topk_groups`` best groups, and takes its top k experts among them. A token's experts then live on at most
    ``topk_groups`` devices, which bounds its communication.

    The weights are the chosen probabilities, **not renormalized** (``norm_topk_prob=False`` in DeepSeek-V2;
    ``renormalize=True`` divides them by their sum), times ``routed_scaling_factor`` (16.0 in DeepSeek-V2; the
    released code applies the factor only when it does not renormalize, a combination its configurations never
    use). Experts outside the kept groups are excluded outright, also where probabilities underflow to 0 (the
    released code fills them with 0, which could then tie with a kept expert's 0). Non-finite logits as in
    :func:`top_k_routing`."""
    check_scores("logits", logits)
    check_top_k(k, logits.shape[1])
    check_groups(logits.shape[1], k, n_groups, topk_groups)
    check_bool("renormalize", renormalize)
    check_number("routed_scaling_factor", routed_scaling_factor, positive=True)
    return _group_limited(logits, k, n_groups, topk_groups, renormalize, routed_scaling_factor)


def _group_limited(logits, k, n_groups, topk_groups, renormalize=False, routed_scaling_factor=1.0) -> Routing:
    probs = torch.softmax(logits, dim=-1)
    group_scores = _grouped(probs, n_groups).amax(dim=-1)  # [T, n_groups]
    indices = torch.topk(_outside_best_groups(probs, group_scores, topk_groups, -1.0), k, dim=-1).indices
    weights = _normalized(torch.log_softmax(logits, dim=-1), indices) if renormalize else probs.gather(1, indices)
    return Routing(indices=indices, weights=weights * routed_scaling_factor, probs=probs, logits=logits)


def jitter(x: torch.Tensor, eps: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Router jitter (Switch Transformer): multiply the router's input by uniform noise in [1 - eps, 1 + eps]."""
    check_tensor("x", x, kind="floating-point")
    check_number("eps", eps)
    return _jitter(x, eps, generator)


def _jitter(x, eps, generator=None) -> torch.Tensor:
    noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x * (1 - eps + 2 * eps * noise)


# The options each method takes, with their defaults (None: see the method). Every method takes jitter_eps.
OPTIONS = {
    "topk": {"order": "softmax_then_topk", "renormalize": True},
    "noisy_topk": {},
    "switch": {},
    "expert_choice": {"capacity_factor": 1.0},
    "sigmoid": {"n_groups": None, "topk_groups": None, "renormalize": True, "routed_scaling_factor": 1.0},
    "group_limited": {"n_groups": None, "topk_groups": None, "renormalize": False, "routed_scaling_factor": 1.0},
}
METHODS = tuple(OPTIONS)


def router_settings(E: int, k: int, method: str, jitter_eps: float = 0.0, **given) -> dict:
    """The settings of a router of ``method``: the options ``given`` (those not None) over the method's defaults,
    each checked. An option the method does not use, or an invalid combination, raises ``ValueError`` naming it."""
    check_top_k(k, E)
    check_choice("method", method, METHODS)
    check_number("jitter_eps", jitter_eps)
    given = {name: value for name, value in given.items() if value is not None}
    for name in given:
        if name not in OPTIONS[method]:
            takes = ", ".join(OPTIONS[method]) or "no options but jitter_eps"
            raise ValueError(f"{name} is not an option of method={method!r} (it takes {takes})")
    settings = {**OPTIONS[method], **given}
    if method == "topk":
        check_order(settings["order"], settings["renormalize"])
    if method == "switch" and k != 1:
        raise ValueError(f"k must be 1 for switch routing, got {k}")
    if method == "expert_choice":
        check_number("capacity_factor", settings["capacity_factor"], positive=True)
    if method == "sigmoid":
        sigmoid_routing(torch.zeros(1, E), k, None, settings["n_groups"], settings["topk_groups"],
                        settings["renormalize"], settings["routed_scaling_factor"])  # fmt: skip
    if method == "group_limited":
        if settings["n_groups"] is None or settings["topk_groups"] is None:
            raise ValueError("method='group_limited' needs n_groups and topk_groups")
        group_limited_routing(torch.zeros(1, E), k, **{n: settings[n] for n in OPTIONS["group_limited"]})
    return settings


class Router(nn.Module):
    """A linear gate ``W_g: [d_model, E]`` (no bias) followed by one of the routing methods above.

    Options by method (``OPTIONS``; giving one a method does not use raises ``ValueError``): ``topk`` takes
    ``order`` and ``renormalize``; ``sigmoid`` (DeepSeek-V3) takes ``n_groups`` with ``topk_groups`` (no group
    limit without them), ``renormalize`` (default True) and ``routed_scaling_factor``; ``group_limited``
    (DeepSeek-V2) needs ``n_groups`` and ``topk_groups`` and takes ``renormalize`` (default False) and
    ``routed_scaling_factor``; ``expert_choice`` takes ``capacity_factor`` (capacity ``ceil(cf · T · k / E)``).
    ``noisy_topk`` adds a learned noise gate ``W_noise`` (noise only in training). ``jitter_eps`` > 0 applies
    router jitter in training, to any method. The buffer ``bias: [E]`` shifts the selection of ``topk`` and
    ``sigmoid`` routing; :func:`moe_course.losses.update_bias` moves it (auxiliary-loss-free balancing).
    """

    def __init__(
        self,
        d_model: int,
        E: int,
        k: int,
        method: str = "topk",
        *,
        order: str | None = None,
        renormalize: bool | None = None,
        n_groups: int | None = None,
        topk_groups: int | None = None,
        routed_scaling_factor: float | None = None,
        capacity_factor: float | None = None,
        jitter_eps: float = 0.0,
    ):
        super().__init__()
        check_positive_int("d_model", d_model)
        given = dict(order=order, renormalize=renormalize, n_groups=n_groups, topk_groups=topk_groups)
        given |= dict(routed_scaling_factor=routed_scaling_factor, capacity_factor=capacity_factor)
        self.settings = router_settings(E, k, method, jitter_eps, **given)
        self.d_model, self.E, self.k, self.method, self.jitter_eps = d_model, E, k, method, jitter_eps
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
        return self.select(self.gate(x), x)

    def select(self, logits: torch.Tensor, x: torch.Tensor) -> Routing:
        """The routing method on the gate's ``logits: [T, E]`` of x (which the noise gate and expert choice's
        capacity read), unchecked: :meth:`route` without the gate's product."""
        s = self.settings
        if self.method == "topk":
            return _top_k(logits, self.k, s["order"], s["renormalize"], self.bias)
        if self.method == "noisy_topk":
            noise_std = F.softplus(self.noise_gate(x)) if self.training else 0.0
            return _noisy_top_k(logits, self.k, noise_std)
        if self.method == "switch":
            return _top_k(logits, 1, "softmax_then_topk", False, None)
        if self.method == "sigmoid":
            return _sigmoid(logits, self.k, self.bias, **s)
        if self.method == "group_limited":
            return _group_limited(logits, self.k, **s)
        capacity = capacity_of(x.shape[0], self.E, self.k, s["capacity_factor"])
        return _expert_choice(logits, min(capacity, x.shape[0]))
