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
`evl-hf demo`: a local web page (Gradio) to try a model on uploaded videos.

The page shows the top-5 labels, the frames the model saw (after the processor's sampling, resizing and cropping) and,
for a video longer than one clip, the class probabilities over time from [`compute_timeline`]. It works offline: no
analytics, no fonts or scripts from other hosts.
"""

import argparse
import html
import logging
import os
import socket
import sys
from pathlib import Path

from . import UsageError
from .utils import add_model_arguments, load_model_and_processor


logger = logging.getLogger(__name__)

# Files in MODEL/examples with these suffixes are offered as example clips.
VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".avi", ".mov")
IDLE_STATUS = "Upload a video (or pick an example clip) to classify it."
# Small frames (the synthetic-motion model's are 64x64) are drawn with visible pixels rather than blurred, and the
# frame strip is only as tall as its thumbnails.
CSS = """
#frames img { image-rendering: pixelated; }
#frames .fixed-height { min-height: 0; max-height: none; }
#status p { font-size: 1.15rem; margin: 0.25rem 0; }
#status .status-idle { color: var(--body-text-color-subdued); }
#status .status-error { color: var(--error-text-color); font-weight: 600; }
"""


def find_examples(model: str) -> list[str]:
    """Video files in `MODEL/examples/`, sorted by name; none for a Hub id or a folder without them."""
    folder = Path(model) / "examples"
    if not folder.is_dir():
        return []
    return sorted(str(path) for path in folder.iterdir() if path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES)


def unnormalize_frames(pixel_values, video_processor):
    """
    Undoes the processor's rescaling and normalisation, to show a clip as the model received it.

    Args:
        pixel_values (`torch.Tensor` of shape `(num_frames, 3, height, width)`): one processed clip.
        video_processor ([`EVLVideoProcessor`]): the processor that made it.

    Returns:
        `numpy.ndarray`: uint8 frames of shape `(num_frames, height, width, 3)`.
    """
    import torch

    frames = pixel_values.float().cpu()
    if video_processor.do_normalize:
        mean = torch.tensor(video_processor.image_mean).view(1, 3, 1, 1)
        std = torch.tensor(video_processor.image_std).view(1, 3, 1, 1)
        frames = frames * std + mean
    if video_processor.do_rescale:
        frames = frames / video_processor.rescale_factor
    return frames.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def classify_video(model, video_processor, video: str, top_k: int = 5) -> dict:
    """
    Everything the page shows about one video.

    Args:
        model ([`EVLForVideoClassification`]): the classifier, in eval mode.
        video_processor ([`EVLVideoProcessor`]): its processor.
        video (`str`): path of the video file.
        top_k (`int`, *optional*, defaults to 5): labels kept.

    Returns:
        `dict` with `"scores"` (the `top_k` labels and their probabilities, best first, as the video-classification
        pipeline computes them), `"frames"` (uint8 `(num_frames, height, width, 3)`: the clip the model saw),
        `"frame_indices"` (where those frames are in the video), `"num_video_frames"`, `"fps"` (`None` when the file
        does not say) and `"timeline"` ([`compute_timeline`]'s result when the video holds more than one window,
        else `None`).

    Raises:
        `FileNotFoundError`, `IsADirectoryError`, `VideoDecodingError`: from the processor, naming the file.
    """
    import torch
    from transformers.video_utils import VideoMetadata

    from ..video_processing_evl import open_video
    from .timeline import compute_timeline

    inputs = video_processor(video, return_tensors="pt")  # pixel_values: (1, num_frames, 3, height, width)
    with torch.inference_mode():
        logits = model(pixel_values=inputs["pixel_values"].to(model.device)).logits
    probabilities = logits.float().softmax(-1)[0].cpu()
    scores, indices = probabilities.topk(min(top_k, probabilities.numel()))

    # The processor decoded only its sampled frames and does not return their positions: ask its sampler again, with
    # the frame count it saw.
    decoder = open_video(video)
    num_video_frames = len(decoder)
    frame_indices = video_processor.sample_frames(VideoMetadata(total_num_frames=num_video_frames))
    span = (model.config.num_frames - 1) * video_processor.frame_stride + 1
    timeline = None
    if num_video_frames > span:
        timeline = compute_timeline(model, video_processor, video, progress=False)
        if len(timeline["windows"]) < 2:
            timeline = None
    return {
        "scores": {model.config.id2label[i]: score for i, score in zip(indices.tolist(), scores.tolist())},
        "frames": unnormalize_frames(inputs["pixel_values"][0], video_processor),
        "frame_indices": frame_indices,
        "num_video_frames": num_video_frames,
        "fps": decoder.metadata.average_fps or None,
        "timeline": timeline,
    }


def render_timeline(timeline: dict, name: str):
    """The timeline drawn by [`plot_timeline`], titled with the upload's own name, as a PIL image."""
    import tempfile

    from PIL import Image

    from .timeline import plot_timeline

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "timeline.png")
        plot_timeline({**timeline, "video": name}, path)
        return Image.open(path).convert("RGB")


def _status(text: str, kind: str) -> str:
    """The status line: `kind` is "idle", "ok" or "error" (styled by `CSS`, and what tests wait for)."""
    return f'<p class="status-{kind}" data-status="{kind}">{html.escape(text)}</p>'


def build_demo(model, video_processor, *, title: str, examples: list[str] = ()):
    """
    The Gradio page for `model`.

    Args:
        model ([`EVLForVideoClassification`]): the classifier, in eval mode.
        video_processor ([`EVLVideoProcessor`]): its processor.
        title (`str`): the model's name, shown as the page title.
        examples (`list[str]`): paths of example clips offered under the upload box.

    Returns:
        `gradio.Blocks`: the app, not launched.
    """
    import gradio as gr

    config = model.config
    sampling = (
        f"{config.num_frames} frames {video_processor.frame_stride} frames apart"
        if video_processor.frame_sampling == "dense"
        else f"{config.num_frames} frames ({video_processor.frame_sampling} sampling)"
    )
    crop = video_processor.crop_size
    labels = [config.id2label[i] for i in range(config.num_labels)]
    shown_labels = ", ".join(labels[:12]) + (f", ... ({len(labels)} in all)" if len(labels) > 12 else "")

    def predict(video: str | None):
        empty = (None, None, gr.update(value=None, visible=False))
        if not video:
            return (_status(IDLE_STATUS, "idle"), *empty)
        name = os.path.basename(video)
        try:
            result = classify_video(model, video_processor, video)
        except (OSError, ValueError) as error:
            # Uploads live under a temporary folder: the user knows the file by its own name.
            message = str(error).replace(video, name)
            if name not in message:
                message = f"Cannot read video {name!r}: {message}"
            return (_status(f"{message}. Upload a video file (mp4, webm, mkv, ...).", "error"), *empty)
        except Exception as error:  # the page must keep serving whatever one video does to the model
            logger.exception("Classifying %s failed", video)
            return (_status(f"Classifying {name!r} failed: {type(error).__name__}: {error}", "error"), *empty)

        fps = result["fps"]
        captions = [f"frame {i}" + (f" · {i / fps:.2f} s" if fps else "") for i in result["frame_indices"]]
        best_label, best_score = next(iter(result["scores"].items()))
        length = f"{result['num_video_frames']} frames" + (f", {result['num_video_frames'] / fps:.1f} s" if fps else "")
        status = _status(f"{name} ({length}): {best_label} ({best_score:.1%})", "ok")
        timeline = result["timeline"]
        timeline_update = (
            gr.update(value=render_timeline(timeline, name), visible=True)
            if timeline is not None
            else gr.update(value=None, visible=False)
        )
        return status, result["scores"], list(zip(result["frames"], captions)), timeline_update

    with gr.Blocks(title=f"EVL demo: {title}", analytics_enabled=False) as demo:
        gr.Markdown(
            f"# {html.escape(title)}\n"
            f"EVL video classifier: {config.num_labels} labels ({html.escape(shown_labels)}). "
            f"Each clip is {sampling}, resized and cropped to {crop['height']}x{crop['width']}."
        )
        with gr.Row():
            with gr.Column(scale=1):
                video = gr.Video(label="Video", sources=["upload"], elem_id="video", height=320)
                if examples:
                    gr.Examples(
                        [[path] for path in examples],
                        inputs=[video],
                        label="Example clips",
                        example_labels=[os.path.basename(path) for path in examples],
                        elem_id="examples",
                    )
            with gr.Column(scale=1):
                status = gr.HTML(_status(IDLE_STATUS, "idle"), elem_id="status")
                scores = gr.Label(label="Top-5 labels", num_top_classes=5, elem_id="scores")
        frames = gr.Gallery(
            label="Frames the model saw (sampled, resized and cropped)",
            # One row of 8 to 16 thumbnails: small enough to see the clip at a glance, large enough to see a frame.
            columns=min(max(config.num_frames, 8), 16),
            height="auto",
            object_fit="contain",
            format="png",
            allow_preview=False,
            elem_id="frames",
        )
        timeline = gr.Image(label="Class probabilities over time", visible=False, elem_id="timeline")
        video.change(predict, inputs=video, outputs=[status, scores, frames, timeline])
    return demo


def register(subparsers):
    parser = subparsers.add_parser(
        "demo",
        help="Serve a web page to try a model on uploaded videos (needs the `demo` extra).",
        description=(
            "Serve a local web page (Gradio) to try a model: upload a video, see the top-5 labels, the frames the "
            "model saw and, for a video longer than one clip, the class probabilities over time. Video files in "
            "MODEL/examples/ are offered as examples. Nothing is fetched from other hosts."
        ),
    )
    add_model_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1", help="Address to serve on (default: 127.0.0.1, this machine).")
    parser.add_argument("--port", type=int, default=7860, help="Port to serve on (default: 7860).")
    parser.set_defaults(run=run, parser=parser)


def run(args: argparse.Namespace) -> int:
    if not 0 < args.port < 65536:
        raise UsageError(f"--port must be between 1 and 65535, got {args.port}.")
    # Checked before the model loads, which takes a while; Gradio's own message speaks of its Python API. The server
    # (uvicorn) binds with SO_REUSEADDR, so the probe does too: a port left in TIME_WAIT is free for both.
    try:
        family = socket.getaddrinfo(args.host, args.port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((args.host, args.port))
    except OSError as error:
        raise UsageError(f"cannot serve on {args.host}:{args.port} ({error}); pick another --port or --host.") from None
    # Gradio reads this when it starts: no usage statistics and no version check go out.
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise UsageError("the demo needs Gradio: pip install -e '.[demo]' in evl_hf's folder.") from None

    model, processor = load_model_and_processor(args.model, args.device, args.dtype, args.compile)
    examples = find_examples(args.model)
    demo = build_demo(model, processor, title=Path(args.model.rstrip("/")).name, examples=examples)
    # One video at a time: the model is shared and a CPU has no room for two.
    demo.queue(default_concurrency_limit=1)
    try:
        demo.launch(
            server_name=args.host,
            server_port=args.port,
            share=False,
            inbrowser=False,
            show_error=False,
            footer_links=[],
            css=CSS,
            ssr_mode=False,
            pwa=False,
            mcp_server=False,
            run_history=False,
            quiet=True,  # Gradio's own lines speak of its Python API (share=True)
            prevent_thread_lock=True,
        )
    except OSError as error:
        print(f"evl-hf demo: cannot serve on {args.host}:{args.port}: {error}", file=sys.stderr)
        return 1
    print(f"evl-hf demo: serving {args.model} at {demo.local_url} (Ctrl+C stops it)", flush=True)
    demo.block_thread()
    return 0
