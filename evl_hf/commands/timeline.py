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
`evl-hf timeline`: classify every window of a long video ([`evl_hf.inference.classify_windows`], which runs the CLIP
backbone once per sampled frame), as JSON and optionally a plot.
"""

import argparse
import json
import os
import sys

from . import UsageError
from ._plot import plot_timeline
from .utils import add_model_arguments, atomic_write, load_model_and_processor, positive_int


def write_saliency(model, processor, video, result: dict, folder, num_windows: int = 3) -> list[dict]:
    """
    For the `num_windows` windows of `result` whose best label scores highest, the frames the model saw with the
    decoder's attention painted over them ([`~evl_hf.inference.attention_overlays`]), one PNG strip per window in
    `folder`, and `saliency.json` listing them with each frame's share of the attention.
    """
    import torch
    from PIL import Image

    from ..inference import attention_overlays
    from ..video_utils import read_video_frames

    os.makedirs(folder, exist_ok=True)
    ranked = sorted(range(len(result["windows"])), key=lambda i: result["windows"][i]["scores"][0], reverse=True)
    entries = []
    for index in sorted(ranked[:num_windows]):
        window = result["windows"][index]
        frame_indices = window["frame_indices"]
        pixel_values = processor(read_video_frames(video, frame_indices), return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            outputs = model(pixel_values=pixel_values.to(model.device), output_attentions=True)
        painted, shares = attention_overlays(
            pixel_values, outputs.decoder_attentions, processor, model.config.spatial_size
        )
        strip = torch.cat(list(painted[0]), dim=-1).permute(1, 2, 0).numpy()  # frames side by side, (H, T * W, 3)
        name = f"window_{index:05d}_frames_{window['start_frame']}-{window['end_frame']}.png"
        with atomic_write(os.path.join(folder, name)) as temporary:  # whole or absent, as every output
            Image.fromarray(strip).save(temporary, format="PNG")
        entries.append(
            {
                "window": index,
                "image": name,
                "frames": frame_indices,
                "labels": window["labels"][:1],
                "frame_attention_shares": shares[0].tolist(),
            }
        )
    with atomic_write(os.path.join(folder, "saliency.json")) as temporary, open(temporary, "w") as file:
        json.dump(entries, file, indent=1)
    return entries


def register(subparsers):
    parser = subparsers.add_parser(
        "timeline",
        help="Classify every window of a long video (one backbone pass per frame).",
        description=(
            "Classify every window of the model's clip shape (num_frames frames, frame_stride apart) across a whole "
            "video. Overlapping windows share the CLIP backbone's work: it runs once per sampled frame."
        ),
    )
    add_model_arguments(parser)
    parser.add_argument("video", help="Path of the video file.")
    parser.add_argument(
        "--stride_frames",
        type=positive_int,
        default=None,
        help="Frames between the starts of two windows (default: the processor's frame_stride).",
    )
    parser.add_argument("--top_k", type=positive_int, default=5, help="Labels kept per window (default: 5).")
    parser.add_argument("--batch_size", type=positive_int, default=8, help="Windows decoded together (default: 8).")
    parser.add_argument("--output", help="Write the result as JSON to this file (default: standard output).")
    parser.add_argument("--plot", help="Draw class probability over time into this picture (PNG, SVG, PDF).")
    parser.add_argument("--plot_classes", type=positive_int, default=5, help="Classes drawn by --plot (default: 5).")
    parser.add_argument(
        "--saliency",
        metavar="FOLDER",
        help="Write the best-scoring windows' frames with the decoder's attention painted over them into FOLDER.",
    )
    parser.add_argument(
        "--saliency_windows",
        type=positive_int,
        default=3,
        help="Windows drawn by --saliency, best-scoring first (default: 3).",
    )
    parser.set_defaults(run=run, parser=parser)


def run(args: argparse.Namespace) -> int:
    if args.plot:
        import importlib.util

        if importlib.util.find_spec("matplotlib") is None:
            raise UsageError("--plot needs matplotlib: pip install 'evl-hf[plot]'")
    if not os.path.isfile(args.video):
        raise UsageError(f"VIDEO {args.video!r} is not a file; pass the path of a video file.")
    from ..inference import classify_windows

    model, processor = load_model_and_processor(args.model, args.device, args.dtype, args.compile, args.batch_size)
    try:
        result = classify_windows(
            model,
            processor,
            args.video,
            stride_frames=args.stride_frames,
            top_k=args.top_k,
            batch_size=args.batch_size,
            progress=True,
        )
    except (OSError, ValueError) as error:
        print(f"evl-hf timeline: cannot read {args.video!r}: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    if args.output:
        # whole or absent: a full disk leaves no cut-short JSON that reads as a result
        with atomic_write(args.output) as temporary, open(temporary, "w") as file:
            json.dump(result, file)
            file.write("\n")
    else:
        json.dump(result, sys.stdout)
        sys.stdout.write("\n")
    if args.plot:
        with atomic_write(args.plot) as temporary, open(temporary, "wb") as file:
            # the format by the name asked for: the temporary file's ends in .partial
            plot_timeline(
                result, file, top_classes=args.plot_classes, format=os.path.splitext(args.plot)[1][1:] or None
            )
    if args.saliency:
        write_saliency(model, processor, args.video, result, args.saliency, args.saliency_windows)
    return 0
