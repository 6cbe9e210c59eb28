"""One MoE layer's configuration: every size and choice, validated once, read by the layer, the tiny model and the
FLOP accounting alike."""

from dataclasses import dataclass

from .backends import BACKENDS, DEFAULT_BACKEND
from .capacity import POLICIES
from .checks import check_bool, check_choice, check_non_negative_int, check_number, check_positive_int
from .experts import ACTIVATIONS
from .routing import METHODS, router_settings


@dataclass(frozen=True)
class MoEConfig:
    """An MoE FFN: E routed experts of width ``d_ff`` (k per token) plus ``n_shared`` always-on shared experts.

    shared experts:  one FFN of width ``shared_d_ff`` (default ``n_shared · d_ff``, DeepSeek's convention), run by
                     every token; ``shared_gate`` multiplies its output by ``sigmoid(x · w_gate)`` per token
                     (Qwen2-MoE: one shared expert of its own width, gated)

    router:          a :class:`~moe_course.routing.Router` method (``"topk"``, ``"noisy_topk"``, ``"switch"``,
                     ``"expert_choice"``, ``"sigmoid"``, ``"group_limited"``), with its options ``order``,
                     ``renormalize``, ``n_groups``, ``topk_groups``, ``routed_scaling_factor`` (None: the method's
                     default; an option the method does not use raises ``ValueError``) and ``jitter_eps``
    capacity_factor: None for dropless; else each expert takes at most ``ceil(cf · T · k / E)`` pairs and the rest
                     are dropped under ``drop_policy`` (``"arrival"`` or ``"batch_priority"``); for expert choice
                     it sets every expert's capacity (default 1.0)
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
    order: str | None = None
    renormalize: bool | None = None
    n_groups: int | None = None
    topk_groups: int | None = None
    routed_scaling_factor: float | None = None
    jitter_eps: float = 0.0
    n_shared: int = 0
    shared_d_ff: int | None = None
    shared_gate: bool = False
    capacity_factor: float | None = None
    drop_policy: str = "arrival"
    backend: str = DEFAULT_BACKEND

    def __post_init__(self):
        check_positive_int("d_model", self.d_model)
        check_positive_int("d_ff", self.d_ff)
        check_choice("activation", self.activation, ACTIVATIONS)
        check_non_negative_int("n_shared", self.n_shared)
        if self.shared_d_ff is not None:
            check_positive_int("shared_d_ff", self.shared_d_ff)
        check_bool("shared_gate", self.shared_gate)
        if not self.n_shared and (self.shared_d_ff is not None or self.shared_gate):
            given = "shared_d_ff" if self.shared_d_ff is not None else "shared_gate"
            raise ValueError(f"{given} describes the shared experts: it needs n_shared >= 1")
        if self.capacity_factor is not None:
            check_number("capacity_factor", self.capacity_factor, positive=True)
        check_choice("drop_policy", self.drop_policy, POLICIES)
        check_choice("backend", self.backend, BACKENDS)
        check_choice("router", self.router, METHODS)
        router_settings(self.E, self.k, self.router, **self.router_options())

    @property
    def shared_width(self) -> int:
        """The hidden width of the shared FFN: ``shared_d_ff``, else ``n_shared · d_ff`` (0: none)."""
        return self.shared_d_ff or self.n_shared * self.d_ff

    @property
    def drops_pairs(self) -> bool:
        """Whether a capacity limit drops token-choice pairs (expert choice has capacities but drops none)."""
        return self.capacity_factor is not None and self.router != "expert_choice"

    def router_options(self) -> dict:
        """The keyword options of :class:`~moe_course.routing.Router` for this layer (``capacity_factor`` sets
        expert choice's capacities; for the token-choice methods it is the layer's dropping)."""
        options = dict(order=self.order, renormalize=self.renormalize, n_groups=self.n_groups)
        options |= dict(topk_groups=self.topk_groups, routed_scaling_factor=self.routed_scaling_factor)
        if self.router == "expert_choice":
            options["capacity_factor"] = self.capacity_factor
        return dict(options, jitter_eps=self.jitter_eps)
