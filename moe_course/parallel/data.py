"""Data parallelism around expert parallelism: the world's W ranks hold W/ep_size replicas of the model, each
replica's experts spread over its expert-parallel group.

After every rank's backward pass on its own batch (the loss a mean over its own tokens):

- a replicated parameter (attention, router, shared experts, embeddings) has this rank's gradient: the world
  averages it, sum over all W ranks divided by W;
- an expert held here already has the gradient from every token its expert-parallel group sent it (the combine's
  backward all-to-all brought it back): the ranks holding the same expert sum theirs, and divide by W too.

Together that is the gradient of the mean of the W ranks' losses, the one a single process computes on the
concatenated batch (equal batches per rank), so every replica takes the same optimizer step.
"""

import torch.distributed as dist
from torch import nn

from ..experts import Experts
from ..layer import MoELayer


def average_gradients(model: nn.Module) -> None:
    """Average the gradients of ``model`` across the world, in place: a replicated parameter's over every rank, an
    expert's summed over the ranks holding it, both divided by the world size W (see the module's docstring); every
    rank calls it after its backward pass. A parameter without a gradient on one rank counts as zero there (every
    rank joins every collective)."""
    W = dist.get_world_size()
    sharded = {}  # parameter -> the group holding its replicas (None: no other rank holds it)
    for module in model.modules():
        if isinstance(module, MoELayer) and not module.exchange.local:
            sharded.update({p: module.exchange.replicas for p in module.experts.parameters()})
    for p in model.parameters():
        if p.grad is None:
            p.grad = p.detach().new_zeros(p.shape)
        group = sharded.get(p, dist.group.WORLD)
        if group is not None:
            dist.all_reduce(p.grad, group=group)
        p.grad.div_(W)


def shard_state_dict(model: nn.Module, state: dict) -> dict:
    """``state``, a single-process model's state dict, cut to ``model``'s shards: every
    :class:`~moe_course.experts.Experts` keeps the rows of the experts it holds (``first`` … ``first + E − 1``).
    Load the result with ``model.load_state_dict``."""
    shards = dict(state)
    for name, module in model.named_modules():
        if isinstance(module, Experts):
            for weight in ("w1", "w2"):
                key = f"{name}.{weight}" if name else weight
                shards[key] = state[key][module.first : module.first + module.E]
    return shards
