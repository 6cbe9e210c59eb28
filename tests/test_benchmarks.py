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


def test_the_cpu_mode_measures_every_backend_and_the_dense_ffn(monkeypatch, capsys):
    """``--cpu`` on two tiny shapes (real timings, samples of 1 ms): a markdown table with a row per shape and pass,
    every cell a median and a spread, and the verdicts on the default backend."""
    measure = bench_experts.interleaved_medians
    monkeypatch.setattr(bench_experts, "interleaved_medians", lambda fns, repeats: measure(fns, repeats, 1e-3))
    monkeypatch.setattr(bench_experts, "CPU_CASES", ((2048, 32, 16, 4, 2), (16, 32, 16, 4, 2)))
    assert bench_experts.main(["--cpu", "--repeats", "3"]) == 0
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.startswith("| ")]
    assert table[0].split(" | ")[5:9] == ["loop", "vectorized", f"{bench_experts.DEFAULT_BACKEND} (default)",
                                          "dense FFN (k·d_ff)"]  # fmt: skip
    assert len(table) == 1 + 2 * 2  # header, then 2 shapes × (forward, forward+backward)
    for row in table[1:]:
        cells = row.strip("| ").split(" | ")
        assert cells[4] in ("forward", "forward+backward") and len(cells) == 10
        assert all(float(cell.split(" ±")[0]) > 0 for cell in cells[5:9]) and cells[9].endswith("×")
    verdicts = [line for line in out.splitlines() if line.startswith("T=")]
    assert len(verdicts) == 2 * 2 + 1  # fastest within noise per shape and pass, and the ratio to dense at T=2048
    assert "torch " + torch.__version__ in out.splitlines()[0]


def test_the_cpu_verdicts_follow_the_medians_and_their_noise(monkeypatch, capsys):
    default = bench_experts.DEFAULT_BACKEND
    other = next(name for name in bench_experts.CPU_BACKENDS if name != default)

    def measured(T, d, f, E, k, repeats):  # the default 1 ms slower than `other`, with ±0.6 ms (forward) or ±0.4 ms
        times = {}
        for direction, noise in (("forward", 0.6), ("forward+backward", 0.4)):
            for name in (*bench_experts.CPU_BACKENDS, "dense"):
                ms = {default: 11.0, other: 10.0, "dense": 5.0}.get(name, 20.0)
                times[name, direction] = (ms, noise)
        return times

    monkeypatch.setattr(bench_experts, "cpu_case", measured)
    lines, verdicts = bench_experts.cpu_table(((2048, 8, 8, 2, 1),), 3)
    assert verdicts[0].startswith(f"T=2048 E=2 forward: {default} is the fastest within noise")
    assert verdicts[1].startswith(f"T=2048 E=2 forward+backward: {default} is NOT the fastest within noise")
    assert verdicts[2] == f"T=2048 E=2 forward+backward: {default} / dense FFN 2.20× (NOT within 2×)"
    assert lines[2].endswith("| 2.20× |") and lines == capsys.readouterr().out.splitlines()


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
