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
`evl-hf timeline`: classify every window of a long video, running the CLIP backbone once per sampled frame.

EVL's backbone sees each frame on its own, so windows that overlap share its work: the per-frame features
([`EVLModel.get_frame_features`]) are computed once, kept while a later window still needs them, and every window
then only runs the small decoder ([`EVLModel.decode_frame_features`]) and the head.
"""

import argparse
import json
import os
import sys

from . import UsageError
from .utils import add_model_arguments, load_model_and_processor


def window_frame_indices(num_video_frames: int, num_frames: int, frame_stride: int, stride_frames: int):
    """
    The frames of every window: `num_frames` frames `frame_stride` apart, one window starting every `stride_frames`
    frames for as long as a window fits in the video. A video shorter than one window gets a single window from its
    first frame with its last frame repeated, as [`sample_frame_indices`] does.

    Returns:
        `list[list[int]]`: one list of `num_frames` frame indices per window, in time order.
    """
    span = (num_frames - 1) * frame_stride + 1
    if num_video_frames < span:
        return [[min(i * frame_stride, num_video_frames - 1) for i in range(num_frames)]]
    starts = range(0, num_video_frames - span + 1, stride_frames)
    return [[start + i * frame_stride for i in range(num_frames)] for start in starts]


def compute_timeline(
    model,
    video_processor,
    video,
    *,
    stride_frames: int | None = None,
    top_k: int = 5,
    batch_size: int = 8,
    progress: bool = True,
) -> dict:
    """
    Classifies every window of `video` with the model's clip shape.

    A window is `model.config.num_frames` frames, `video_processor.frame_stride` frames apart; windows start every
    `stride_frames` frames (default: `frame_stride`). Each window's logits equal those of `model` on that window's
    frames preprocessed by `video_processor`, but the backbone runs only once per distinct frame, and the temporal
    cross attention (which depends only on two neighbouring frames) once per distinct pair of neighbours. Frames are
    decoded a few windows at a time and their features freed once no later window uses them, so memory does not grow
    with the length of the video.

    Args:
        model ([`EVLForVideoClassification`]):
            The classifier, in eval mode.
        video_processor ([`EVLVideoProcessor`]):
            Its processor: resizing, cropping, normalisation and `frame_stride` come from it.
        video (`str` or `os.PathLike`):
            Path of the video file.
        stride_frames (`int`, *optional*):
            Frames between the starts of two windows; defaults to `video_processor.frame_stride`.
        top_k (`int`, *optional*, defaults to 5):
            Labels kept per window in `"labels"`/`"scores"`.
        batch_size (`int`, *optional*, defaults to 8):
            Windows decoded together; their new frames go through the backbone together.
        progress (`bool`, *optional*, defaults to `True`):
            Show a progress bar on standard error.

    Returns:
        `dict` with `"video"`, `"num_video_frames"`, `"fps"`, `"num_frames"`, `"frame_stride"`, `"stride_frames"`,
        `"labels"` (every label name, in class index order), `"windows"` (per window: `"start_frame"`, `"end_frame"`
        (its last frame), `"start_time"`, `"end_time"` (in seconds, `frame / fps`; `None` when the video has no frame
        rate), the top-k `"labels"` and `"scores"`), `"probabilities"` (per window, the softmax over all labels) and
        `"max_cached_frames"` (the most frames whose features were held at once: what bounds memory).
    """
    import torch
    from tqdm.auto import tqdm

    from ..modeling_evl import EVLFrameFeatures
    from ..video_processing_evl import load_video_frames, open_video

    num_frames = model.config.num_frames
    frame_stride = video_processor.frame_stride
    stride_frames = frame_stride if stride_frames is None else stride_frames
    if stride_frames < 1:
        raise ValueError(f"stride_frames must be at least 1, got {stride_frames}")
    decoder = open_video(video)
    num_video_frames = len(decoder)
    fps = decoder.metadata.average_fps or None  # None when the container does not say
    windows = window_frame_indices(num_video_frames, num_frames, frame_stride, stride_frames)
    # The last window that reads each frame (and each pair of neighbouring frames): freed after that window.
    last_use = {}
    for window_index, window in enumerate(windows):
        for frame in window:
            last_use[frame] = window_index
        for pair in zip(window[:-1], window[1:]):
            last_use[pair] = window_index
    pair_cache = model.config.use_temporal_cross_attention and num_frames > 1

    device = next(model.parameters()).device
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    top_k = min(top_k, len(labels))
    # frame index -> [hidden states, queries, keys], each a list over the read layers of `(1 + num_patches, ...)`
    features = {}
    # (frame, next frame) -> per read layer, the temporal cross attention output of the frame looking ahead and of
    # the next frame looking back, each `(1 + num_patches, hidden_size)`
    pairs = {}
    results, probabilities = [], []
    max_cached_frames = 0
    with torch.inference_mode(), tqdm(
        total=len(windows), unit="window", disable=not progress, file=sys.stderr, desc=os.path.basename(str(video))
    ) as bar:
        for first in range(0, len(windows), batch_size):
            batch = windows[first : first + batch_size]
            new_frames = sorted({frame for window in batch for frame in window} - features.keys())
            if new_frames:
                frames, _ = load_video_frames(decoder, lambda metadata: new_frames)  # uint8 (n, 3, H, W)
                pixel_values = video_processor(frames, do_sample_frames=False, return_tensors="pt")["pixel_values"]
                frame_features = model.evl.get_frame_features(pixel_values[0].to(device))
                groups = [frame_features.hidden_states, frame_features.queries, frame_features.keys]
                for row, frame in enumerate(new_frames):
                    features[frame] = [None if group is None else [t[row] for t in group] for group in groups]
            max_cached_frames = max(max_cached_frames, len(features))

            def stack(items, group: int, layer: int):
                """`(len(items), len(item), ...)`: one cached tensor per frame of each item (a window or a pair)."""
                return torch.stack([torch.stack([features[f][group][layer] for f in item]) for item in items])

            num_layers = len(model.evl.decoder.layers)
            hidden_states = [stack(batch, 0, layer) for layer in range(num_layers)]
            if pair_cache:
                new_pairs = sorted({pair for w in batch for pair in zip(w[:-1], w[1:])} - pairs.keys())
                for layer, decoder_layer in enumerate(model.evl.decoder.layers):
                    if not new_pairs:
                        break
                    # each pair as a 2-frame clip, (pairs, 2, 1 + num_patches, heads, head_dim): frame 0 gets what it
                    # collects looking ahead, frame 1 what it collects looking back
                    output = decoder_layer.temporal_cross_attention(stack(new_pairs, 1, layer), stack(new_pairs, 2, layer))
                    for row, pair in enumerate(new_pairs):
                        pairs.setdefault(pair, []).append((output[row, 0], output[row, 1]))
                # Every frame but the first adds what it collects looking back, every frame but the last what it
                # collects looking ahead, as the model's temporal cross attention does: (batch, num_frames, ...).
                cross_attention_outputs = []
                for layer in range(num_layers):
                    window_pairs = [list(zip(w[:-1], w[1:])) for w in batch]
                    ahead = torch.stack([torch.stack([pairs[p][layer][0] for p in wp]) for wp in window_pairs])
                    back = torch.stack([torch.stack([pairs[p][layer][1] for p in wp]) for wp in window_pairs])
                    no_frame = torch.zeros_like(back[:, :1])
                    cross_attention = torch.cat([no_frame, back], 1) + torch.cat([ahead, no_frame], 1)
                    cross_attention_outputs.append(cross_attention.flatten(0, 1))  # (windows * num_frames, ...)
                window_features = EVLFrameFeatures(hidden_states=tuple(h.flatten(0, 1) for h in hidden_states))
                pooled, _ = model.evl.decode_frame_features(window_features, num_frames, cross_attention_outputs)
            else:
                read = lambda group: None if features[batch[0][0]][group] is None else tuple(
                    stack(batch, group, layer).flatten(0, 1) for layer in range(num_layers)
                )
                window_features = EVLFrameFeatures(hidden_states=read(0), queries=read(1), keys=read(2))
                pooled, _ = model.evl.decode_frame_features(window_features, num_frames)
            logits = model.classifier(model.dropout(model.fc_norm(pooled)))
            window_probabilities = logits.float().softmax(-1).cpu()
            scores, indices = window_probabilities.topk(top_k, dim=-1)
            for window, window_scores, window_indices, row in zip(batch, scores, indices, window_probabilities):
                results.append(
                    {
                        "start_frame": window[0],
                        "end_frame": window[-1],
                        "start_time": window[0] / fps if fps else None,
                        "end_time": window[-1] / fps if fps else None,
                        "labels": [labels[i] for i in window_indices.tolist()],
                        "scores": window_scores.tolist(),
                    }
                )
                probabilities.append(row.tolist())

            last_window = first + len(batch) - 1
            for cache in (features, pairs):
                for key in [key for key in cache if last_use[key] <= last_window]:
                    del cache[key]
            bar.update(len(batch))

    return {
        "video": str(video),
        "num_video_frames": num_video_frames,
        "fps": fps,
        "num_frames": num_frames,
        "frame_stride": frame_stride,
        "stride_frames": stride_frames,
        "labels": labels,
        "windows": results,
        "probabilities": probabilities,
        "max_cached_frames": max_cached_frames,
    }


def plot_timeline(result: dict, path, top_classes: int = 5):
    """
    Draws the probability of the `top_classes` most probable classes (by their peak over the video) against time,
    one line per class, and saves the figure to `path` (PNG, SVG, PDF: matplotlib picks by the extension).

    Args:
        result (`dict`): what [`compute_timeline`] returns.
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
    axes.set_ylabel("probability")
    axes.set_ylim(0, 1)
    if times:
        axes.set_xlim(0, max(times[-1], result["num_video_frames"] / (fps or 1)))
    axes.set_title(f"{result['video']}: top {len(chosen)} classes over time", fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=9)
    figure.savefig(path, dpi=120)
    plt.close(figure)


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
    parser.set_defaults(run=run, parser=parser)


def run(args: argparse.Namespace) -> int:
    for option in ("stride_frames", "top_k", "batch_size", "plot_classes"):
        value = getattr(args, option)
        if value is not None and value < 1:
            raise UsageError(f"--{option} must be at least 1, got {value}.")
    if args.plot:
        import importlib.util

        if importlib.util.find_spec("matplotlib") is None:
            raise UsageError("--plot needs matplotlib: pip install 'evl-hf[plot]'")
    if not os.path.isfile(args.video):
        raise UsageError(f"VIDEO {args.video!r} is not a file; pass the path of a video file.")
    model, processor = load_model_and_processor(args.model, args.device, args.dtype, args.compile, args.batch_size)
    try:
        result = compute_timeline(
            model, processor, args.video, stride_frames=args.stride_frames, top_k=args.top_k, batch_size=args.batch_size
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
    return 0
