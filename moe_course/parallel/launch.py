"""Start P CPU worker processes from Python (a notebook cell, a test) and collect what they return.

Each worker is a fresh ``spawn``-ed interpreter that joins a gloo process group through a FileStore in a new
temporary folder (a fresh rendezvous every run, no ports), calls ``fn(rank, world_size, *args)`` and sends back
its result. ``fn`` must live in an importable module (the workers import it by name), not in the notebook. A
worker that raises, or dies, or a run that exceeds ``timeout``, raises in the caller, and every worker is stopped
before ``run_workers`` returns or raises: none is left behind.
"""

import multiprocessing
import os
import pickle
import queue
import tempfile
import time
import traceback
from datetime import timedelta

import torch.distributed as dist

from ..checks import check_positive_int


def _worker(rank: int, world_size: int, store_path: str, timeout: float, fn, args: tuple, results) -> None:
    try:
        store = dist.FileStore(store_path, world_size)
        dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size,
                                timeout=timedelta(seconds=timeout))  # fmt: skip
        results.put((rank, True, pickle.dumps(fn(rank, world_size, *args))))  # bytes: no shared memory to outlive
    except BaseException:
        results.put((rank, False, traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_workers(fn, world_size: int, *args, timeout: float = 60.0) -> list:
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` gloo ranks; returns the results in rank order."""
    check_positive_int("world_size", world_size)
    context = multiprocessing.get_context("spawn")
    results, done = context.Queue(), {}
    with tempfile.TemporaryDirectory() as folder:
        store = os.path.join(folder, "store")
        workers = [
            context.Process(target=_worker, args=(rank, world_size, store, timeout, fn, args, results), daemon=True)
            for rank in range(world_size)
        ]
        try:
            for w in workers:
                w.start()
            deadline = time.monotonic() + timeout
            while len(done) < world_size:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"workers did not finish within timeout={timeout} s (ranks done: {sorted(done)})"
                    )
                try:
                    rank, ok, payload = results.get(timeout=0.2)
                except queue.Empty:
                    dead = [r for r, w in enumerate(workers) if r not in done and w.exitcode not in (None, 0)]
                    if dead:
                        raise RuntimeError(f"rank {dead[0]} died with exit code {workers[dead[0]].exitcode}") from None
                    continue
                if not ok:
                    raise RuntimeError(f"rank {rank} failed:\n{payload}")
                done[rank] = pickle.loads(payload)
        finally:
            for w in workers:
                if w.is_alive():
                    w.terminate()
            for w in workers:
                if w.pid is None:
                    continue  # never started
                w.join(timeout=10)
                if w.is_alive():
                    w.kill()
                    w.join()
            results.close()
    return [done[rank] for rank in range(world_size)]
