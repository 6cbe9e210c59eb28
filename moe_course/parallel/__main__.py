"""Run the expert-parallel layer on every rank that ``torchrun`` starts, and report what it moved and how long it took.

    torchrun --standalone --local-addr=127.0.0.1 --nproc-per-node=4 -m moe_course.parallel --tokens 512
    torchrun --nnodes=2 --nproc-per-node=8 --rdzv-endpoint=HOST:29500 -m moe_course.parallel --ep-size 8 ...

(``--local-addr=127.0.0.1`` keeps a one-node run off the hostname, which some machines cannot resolve.)
gloo on CPUs, NCCL on GPUs (one per rank, ``LOCAL_RANK``). ``--ep-size`` (default: every rank) splits the world
into expert-parallel groups of that many consecutive ranks, e.g. one per node; the groups are data-parallel
replicas, and every step ends by averaging the gradients across them (``average_gradients``). Rank 0 prints the
rows each rank sent to each rank of its group per dispatch, the bytes against the cost model, and the median time
of a step (forward, backward, gradient averaging).
"""

import argparse
import os
import statistics
import sys
import time

import torch
import torch.distributed as dist

from ..config import MoEConfig
from ..layer import MoELayer
from .data import average_gradients
from .exchange import AllToAllExchange, dispatch_bytes


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=512, help="tokens per rank")
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--d-ff", type=int, default=512)
    parser.add_argument("-E", type=int, default=8)
    parser.add_argument("-k", type=int, default=2)
    parser.add_argument("--backend", default=MoEConfig.backend)
    parser.add_argument("--capacity-factor", type=float, default=None)
    parser.add_argument("--ep-size", type=int, default=None, help="ranks per expert-parallel group (default: all)")
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args(argv)

    gpu = torch.cuda.is_available()
    dist.init_process_group("nccl" if gpu else "gloo")
    rank = dist.get_rank()
    exchange = AllToAllExchange.for_ep_size(args.ep_size or dist.get_world_size())
    P = dist.get_world_size(exchange.group)
    device = torch.device(f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if gpu else "cpu")
    if gpu:
        torch.cuda.set_device(device)
    torch.manual_seed(0)  # the same router on every rank
    config = MoEConfig(args.d_model, args.d_ff, args.E, args.k, backend=args.backend,
                       capacity_factor=args.capacity_factor)  # fmt: skip
    layer = MoELayer(config, exchange).to(device)
    torch.manual_seed(1 + rank)  # different tokens on every rank
    x = torch.randn(args.tokens, args.d_model, device=device, requires_grad=True)

    times = []
    for _ in range(args.steps + 1):  # the first call is a warm-up
        dist.barrier()
        start = time.perf_counter()
        layer(x).sum().backward()
        average_gradients(layer)
        if gpu:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    routing, stats = layer.last_routing, layer.last_stats
    predicted = dispatch_bytes(routing.indices, args.E, P, args.d_model, x.element_size(), routing.keep)
    # one row per rank: rows sent to each place in its group, bytes sent, the cost model's bytes, drops, ms
    report = torch.tensor([*stats.traffic.sent_rows, sum(stats.traffic.sent_bytes), sum(predicted),
                           stats.dropped_pairs, 1e3 * statistics.median(times[1:])],
                          dtype=torch.float64, device=device)  # fmt: skip
    reports = [torch.empty_like(report) for _ in range(dist.get_world_size())]
    dist.all_gather(reports, report)
    if rank == 0:
        mode = "dropless" if args.capacity_factor is None else f"capacity factor {args.capacity_factor}"
        print(f"{len(reports)} ranks ({'NCCL' if gpu else 'gloo'}) in expert-parallel groups of {P}, {args.tokens} "
              f"tokens each, d_model={args.d_model}, d_ff={args.d_ff}, E={args.E}, k={args.k}, {mode}, "
              f"backend {args.backend}")  # fmt: skip
        print("rows sent per dispatch (row: from rank, column: to the rank's place in its group):")
        for s, r in enumerate(reports):
            print(f"  {s}: " + " ".join(f"{int(n):>6}" for n in r[:P]))
        row_bytes = args.d_model * x.element_size()
        for s, r in enumerate(reports):
            sent, cost_model, dropped, ms = r[P:].tolist()
            off_rank = (int(r[:P].sum()) - int(r[s % P])) * row_bytes
            print(f"rank {s}: sent {int(sent)} bytes ({off_rank} off-rank), cost model {int(cost_model)}; "
                  f"dropped pairs {int(dropped)}; step {ms:.2f} ms")  # fmt: skip
    for group in {exchange.group, exchange.replicas} - {None, dist.group.WORLD}:
        dist.destroy_process_group(group)
    dist.barrier()  # no rank leaves while a peer's group is still open: gloo aborts on a closed connection
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
    # Every rank is done and has said so. Leave without C++ teardown: at interpreter exit a gloo process's
    # background threads can still abort it ("terminate called without an active exception"), 2 runs in 10 here.
    sys.stdout.flush()
    os._exit(0)
