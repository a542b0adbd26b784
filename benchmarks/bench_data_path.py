"""Decoding and preprocessing speed of a clip, from the file path to `pixel_values`, per core: the reference
implementation's PyAV path, torchcodec on the original videos, and torchcodec on videos prepared by
`evl-hf prepare-videos`; for the training path, and (original videos) for the evaluation path.

A clip is 8 frames 16 apart (`sample_frame_indices`, dense sampling), resized (shortest edge 224, bilinear),
centre-cropped to 224 and normalised with the CLIP mean and std by `EVLVideoProcessor`.

Videos: Kinetics-400-like, generated once into a cache folder: 10 s, 30 fps, 340x256 and 640x360 (`--sizes`), a
textured background panning under moving shapes with some grain (the encoder does real work), H.264 by libx264 with
its defaults, as a plain `ffmpeg -i in out.mp4` writes them: crf 23 and a keyframe every 250 frames, so the frames
93..205 that a centred clip samples need frames 0..205 decoded. Each run prepares them again with
`evl-hf prepare-videos`' own function (`--short-side 320 --keyframe-interval 16 --crf 23` by default; one thread) and
reports the disk cost and the time it took.

Training path: one clip per video, centred in the video.
- `pyav_whole_video`: what the reference implementation's training loader does: PyAV decodes every frame of the
  video, then the sampled ones are converted to RGB (original videos);
- `torchcodec_sampled`: `read_video_frames` decodes only the sampled frames with torchcodec (original videos);
- `torchcodec_prepared`: the same on the prepared videos.
Clips/s per core is turned into the number of cores that keep one GPU busy, at `--gflop-per-clip` model FLOPs per
training clip on a GPU sustaining `--gpu-tflops`. The prepared clips are checked against the original frames resized
to the same size (mean absolute difference over every sampled frame).

Evaluation path (first size, original videos): 1 view (the centred clip) or the paper's 3 temporal views of an
8-frame model (3 clips spread evenly over the video, one centre crop each), as `(views, T, 3, 224, 224)`.
- `pyav_reference_eval`: what the reference implementation's evaluation loader does: PyAV decodes every frame,
  every frame is converted to RGB, normalised as float and resized, and only then are the temporal clips and the
  centre crop cut out;
- `torchcodec_sampled`: the frames of all views are decoded in one `read_video_frames` call, then
  `EVLVideoProcessor` resizes, crops and normalises the views as a batch;
- `processor_from_path`: `EVLVideoProcessor` given the path once per view (`num_clips`, `clip_index`).
The two first methods are also checked to give the same views (mean absolute difference of their `pixel_values`).

One thread everywhere (torch, FFmpeg decoding), one process; the methods take turns over `--repeats` rounds and
medians are reported, with the load average before and after the rounds (the machine may be shared).

    python benchmarks/bench_data_path.py
    python benchmarks/bench_data_path.py --repeats 7 --output docs/benchmark_results
    python benchmarks/bench_data_path.py --tiny        # seconds; what the tests run
"""

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmark_utils import (
    default_video_dir, emit, log, machine_info, markdown_table, median, ratio, target, targets_table
)  # fmt: skip


# Training methods on the original videos; `torchcodec_prepared_g<interval>` are added per `--keyframe-intervals`.
ORIGINAL_METHODS = ("pyav_whole_video", "torchcodec_sampled")
EVALUATION_METHODS = ("pyav_reference_eval", "torchcodec_sampled", "processor_from_path")
# FLOPs of one training clip of EVL ViT-B/16 with 8 frames, forward and backward, as `bench_cpu_models.py` counts
# them (`train_flops` / batch in docs/benchmark_results/cpu_models.json): 297 GFLOP of forward, nearly all of it in the
# frozen backbone, and 35 GFLOP of backward, all of it in the decoder (no gradient flows into the frozen backbone).
TRAIN_GFLOP_PER_CLIP = 332.1
# Half the dense bf16 peak of an H100 SXM (989 TFLOP/s): what a well-fed training step sustains, roughly.
GPU_TFLOPS = 494.7
# 1 view, and the 3 temporal views with which the paper tests its 8-frame models.
EVALUATION_VIEWS = (1, 3)
# BT.601 luma of RGB: the frames' brightness, apart from their colour planes (which yuv420p keeps at half resolution
# and which are resized before, not after, they are upsampled to RGB in a prepared copy).
LUMA_WEIGHTS = torch.tensor([0.299, 0.587, 0.114])[:, None, None]


def render_video(seed: int, num_frames: int, height: int, width: int) -> torch.Tensor:
    """uint8 `(num_frames, 3, height, width)`: a textured background panning under three moving rectangles.

    Texture and motion give the encoder real work (P/B frames with residuals), unlike a flat synthetic frame.
    """
    rng = np.random.default_rng(seed)
    # A background twice as wide as the frame, so it can pan; smooth blobs plus fine grain.
    background = rng.integers(0, 256, size=(height // 8 + 1, width // 4 + 1, 3)).astype(np.float32)
    background = np.kron(background, np.ones((8, 8, 1), dtype=np.float32))[:height, : 2 * width]
    background += rng.normal(0, 12, size=background.shape)
    ys, xs = np.mgrid[0:height, 0:width]
    boxes = [
        (
            rng.uniform(0, height),
            rng.uniform(0, width),
            rng.uniform(-3, 3),
            rng.uniform(-3, 3),
            rng.integers(0, 256, 3),
        )
        for _ in range(3)
    ]
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    for t in range(num_frames):
        offset = int(t * width / max(num_frames - 1, 1))
        frame = background[:, offset : offset + width].copy()
        for y, x, vy, vx, colour in boxes:
            cy, cx = (y + vy * t) % height, (x + vx * t) % width
            frame[(abs(ys - cy) < height / 8) & (abs(xs - cx) < width / 8)] = colour
        frames[t] = np.clip(frame + rng.normal(0, 3, size=frame.shape), 0, 255)
    return torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous()


def generate_videos(folder: Path, count: int, seconds: float, fps: int, height: int, width: int) -> list[Path]:
    """Writes the benchmark videos once, with libx264's default settings; a finished file is reused by later runs."""
    from torchcodec.encoders import VideoEncoder

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = folder / f"clip{index}_{width}x{height}_{fps}fps_{seconds:g}s.mp4"
        if not path.exists():
            log(f"generating {path}")
            frames = render_video(index, int(seconds * fps), height, width)
            partial = path.with_suffix(".partial.mp4")
            VideoEncoder(frames, frame_rate=fps).to_file(str(partial), codec="libx264", pixel_format="yuv420p")
            partial.rename(path)
        paths.append(path)
    return paths


def prepare_videos(paths: list[Path], folder: Path, settings: dict) -> dict:
    """
    Prepares `paths` into `folder` with `evl-hf prepare-videos`' own function (one video at a time, one thread),
    from scratch, timing it.

    Returns:
        `dict`: `paths` (the prepared files), `seconds_per_video`, `bytes_before` and `bytes_after`.
    """
    import shutil

    from evl_hf.commands.prepare_videos import find_ffmpeg, prepare_one

    ffmpeg = find_ffmpeg()
    shutil.rmtree(folder, ignore_errors=True)
    start = time.perf_counter()
    results = [prepare_one(ffmpeg, path, folder / path.name, settings) for path in paths]
    elapsed = time.perf_counter() - start
    failed = [r for r in results if r["status"] != "prepared"]
    assert not failed, failed
    return {
        "paths": [Path(r["output"]) for r in results],
        "seconds_per_video": elapsed / len(paths),
        "bytes_before": sum(r["input_bytes"] for r in results),
        "bytes_after": sum(r["output_bytes"] for r in results),
    }


def frame_size(path: Path) -> tuple[int, int]:
    """`(width, height)` of the video's frames."""
    from torchcodec.decoders import VideoDecoder

    metadata = VideoDecoder(str(path)).metadata
    return metadata.width, metadata.height


def keyframe_positions(path: Path) -> list[int]:
    """Indices, in presentation order, of the video's keyframes (read from packet flags, nothing decoded)."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        packets = sorted((p for p in container.demux(stream) if p.size), key=lambda p: p.pts)
    return [index for index, packet in enumerate(packets) if packet.is_keyframe]


def training_clip(video_index: int, clip: int, num_frames: int, frame_stride: int):
    """The frame sampler of the `clip`-th training clip of the `video_index`-th video: a random start, as in training,
    drawn from a generator seeded by both, so that every method decodes the same clips."""
    from evl_hf.video_processing_evl import sample_frame_indices

    generator = torch.Generator().manual_seed(1000 * video_index + clip)
    return lambda total: sample_frame_indices(total, num_frames, frame_stride=frame_stride, random=generator)


def pyav_whole_video(path: Path, indices_fn) -> torch.Tensor:
    """Every frame decoded and kept, ordered by timestamp, then the sampled ones converted: uint8 `(T, 3, H, W)`."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_count = 1
        decoded = sorted(container.decode(stream), key=lambda frame: frame.pts)
    frames = np.stack([decoded[i].to_ndarray(format="rgb24") for i in indices_fn(len(decoded))])  # (T, H, W, 3)
    return torch.from_numpy(frames).permute(0, 3, 1, 2)


def torchcodec_sampled(path: Path, indices_fn) -> torch.Tensor:
    from evl_hf.video_processing_evl import read_video_frames

    return read_video_frames(path, indices_fn)


def evaluation_clip_indices(
    num_video_frames: int, num_frames: int, frame_stride: int, num_views: int
) -> list[list[int]]:
    """Frame indices of each of the `num_views` evenly spaced test clips (the centred clip for one view)."""
    from evl_hf.video_processing_evl import sample_frame_indices

    return [
        sample_frame_indices(
            num_video_frames,
            num_frames,
            strategy="dense",
            frame_stride=frame_stride,
            num_clips=num_views,
            clip_index=view,
        )
        for view in range(num_views)
    ]


def pyav_reference_eval(path: Path, num_frames: int, frame_stride: int, num_views: int, processor) -> torch.Tensor:
    """
    The reference implementation's order of work at evaluation: the whole video is decoded, converted to RGB,
    normalised in float32 and resized before any clip is cut out of it.

    Returns:
        `torch.Tensor`: `(num_views, T, 3, crop, crop)` float32.
    """
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_count = 1
        decoded = sorted(container.decode(stream), key=lambda frame: frame.pts)
    video = torch.from_numpy(np.stack([frame.to_ndarray(format="rgb24") for frame in decoded]))  # (N, H, W, 3)
    mean, std = torch.tensor(processor.image_mean), torch.tensor(processor.image_std)
    video = (video.float() / 255 - mean) / std
    # (N, H, W, 3) -> (3, N, H, W): `interpolate` resizes the last two dimensions of a batch of channels, here the
    # colour planes as the batch and the N frames as channels.
    video = video.permute(3, 0, 1, 2)
    height, width = video.shape[-2:]
    short_side = processor.size["shortest_edge"]
    if height <= width:
        size = (short_side, width * short_side // height)
    else:
        size = (height * short_side // width, short_side)
    video = F.interpolate(video, size=size, mode="bilinear", align_corners=False)
    crop_height, crop_width = processor.crop_size["height"], processor.crop_size["width"]
    top, left = (size[0] - crop_height) // 2, (size[1] - crop_width) // 2
    video = video[:, :, top : top + crop_height, left : left + crop_width]
    # The views are the same windows as `sample_frame_indices` gives for `num_clips` test clips.
    clips = evaluation_clip_indices(len(decoded), num_frames, frame_stride, num_views)
    views = [video[:, indices] for indices in clips]  # each (3, T, h, w)
    return torch.stack(views).transpose(1, 2)  # (views, 3, T, h, w) -> (views, T, 3, h, w)


def evaluation_pixel_values(
    method: str, path: Path, processor, num_frames: int, frame_stride: int, num_views: int
) -> torch.Tensor:
    """`pixel_values` of shape `(num_views, T, 3, 224, 224)` for one video, by one of `EVALUATION_METHODS`."""
    from evl_hf.video_processing_evl import read_video_frames

    if method == "pyav_reference_eval":
        return pyav_reference_eval(path, num_frames, frame_stride, num_views, processor)
    if method == "torchcodec_sampled":

        def all_views(num_video_frames: int) -> list[int]:
            clips = evaluation_clip_indices(num_video_frames, num_frames, frame_stride, num_views)
            return [index for clip in clips for index in clip]

        frames = read_video_frames(path, all_views)  # (views * T, 3, H, W)
        return processor(videos=list(frames.split(num_frames)), return_tensors="pt")["pixel_values"]
    views = [
        processor(
            videos=str(path),
            num_frames=num_frames,
            frame_stride=frame_stride,
            num_clips=num_views,
            clip_index=view,
            return_tensors="pt",
        )["pixel_values"]
        for view in range(num_views)
    ]
    return torch.cat(views)


def time_training_method(method: str, paths: list[Path], processor, args) -> float:
    """Seconds to turn `--clips-per-video` training clips of every video of `paths` into `pixel_values` of shape
    `(1, T, 3, 224, 224)`."""
    decode = pyav_whole_video if method == "pyav_whole_video" else torchcodec_sampled
    start = time.perf_counter()
    for video_index, path in enumerate(paths):
        for clip in range(args.clips_per_video):
            frames = decode(path, training_clip(video_index, clip, args.num_frames, args.frame_stride))
            pixel_values = processor(videos=[frames], return_tensors="pt")["pixel_values"]
            assert pixel_values.shape[:2] == (1, args.num_frames), pixel_values.shape
    return time.perf_counter() - start


def time_evaluation_method(
    method: str, paths: list[Path], processor, num_frames: int, frame_stride: int, num_views: int
) -> float:
    """Seconds to turn every video of `paths` into its `num_views` test views, `(num_views, T, 3, 224, 224)`."""
    start = time.perf_counter()
    for path in paths:
        pixel_values = evaluation_pixel_values(method, path, processor, num_frames, frame_stride, num_views)
        assert pixel_values.shape[:2] == (num_views, num_frames), pixel_values.shape
    return time.perf_counter() - start


def evaluation_speeds(seconds: list[float], num_videos: int, num_views: int = 1) -> dict:
    """Medians over the rounds, per video and per clip (a video gives `num_views` clips at evaluation)."""
    per_round = median(seconds)
    return {
        "clips_per_s": num_videos * num_views / per_round,
        "videos_per_s": num_videos / per_round,
        "seconds_per_video": per_round / num_videos,
        "clips_per_s_runs": [num_videos * num_views / s for s in seconds],
    }


def time_case(case: tuple[str, int, str], videos: dict, processor, args) -> float:
    """Seconds for one `(path, views, method)` case over `videos` (`{"original": paths, "g16": prepared paths, ...}`);
    `path` is "training" or "evaluation"."""
    data_path, num_views, method = case
    if data_path == "training":
        copy = "original" if method in ORIGINAL_METHODS else method.rsplit("_", 1)[-1]
        return time_training_method(method, videos[copy], processor, args)
    return time_evaluation_method(method, videos["original"], processor, args.num_frames, args.frame_stride, num_views)


def prepared_agreement(originals: list[Path], prepared: list[Path], processor, args) -> dict:
    """
    How far the sampled frames of the prepared videos are from the same frames decoded from the originals and
    resized to the prepared size (bilinear, antialiased, as the video processor resizes), in [0, 1] units, over the
    training clip of every video, in RGB and in luma only; and the same at the model's input, before normalisation
    (resized to 224, centre crop). For scale, the difference between a clip's successive frames (`frame_stride`
    apart) is reported too.
    """
    frame_diffs, luma_diffs, input_diffs, between = [], [], [], []
    for video_index, paths in enumerate(zip(originals, prepared)):
        clips = [torchcodec_sampled(path, training_clip(video_index, 0, args.num_frames, args.frame_stride))
                 for path in paths]  # uint8 (T, 3, H, W), the same frames of both copies  # fmt: skip
        original, ours = (clip.float() / 255 for clip in clips)
        resized = F.interpolate(original, size=ours.shape[-2:], mode="bilinear", antialias=True, align_corners=False)
        difference = ours - resized
        frame_diffs.append(difference.abs().mean().item())
        luma_diffs.append((difference * LUMA_WEIGHTS).sum(1).abs().mean().item())
        between.append((resized[1:] - resized[:-1]).abs().mean().item())
        inputs = [processor(videos=[clip], do_normalize=False, return_tensors="pt")["pixel_values"] for clip in clips]
        input_diffs.append((inputs[0] - inputs[1]).abs().mean().item())
    return {
        "mean_abs_diff_frames": statistics.mean(frame_diffs),
        "mean_abs_diff_frames_luma": statistics.mean(luma_diffs),
        "mean_abs_diff_model_input": statistics.mean(input_diffs),
        "mean_abs_diff_between_clip_frames": statistics.mean(between),
    }


def evaluation_agreement(path: Path, processor, args, num_views: int) -> dict:
    """How far our evaluation views are from the reference order of work's, in normalised pixel units.

    They differ by resampling only (the reference resizes float frames without antialiasing; the processor resizes
    uint8 frames with it). For scale, the difference between a clip's successive frames (`frame_stride` apart) is
    reported too: views cut from the wrong frames would differ by about that much.
    """
    ours = evaluation_pixel_values(
        "torchcodec_sampled", path, processor, args.num_frames, args.frame_stride, num_views
    )
    reference = pyav_reference_eval(path, args.num_frames, args.frame_stride, num_views, processor)
    return {
        "mean_abs_diff": (ours - reference).abs().mean().item(),
        "mean_abs_diff_between_clip_frames": (reference[:, 1:] - reference[:, :-1]).abs().mean().item(),
    }


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="alternating rounds over the methods")
    parser.add_argument("--num-videos", type=int, default=4, help="videos per size")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--sizes", default="340x256,640x360", help="comma-separated WIDTHxHEIGHT of the videos")
    parser.add_argument("--num-frames", type=int, default=8)
    parser.add_argument("--frame-stride", type=int, default=16)
    parser.add_argument("--short-side", type=int, default=320, help="prepare-videos --short_side")
    parser.add_argument(
        "--keyframe-intervals", default="4,8", help="comma-separated prepare-videos --keyframe_interval values"
    )
    parser.add_argument("--clips-per-video", type=int, default=3, help="random training clips timed per video")
    parser.add_argument("--crf", type=int, default=18, help="prepare-videos --crf")
    parser.add_argument(
        "--gflop-per-clip",
        type=float,
        default=TRAIN_GFLOP_PER_CLIP,
        help="model FLOPs of one training clip, forward and backward (default: EVL ViT-B/16, 8 frames)",
    )
    parser.add_argument(
        "--gpu-tflops",
        type=float,
        default=GPU_TFLOPS,
        help="sustained GPU throughput assumed for the cores-per-GPU estimate (default: half an H100's bf16 peak)",
    )
    parser.add_argument(
        "--video-dir", type=Path, default=None, help="default $EVL_HF_CACHE/benchmark_videos (~/.cache/evl_hf/...)"
    )
    parser.add_argument("--tiny", action="store_true", help="2 short small videos per size, 2 rounds: seconds")
    parser.add_argument("--output", help="folder to write data_path.json and data_path.md into")
    args = parser.parse_args(argv)
    if args.tiny:
        args.num_videos, args.seconds, args.sizes, args.short_side, args.repeats = 2, 4.0, "128x96,192x108", 64, 2
    args.sizes = [tuple(int(side) for side in size.split("x")) for size in args.sizes.split(",")]
    args.keyframe_intervals = [int(interval) for interval in args.keyframe_intervals.split(",")]
    args.video_dir = args.video_dir or default_video_dir()
    return args


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(1)
    from evl_hf.video_processing_evl import EVLVideoProcessor

    processor = EVLVideoProcessor()
    copies = [f"g{interval}" for interval in args.keyframe_intervals]
    methods_run = [*ORIGINAL_METHODS, *(f"torchcodec_prepared_{copy}" for copy in copies)]
    videos, preparation = {}, {}
    for width, height in args.sizes:
        name = f"{width}x{height}"
        originals = generate_videos(args.video_dir, args.num_videos, args.seconds, args.fps, height, width)
        videos[name] = {"original": originals}
        for interval, copy in zip(args.keyframe_intervals, copies):
            log(f"preparing the {name} videos with a keyframe every {interval} frames")
            settings = {"short_side": args.short_side, "keyframe_interval": interval, "crf": args.crf}
            folder = args.video_dir / f"prepared_{name}_{args.short_side}_{interval}_{args.crf}"
            preparation[name, copy] = prepare_videos(videos[name]["original"], folder, settings)
            videos[name][copy] = preparation[name, copy].pop("paths")
    # Evaluation reads only the original videos of the first size: it is the reference loader's slow path, measured
    # for comparison with earlier results, and prepared files change nothing in its decoding of whole videos.
    evaluation_size = next(iter(videos))
    cases = [(name, ("training", 1, method)) for name in videos for method in methods_run]
    cases += [
        (evaluation_size, ("evaluation", views, method)) for views in EVALUATION_VIEWS for method in EVALUATION_METHODS
    ]
    for name, case in cases:  # warm-up: imports, FFmpeg libraries, file cache
        time_case(case, {copy: paths[:1] for copy, paths in videos[name].items()}, processor, args)

    load_before = os.getloadavg()
    seconds = {key: [] for key in cases}
    for round_index in range(args.repeats):
        for name, case in cases:
            seconds[name, case].append(time_case(case, videos[name], processor, args))
        log(
            f"round {round_index + 1}/{args.repeats} (load {os.getloadavg()[0]:.1f}): "
            + ", ".join(f"{n} {p[:5]} {v}v {m} {s[-1]:.3f} s" for (n, (p, v, m)), s in seconds.items())
        )
    load_after = os.getloadavg()

    gpu_clips_per_s = args.gpu_tflops * 1e12 / (args.gflop_per_clip * 1e9)
    training, evaluation, agreement, ratios, targets = {}, {}, {}, {}, {}
    training_rows, disk_rows, agreement_rows, evaluation_rows, eval_agreement_rows = [], [], [], [], []
    for name, paths in videos.items():
        num_clips = len(paths["original"]) * args.clips_per_video
        methods = {}
        for method in methods_run:
            runs = seconds[name, ("training", 1, method)]
            clips_per_s = num_clips / median(runs)
            copy = "original" if method in ORIGINAL_METHODS else method.rsplit("_", 1)[-1]
            methods[method] = {
                "videos": copy,
                "clips_per_s": clips_per_s,
                "seconds_per_clip": median(runs) / num_clips,
                "clips_per_s_runs": [num_clips / s for s in runs],
                "cores_per_gpu": gpu_clips_per_s / clips_per_s,
            }
            training_rows.append([name, method, copy, clips_per_s, 1000 / clips_per_s, gpu_clips_per_s / clips_per_s])
        training[name] = {
            "keyframes_in_first_video": {copy: keyframe_positions(files[0])[:8] for copy, files in paths.items()},
            "prepared_size": list(frame_size(paths[copies[0]][0])),
            "methods": methods,
        }
        for copy in copies:
            prep = preparation[name, copy]
            prep["size_ratio"] = prep["bytes_after"] / prep["bytes_before"]
            disk_rows.append(
                [
                    name,
                    copy[1:],
                    "x".join(map(str, training[name]["prepared_size"])),
                    prep["bytes_before"] / len(paths["original"]) / 1e6,
                    prep["bytes_after"] / len(paths["original"]) / 1e6,
                    prep["size_ratio"],
                    prep["seconds_per_video"],
                ]
            )
            agreement[f"{name}_{copy}"] = a = prepared_agreement(paths["original"], paths[copy], processor, args)
            agreement_rows.append([name, copy[1:], *(f"{a[key] * 255:.2f}" for key in a)])
            prepared = methods[f"torchcodec_prepared_{copy}"]["clips_per_s"]
            for baseline, goal in (("torchcodec_sampled", 3.0), ("pyav_whole_video", 5.0)):
                ratio_name = f"training_{name}_prepared_{copy}_over_{baseline}"
                ratios[ratio_name] = ratio(prepared, methods[baseline]["clips_per_s"])
                targets[ratio_name] = target(ratios[ratio_name], at_least=goal)
            for key in ("mean_abs_diff_frames", "mean_abs_diff_frames_luma"):
                targets[f"prepared_{name}_{copy}_{key}_grey_levels"] = target(round(a[key] * 255, 2), at_most=2.0)

    for views in EVALUATION_VIEWS:
        methods = {
            method: evaluation_speeds(seconds[evaluation_size, ("evaluation", views, method)], args.num_videos, views)
            for method in EVALUATION_METHODS
        }
        check = evaluation_agreement(videos[evaluation_size]["original"][0], processor, args, views)
        evaluation[f"views_{views}"] = {"methods": methods, "agreement": check}
        differences = (check["mean_abs_diff"], check["mean_abs_diff_between_clip_frames"])
        eval_agreement_rows.append([views, *(f"{difference:.4f}" for difference in differences)])
        ratio_name = f"evaluation_{views}_view{'s' if views > 1 else ''}_torchcodec_over_pyav"
        ratios[ratio_name] = ratio(
            methods["torchcodec_sampled"]["videos_per_s"], methods["pyav_reference_eval"]["videos_per_s"]
        )
        targets[ratio_name] = target(ratios[ratio_name], at_least=3.0)
        evaluation_rows += [
            [views, m, r["videos_per_s"], r["clips_per_s"], 1000 * r["seconds_per_video"]] for m, r in methods.items()
        ]
    preparation = {f"{name}_{copy}": prep for (name, copy), prep in preparation.items()}

    result = {
        "benchmark": "data_path",
        "settings": {
            "tiny": args.tiny,
            "num_videos": args.num_videos,
            "videos": f"{args.seconds:g} s, {args.fps} fps, H.264 (libx264 defaults: keyframe interval 250, crf 23), "
            "yuv420p",
            "sizes": [f"{w}x{h}" for w, h in args.sizes],
            "prepare_videos": {
                "short_side": args.short_side,
                "keyframe_intervals": args.keyframe_intervals,
                "crf": args.crf,
            },
            "clips_per_video": args.clips_per_video,
            "num_frames": args.num_frames,
            "frame_stride": args.frame_stride,
            "evaluation_size": evaluation_size,
            "evaluation_views": list(EVALUATION_VIEWS),
            "transforms": "shortest edge 224 bilinear, centre crop 224, CLIP normalisation",
            "threads": 1,
            "repeats": args.repeats,
            "gflop_per_clip": args.gflop_per_clip,
            "gpu_tflops": args.gpu_tflops,
            "gpu_clips_per_s": gpu_clips_per_s,
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in load_after],
        },
        "machine": machine_info(),
        # The training path, under the key that plot_benchmarks.py reads.
        "videos": training,
        "preparation": preparation,
        "prepared_agreement": agreement,
        "evaluation": evaluation,
        "ratios": ratios,
        "targets": targets,
    }
    s = result["settings"]
    markdown = "\n".join(
        [
            f"{s['num_frames']} frames at stride {s['frame_stride']} from {s['num_videos']} videos per size "
            f"({s['videos']}), one thread; medians of {s['repeats']} alternating rounds; load average "
            f"{s['loadavg_before'][0]:.1f} before, {s['loadavg_after'][0]:.1f} after "
            f"({result['machine']['cpu_count']} cores)",
            "",
            f"Training path ({args.clips_per_video} clips per video, random starts, the same for every method). "
            "Cores per GPU: how many cores decoding this way keep up "
            f"with {gpu_clips_per_s:.0f} training clips/s ({s['gflop_per_clip']:g} GFLOP per clip at "
            f"{s['gpu_tflops']:g} TFLOP/s):",
            "",
            markdown_table(
                ["size", "method", "videos", "clips/s per core", "ms/clip", "cores per GPU"], training_rows
            ),
            "",
            f"Preparation (`evl-hf prepare-videos --short_side {args.short_side} --crf {args.crf} "
            "--keyframe_interval K`), one thread:",
            "",
            markdown_table(
                ["size", "K", "prepared size", "MB/video before", "MB/video after", "after/before", "s per video"],
                disk_rows,
            ),
            "",
            "Same frames? Mean absolute difference in grey levels (0-255), over the first training clip of each video:",
            "",
            markdown_table(
                [
                    "size",
                    "K",
                    "prepared vs original resized to the prepared size",
                    "the same, luma only",
                    "at the model input (224 crop, before normalisation)",
                    "successive frames of a clip",
                ],
                agreement_rows,
            ),
            "",
            f"Evaluation path ({evaluation_size}, original videos; 1 view, or 3 temporal views x 1 centre crop):",
            "",
            markdown_table(["views", "method", "videos/s", "clips/s", "ms/video"], evaluation_rows),
            "",
            "Same views? Mean absolute difference of the evaluation `pixel_values` (first video, normalised units):",
            "",
            markdown_table(
                [
                    "views",
                    "torchcodec_sampled vs pyav_reference_eval",
                    "successive frames of a pyav_reference_eval clip",
                ],
                eval_agreement_rows,
            ),
            "",
            targets_table(targets),
        ]
    )
    emit("data_path", result, markdown, args.output)


if __name__ == "__main__":
    main()
