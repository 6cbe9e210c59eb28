"""One MoE layer's configuration: every size and choice, validated once, read by the layer, the tiny model and the
FLOP accounting alike."""

from dataclasses import dataclass

from .backends import BACKENDS, DEFAULT_BACKEND
from .capacity import POLICIES
from .checks import check_choice, check_non_negative_int, check_number, check_positive_int
from .experts import ACTIVATIONS
from .routing import METHODS, check_router


@dataclass(frozen=True)
class MoEConfig:
    """An MoE FFN: E routed experts of width ``d_ff`` (k per token) plus ``n_shared`` always-on shared experts.

    router:          a :class:`~moe_course.routing.Router` method (``"topk"``, ``"noisy_topk"``, ``"switch"``,
                     ``"expert_choice"``, ``"sigmoid"``, ``"group_limited"``), with its options ``order``,
                     ``renormalize`` (top-k), ``n_groups``, ``topk_groups`` (group-limited), ``jitter_eps``
    capacity_factor: None for dropless; else each expert takes at most ``ceil(cf · T · k / E)`` pairs and the rest
                     are dropped under ``drop_policy`` (``"arrival"`` or ``"priority"``); for expert choice it sets
                     every expert's capacity (default 1.0)
    backend:         how the expert block runs (:mod:`moe_course.backends`): ``"grouped"`` (the default; the
                     vectorized layout where ``torch._grouped_mm`` cannot run), ``"vectorized"``, ``"loop"``,
                     ``"triton"``
    """

    d_model: int
    d_ff: int
    E: int = 8
    k: int = 2
    activation: str = "swiglu"
    router: str = "topk"
    order: str = "softmax_then_topk"
    renormalize: bool = True
    n_groups: int | None = None
    topk_groups: int | None = None
    jitter_eps: float = 0.0
    n_shared: int = 0
    capacity_factor: float | None = None
    drop_policy: str = "arrival"
    backend: str = DEFAULT_BACKEND

    def __post_init__(self):
        check_positive_int("d_model", self.d_model)
        check_positive_int("d_ff", self.d_ff)
        check_choice("activation", self.activation, ACTIVATIONS)
        check_non_negative_int("n_shared", self.n_shared)
        if self.capacity_factor is not None:
            check_number("capacity_factor", self.capacity_factor, positive=True)
        check_choice("drop_policy", self.drop_policy, POLICIES)
        check_choice("backend", self.backend, BACKENDS)
        check_choice("router", self.router, METHODS)
        check_router(**self.router_options(), E=self.E, k=self.k, method=self.router)

    @property
    def drops_pairs(self) -> bool:
        """Whether a capacity limit drops token-choice pairs (expert choice has capacities but drops none)."""
        return self.capacity_factor is not None and self.router != "expert_choice"

    def router_options(self) -> dict:
        """The keyword options of :class:`~moe_course.routing.Router` for this layer."""
        return dict(
            order=self.order,
            renormalize=self.renormalize,
            n_groups=self.n_groups,
            topk_groups=self.topk_groups,
            capacity_factor=1.0 if self.capacity_factor is None else self.capacity_factor,
            jitter_eps=self.jitter_eps,
        )
