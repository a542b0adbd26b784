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
from .utils import add_model_arguments, load_model_and_processor


def plot_timeline(result: dict, path, top_classes: int = 5):
    """
    Draws the score of the `top_classes` best classes (by their peak over the video) against time,
    one line per class, and saves the figure to `path` (PNG, SVG, PDF: matplotlib picks by the extension).

    Args:
        result (`dict`): what [`~evl_hf.inference.classify_windows`] returns.
        path (`str` or `os.PathLike`): where to write the picture.
        top_classes (`int`, *optional*, defaults to 5): how many classes to draw.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("Drawing a timeline needs matplotlib: pip install 'evl-hf[plot]'") from None

    probabilities = result["probabilities"]
    labels = result["labels"]
    # A window is drawn at its centre: the probability describes what happens across the window. Without a frame
    # rate the axis counts frames.
    fps = result["fps"]
    times = [(window["start_frame"] + window["end_frame"]) / 2 / (fps or 1) for window in result["windows"]]
    peaks = [max(row[i] for row in probabilities) for i in range(len(labels))]
    chosen = sorted(range(len(labels)), key=lambda i: peaks[i], reverse=True)[:top_classes]

    figure, axes = plt.subplots(figsize=(10, 3.5), layout="constrained")
    for i in chosen:
        axes.plot(times, [row[i] for row in probabilities], label=labels[i], linewidth=1.5)
    axes.set_xlabel("time (s, window centre)" if fps else "frame (window centre)")
    # a multi-label model's scores are independent probabilities (they need not sum to 1); a regression's are values
    function = result.get("function_to_apply", "softmax")
    axes.set_ylabel(
        {"softmax": "probability", "sigmoid": "probability (independent per label)"}.get(function, "score")
    )
    if function != "none":
        axes.set_ylim(0, 1)
    if times:
        axes.set_xlim(0, max(times[-1], result["num_video_frames"] / (fps or 1)))
    axes.set_title(f"{result['video']}: top {len(chosen)} classes over time", fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=9)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_saliency(model, processor, video, result: dict, folder, num_windows: int = 3) -> list[dict]:
    """
    For the `num_windows` windows of `result` whose best label scores highest, the frames the model saw with the
    decoder's attention painted over them ([`~evl_hf.inference.attention_overlays`]), one PNG strip per window in
    `folder`, and `saliency.json` listing them with each frame's share of the attention.
    """
    import torch
    from PIL import Image

    from ..inference import attention_overlays, window_frame_indices
    from ..video_utils import read_video_frames

    os.makedirs(folder, exist_ok=True)
    all_frames = window_frame_indices(
        result["num_video_frames"], result["num_frames"], result["frame_stride"], result["stride_frames"]
    )
    ranked = sorted(range(len(result["windows"])), key=lambda i: result["windows"][i]["scores"][0], reverse=True)
    entries = []
    for index in sorted(ranked[:num_windows]):
        window = result["windows"][index]
        frame_indices = all_frames[index]
        pixel_values = processor(read_video_frames(video, frame_indices), return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            outputs = model(pixel_values=pixel_values.to(model.device), output_attentions=True)
        painted, shares = attention_overlays(
            pixel_values, outputs.decoder_attentions, processor, model.config.spatial_size
        )
        strip = torch.cat(list(painted[0]), dim=-1).permute(1, 2, 0).numpy()  # frames side by side, (H, T * W, 3)
        name = f"window_{index:05d}_frames_{window['start_frame']}-{window['end_frame']}.png"
        Image.fromarray(strip).save(os.path.join(folder, name))
        entries.append(
            {
                "window": index,
                "image": name,
                "frames": frame_indices,
                "labels": window["labels"][:1],
                "frame_attention_shares": shares[0].tolist(),
            }
        )
    with open(os.path.join(folder, "saliency.json"), "w") as file:
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
        type=int,
        default=None,
        help="Frames between the starts of two windows (default: the processor's frame_stride).",
    )
    parser.add_argument("--top_k", type=int, default=5, help="Labels kept per window (default: 5).")
    parser.add_argument("--batch_size", type=int, default=8, help="Windows decoded together (default: 8).")
    parser.add_argument("--output", help="Write the result as JSON to this file (default: standard output).")
    parser.add_argument("--plot", help="Draw class probability over time into this picture (PNG, SVG, PDF).")
    parser.add_argument("--plot_classes", type=int, default=5, help="Classes drawn by --plot (default: 5).")
    parser.add_argument(
        "--saliency",
        metavar="FOLDER",
        help="Write the best-scoring windows' frames with the decoder's attention painted over them into FOLDER.",
    )
    parser.add_argument(
        "--saliency_windows", type=int, default=3, help="Windows drawn by --saliency, best-scoring first (default: 3)."
    )
    parser.set_defaults(run=run, parser=parser)


def run(args: argparse.Namespace) -> int:
    for option in ("stride_frames", "top_k", "batch_size", "plot_classes", "saliency_windows"):
        value = getattr(args, option)
        if value is not None and value < 1:
            raise UsageError(f"--{option} must be at least 1, got {value}.")
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
        with open(args.output, "w") as file:
            json.dump(result, file)
            file.write("\n")
    else:
        json.dump(result, sys.stdout)
        sys.stdout.write("\n")
    if args.plot:
        plot_timeline(result, args.plot, top_classes=args.plot_classes)
    if args.saliency:
        write_saliency(model, processor, args.video, result, args.saliency, args.saliency_windows)
    return 0
