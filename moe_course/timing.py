"""Wall-clock timing that a busy machine cannot skew towards one of the things compared."""

import math
import statistics
import time


def interleaved_medians(fns: dict, repeats: int, min_seconds: float = 0.05) -> dict:
    """name -> (median, half the interquartile range) of one call of ``fns[name]()``, in ms.

    Every repeat times each function once, in an order rotated from repeat to repeat, so that a slow spell of the
    machine (other processes) falls on all of them alike. A sample runs a fast function several times, to last at
    least ``min_seconds``. ``repeats`` ≥ 2 (quartiles need two samples)."""
    if not isinstance(repeats, int) or repeats < 2:
        raise ValueError(f"repeats must be an int of at least 2, got {repeats!r}")
    calls = {}
    for name, fn in fns.items():
        fn()  # warm-up: allocations, caches, first-call dispatch
        start = time.perf_counter()
        fn()
        calls[name] = max(1, math.ceil(min_seconds / max(time.perf_counter() - start, 1e-9)))
    names, samples = list(fns), {name: [] for name in fns}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            for _ in range(calls[name]):
                fns[name]()
            samples[name].append(1e3 * (time.perf_counter() - start) / calls[name])
    quartiles = {name: statistics.quantiles(times, n=4) for name, times in samples.items()}
    return {name: (q[1], (q[2] - q[0]) / 2) for name, q in quartiles.items()}
