"""Run the expert-parallel layer on every rank that ``torchrun`` starts, and report what it moved and how long it took.

    torchrun --standalone --nproc-per-node=4 -m moe_course.parallel --tokens 512
    torchrun --nnodes=2 --nproc-per-node=8 --rdzv-endpoint=HOST:29500 -m moe_course.parallel --d-model 4096 ...

gloo on CPUs, NCCL on GPUs (one per rank, ``LOCAL_RANK``). Rank 0 prints the rank × rank matrix of rows sent
per dispatch, the bytes against the cost model, and the median time of a forward + backward call.
"""

import argparse
import os
import statistics
import time

import torch
import torch.distributed as dist

from ..routing import Routing
from .layer import ExpertParallelMoE, dispatch_bytes


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=512, help="tokens per rank")
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--d-ff", type=int, default=512)
    parser.add_argument("-E", type=int, default=8)
    parser.add_argument("-k", type=int, default=2)
    parser.add_argument("--backend", default="vectorized")
    parser.add_argument("--capacity-factor", type=float, default=None)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args(argv)

    gpu = torch.cuda.is_available()
    dist.init_process_group("nccl" if gpu else "gloo")
    rank, P = dist.get_rank(), dist.get_world_size()
    device = torch.device(f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if gpu else "cpu")
    if gpu:
        torch.cuda.set_device(device)
    torch.manual_seed(0)  # the same router on every rank
    layer = ExpertParallelMoE(args.d_model, args.d_ff, args.E, args.k, backend=args.backend,
                              capacity_factor=args.capacity_factor).to(device)  # fmt: skip
    torch.manual_seed(1 + rank)  # different tokens on every rank
    x = torch.randn(args.tokens, args.d_model, device=device, requires_grad=True)

    times = []
    for _ in range(args.steps + 1):  # the first call is a warm-up
        dist.barrier()
        start = time.perf_counter()
        layer(x).sum().backward()
        if gpu:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    routing: Routing = layer.last_routing
    predicted = dispatch_bytes(routing.indices, args.E, P, args.d_model, x.element_size(), routing.keep)
    report = (layer.last_stats, predicted, statistics.median(times[1:]))
    reports = [None] * P
    dist.all_gather_object(reports, report)
    if rank == 0:
        mode = "dropless" if args.capacity_factor is None else f"capacity factor {args.capacity_factor}"
        print(f"{P} ranks ({'NCCL' if gpu else 'gloo'}), {args.tokens} tokens each, d_model={args.d_model}, "
              f"d_ff={args.d_ff}, E={args.E}, k={args.k}, {mode}, backend {args.backend}")  # fmt: skip
        print("rows sent per dispatch (row: from rank, column: to rank):")
        for s, (stats, _, _) in enumerate(reports):
            print(f"  {s}: " + " ".join(f"{n:>6}" for n in stats["sent_rows"]))
        for s, (stats, bytes_predicted, seconds) in enumerate(reports):
            off_rank = sum(b for r, b in enumerate(stats["sent_bytes"]) if r != s)
            print(f"rank {s}: sent {sum(stats['sent_bytes'])} bytes ({off_rank} off-rank), cost model "
                  f"{sum(bytes_predicted)}; dropped pairs {stats['dropped_pairs']}; "
                  f"forward + backward {1e3 * seconds:.2f} ms")  # fmt: skip
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
