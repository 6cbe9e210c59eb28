"""Independent training runs, several at once."""

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

from ..checks import check_positive_int


def run_all(fn, items: list, jobs: int) -> list:
    """``[fn(item) for item in items]``, ``jobs`` at once in separate processes. ``fn`` must be importable (a
    module-level function). Each run uses the course's one torch thread, so the results are the same whatever
    ``jobs`` is."""
    check_positive_int("jobs", jobs)
    if jobs == 1:
        return [fn(item) for item in items]
    # spawned, not forked: a fork of a process whose OpenMP threads have started can deadlock
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(fn, items))
