"""
Checks that the pages stay true without running their examples (`make test-docs` runs those): every benchmark figure
lives in docs/benchmarks.md and at most one other page, and every shell command the pages show parses with the
parser of the program it names (evl-hf, the training script, the converter, the benchmarks, accelerate, torchrun,
make).
"""

import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "DEVELOPMENT.md", *sorted((ROOT / "docs").glob("*.md"))]
BENCHMARKS = ROOT / "docs" / "benchmarks.md"

# A measured figure: a number with a ratio sign or a unit of time, memory, throughput or share (`1.30x`, `99.5%`,
# `2.46 s`, `174 MiB`, `18 clips/s`), or a difference in scientific notation (`7e-7`, `2.0e-6`). Sizes of inputs
# (`224 px`, `8 frames`, `14x14` grids, `8 x 16` clip shapes) are settings, not figures, and do not match.
FIGURE = re.compile(
    r"(?<![\w.])(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
    r"(?:x(?!\w)|\s?(?:%|ms|s|min|MiB|GiB|KiB|MB|GB|KB|GFLOP/s|clips/s|videos/s)(?![\w/]))"
    r"|(?<![\w.])\d+(?:\.\d+)?e-\d+"
)
# Settings written in the same notation, each on the pages that explain it: the paper's learning rate and its linear
# scaling to a batch of 32, and the N(0, 1e-6) initialisation of the MLP biases.
NOT_FIGURES = {"4e-4", "5e-5", "1e-6"}


def figures(text: str) -> set[str]:
    return {re.sub(r"\s", "", match.group()) for match in FIGURE.finditer(text)} - NOT_FIGURES


def test_figure_pattern_tells_measurements_from_settings():
    text = "1.30x faster, 99.5% top-1, 2.46 s, 174 MiB, 0.16 GiB, 7e-7 and 2.0e-6; 224 px, 14x14, 8 x 16, lr 4e-4"
    assert figures(text) == {"1.30x", "99.5%", "2.46s", "174MiB", "0.16GiB", "7e-7", "2.0e-6"}
    assert figures("x1.5, v2.0x, 3.10x.") == {
        "3.10x"
    }  # a trailing full stop ends the figure, a letter before voids it


def test_benchmark_figures_live_in_benchmarks_md_and_at_most_one_other_page():
    pages_of = defaultdict(set)
    for page in PAGES:
        if page != BENCHMARKS:
            for figure in figures(page.read_text()):
                pages_of[figure].add(page.relative_to(ROOT).as_posix())
    copied = {figure: sorted(pages) for figure, pages in pages_of.items() if len(pages) > 1}
    assert not copied, f"figures copied across pages (quote them once, link to docs/benchmarks.md): {copied}"


def run_markdown_docs(page: Path) -> subprocess.CompletedProcess:
    """pytest-markdown-docs on one page, with the repository's conftest.py (the fence count and the rule on skips)."""
    command = [
        sys.executable,
        "-m",
        "pytest",
        "--markdown-docs",
        "-p",
        "conftest",
        "-p",
        "no:cacheprovider",
        "--rootdir",
        str(page.parent),
        str(page),
    ]
    return subprocess.run(
        command,
        cwd=page.parent,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=120,
    )


def test_a_block_that_would_not_run_fails_make_test_docs(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("```python\nassert 1 + 1 == 2\n```\n\n```python notest\nraise SystemExit(1)\n```\n")
    result = run_markdown_docs(page)
    assert result.returncode != 0 and "1 ```python fences" not in result.stdout + result.stderr
    assert "2 ```python fences, 1 tests" in result.stdout + result.stderr

    page.write_text("```python\nassert 1 + 1 == 2\n```\n\n```python\nimport pytest\npytest.skip('no weights')\n```\n")
    result = run_markdown_docs(page)
    assert result.returncode == 1 and "1 failed, 1 passed" in result.stdout, result.stdout[-2000:]
    assert "a documentation block was skipped" in result.stdout


def test_readme_is_short_and_starts_with_the_set_up_commands():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 120
    assert [line.split("#")[0].strip() for line in shell_lines(readme)[:2]] == ["make train", "make test"]
    begin, end = readme.index("<!-- benchmark-summary:begin -->"), readme.index("<!-- benchmark-summary:end -->")
    assert begin < end and "docs/benchmarks.md" in readme[begin:end]


# ---- Shell commands -------------------------------------------------------------------------------------------------


def shell_lines(text: str) -> list[str]:
    """The commands of a page's shell blocks, continuation lines joined and `NAME=value` variables expanded."""
    commands, variables = [], {}  # a variable set in one block of a page is used in the next ones
    for block in re.findall(r"^[ \t]*```(?:bash|sh|shell)\n(.*?)^[ \t]*```", text, re.MULTILINE | re.DOTALL):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = re.sub(r"(^|\s)#.*", "", line).strip()
            if assignment := re.fullmatch(r"([A-Z][A-Z0-9_]*)=(.*)", line):
                variables[assignment[1]] = " ".join(shlex.split(assignment[2]))
            elif line:
                commands.append(re.sub(r"\$(\w+)", lambda m: variables.get(m[1], m[0]), line))
    return commands


def page_commands():
    for page in PAGES:
        for line in shell_lines(page.read_text()):
            try:
                words = [word for word in shlex.split(line) if word != "..."]  # `...`: arguments left out
            except ValueError as error:
                raise ValueError(f"{page.name}: cannot split {line!r} as the shell would: {error}") from None
            while words and re.fullmatch(r"[A-Z][A-Z0-9_]*=.*", words[0]):  # environment variables for the command
                words.pop(0)
            if words and is_checked(words):
                yield pytest.param(words, id=f"{page.name}: {line[:80]}")


def is_checked(words: list[str]) -> bool:
    program = Path(words[0]).name
    return (
        program in ("evl-hf", "make", "accelerate", "torchrun")
        or (
            program.startswith("python")
            and len(words) > 2
            and words[1] == "-m"
            and (words[2].startswith("evl_hf") or words[2] == "benchmarks")
        )
        or (program.startswith("python") and len(words) > 1 and words[1].startswith("examples/"))
    )


def parse_evl_hf(arguments: list[str]):
    from evl_hf.commands import build_parser

    return build_parser().parse_args(arguments)


def parse_training_script(arguments: list[str]):
    import torch

    sys.path.insert(0, str(ROOT / "examples"))
    try:
        from run_video_classification import DataTrainingArguments, ModelArguments, parse_arguments
        from transformers import HfArgumentParser, TrainingArguments
    finally:
        sys.path.remove(str(ROOT / "examples"))
    try:
        return parse_arguments(arguments)
    except ValueError as error:
        # TrainingArguments checks the hardware when it is built: a GPU command (`--bf16`) can only be parsed here
        if "bf16/gpu" not in str(error) or torch.cuda.is_available():
            raise
    return HfArgumentParser((ModelArguments, DataTrainingArguments, TrainingArguments)).parse_args(arguments)


def parse_converter(arguments: list[str], tmp_path: Path):
    """The converter builds its parser inside `main`: run it where the checkpoint named does not exist, so that it
    stops right after parsing, with its own error and not argparse's."""
    from evl_hf.convert_evl_original_to_hf import main

    stderr = io.StringIO()
    with contextlib.chdir(tmp_path), contextlib.redirect_stderr(stderr), pytest.raises(SystemExit):
        main(arguments)
    assert "does not exist" in stderr.getvalue() and "usage:" not in stderr.getvalue(), stderr.getvalue()


def parse_benchmarks(arguments: list[str]):
    """`python -m benchmarks --list`, or a suite and its options; the training suite's words after `--` are the
    training script's."""
    from benchmarks.__main__ import build_parser

    if arguments == ["--list"]:
        return None
    args = build_parser(arguments[0]).parse_args(arguments[1:])
    if arguments[0] == "training" and args.script_args:
        parse_training_script(args.script_args)
    return args


def parse_program(words: list[str], tmp_path: Path):
    """Parses `words` (a script or module and its arguments, as a launcher runs them) with that program's parser."""
    if words[0] == "-m":
        module, arguments = words[1], words[2:]
    else:
        module, arguments = words[0], words[1:]
    if module == "evl_hf":
        return parse_evl_hf(arguments)
    if module == "evl_hf.convert_evl_original_to_hf":
        return parse_converter(arguments, tmp_path)
    if module == "benchmarks":
        return parse_benchmarks(arguments)
    if module == "examples/run_video_classification.py":
        return parse_training_script(arguments)
    raise AssertionError(f"no parser known for {module}: add it to tests/test_docs.py")


@pytest.mark.parametrize("words", list(page_commands()))
def test_shell_command_parses(words, tmp_path):
    program = Path(words[0]).name
    if program == "evl-hf":
        parse_evl_hf(words[1:])
    elif program == "make":
        # -n prints what the target would run without running it; an unknown target fails
        result = subprocess.run(["make", "-n", *words[1:]], cwd=ROOT, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
    elif program == "accelerate":
        from accelerate.commands.launch import launch_command_parser

        assert words[1] == "launch", words
        launch = launch_command_parser().parse_args(words[2:])
        parse_program(
            ["-m", launch.training_script, *launch.training_script_args]
            if launch.module
            else [launch.training_script, *launch.training_script_args],
            tmp_path,
        )
    elif program == "torchrun":
        from torch.distributed.run import get_args_parser

        run = get_args_parser().parse_args(words[1:])
        parse_program(
            ["-m", run.training_script, *run.training_script_args]
            if run.module
            else [run.training_script, *run.training_script_args],
            tmp_path,
        )
    else:
        parse_program(words[1:], tmp_path)


def test_a_wrong_argument_fails_the_check(tmp_path):
    with pytest.raises(SystemExit):
        parse_evl_hf(["predict", "--model", "m", "videos/", "--no_such_option"])
    with pytest.raises(ValueError):
        parse_training_script(["--no_such_option", "1"])
    with pytest.raises(AssertionError, match="usage"):
        parse_converter(["--checkpoint", "missing.pth", "--clip_model", "c", "--output_dir", "o", "--bad"], tmp_path)
    with pytest.raises(SystemExit):
        parse_benchmarks(["timeline", "--baseline-windows", "8"])
