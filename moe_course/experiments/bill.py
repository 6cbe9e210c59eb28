"""The bill: what an MoE costs besides its FLOPs, in one row per model.

For a model (:class:`~moe_course.flops.ModelConfig`): the parameters and bytes that must be resident (all E experts,
whatever k is), the parameters active per token, the forward FLOPs per token (:func:`~moe_course.flops.forward_flops`
over a context of ``seq_len``), and the bytes each token sends to other ranks per forward pass when the experts are
spread over P ranks (lesson 07's all-to-all model, even routing, every layer's dispatch and combine; none for a
dense model, which has no experts to spread).
"""

from ..checks import check_number, check_positive_int
from ..flops import ModelConfig, count_model_params, forward_flops
from ..parallel.exchange import exchange_bytes_per_token


def bill(config: ModelConfig, seq_len: int, P: int, bytes_per_param: float) -> dict:
    """The costs of ``config`` as above, with weights and activations of ``bytes_per_param`` bytes."""
    if not isinstance(config, ModelConfig):
        raise ValueError(f"config must be a ModelConfig, got {type(config).__name__}")
    check_positive_int("P", P)
    check_number("bytes_per_param", bytes_per_param, positive=True)
    params = count_model_params(config)
    moe = config.E > 1
    per_layer = exchange_bytes_per_token(config.d_model, config.k, P, bytes_per_param) if moe else 0.0
    return {
        "params_total": params["total"],
        "params_active": params["active"],
        "resident_bytes": params["total"] * bytes_per_param,
        "forward_flops_per_token": forward_flops(config, seq_len) / seq_len,
        "exchange_bytes_per_token": config.n_layers * per_layer,
    }
