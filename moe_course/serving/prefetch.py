"""Speculative expert loading: guess a layer's experts before it runs, so their weights can be loaded ahead.

Eliseev & Mazur (2023, "Fast Inference of Mixture-of-Experts Language Models with Offloading") observe that the
residual stream changes little from one layer to the next: applying layer l + 1's router to the hidden state that
leaves layer l (before layer l + 1's attention has run) picks most of the experts layer l + 1 will actually choose.
While layer l + 1's attention runs, the guessed experts can be copied in. :func:`speculate` makes the guesses for
every layer but the first, :func:`recall` scores them: the share of the experts a layer chose that were guessed.
"""

import torch

from ..checks import check_ids
from ..model import TinyLM


def speculate(model: TinyLM, idx: torch.Tensor) -> list:
    """For each MoE layer after the first, ``(guessed, chosen)``: [N, k] experts each of the N = B·S tokens of
    ``idx`` [B, S] would get from that layer's router applied to the previous block's output (its own pre-FFN norm,
    no attention), and [N, k] the experts the layer chose in the real forward. Evaluation mode, no gradients."""
    if not isinstance(model, TinyLM) or model.config.ffn != "moe":
        raise ValueError("model must be a TinyLM with MoE layers")
    check_ids("idx", idx, ("B", "S"), "int32 or int64", model.config.vocab_size, "vocab_size")
    outputs = []
    hooks = [block.register_forward_hook(lambda _, __, out: outputs.append(out)) for block in model.blocks]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(idx)
            pairs = []
            for previous, block in zip(outputs, model.blocks[1:], strict=False):
                x = block.norm2(previous).reshape(-1, model.config.d_model)
                guessed = block.ffn.router.route(x).indices
                pairs.append((guessed, block.ffn.last_routing.indices))
            return pairs
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()


def recall(guessed: torch.Tensor, chosen: torch.Tensor) -> float:
    """The share of the chosen (token, expert) pairs that were guessed: [N, k] each (k may differ), in [0, 1]."""
    if guessed.shape[0] != chosen.shape[0]:
        raise ValueError(f"guessed must have one row per token of chosen ({chosen.shape[0]}), got {guessed.shape[0]}")
    if chosen.numel() == 0:
        return 1.0
    hit = (chosen[:, :, None] == guessed[:, None, :]).any(dim=-1)  # [N, k]: chosen expert among the guesses
    return hit.float().mean().item()
