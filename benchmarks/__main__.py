"""`python -m benchmarks --list`, `python -m benchmarks SUITE [--quick] [--output DIR] [options]`: the result JSON on
stdout (progress and `torch.utils.benchmark.Compare` tables on stderr), with `--output` also in DIR/<name>.json."""

import argparse
import importlib
import sys


# each module has SUITES = {suite: (one-line description, add_arguments, run)}
MODULES = ("models", "reference", "data", "inference")


def suites() -> dict:
    return {k: v for name in MODULES for k, v in importlib.import_module(f"benchmarks.{name}").SUITES.items()}


def build_parser(suite: str) -> argparse.ArgumentParser:
    """`suite`'s parser: the options every suite has, then its own."""
    description, add_arguments, _ = suites()[suite]
    parser = argparse.ArgumentParser(prog=f"python -m benchmarks {suite}", description=description)
    parser.add_argument(
        "--quick", action="store_true", help="small shapes and few rounds: the code paths, not numbers"
    )
    parser.add_argument("--output", help="folder to write the result JSON into (docs/benchmark_results for the docs)")
    parser.add_argument("--name", help="the result's name, <output>/<name>.json (default: the suite's own)")
    add_arguments(parser)
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    known = suites()
    if not argv or argv[0] in ("--list", "-l", "--help", "-h"):
        print("suites (python -m benchmarks SUITE --help for a suite's options):")
        print("\n".join(f"  {name:12} {description}" for name, (description, _, _) in known.items()))
        return 0 if argv else 2
    if argv[0] not in known:
        print(
            f"error: unknown suite {argv[0]!r}; `python -m benchmarks --list` lists them: {', '.join(known)}",
            file=sys.stderr,
        )
        return 2
    run = known[argv[0]][2]
    run(build_parser(argv[0]).parse_args(argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
