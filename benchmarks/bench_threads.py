"""One torch thread or all the cores? The course's tiny models timed both ways, on a quiet machine and beside a
competing busy process, to choose the course's thread policy (``moe_course.env.THREADS``).

    python benchmarks/bench_threads.py [--repeats 3]

Workloads: 30 training steps of the lessons' 2-layer TinyLM; greedy generation of 48 characters with lesson 08's
4-layer model; lesson 02's loop backend, forward, T = 2048, E = 64. Each time is the median (± half IQR) of
interleaved repeats (``moe_course.timing``), so a slow spell of the machine falls on both thread counts alike.
"""

import argparse
import os
import subprocess
import sys

import torch

from moe_course.backends import loop_moe
from moe_course.env import machine, torch_threads
from moe_course.experts import Experts
from moe_course.model import TinyLM, TinyLMConfig
from moe_course.routing import Router
from moe_course.serving.generate import generate
from moe_course.text import CharTokenizer, load_corpus, split
from moe_course.timing import interleaved_medians
from moe_course.train import TrainConfig, train

BUSY = "while True: pass"  # a single-threaded busy process: a browser tab, an editor's indexer, another notebook


def workloads() -> dict:
    """name -> a function that runs one sample of it."""
    text = load_corpus()
    tokenizer = CharTokenizer(text)
    train_ids, val_ids = split(tokenizer.encode(text))
    torch.manual_seed(0)
    small = TinyLM(TinyLMConfig(vocab_size=tokenizer.vocab_size))
    deep = TinyLM(TinyLMConfig(vocab_size=tokenizer.vocab_size, n_layers=4)).eval()
    prompt = tokenizer.encode("The old sailor")
    x = torch.randn(2048, 64)
    experts, router = Experts(64, 64, 128), Router(64, 64, 2)
    with torch.no_grad():
        r = router(x)
    steps = TrainConfig(steps=30, progress=False, eval_batches=1)

    def block():
        with torch.no_grad():
            loop_moe(x, r.indices, r.weights, None, experts)

    return {
        "train 30 steps": lambda: train(small, train_ids, val_ids, steps),
        "generate 48 chars": lambda: generate(deep, prompt, 48),
        "loop backend, E=64": block,
    }


def threaded(fn, n: int):
    def run():
        with torch_threads(n):
            fn()

    return run


def measure(repeats: int) -> dict:
    """(workload, threads) -> (median s, half IQR s)."""
    cores = os.cpu_count() or 1
    fns = {(name, n): threaded(fn, n) for name, fn in workloads().items() for n in sorted({1, cores})}
    result = interleaved_medians(fns, repeats, min_seconds=0.2)
    return {key: (median / 1e3, spread / 1e3) for key, (median, spread) in result.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    m = machine()
    print(f"{m['cpu']}, {os.cpu_count()} cores, {m['cpu_capability']}, torch {m['torch']}; seconds per sample, "
          f"median ± half IQR of {args.repeats} interleaved repeats")  # fmt: skip
    rows = {}
    for condition in ("quiet", "beside a busy process"):
        busy = subprocess.Popen([sys.executable, "-c", BUSY]) if condition != "quiet" else None
        try:
            rows[condition] = measure(args.repeats)
        finally:
            if busy:
                busy.kill()
                busy.wait()
    keys = list(rows["quiet"])
    print("| workload | threads | " + " | ".join(rows) + " |")
    print("|---|---|" + "---|" * len(rows))
    for name, n in keys:
        cells = " | ".join(f"{rows[c][name, n][0]:.3f} ± {rows[c][name, n][1]:.3f}" for c in rows)
        print(f"| {name} | {n} | {cells} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
