"""Benchmark the MoE expert block across backends: per-expert loop, vectorized PyTorch, torch._grouped_mm and the
fused Triton kernels.

    python benchmarks/bench_experts.py                          # on a CUDA GPU: every shape, T and routing
    python benchmarks/bench_experts.py --shapes mixtral -T 1 4096
    python benchmarks/bench_experts.py --cpu                    # the CPU table of benchmarks/README.md

The timed region is the expert block for given routing decisions: the routing metadata (sort by expert), the
first GEMM and the activation, the second GEMM and the weighted combine; forward, and forward + backward. On a
GPU (bf16, SwiGLU) it reports the median time, the useful TFLOP/s (6·d·f·T·k per forward, 18·d·f·T·k forward +
backward, padding excluded) as a fraction of a dense ``torch.matmul`` of the same FLOPs, and the GB/s over the
weights of the experts actually touched (read once forward; read twice and written once forward + backward) as a
fraction of a large device-to-device copy, both ceilings measured in the same run. It writes a CSV and a plot to
``benchmarks/results/`` named after the GPU, with the versions in the CSV's header.

Without a GPU the Triton kernels run in Triton's interpreter, where timings mean nothing: the script then checks
every backend on a tiny shape against the loop, outputs and gradients, and times nothing.

``--cpu`` times the plain-PyTorch backends (loop, vectorized, grouped) on the CPU, fp32 SwiGLU, against a dense
SwiGLU FFN of width k·d_ff on the same T tokens (the same FLOPs), at the shapes of :data:`CPU_CASES`: forward, and
forward + backward (gradients of x, the router weights and all expert weights), as the medians of interleaved
repeats. It prints a markdown table and whether the layer's default backend is the fastest of the three within
noise, and within 2× the dense FFN forward + backward at T=2048.
"""

import argparse
import csv
import os
import platform
import re
from pathlib import Path

import torch

from moe_course import env
from moe_course.backends import DEFAULT_BACKEND, grouped_moe, loop_moe, triton_moe, vectorized_moe
from moe_course.experts import FFN, Experts
from moe_course.kernels import fused_experts
from moe_course.timing import interleaved_medians

SHAPES = {  # d_model, d_ff, E, k
    "mixtral": (4096, 14336, 8, 2),
    "fine_e64": (2048, 1408, 64, 6),
    "qwen3_30b_a3b": (2048, 768, 128, 8),
    "deepseek_v3": (7168, 2048, 256, 8),
}
TOKENS = (1, 8, 64, 512, 4096, 16384)
ROUTINGS = ("uniform", "zipf")
RESULTS = Path(__file__).resolve().parent / "results"


def triton_atomic_moe(x, indices, weights, keep, experts: Experts) -> torch.Tensor:
    """The Triton kernels with the top-k sum fused into the second GEMM (atomic adds) instead of a reduction."""
    return fused_experts(x, indices, weights, experts.w1, experts.w2, experts.activation, keep, combine="atomic")


BACKENDS = {
    "loop": loop_moe,
    "vectorized": vectorized_moe,
    "grouped": grouped_moe,  # the vectorized backend where torch._grouped_mm cannot run
    "triton": triton_moe,
    "triton_atomic": triton_atomic_moe,
}
CPU_BACKENDS = ("loop", "vectorized", "grouped")
CPU_CASES = (  # T, d_model, d_ff, E, k
    (2048, 256, 512, 8, 2),
    (2048, 256, 128, 64, 6),
    (2048, 256, 64, 128, 8),
    (16, 256, 512, 8, 2),
)


def make_routing(kind: str, T: int, E: int, k: int, device, seed: int = 0) -> tuple:
    """(indices, weights), both [T, k]: k distinct experts per token, drawn uniformly or with Zipf(1.2) popularity
    over the experts, and router-like weights (a softmax of random scores over the k). Generated once per case and
    reused by every backend."""
    g = torch.Generator().manual_seed(seed)
    popularity = torch.ones(E) if kind == "uniform" else 1 / torch.arange(1, E + 1).float() ** 1.2
    indices = torch.multinomial(popularity.expand(T, E), k, replacement=False, generator=g)
    weights = torch.softmax(torch.randn(T, k, generator=g), dim=-1)
    return indices.to(device), weights.to(device)


def partial_block(backend, x, indices, weights, experts):
    """A closure running ``backend`` on these inputs (no pair dropped), for :func:`forward_only` and friends."""
    return lambda: backend(x, indices, weights, None, experts)


def forward_only(block):
    """``block()`` (a closure that runs one implementation on its inputs) without building a graph."""

    def run():
        with torch.no_grad():
            block()

    return run


def forward_backward(block, leaves: list, dy: torch.Tensor):
    """``block()`` and its backward, the gradients of ``leaves`` cleared first so that none accumulates."""

    def run():
        for leaf in leaves:
            leaf.grad = None
        block().backward(dy)

    return run


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def check_on_cpu() -> int:
    """Every backend against the float64 loop on a tiny fp32 shape, outputs and gradients; returns the failures."""
    T, d, f, E, k = 37, 24, 40, 4, 2
    print("No CUDA GPU: the Triton kernels run in Triton's interpreter. Correctness only, nothing is timed.")
    print(f"shape d_model={d} d_ff={f} E={E} k={k} T={T}, fp32 against the loop in float64")
    torch.manual_seed(0)
    reference_experts = Experts(E, d, f).double()
    x0 = torch.randn(T, d, dtype=torch.float64)
    indices, weights0 = make_routing("zipf", T, E, k, "cpu")
    dy = torch.randn(T, d, dtype=torch.float64)
    results = {}
    for name, backend in {"reference": loop_moe, **BACKENDS}.items():
        experts = reference_experts if name == "reference" else Experts(E, d, f).float()
        if name != "reference":
            experts.load_state_dict(reference_experts.state_dict())
        x = x0.clone().to(experts.w1.dtype).requires_grad_()
        weights = weights0.to(x.dtype, copy=True).requires_grad_()
        y = backend(x, indices, weights, None, experts)
        y.backward(dy.to(x.dtype))
        results[name] = (y.detach(), x.grad, weights.grad, experts.w1.grad, experts.w2.grad)
    failures = 0
    for name, got in results.items():
        if name == "reference":
            continue
        errors = [relative_error(a, b) for a, b in zip(got, results["reference"], strict=True)]
        ok = max(errors) < 1e-5
        failures += not ok
        print(f"{name:<14}relative error y, dx, dweights, dw1, dw2: {', '.join(f'{e:.1e}' for e in errors)}  "
              f"{'ok' if ok else 'WRONG'}")  # fmt: skip
    return failures


def median_us(fn) -> float:
    """Median time of ``fn()`` in µs, with CUDA events, after a warm-up (``triton.testing.do_bench``)."""
    import triton.testing

    return 1e3 * triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def ceilings(device) -> tuple:
    """(dense bf16 matmul TFLOP/s at 8192³, device-to-device copy GB/s counting bytes read + written)."""
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    matmul = 2 * 8192**3 / median_us(lambda: a @ a) / 1e6
    src = torch.randn(2**28, device=device, dtype=torch.bfloat16)  # 512 MiB
    dst = torch.empty_like(src)
    copy = 2 * src.numel() * 2 / median_us(lambda: dst.copy_(src)) / 1e3
    return matmul, copy


def benchmark(shapes: list, tokens: list, backends: list, device, dtype=torch.bfloat16) -> tuple:
    """Rows of measurements for every (shape, routing, T, backend, direction), and the two ceilings."""
    peak_matmul, peak_copy = ceilings(device)
    print(f"ceilings measured: dense bf16 matmul {peak_matmul:.0f} TFLOP/s, device copy {peak_copy:.0f} GB/s")
    rows = []
    for shape in shapes:
        d, f, E, k = SHAPES[shape]
        torch.manual_seed(0)
        experts = Experts(E, d, f).to(device, dtype)
        for kind in ROUTINGS:
            for T in tokens:
                indices, weights = make_routing(kind, T, E, k, device)
                weights = weights.to(dtype).requires_grad_()
                x = torch.randn(T, d, device=device, dtype=dtype, requires_grad=True)
                dy = torch.randn(T, d, device=device, dtype=dtype)
                flops = 6 * d * f * T * k
                weight_bytes = torch.unique(indices).numel() * 3 * d * f * experts.w1.element_size()
                m = torch.randn(T * k, d, device=device, dtype=dtype)
                w = torch.randn(d, 3 * f, device=device, dtype=dtype)
                dense = flops / median_us(lambda m=m, w=w: m @ w) / 1e6  # TFLOP/s of the same FLOPs, dense
                with torch.no_grad():
                    reference = vectorized_moe(x, indices, weights, None, experts)
                for name in backends:
                    block = partial_block(BACKENDS[name], x, indices, weights, experts)
                    with torch.no_grad():
                        error = relative_error(block(), reference)
                    forward = median_us(forward_only(block))
                    both = median_us(forward_backward(block, [x, weights, experts.w1, experts.w2], dy))
                    for direction, us, factor in (("forward", forward, 1), ("forward+backward", both, 3)):
                        tflops = factor * flops / us / 1e6
                        gbps = factor * weight_bytes / us / 1e3
                        rows.append(dict(shape=shape, routing=kind, T=T, backend=name, direction=direction,
                                         median_us=round(us, 2), tflops=round(tflops, 2),
                                         tflops_vs_dense_matmul=round(tflops / dense, 3),
                                         weight_gbps=round(gbps, 1), gbps_vs_copy=round(gbps / peak_copy, 3),
                                         rel_error_vs_vectorized=f"{error:.1e}"))  # fmt: skip
                    print(f"{shape:<14}{kind:<8}{T:>6} {name:<14}fwd {forward:>10.1f} us  fwd+bwd {both:>10.1f} us  "
                          f"err {error:.1e}", flush=True)  # fmt: skip
        del experts
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows, peak_matmul, peak_copy


def report_targets(rows: list) -> list:
    """The Triton kernels against the targets they are built for, as lines ``target: measured -> met/missed``
    (uniform routing; cases that were not run are skipped)."""
    found = {(r["shape"], r["routing"], r["T"], r["backend"], r["direction"]): r for r in rows}

    def get(shape, T, backend, direction="forward"):
        return found.get((shape, "uniform", T, backend, direction))

    lines = []

    def check(text, value, goal):
        lines.append(f"{text}: {value:.2f} (target {goal}) -> {'met' if value >= goal else 'missed'}")

    if r := get("mixtral", 16384, "triton"):
        check("Mixtral T=16384 forward, fraction of dense matmul TFLOP/s", r["tflops_vs_dense_matmul"], 0.8)
    for shape in SHAPES:
        if r := get(shape, 1, "triton"):
            check(f"{shape} T=1 forward, fraction of copy bandwidth over touched weights", r["gbps_vs_copy"], 0.7)
        forward, both = get(shape, 16384, "triton"), get(shape, 16384, "triton", "forward+backward")
        if forward and both:  # backward alone: 12·d·f·T·k FLOPs in (t_both − t_forward)
            backward = 2 * forward["median_us"] / (both["median_us"] - forward["median_us"])
            check(f"{shape} T=16384 backward TFLOP/s / forward TFLOP/s", backward, 0.7)
    for shape in ("fine_e64", "qwen3_30b_a3b"):
        triton, loop, grouped = (get(shape, 4096, b) for b in ("triton", "loop", "grouped"))
        if triton and loop:
            check(f"{shape} T=4096 forward, speed-up over the loop", loop["median_us"] / triton["median_us"], 10)
        if triton and grouped:
            check(f"{shape} T=4096 forward, speed-up over torch._grouped_mm",
                  grouped["median_us"] / triton["median_us"], 1.0)  # fmt: skip
    return lines


def write_results(rows: list, peak_matmul: float, peak_copy: float, gpu: str, folder: Path = RESULTS) -> Path:
    """``folder/experts_<gpu>.csv`` (versions and ceilings in its ``#`` header) and a plot beside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import triton

    slug = re.sub(r"[^a-z0-9]+", "_", gpu.lower()).strip("_")
    folder.mkdir(exist_ok=True)
    path = folder / f"experts_{slug}.csv"
    with path.open("w", newline="") as out:
        out.write(f"# gpu: {gpu}; torch {torch.__version__}; triton {triton.__version__}; cuda {torch.version.cuda}; "
                  f"python {platform.python_version()}\n")  # fmt: skip
        out.write(f"# ceilings: dense bf16 matmul {peak_matmul:.1f} TFLOP/s, device copy {peak_copy:.1f} GB/s\n")
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    shapes = sorted({r["shape"] for r in rows}, key=list(SHAPES).index)
    fig, axes = plt.subplots(1, len(shapes), figsize=(4 * len(shapes), 3.5), squeeze=False)
    for ax, shape in zip(axes[0], shapes, strict=True):
        for name in BACKENDS:
            case = (shape, name, "uniform", "forward")
            points = [
                (r["T"], r["tflops"]) for r in rows if (r["shape"], r["backend"], r["routing"], r["direction"]) == case
            ]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=name)
        ax.axhline(peak_matmul, color="black", linestyle="--", linewidth=1, label="dense matmul 8192³")
        ax.set(xscale="log", yscale="log", xlabel="tokens T", ylabel="useful TFLOP/s", title=f"{shape}, forward")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"MoE expert block, bf16 SwiGLU, uniform routing: {gpu}")
    fig.tight_layout()
    fig.savefig(path.with_suffix(".png"), dpi=120)
    return path


def cpu_case(T: int, d: int, f: int, E: int, k: int, repeats: int) -> dict:
    """(implementation, direction) -> (median ms, half IQR) for one shape: the plain-PyTorch backends on the same
    fp32 SwiGLU experts and uniform routing, and the dense SwiGLU FFN of width k·f (the same FLOPs)."""
    torch.manual_seed(0)
    experts, dense = Experts(E, d, f), FFN(d, k * f)
    indices, weights = make_routing("uniform", T, E, k, "cpu")
    weights.requires_grad_()
    x = torch.randn(T, d, requires_grad=True)
    dy = torch.randn(T, d)
    blocks = {name: partial_block(BACKENDS[name], x, indices, weights, experts) for name in CPU_BACKENDS}
    with torch.no_grad():
        for name, block in blocks.items():  # timing a wrong answer would mean nothing
            if (error := relative_error(block(), blocks["loop"]())) > 1e-5:
                raise AssertionError(f"{name} differs from the loop at T={T} E={E}: relative error {error:.1e}")
    blocks["dense"] = lambda: dense(x)
    leaves = [x, weights, experts.w1, experts.w2, dense.w1, dense.w2]
    fns = {}
    for name, block in blocks.items():
        fns[name, "forward"] = forward_only(block)
        fns[name, "forward+backward"] = forward_backward(block, leaves, dy)
    return interleaved_medians(fns, repeats)


def cpu_table(cases: tuple, repeats: int) -> tuple:
    """The markdown table of ``cases`` (T, d_model, d_ff, E, k), printed as it is measured, and the verdicts on the
    layer's default backend: the fastest of the three within noise (its median minus the fastest's at most the sum
    of their half IQRs) at every shape and pass, and its forward + backward within 2× the dense FFN's at T=2048."""
    default = DEFAULT_BACKEND
    header = [f"{name} (default)" if name == default else name for name in CPU_BACKENDS]
    lines = [
        f"| T | E | d_ff | k | pass | {' | '.join(header)} | dense FFN (k·d_ff) | {default} / dense |",
        "|" + "---|" * (len(CPU_BACKENDS) + 7),
    ]
    print("\n".join(lines), flush=True)
    verdicts = []
    for T, d, f, E, k in cases:
        measured = cpu_case(T, d, f, E, k, repeats)
        for direction in ("forward", "forward+backward"):
            times = {name: measured[name, direction] for name in (*CPU_BACKENDS, "dense")}
            ratio = times[default][0] / times["dense"][0]
            cells = " | ".join(f"{ms:.2f} ±{noise:.2f}" for ms, noise in times.values())
            lines.append(f"| {T} | {E} | {f} | {k} | {direction} | {cells} | {ratio:.2f}× |")
            fastest = min(CPU_BACKENDS, key=lambda name: times[name][0])
            margin = times[default][0] - times[fastest][0]
            within = margin <= times[default][1] + times[fastest][1]
            verdicts.append(f"T={T} E={E} {direction}: {default} {'is' if within else 'is NOT'} the fastest within "
                            f"noise (fastest {fastest}, {default} {margin:+.2f} ms)")  # fmt: skip
            if T == 2048 and direction == "forward+backward":
                verdicts.append(f"T={T} E={E} forward+backward: {default} / dense FFN {ratio:.2f}× "
                                f"({'within' if ratio <= 2 else 'NOT within'} 2×)")  # fmt: skip
            print(lines[-1], flush=True)
    return lines, verdicts


def machine() -> str:
    """The CPU, its cores, the kernel set and threads torch uses, the versions, and any glibc malloc tuning
    (``MALLOC_*`` variables: a fresh large buffer costs a page fault per 4 KiB, and the MoE backends allocate many),
    in one line."""
    m = env.machine()
    malloc = " ".join(f"{name}={value}" for name, value in sorted(os.environ.items()) if name.startswith("MALLOC_"))
    return (f"{m['cpu']}, {os.cpu_count()} cores, {m['cpu_capability']}, torch {m['torch']} on {m['cpu_threads']} "
            f"threads, python {m['python']}, malloc {malloc or 'default'}")  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    parser.add_argument("-T", type=int, nargs="+", default=list(TOKENS))
    parser.add_argument("--backends", nargs="+", choices=list(BACKENDS), default=list(BACKENDS))
    parser.add_argument("--cpu", action="store_true", help="time the plain-PyTorch backends on the CPU")
    parser.add_argument("--repeats", type=int, default=15, help="interleaved repeats per CPU measurement")
    args = parser.parse_args(argv)
    if args.cpu:
        print(f"CPU: {machine()}. fp32 SwiGLU, d_model=256, uniform routing; ms per call, median ±half IQR "
              f"of {args.repeats} interleaved repeats", flush=True)  # fmt: skip
        _, verdicts = cpu_table(CPU_CASES, args.repeats)
        print("\n".join(["", *verdicts]))
        return 0
    if not torch.cuda.is_available():
        return 1 if check_on_cpu() else 0
    rows, peak_matmul, peak_copy = benchmark(args.shapes, args.T, args.backends, torch.device("cuda"))
    print(f"wrote {write_results(rows, peak_matmul, peak_copy, torch.cuda.get_device_name(0))}")
    print("\n".join(report_targets(rows)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
