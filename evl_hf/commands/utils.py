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


DTYPES = ("float32", "bfloat16", "float16")


def add_model_arguments(parser: argparse.ArgumentParser, *, device: bool = True, dtype: bool = True):
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
            help="Precision of the frozen CLIP backbone; the decoder and head stay in float32 (default: float32).",
        )


def load_model_and_processor(model: str, device: str = "cpu", dtype: str = "float32"):
    """
    Loads `EVLForVideoClassification` in eval mode on `device`, with the backbone in `dtype`, and its video processor.

    Raises:
        `UsageError`: the model or its processor cannot be loaded, or the device does not exist; the message says why.
    """
    import torch

    from .. import EVLForVideoClassification, EVLVideoProcessor

    try:
        torch_device = torch.device(device)
        if torch_device.type == "cuda" and not torch.cuda.is_available():
            raise UsageError(f"--device {device}: no CUDA device is available here; use --device cpu.")
    except RuntimeError as error:
        raise UsageError(f"--device {device!r} is not a device torch knows (cpu, cuda, cuda:N): {error}") from None
    try:
        loaded = EVLForVideoClassification.from_pretrained(model, dtype=getattr(torch, dtype))
        processor = EVLVideoProcessor.from_pretrained(model)
    except (OSError, ValueError) as error:
        raise UsageError(
            f"--model {model!r}: cannot load an EVL model and video processor from it ({type(error).__name__}: "
            f"{error}). Pass a folder written by save_pretrained (or the training script), or a Hub id."
        ) from None
    return loaded.to(torch_device).eval(), processor
