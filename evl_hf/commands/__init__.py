# Copyright 2026 The evl_hf authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""
The `evl-hf` command (also `python -m evl_hf`): one subcommand per module of this package.

Each subcommand module defines `register(subparsers)`, which adds its parser and sets `run` as its default handler,
and `run(args) -> int`, which returns the exit status. Modules import their heavy dependencies inside `run`, so that
`evl-hf --help` stays fast and an optional extra is only needed by the subcommand that uses it.

Exit status: 0 on success, 1 when the work ran but some of it failed (the subcommand says what), 2 for usage errors
(bad arguments, nothing to do, a model that cannot be loaded).
"""

import argparse
import importlib
import sys


# Module names, in the order `evl-hf --help` lists them.
SUBCOMMANDS = ["predict", "evaluate", "timeline", "export", "prepare_videos", "prepare_dataset", "demo"]


class UsageError(Exception):
    """A problem with what the user asked for (exit status 2); the message says what to change."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="evl-hf",
        description="EVL video classification: predict, timelines of long videos, export, data preparation, demo.",
    )
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"evl-hf {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f".{name}", __name__).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.run(args)
    except UsageError as error:
        args.parser.error(str(error))  # prints `evl-hf SUBCOMMAND: error: ...` and exits with status 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
