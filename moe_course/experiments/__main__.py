"""Run the capstone's experiments and write their results file, which lesson 09 reads.

    python -m moe_course.experiments capstone              # every run: data/results/capstone.json
    python -m moe_course.experiments capstone --jobs 2     # two training runs at once (the same numbers)
    python -m moe_course.experiments capstone --quick --out /tmp/quick.json   # the same code, a few steps

The full run trains 10 models of about a million parameters (three kinds × three seeds, and one with the z-loss)
for 1,500 steps each: about 10 minutes with ``--jobs 2`` on a 2-core laptop.
"""

import argparse
from dataclasses import asdict

from .capstone import QUICK, CapstoneSettings, run_capstone
from .results import RESULTS, write_results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", choices=["capstone"])
    parser.add_argument("--quick", action="store_true", help="a few steps of each run, to check the code path")
    parser.add_argument("--jobs", type=int, default=1, help="training runs at once, in separate processes")
    parser.add_argument("--out", default=None, help="the results file (default: data/results/<experiment>.json)")
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else CapstoneSettings()
    results, timing = run_capstone(settings, args.jobs)
    out = args.out or RESULTS / f"{args.experiment}.json"
    path = write_results(out, results, asdict(settings), list(settings.seeds), timing)
    print(f"wrote {path} in {timing['total']:.0f} s")


if __name__ == "__main__":
    main()
