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
`evl-hf export`: the classifier as an ONNX file ([`evl_hf.onnx_export.export_onnx`]), then checked with onnxruntime
against PyTorch on batches of other sizes and clip lengths ([`evl_hf.onnx_export.check_onnx`]); or, with `--format
aoti`, as an AOTInductor package ([`evl_hf.quantization.export_compiled`]) that predict and demo run without compiling
(`--aoti_package`), checked against the model on a batch of another size.
"""

import argparse
import os
import shutil
import sys
import time

from ..onnx_export import DEFAULT_OPSET
from . import UsageError
from .utils import add_model_arguments, load_model_and_processor


def register(subparsers):
    parser = subparsers.add_parser(
        "export",
        help="Export the classifier to ONNX (needs the `export` extra) or to a compiled AOTInductor package.",
        description=(
            "Export the classifier to an ONNX file from pixel_values (batch_size, num_frames, 3, height, width) to "
            "logits (batch_size, num_labels), with dynamic batch and frame dimensions; then check the file with "
            "onnxruntime against PyTorch. Preprocess videos with the model's video processor. --format aoti writes "
            "an AOTInductor package instead (dynamic batch, the model's clip length), compiled for this machine's "
            "CPU with the backbone in --dtype, for `evl-hf predict --aoti_package`."
        ),
    )
    add_model_arguments(parser, device=False, compile=False)
    parser.add_argument(
        "--format", default="onnx", choices=["onnx", "aoti"], help="onnx or aoti (AOTInductor .pt2) (default: onnx)."
    )
    parser.add_argument("--output", required=True, help="The .onnx (or .pt2 with --format aoti) file to write.")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default: {DEFAULT_OPSET}).")
    parser.set_defaults(run=run, parser=parser)


def run(args: argparse.Namespace) -> int:
    if args.format == "aoti":
        return export_aoti(args)
    if args.dtype != "float32":
        raise UsageError(
            f"--dtype {args.dtype}: ONNX export writes the float32 model (quantize the ONNX file with onnxruntime); "
            "--format aoti takes other dtypes."
        )
    from ..onnx_export import check_onnx, export_onnx, onnx_tolerance, require_export_extra

    try:
        require_export_extra()
    except ImportError as error:
        raise UsageError(str(error)) from None
    model, _ = load_model_and_processor(args.model)
    # Exported into a temporary folder beside --output and moved into place once checked, the graph last: a full disk
    # or a failed export leaves no torn file at --output. The exporter names the weights file after the graph
    # (`NAME.data`), so the graph keeps its name in that folder.
    folder, name = os.path.split(os.path.abspath(args.output))
    work = os.path.join(folder, f".{name}.partial")
    shutil.rmtree(work, ignore_errors=True)  # a killed run's
    os.makedirs(work)
    try:
        try:
            export_onnx(model, os.path.join(work, name), opset=args.opset)
        except ValueError as error:  # a model export cannot write, with what to do instead
            raise UsageError(str(error)) from None
        difference, scale = check_onnx(model, os.path.join(work, name))
        for written in sorted(os.listdir(work), key=lambda entry: entry == name):
            os.replace(os.path.join(work, written), os.path.join(folder, written))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    tolerance = onnx_tolerance(scale)  # more than rounding means the export is wrong
    status = "ok" if difference <= tolerance else "FAILED"
    print(
        f"evl-hf export: wrote {args.output}; onnxruntime vs PyTorch on 3 clips of {model.config.num_frames} frames "
        f"and 1 of {2 * model.config.num_frames}: largest logit difference {difference:.1e}, tolerance "
        f"{tolerance:.1e} ({status})",
        file=sys.stderr,
    )
    return 0 if difference <= tolerance else 1


def export_aoti(args: argparse.Namespace) -> int:
    import torch

    from ..quantization import export_compiled, load_compiled
    from .utils import resolve_auto_dtype

    dtype = resolve_auto_dtype("cpu", compile=True) if args.dtype == "auto" else args.dtype
    model, _ = load_model_and_processor(args.model, dtype=dtype)
    start = time.perf_counter()
    path = export_compiled(model, args.output, dtype=dtype)
    seconds = time.perf_counter() - start
    config = model.config
    size = config.vision_config.image_size
    pixel_values = torch.randn(3, config.num_frames, config.vision_config.num_channels, size, size)
    with torch.inference_mode():
        expected = model(pixel_values=pixel_values).logits
        difference = (load_compiled(model, path)(pixel_values=pixel_values).logits - expected).abs().max().item()
    # Fused and reordered kernels differ by rounding only; in int8 or bf16 one step of the activations' rounding moves
    # the logits by about 1e-3 of their size (2.8e-3 for a random int8 ViT-B/16 whose largest logit is 1.8).
    tolerance = (1e-3 if dtype == "float32" else 2e-2) * max(1.0, expected.abs().max().item())
    status = "ok" if difference <= tolerance else "FAILED"
    print(
        f"evl-hf export: wrote {path} ({dtype} backbone) in {seconds:.0f} s; package vs model on 3 clips of "
        f"{config.num_frames} frames: largest logit difference {difference:.1e}, tolerance {tolerance:.1e} ({status})",
        file=sys.stderr,
    )
    return 0 if difference <= tolerance else 1
