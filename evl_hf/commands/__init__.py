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

Exit status: 0 on success, 1 when the work ran but some of it failed (the subcommand says what), when a disk filled
up, or when another run holds the output; 2 for usage errors (bad arguments, nothing to do, a model that cannot be
loaded).

A full disk and an output in use by another run end every subcommand the same way, here in [`main`]: one line that
names the path or the other process and says what to do ([`~evl_hf.utils_io.exit_on_full_disk`],
[`~evl_hf.utils_io.OutputInUseError`]), and the traceback only with `evl-hf --debug`.
"""

import argparse
import importlib
import sys


# Module names, in the order `evl-hf --help` lists them.
SUBCOMMANDS = ["predict", "evaluate", "timeline", "export", "prepare_videos", "prepare_dataset", "demo"]

# What the one line on a full disk tells to do, per subcommand: the argument naming the output (also read for the
# path when the error names none), and how the run goes on once there is space. Others get `DEFAULT_RERUN`.
RERUN = {
    "predict": ("--output", "the same command then resumes: the videos already recorded are skipped"),
    "prepare-videos": ("OUTPUT_DIR", "the same command then resumes: the finished videos are kept"),
    "timeline": ("--output", "then run the same command again"),
    "export": ("--output", "then run the same command again"),
}
DEFAULT_RERUN = ("--output", "then run the same command again to resume")


class UsageError(Exception):
    """A problem with what the user asked for (exit status 2); the message says what to change."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="evl-hf",
        description="EVL video classification: predict, timelines of long videos, export, data preparation, demo.",
    )
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"evl-hf {__version__}")
    parser.add_argument(
        "--debug",
        action="store_true",
        help="Show the traceback of an error that otherwise ends the command with one line (a full disk, an output "
        "in use by another run); TRANSFORMERS_VERBOSITY=debug does the same.",
    )
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", dest="command")
    for name in SUBCOMMANDS:
        importlib.import_module(f".{name}", __name__).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help(sys.stderr)
        return 2
    from ..utils_io import OutputInUseError, exit_on_full_disk

    argument, rerun = RERUN.get(args.command, DEFAULT_RERUN)
    output = getattr(args, argument.lstrip("-").lower(), None)
    try:
        with exit_on_full_disk(output, argument, rerun, debug=args.debug):
            return args.run(args)
    except OutputInUseError as error:
        if args.debug:
            raise
        print(f"evl-hf {args.command}: {error}", file=sys.stderr)
        return 1
    except UsageError as error:
        args.parser.error(str(error))  # prints `evl-hf SUBCOMMAND: error: ...` and exits with status 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
