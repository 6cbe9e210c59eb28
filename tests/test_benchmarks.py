import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_layer.py"


def test_layer_benchmark_prints_a_row_per_backend_and_size():
    out = subprocess.run(
        [sys.executable, str(BENCH), "--d-model", "16", "--d-ff", "32", "-T", "8", "32", "--repeats", "2"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = [line.split() for line in out.splitlines()[2:]]
    assert [(r[0], r[1]) for r in rows] == [("loop", "8"), ("vectorized", "8"), ("loop", "32"), ("vectorized", "32")]
    assert all(float(r[2]) > 0 and float(r[3]) > 0 for r in rows)
