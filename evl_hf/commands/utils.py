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
"""What several subcommands share: the model options and loading a model with its video processor."""

import argparse

from . import UsageError


def add_model_arguments(parser: argparse.ArgumentParser, *, device: bool = True, dtype: bool = True):
    """--model, and unless turned off --device, and --dtype with --compile."""
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
            choices=DTYPES,
            help="Precision of the frozen CLIP backbone; the decoder and head stay in float32. int8 (torchao's "
            "dynamic int8 quantization of its Linear layers, fastest on CPUs with VNNI or AMX with --compile), "
            "int8-weight-only and float8 (CUDA) need torchao: pip install 'evl-hf[quantize]' (default: float32).",
        )
        parser.add_argument(
            "--compile",
            action="store_true",
            help="torch.compile the backbone; the first clips of each new shape pay the compilation (a minute or "
            "more for ViT-B/16 on a CPU), done before the progress starts for the batch shape.",
        )


def load_model_and_processor(
    model: str, device: str = "cpu", dtype: str = "float32", compile: bool = False, batch_size: int = 1
):
    """
    Loads `EVLForVideoClassification` in eval mode on `device`, with the backbone in `dtype` (a name of
    `evl_hf.quantization.DTYPES`), and its video processor. With `compile`, the backbone is compiled and warmed on
    `batch_size` clips.

    Raises:
        `UsageError`: the model or its processor cannot be loaded, the device does not exist, or `dtype` needs what is
        missing (torchao, a GPU); the message says why.
    """
    import torch

    from .. import EVLForVideoClassification, EVLVideoProcessor
    from ..quantization import INSTALL_HINT, compile_model, from_pretrained_kwargs

    try:
        torch_device = torch.device(device)
        if torch_device.type == "cuda" and not torch.cuda.is_available():
            raise UsageError(f"--device {device}: no CUDA device is available here; use --device cpu.")
    except RuntimeError as error:
        raise UsageError(f"--device {device!r} is not a device torch knows (cpu, cuda, cuda:N): {error}") from None
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
    if compile:
        compile_model(loaded, batch_size)
    return loaded, processor
