import csv
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_experts  # noqa: E402

BENCH = Path(bench_experts.__file__)


def test_without_a_gpu_every_backend_is_checked_and_nothing_timed():
    out = subprocess.run([sys.executable, str(BENCH)], capture_output=True, text=True, check=True).stdout
    assert "Correctness only, nothing is timed" in out
    checked = [line.split()[0] for line in out.splitlines() if line.endswith(" ok")]
    assert checked == list(bench_experts.BACKENDS)


def test_the_gpu_measurement_loop_writes_its_table(monkeypatch, tmp_path):
    """The measuring code on the CPU with a tiny shape: host-clock timings and fixed ceilings stand in for the
    GPU's events and measured peaks."""

    def host_clock_us(fn):
        fn()
        start = time.perf_counter()
        fn()
        return 1e6 * (time.perf_counter() - start)

    monkeypatch.setitem(bench_experts.SHAPES, "tiny", (24, 40, 4, 2))
    monkeypatch.setattr(bench_experts, "median_us", host_clock_us)
    monkeypatch.setattr(bench_experts, "ceilings", lambda device: (1.0, 10.0))
    rows, matmul, copy = bench_experts.benchmark(["tiny"], [1, 9], ["vectorized", "triton"], torch.device("cpu"),
                                                 torch.float32)  # fmt: skip
    assert len(rows) == 2 * 2 * 2 * 2  # routings × T × backends × directions
    assert all(float(r["rel_error_vs_vectorized"]) < 1e-5 and r["median_us"] > 0 for r in rows)
    path = bench_experts.write_results(rows, matmul, copy, "Test GPU 80GB", tmp_path)
    assert path.name == "experts_test_gpu_80gb.csv" and path.with_suffix(".png").is_file()
    lines = path.read_text().splitlines()
    assert lines[0].startswith("# gpu: Test GPU 80GB; torch ")
    table = list(csv.DictReader(line for line in lines if not line.startswith("#")))
    assert {r["backend"] for r in table} == {"vectorized", "triton"} and len(table) == len(rows)


def test_targets_are_judged_from_the_rows():
    def row(shape, T, backend, direction, us, **values):
        return dict(shape=shape, routing="uniform", T=T, backend=backend, direction=direction, median_us=us, **values)

    rows = [
        row("mixtral", 16384, "triton", "forward", 100.0, tflops_vs_dense_matmul=0.85),
        row("mixtral", 16384, "triton", "forward+backward", 400.0),  # backward 300 µs for twice the FLOPs: 0.67
        row("qwen3_30b_a3b", 4096, "triton", "forward", 10.0),
        row("qwen3_30b_a3b", 4096, "loop", "forward", 90.0),
    ]
    lines = bench_experts.report_targets(rows)
    assert lines[0].startswith("Mixtral T=16384 forward") and lines[0].endswith("met")
    assert "backward" in lines[1] and "0.67" in lines[1] and lines[1].endswith("missed")
    assert "speed-up over the loop: 9.00" in lines[2] and lines[2].endswith("missed")
    assert len(lines) == 3
