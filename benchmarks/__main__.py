"""`python -m benchmarks --list`, `python -m benchmarks SUITE [--quick] [--output DIR] [suite options]`.

Every suite prints its result as JSON (progress and `torch.utils.benchmark.Compare` tables go to stderr) and with
`--output DIR` writes `DIR/<name>.json`; `python -m benchmarks.docs` renders docs/benchmarks.md from those files.
"""

import argparse
import importlib
import sys


# suite -> module; each module has SUITES = {suite: (one-line description, add_arguments, run)}
MODULES = ("models", "reference", "precision", "data", "inference", "gpu", "training")


def suites() -> dict:
    found = {}
    for name in MODULES:
        found.update(importlib.import_module(f"benchmarks.{name}").SUITES)
    return found


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    available = suites()
    if not argv or argv[0] in ("--list", "-l", "--help", "-h"):
        print("suites (python -m benchmarks SUITE --help for a suite's options):")
        for name, (description, _, _) in available.items():
            print(f"  {name:12} {description}")
        return 0 if argv else 2
    if argv[0] not in available:
        print(f"error: unknown suite {argv[0]!r}; `python -m benchmarks --list` lists them: {', '.join(available)}",
              file=sys.stderr)  # fmt: skip
        return 2
    description, add_arguments, run = available[argv[0]]
    parser = argparse.ArgumentParser(prog=f"python -m benchmarks {argv[0]}", description=description)
    parser.add_argument("--quick", action="store_true", help="small shapes and few rounds: the code paths, not numbers")
    parser.add_argument("--output", help="folder to write the result JSON into (docs/benchmark_results for the docs)")
    add_arguments(parser)
    args = parser.parse_args(argv[1:])
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
