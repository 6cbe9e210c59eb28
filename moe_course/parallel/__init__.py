"""Expert parallelism on ``torch.distributed``: E experts sharded over P ranks, two all-to-all exchanges per call,
inside a data-parallel world.

- ``comm``     the differentiable all-to-all (its backward is the exchange with the split sizes swapped) and the
               expert-parallel and replica process groups
- ``exchange`` ``AllToAllExchange``, the MoE layer's expert-parallel strategy (dropless or fixed capacity), and the
               bytes cost model
- ``data``     data parallelism across expert-parallel groups: averaging gradients, cutting a state dict to shards
- ``launch``   ``run_workers``: P gloo CPU ranks started from a notebook cell or a test
- ``workers``  importable worker functions the lessons run
"""

from .comm import all_to_all, exchange_counts, expert_parallel_group, expert_replica_group
from .data import average_gradients, shard_state_dict
from .exchange import AllToAllExchange, dispatch_bytes, exchange_bytes_per_token, run_local_experts
from .launch import run_workers

__all__ = [
    "AllToAllExchange",
    "all_to_all",
    "average_gradients",
    "dispatch_bytes",
    "exchange_bytes_per_token",
    "exchange_counts",
    "expert_parallel_group",
    "expert_replica_group",
    "run_local_experts",
    "run_workers",
    "shard_state_dict",
]
