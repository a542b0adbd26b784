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

The page shows the top-5 labels, the frames the model saw (after the processor's sampling, resizing and cropping), the
same frames with the decoder's attention painted over them and each frame's share of it
([`~evl_hf.inference.attention_overlays`]) and, for a video longer than one clip, the class probabilities over time
([`~evl_hf.inference.classify_windows`]). It works offline: no analytics, no fonts or scripts from other hosts. It can
face the public: uploads are limited in size, the queue in length, and uploads and results are deleted from Gradio's
cache after a while.
"""

import argparse
import ctypes
import gc
import hashlib
import html
import io
import logging
import os
import re
import socket
import sys
from pathlib import Path

from ..utils_io import disk_full_error
from ..video_utils import is_video_file
from . import UsageError
from ._plot import plot_timeline
from .utils import (
    add_model_arguments,
    atomic_write,
    int_between,
    load_model_and_processor,
    non_negative_int,
    positive_int,
)


logger = logging.getLogger(__name__)

IDLE_STATUS = "Upload a video (or pick an example clip) to classify it."
# Safe for a public page on a small machine: a visitor waits behind at most MAX_QUEUE_SIZE others, and what the page
# stores (uploads, the frames and plots it shows) stays about an hour. `evl-hf demo --help` changes each.
MAX_FILE_SIZE = "200MB"
MAX_QUEUE_SIZE = 32
DELETE_CACHE = (600, 3600)  # (frequency, age) in seconds: every 10 minutes, delete what is older than an hour
# Gradio keeps, per browser session, a copy of the page's configuration with the last results in it, for the 10,000
# latest sessions by default. Every answer of the page sets all its outputs, so a forgotten session loses nothing.
STATE_SESSION_CAPACITY = 200
# Small frames (the synthetic-motion model's are 64x64) are drawn with visible pixels rather than blurred, and the
# frame strip is only as tall as its thumbnails.
CSS = """
#frames img, #attention img { image-rendering: pixelated; }
#frames .fixed-height, #attention .fixed-height { min-height: 0; max-height: none; }
#status p { font-size: 1.15rem; margin: 0.25rem 0; }
#status .status-idle { color: var(--body-text-color-subdued); }
#status .status-error { color: var(--error-text-color); font-weight: 600; }
"""


def find_examples(model: str) -> list[str]:
    """Video files in `MODEL/examples/`, sorted by name; none for a Hub id or a folder without them."""
    folder = Path(model) / "examples"
    if not folder.is_dir():
        return []
    return sorted(str(path) for path in folder.iterdir() if path.is_file() and is_video_file(path))


def classify_video(model, video_processor, video: str, top_k: int = 5) -> dict:
    """
    Everything the page shows about one video, which is opened once.

    Args:
        model ([`EVLForVideoClassification`]): the classifier, in eval mode.
        video_processor ([`EVLVideoProcessor`]): its processor.
        video (`str`): path of the video file.
        top_k (`int`, *optional*, defaults to 5): labels kept.

    Returns:
        `dict` with `"scores"` (the `top_k` labels and their scores, best first, as the video-classification
        pipeline computes them: [`~evl_hf.inference.postprocess_logits`]), `"function_to_apply"`, `"frames"` (uint8
        `(num_frames, height, width, 3)`: the clip the model saw), `"frame_indices"` (where those frames are in the
        video), `"attention"` (the frames, shaped alike, with the decoder's attention painted over them),
        `"attention_shares"` (each frame's share of that attention; they sum to 1), `"num_video_frames"`, `"fps"`
        (`None` when the file does not say) and `"timeline"` ([`~evl_hf.inference.classify_windows`]'s result when
        the video holds more than one window, else `None`).

    Raises:
        `FileNotFoundError`, `IsADirectoryError`, `VideoDecodingError`: from the processor, naming the file.
    """
    import torch

    from ..inference import (
        attention_overlays,
        classify_windows,
        default_function_to_apply,
        postprocess_logits,
        top_k_labels,
        unnormalize_frames,
        window_frame_indices,
    )
    from ..video_utils import open_video

    # One decoder for the clip, its frame positions and the timeline: the upload is opened and probed once.
    decoder = open_video(video, num_ffmpeg_threads=torch.get_num_threads())
    num_video_frames, fps = len(decoder), decoder.metadata.average_fps or None
    # pixel_values: (1, num_frames, 3, height, width); the metadata says which frames the processor sampled
    inputs = video_processor(decoder, return_tensors="pt", return_metadata=True)
    pixel_values, frame_indices = inputs["pixel_values"], inputs["video_metadata"][0].frames_indices
    # The decoder's attention weights come out of the same forward pass as the scores.
    with torch.inference_mode():
        outputs = model(pixel_values=pixel_values.to(model.device), output_attentions=True)
    best = top_k_labels(postprocess_logits(outputs.logits, model.config).cpu(), model.config, top_k)[0]
    attention, shares = attention_overlays(
        pixel_values, outputs.decoder_attentions, video_processor, model.config.spatial_size
    )
    # A video of one clip has no timeline to show: its windows are counted, not classified.
    stride = video_processor.frame_stride
    num_windows = len(window_frame_indices(num_video_frames, model.config.num_frames, stride, stride))
    timeline = classify_windows(model, video_processor, decoder) if num_windows > 1 else None
    return {
        "scores": dict(zip(best["labels"], best["scores"])),
        "function_to_apply": default_function_to_apply(model.config),
        "frames": unnormalize_frames(pixel_values[0], video_processor).permute(0, 2, 3, 1).numpy(),
        "attention": attention[0].permute(0, 2, 3, 1).numpy(),
        "attention_shares": shares[0].tolist(),
        "frame_indices": list(frame_indices),
        "num_video_frames": num_video_frames,
        "fps": fps,
        "timeline": None if timeline is None else {**timeline, "video": video},
    }


# Gradio 6.31 saves an image returned as an array or a PIL image to a path named by the hash of its bytes
# (`processing_utils.save_pil_to_cache`: CACHE/<sha256>/image.png) and writes it with `Path.write_bytes` on every
# request, which truncates the file first. When two requests show the same frame (two visitors trying the same example
# clip), the second truncates the file while the first visitor is downloading it: that download is empty or cut short.
# So the page writes its PNG files itself, under a temporary name renamed into place (`atomic_write`): a reader
# keeps the file it opened, the next reader gets the whole new one. Gradio serves a path inside its cache folder as it
# is (`Block.move_resource_to_block_cache`), and deletes it on the `delete_cache` schedule like its own files. This can
# go once Gradio writes its cache atomically (its `save_file_to_cache` already does).
def save_png(data: bytes, folder: str) -> str:
    """
    Writes PNG bytes to `folder/<sha256 of the bytes>.png` atomically and returns the path.

    The same picture gets the same path, so repeated results take no new space; it is written again all the same,
    which restarts its age for `delete_cache`.
    """
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, hashlib.sha256(data).hexdigest() + ".png")
    # a name of its own per writer: two requests may write the same picture at once
    with atomic_write(path, unique=True) as temporary, open(temporary, "wb") as file:
        file.write(data)
    return path


def encode_png(frame) -> bytes:
    """A uint8 `(height, width, 3)` frame as PNG bytes."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="PNG")
    return buffer.getvalue()


def render_timeline(timeline: dict, name: str) -> bytes:
    """The timeline drawn by [`plot_timeline`], titled with the upload's own name, as PNG bytes."""
    buffer = io.BytesIO()
    plot_timeline({**timeline, "video": name}, buffer)
    return buffer.getvalue()


def _find_malloc_trim():
    """glibc's `malloc_trim`, or `None` under another C library (musl, macOS), which has none."""
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


_malloc_trim = _find_malloc_trim()


def release_memory():
    """
    Gives back what the last video left: a full garbage collection, then the C allocator's free pages.

    - A closed Matplotlib figure is a reference cycle that holds its pixel buffer (about 2 MB for the timeline), and
      the collector reaches it only in a full collection, which is rare with the model loaded: dozens piled up. `run`
      freezes what startup loaded (`gc.freeze`), so that a full collection walks only what requests left and takes
      milliseconds instead of 0.4 s.
    - glibc keeps freed memory in its heaps for reuse: under 20 concurrent visitors the server's resident memory grew
      by 40-80 MiB per 100 videos, most of it memory freed but kept in glibc's heaps. `malloc_trim` returns the free
      pages to the system.
    """
    gc.collect()
    if _malloc_trim is not None:
        _malloc_trim(0)


def _status(text: str, kind: str) -> str:
    """The status line: `kind` is "idle", "ok" or "error" (styled by `CSS`, and what tests wait for)."""
    return f'<p class="status-{kind}" data-status="{kind}">{html.escape(text)}</p>'


def build_demo(
    model,
    video_processor,
    *,
    title: str,
    examples: list[str] = (),
    max_file_size: int | None = None,
    delete_cache: tuple[int, int] | None = DELETE_CACHE,
):
    """
    The Gradio page for `model`.

    Args:
        model ([`EVLForVideoClassification`]): the classifier, in eval mode.
        video_processor ([`EVLVideoProcessor`]): its processor.
        title (`str`): the model's name, shown as the page title.
        examples (`list[str]`): paths of example clips offered under the upload box.
        max_file_size (`int`, *optional*): the upload limit in bytes, stated on the page (pass the same to `launch`,
            which enforces it).
        delete_cache (`tuple[int, int]`, *optional*, defaults to `DELETE_CACHE`): Gradio's `(frequency, age)` in
            seconds: every `frequency` seconds the uploads and results older than `age` are deleted; `None` never
            deletes them.

    Returns:
        `gradio.Blocks`: the app, not launched.
    """
    import gradio as gr
    from gradio.utils import get_upload_folder

    config = model.config
    # Inside Gradio's cache folder (GRADIO_TEMP_DIR, by default TMPDIR/gradio), so that it serves and deletes them.
    results_folder = os.path.join(get_upload_folder(), "evl_hf_demo")
    sampling = (
        f"{config.num_frames} frames {video_processor.frame_stride} frames apart"
        if video_processor.frame_sampling == "dense"
        else f"{config.num_frames} frames ({video_processor.frame_sampling} sampling)"
    )
    crop = video_processor.crop_size
    labels = [config.id2label[i] for i in range(config.num_labels)]
    shown_labels = ", ".join(labels[:12]) + (f", ... ({len(labels)} in all)" if len(labels) > 12 else "")

    def predict(video: str | None):
        empty = (None, None, None, gr.update(value=None, visible=False))
        if not video:
            return (_status(IDLE_STATUS, "idle"), *empty)
        name = os.path.basename(video)
        release_memory()
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
        length = f"{result['num_video_frames']} frames" + (
            f", {result['num_video_frames'] / fps:.1f} s" if fps else ""
        )
        shown_score = f"{best_score:.3g}" if result["function_to_apply"] == "none" else f"{best_score:.1%}"
        found = f"{name} ({length}): {best_label} ({shown_score})"
        timeline = result["timeline"]
        try:
            frames = [save_png(encode_png(frame), results_folder) for frame in result["frames"]]
            attention = [save_png(encode_png(frame), results_folder) for frame in result["attention"]]
            timeline_update = (
                gr.update(value=save_png(render_timeline(timeline, name), results_folder), visible=True)
                if timeline is not None
                else gr.update(value=None, visible=False)
            )
        except OSError as error:
            if (full := disk_full_error(error)) is None:
                raise
            # the page goes on serving: the labels need no disk, and the server's log says what to free
            logger.error(
                "Disk full: writing %s failed (%s). Free space there.", full.filename or results_folder, full.strerror
            )
            message = f"{found}. The server's disk is full: the frames cannot be shown."
            return (_status(message, "error"), result["scores"], None, None, gr.update(value=None, visible=False))
        # Only the share: a longer caption is cut short on a thumbnail, and the frame's place is in the gallery above.
        attention_captions = [f"{share:.1%} of attention" for share in result["attention_shares"]]
        return (
            _status(found, "ok"),
            result["scores"],
            list(zip(frames, captions)),
            list(zip(attention, attention_captions)),
            timeline_update,
        )

    limit = f" Videos up to {format_file_size(max_file_size)}." if max_file_size is not None else ""
    with gr.Blocks(title=f"EVL demo: {title}", analytics_enabled=False, delete_cache=delete_cache) as demo:
        gr.Markdown(
            f"# {html.escape(title)}\n"
            f"EVL video classifier: {config.num_labels} labels ({html.escape(shown_labels)}). "
            f"Each clip is {sampling}, resized and cropped to {crop['height']}x{crop['width']}.{limit}"
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

        def frame_gallery(label: str, elem_id: str):
            # One row of 8 to 16 thumbnails: small enough to see the clip at a glance, large enough to see a frame.
            return gr.Gallery(
                label=label,
                columns=min(max(config.num_frames, 8), 16),
                height="auto",
                object_fit="contain",
                allow_preview=False,
                elem_id=elem_id,
            )

        frames = frame_gallery("Frames the model saw (sampled, resized and cropped)", "frames")
        attention = frame_gallery(
            "Where the model looked: the decoder's attention in red, each frame's share of it in its caption",
            "attention",
        )
        timeline = gr.Image(label="Class probabilities over time", visible=False, elem_id="timeline")
        video.change(predict, inputs=video, outputs=[status, scores, frames, attention, timeline])
    return demo


_FILE_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]?B)?", re.IGNORECASE)
_FILE_SIZE_UNITS = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}  # as Gradio counts them


def parse_file_size(text: str) -> int:
    """`"200MB"`, `"1.5 GB"`, `"4096"` (bytes) as a number of bytes; units are powers of 1024, as in Gradio."""
    match = _FILE_SIZE.fullmatch(text.strip())
    if match is None or float(match[1]) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a file size; write it like 200MB, 1.5GB or 500KB.")
    return int(float(match[1]) * _FILE_SIZE_UNITS[(match[2] or "B").upper()])


def format_file_size(size: int) -> str:
    for unit in ("TB", "GB", "MB", "KB"):
        if size >= _FILE_SIZE_UNITS[unit]:
            return f"{size / _FILE_SIZE_UNITS[unit]:g} {unit}"
    return f"{size} bytes"


def register(subparsers):
    parser = subparsers.add_parser(
        "demo",
        help="Serve a web page to try a model on uploaded videos (needs the `demo` extra).",
        description=(
            "Serve a local web page (Gradio) to try a model: upload a video, see the top-5 labels, the frames the "
            "model saw, where its decoder looked in them and, for a video longer than one clip, the class "
            "probabilities over time. Video files in "
            "MODEL/examples/ are offered as examples. Nothing is fetched from other hosts."
        ),
    )
    add_model_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1", help="Address to serve on (default: 127.0.0.1, this machine).")
    parser.add_argument("--port", type=int_between(1, 65535), default=7860, help="Port to serve on (default: 7860).")
    parser.add_argument(
        "--max_file_size",
        type=parse_file_size,
        default=MAX_FILE_SIZE,
        metavar="SIZE",
        help=f"Largest upload accepted, like 200MB or 1GB; a larger one is refused with a message (default: "
        f"{MAX_FILE_SIZE}).",
    )
    parser.add_argument(
        "--max_queue_size",
        type=positive_int,
        default=MAX_QUEUE_SIZE,
        metavar="N",
        help="Videos waiting to be classified at most (one is classified at a time); a visitor arriving when the "
        f"queue is full is told the page is busy and to try again (default: {MAX_QUEUE_SIZE}).",
    )
    parser.add_argument(
        "--delete_cache",
        type=non_negative_int,
        nargs=2,
        default=DELETE_CACHE,
        metavar=("FREQUENCY", "AGE"),
        help="Every FREQUENCY seconds, delete the uploads and results stored longer than AGE seconds, and all of them "
        f"when the server stops; 0 0 never deletes them (default: {DELETE_CACHE[0]} {DELETE_CACHE[1]}).",
    )
    parser.set_defaults(run=run, parser=parser)


def run(args: argparse.Namespace) -> int:
    frequency, age = args.delete_cache
    if (frequency == 0) != (age == 0):
        raise UsageError(
            f"--delete_cache takes two positive numbers of seconds (or 0 0 to keep everything), got {frequency} {age}."
        )
    # Checked before the model loads, which takes a while; Gradio's own message speaks of its Python API. The server
    # (uvicorn) binds with SO_REUSEADDR, so the probe does too: a port left in TIME_WAIT is free for both.
    try:
        family = socket.getaddrinfo(args.host, args.port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((args.host, args.port))
    except OSError as error:
        raise UsageError(
            f"cannot serve on {args.host}:{args.port} ({error}); pick another --port or --host."
        ) from None
    # Gradio reads this when it starts: no usage statistics and no version check go out.
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise UsageError("the demo needs Gradio: pip install -e '.[demo]' in evl_hf's folder.") from None

    model, processor = load_model_and_processor(args.model, args.device, args.dtype, args.compile)
    examples = find_examples(args.model)
    demo = build_demo(
        model,
        processor,
        title=Path(args.model.rstrip("/")).name,
        examples=examples,
        max_file_size=args.max_file_size,
        delete_cache=(frequency, age) if frequency else None,
    )
    gc.freeze()  # see `release_memory`
    # One video at a time: the model is shared and a CPU has no room for two. Gradio turns a visitor away with "This
    # application is currently busy. Please try again." when `max_size` videos already wait.
    demo.queue(default_concurrency_limit=1, max_size=args.max_queue_size)
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
            max_file_size=args.max_file_size,
            state_session_capacity=STATE_SESSION_CAPACITY,
            prevent_thread_lock=True,
        )
    except OSError as error:
        print(f"evl-hf demo: cannot serve on {args.host}:{args.port}: {error}", file=sys.stderr)
        return 1
    print(f"evl-hf demo: serving {args.model} at {demo.local_url} (Ctrl+C stops it)", flush=True)
    demo.block_thread()
    return 0
