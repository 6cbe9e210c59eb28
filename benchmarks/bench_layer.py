"""Time the MoE layer's backends, forward and forward+backward, on the CPU or a GPU.

    python benchmarks/bench_layer.py --d-model 256 --d-ff 512 -E 8 -k 2 -T 64 512 2048

Prints one row per (backend, T): median milliseconds over ``--repeats`` runs after a warm-up.
"""

import argparse
import statistics
import time

import torch

from moe_course.experts import Experts
from moe_course.layer import BACKENDS
from moe_course.routing import top_k_routing


def median_ms(fn, repeats: int, device: torch.device) -> float:
    """Median wall time of ``fn()`` in milliseconds; the first call is a warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def bench(d_model: int, d_ff: int, E: int, k: int, T: int, backend: str, repeats: int, device: torch.device) -> tuple:
    """(forward ms, forward+backward ms) of one backend on T tokens with a fixed random routing."""
    torch.manual_seed(0)
    experts = Experts(E, d_model, d_ff).to(device)
    x = torch.randn(T, d_model, device=device, requires_grad=True)
    routing = top_k_routing(torch.randn(T, E, device=device), k)
    run = BACKENDS[backend]

    def forward_backward():
        run(x, routing, experts).sum().backward()

    with torch.no_grad():
        forward = median_ms(lambda: run(x, routing, experts), repeats, device)
    return forward, median_ms(forward_backward, repeats, device)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--d-ff", type=int, default=512)
    parser.add_argument("-E", type=int, default=8)
    parser.add_argument("-k", type=int, default=2)
    parser.add_argument("-T", type=int, nargs="+", default=[64, 512, 2048])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"# {name}, torch {torch.__version__}, d_model={args.d_model} d_ff={args.d_ff} E={args.E} k={args.k}")
    print(f"{'backend':<12}{'T':>7}{'fwd ms':>10}{'fwd+bwd ms':>12}")
    for T in args.T:
        for backend in BACKENDS:
            fwd, fwd_bwd = bench(args.d_model, args.d_ff, args.E, args.k, T, backend, args.repeats, device)
            print(f"{backend:<12}{T:>7}{fwd:>10.2f}{fwd_bwd:>12.2f}")


if __name__ == "__main__":
    main()
