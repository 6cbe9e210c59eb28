"""Expert parallelism on ``torch.distributed``: E experts sharded over P ranks, two all-to-all exchanges per call.

- ``comm``    the differentiable all-to-all (its backward is the exchange with the split sizes swapped) and the
              expert-parallel process groups
- ``layer``   ``expert_parallel_moe`` and the ``ExpertParallelMoE`` module (dropless or fixed capacity), the
              bytes cost model
- ``launch``  ``run_workers``: P gloo CPU ranks started from a notebook cell or a test
- ``workers`` importable worker functions the launcher runs
"""

from .comm import all_to_all, exchange_counts, expert_parallel_group
from .launch import run_workers
from .layer import ExpertParallelMoE, dispatch_bytes, expert_parallel_moe

__all__ = [
    "ExpertParallelMoE",
    "all_to_all",
    "dispatch_bytes",
    "exchange_counts",
    "expert_parallel_group",
    "expert_parallel_moe",
    "run_workers",
]
