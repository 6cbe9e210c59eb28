"""Run an experiment and write its results file, which a lesson reads.

    python -m moe_course.experiments capstone --jobs 2     # lesson 09: data/results/capstone.json
    python -m moe_course.experiments balancing --jobs 2    # lessons 03 and 04: data/results/balancing.json
    python -m moe_course.experiments serving_model         # lesson 08: data/results/serving_model.json and .pt
    python -m moe_course.experiments capstone --quick --out /tmp/quick.json   # the same code, a few steps

``--jobs N`` trains N runs at once, in separate processes, with the same numbers. Each results file records how
long its runs took (``timing``): on a 2-core machine the capstone's 16 models of about a million parameters,
1,500 steps each, took 14.6 minutes with ``--jobs 2``; one run of lessons 03 and 04 (300 steps) took 19 to 22 s
on a quiet core.
"""

import argparse
from dataclasses import asdict

from ..env import use_course_threads
from . import balancing, capstone, serving_model
from .results import RESULTS, write_results

# name -> (the settings' default, their quick version, the function that runs it)
EXPERIMENTS = {
    "capstone": (capstone.CapstoneSettings(), capstone.QUICK, capstone.run_capstone),
    "balancing": (balancing.BalancingSettings(), balancing.QUICK, balancing.run_balancing),
    "serving_model": (serving_model.ServingModelSettings(), serving_model.QUICK, serving_model.run_serving_model),
}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", choices=list(EXPERIMENTS))
    parser.add_argument("--quick", action="store_true", help="a few steps of each run, to check the code path")
    parser.add_argument("--jobs", type=int, default=1, help="training runs at once, in separate processes")
    parser.add_argument("--out", default=None, help="the results file (default: data/results/<experiment>.json)")
    args = parser.parse_args(argv)
    use_course_threads()  # the threads the file's provenance records, and every training run uses
    full, quick, run = EXPERIMENTS[args.experiment]
    settings = quick if args.quick else full
    results, timing, *tensors = run(settings, args.jobs)
    out = args.out or RESULTS / f"{args.experiment}.json"
    seeds = list(getattr(settings, "seeds", (getattr(settings, "seed", 0),)))
    path = write_results(out, results, asdict(settings), seeds, timing, *tensors)
    print(f"wrote {path} in {timing['total']:.0f} s")


if __name__ == "__main__":
    main()
