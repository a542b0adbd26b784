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
against PyTorch on batches of other sizes and clip lengths ([`evl_hf.onnx_export.check_onnx`]).
"""

import argparse
import os
import shutil
import sys

from ..onnx_export import DEFAULT_OPSET
from . import UsageError
from .utils import add_model_arguments, load_model_and_processor


def register(subparsers):
    parser = subparsers.add_parser(
        "export",
        help="Export the classifier to ONNX (needs the `export` extra).",
        description=(
            "Export the classifier to an ONNX file from pixel_values (batch_size, num_frames, 3, height, width) to "
            "logits (batch_size, num_labels), with dynamic batch and frame dimensions; then check the file with "
            "onnxruntime against PyTorch. Preprocess videos with the model's video processor."
        ),
    )
    add_model_arguments(parser, device=False, dtype=False)
    parser.add_argument("--output", required=True, help="The .onnx file to write.")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default: {DEFAULT_OPSET}).")
    parser.set_defaults(run=run, parser=parser)


def run(args: argparse.Namespace) -> int:
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
