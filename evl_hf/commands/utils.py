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
What several subcommands share: the model options and loading a model with its video processor, argument types that
check values as they are parsed, and writing a file so that it is either complete or absent.
"""

import argparse
import contextlib
import os
import sys
import tempfile
from collections.abc import Callable, Iterator

from . import UsageError


def int_at_least(minimum: int, hint: str = "") -> Callable[[str], int]:
    """
    An argparse `type` for whole numbers of at least `minimum`, so that a bad value is a usage error at parse time
    (`evl-hf CMD: error: argument --flag: must be at least 1, got 0`); `hint` follows the message (say the default).
    """

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number{hint}.") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}{hint}.")
        return value

    return parse


def int_between(minimum: int, maximum: int, hint: str = "") -> Callable[[str], int]:
    """An argparse `type` for whole numbers from `minimum` to `maximum`, both included; see [`int_at_least`]."""
    at_least = int_at_least(minimum, hint)

    def parse(text: str) -> int:
        value = at_least(text)
        if value > maximum:
            raise argparse.ArgumentTypeError(f"must be between {minimum} and {maximum}, got {value}{hint}.")
        return value

    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


def probability(text: str) -> float:
    """An argparse `type` for a number strictly between 0 and 1 (a score threshold)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number.") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (exclusive), got {value}.")
    return value


def report_failures(failed: list[dict], report: "str | os.PathLike", outcome: str, names=("video",)) -> int:
    """
    Names the first of the `failed` records (dicts with the `names` keys and a `"reason"`) on standard error, after a
    line saying how many `outcome` and that `report` lists them all; the exit status: 1 when some failed, else 0.
    """
    if not failed:
        return 0
    print(f"{len(failed)} video(s) {outcome}; all of them in {report}:", file=sys.stderr)
    for record in failed[:10]:
        print("  " + ": ".join(str(record[name]) for name in (*names, "reason")), file=sys.stderr)
    return 1


@contextlib.contextmanager
def atomic_write(path: "str | os.PathLike", *, unique: bool = False) -> Iterator[str]:
    """
    A temporary path in `path`'s folder to write `path`'s contents to: when the block ends without an error, the file
    is flushed to disk (`fsync`) and renamed over `path` (`os.replace`), so a reader, or a run stopped part way, sees
    the old file or the whole new one, never part of it. On an error the temporary file is removed.

    The temporary file is `.<name>.partial`, so a run that writes `path` again replaces what a killed run left; with
    `unique`, for writers that may write the same `path` at the same time, each gets a name of its own.

    Example: `with atomic_write("out.csv") as temporary, open(temporary, "w") as file: file.write(text)`, or hand the
    temporary path to a program (FFmpeg, `pyarrow.parquet.write_table`) that writes it.
    """
    folder, name = os.path.split(os.path.abspath(path))
    if unique:
        descriptor, temporary = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".partial")
        os.close(descriptor)
    else:
        temporary = os.path.join(folder, f".{name}.partial")
    try:
        yield temporary
        descriptor = os.open(temporary, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(temporary, path)
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        if isinstance(error, OSError) and error.filename is None:  # written through a file object: name the output
            error.filename = str(path)
        raise


def add_model_arguments(
    parser: argparse.ArgumentParser, *, device: bool = True, dtype: bool = True, compile: bool = True
):
    """--model, and unless turned off --device, --dtype, and --compile with --aoti_package."""
    from ..quantization import DTYPES

    parser.add_argument(
        "--model", required=True, help="A saved EVL folder or a Hub id; the video processor settings come from it."
    )
    if device:
        parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu).")
    if dtype:
        parser.add_argument(
            "--dtype",
            default="float32",
            choices=[*DTYPES, "auto"],
            help="Precision of the frozen CLIP backbone; the decoder and head stay in float32. int8 (torchao's "
            "dynamic int8 quantization of its Linear layers, fastest on CPUs with VNNI or AMX with --compile), "
            "int8-weight-only and float8 (CUDA) need torchao: pip install 'evl-hf[quantize]'. auto: the fastest "
            "for the device (evl_hf.precision.choose_dtype), said on stderr (default: float32).",
        )
    if compile:
        group = parser.add_mutually_exclusive_group()
        group.add_argument(
            "--compile",
            action="store_true",
            help="torch.compile the backbone; the first clips of each new shape pay the compilation (a minute or "
            "more for ViT-B/16 on a CPU, seconds once the kernels are in the cache: $TORCHINDUCTOR_CACHE_DIR, "
            "default ~/.cache/evl_hf/inductor), done before the progress starts for the batch shape.",
        )
        group.add_argument(
            "--aoti_package",
            dest="compile",
            metavar="PT2",
            help="Run the model's forward from this AOTInductor package (evl-hf export --format aoti) instead of "
            "compiling; the backbone dtype is the package's.",
        )


def load_model_and_processor(
    model: str, device: str = "cpu", dtype: str = "float32", compile: bool | str = False, batch_size: int = 1
):
    """
    Loads `EVLForVideoClassification` in eval mode on `device`, with the backbone in `dtype` (a name of
    `evl_hf.quantization.DTYPES`, or `"auto"` for [`evl_hf.precision.choose_dtype`]'s choice, printed to stderr), and
    its video processor. With `compile=True`, the backbone is compiled and warmed on `batch_size` clips; a path is an
    AOTInductor package of the model ([`evl_hf.quantization.export_compiled`]), whose dtype replaces `dtype`.

    Raises:
        `UsageError`: the model or its processor cannot be loaded, the device does not exist, or `dtype` needs what is
        missing (torchao, a GPU); the message says why.
    """
    import torch

    from .. import EVLForVideoClassification, EVLVideoProcessor
    from ..quantization import INSTALL_HINT, compile_model, from_pretrained_kwargs, load_compiled

    try:
        torch_device = torch.device(device)
        if torch_device.type == "cuda" and not torch.cuda.is_available():
            raise UsageError(f"--device {device}: no CUDA device is available here; use --device cpu.")
    except RuntimeError as error:
        raise UsageError(f"--device {device!r} is not a device torch knows (cpu, cuda, cuda:N): {error}") from None
    package = None
    if isinstance(compile, str):
        package = load_compiled_package(compile)
        dtype = package.get_metadata().get("dtype", "float32")
    elif dtype == "auto":
        dtype = resolve_auto_dtype(torch_device, compile)
    if dtype == "float8" and torch_device.type != "cuda":
        raise UsageError("--dtype float8 runs on CUDA GPUs (compute capability 8.9 or more); on a CPU use int8.")
    try:
        dtype_kwargs = from_pretrained_kwargs(dtype)
    except ImportError:
        raise UsageError(
            f"--dtype {dtype} quantizes the backbone with torchao, which is not installed: {INSTALL_HINT}"
        ) from None
    try:
        # Quantized weights are made where they will run: torchao picks the kernels of that device.
        placement = {"device_map": torch_device} if "quantization_config" in dtype_kwargs else {}
        loaded = EVLForVideoClassification.from_pretrained(model, **placement, **dtype_kwargs).to(torch_device)
        processor = EVLVideoProcessor.from_pretrained(model)
    except (OSError, ValueError) as error:
        raise UsageError(
            f"--model {model!r}: cannot load an EVL model and video processor from it ({type(error).__name__}: "
            f"{error}). Pass a folder written by save_pretrained (or the training script), or a Hub id."
        ) from None
    loaded.eval()
    if package is not None:
        try:
            load_compiled(loaded, package)
        except ValueError as error:
            raise UsageError(f"--aoti_package {compile}: {error}") from None
    elif compile:
        compile_model(loaded, batch_size)
    return loaded, processor


def resolve_auto_dtype(device, compile: bool = False) -> str:
    """`--dtype auto`: [`evl_hf.precision.choose_dtype`]'s choice for `device`, with its reason on stderr."""
    from ..precision import choose_dtype

    dtype, reason = choose_dtype(device, compile=bool(compile))
    print(f"--dtype auto: {dtype} ({reason})", file=sys.stderr)
    return dtype


def load_compiled_package(path: str):
    """The AOTInductor package at `path`, loaded; a `UsageError` saying what to do when it cannot be."""
    import torch

    if not os.path.isfile(path):
        raise UsageError(f"--aoti_package {path!r} is not a file: write one with `evl-hf export --format aoti`.")
    try:
        return torch._inductor.aoti_load_package(path)
    except (RuntimeError, OSError, ValueError) as error:
        raise UsageError(
            f"--aoti_package {path!r} cannot be loaded as an AOTInductor package ({type(error).__name__}: {error}); "
            "write one with `evl-hf export --format aoti` with this version of torch."
        ) from None
