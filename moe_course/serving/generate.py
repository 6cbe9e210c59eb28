"""Generate text with :class:`~moe_course.model.TinyLM` the way a server does, and record every MoE layer's routing.

Decoding runs the prompt once (*prefill*), then one token at a time, each step attending to the keys and values of
the earlier positions kept in a :class:`~moe_course.model.KVCache` instead of recomputing them. For dropless
token-choice routers a token's routing does not depend on the other tokens of its batch, so the routing recorded
step by step is the routing of the whole sequence: a :class:`RoutingTrace`, which the expert-cache simulators read.
"""

from dataclasses import dataclass

import torch

from ..checks import check_ids, check_non_negative_int, check_number
from ..model import TinyLM


@dataclass
class RoutingTrace:
    """Each MoE layer's choices for every position of one generated sequence.

    indices: [L, N, k]  layer, position, slot: the experts chosen (int64)
    probs:   [L, N, E]  the router's probabilities (``Routing.probs``)
    prompt_len: positions 0 .. prompt_len − 1 are the prompt's (prefill), the rest were generated one at a time
    """

    indices: torch.Tensor
    probs: torch.Tensor
    prompt_len: int

    def requests(self, layer: int, generated_only: bool = True) -> torch.Tensor:
        """The expert requests of MoE layer ``layer``, position by position: [steps, k] (the decode steps only, or
        the prompt's positions too)."""
        start = self.prompt_len if generated_only else 0
        return self.indices[layer, start:]


def generate(
    model: TinyLM,
    prompt: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
) -> tuple:
    """Continue ``prompt`` ([S] token ids) by ``max_new_tokens`` tokens: greedy (``temperature`` 0) or sampled from
    ``softmax(logits / temperature)`` with ``generator``. The model runs in evaluation mode, without gradients.
    Returns ``(ids [S + max_new_tokens], RoutingTrace)`` (the trace is None for a dense model): every generated
    token is run through the model once, so its routing is recorded too."""
    if not isinstance(model, TinyLM):
        raise ValueError(f"model must be a TinyLM, got {type(model).__name__}")
    check_ids("prompt", prompt, ("S",), "int32 or int64", model.config.vocab_size, "vocab_size")
    if prompt.numel() == 0:
        raise ValueError("prompt must hold at least one token")
    check_non_negative_int("max_new_tokens", max_new_tokens)
    if prompt.numel() + max_new_tokens > model.config.seq_len:
        raise ValueError(
            f"max_new_tokens must leave prompt + new tokens within seq_len={model.config.seq_len}: the prompt has "
            f"{prompt.numel()} tokens, got max_new_tokens={max_new_tokens}"
        )
    check_number("temperature", temperature)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return _decode(model, prompt, max_new_tokens, temperature, generator)
    finally:
        model.train(was_training)


def _decode(model, prompt, max_new_tokens, temperature, generator) -> tuple:
    cache, ids, routings = model.new_cache(), prompt, []
    logits = _step(model, prompt[None], cache, routings)
    for _ in range(max_new_tokens):
        token = _next_token(logits[0, -1], temperature, generator)
        ids = torch.cat([ids, token.view(1).to(ids.dtype)])
        logits = _step(model, token.view(1, 1), cache, routings)  # the new token's routing, for the trace
    if not model.moe_layers():
        return ids, None
    by_layer = list(zip(*routings, strict=True))  # [layer][step] -> Routing
    indices = torch.stack([torch.cat([r.indices for r in steps]) for steps in by_layer])
    probs = torch.stack([torch.cat([r.probs for r in steps]) for steps in by_layer])
    return ids, RoutingTrace(indices, probs, prompt.numel())


def _step(model, idx, cache, routings) -> torch.Tensor:
    """Run the positions ``idx`` [1, S] after those in ``cache``; keep each MoE layer's routing of them."""
    logits = model(idx, cache)
    routings.append([layer.last_routing for layer in model.moe_layers()])
    return logits


def _next_token(logits: torch.Tensor, temperature: float, generator) -> torch.Tensor:
    if temperature == 0:
        return logits.argmax()
    probs = torch.softmax(logits / temperature, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[0]
