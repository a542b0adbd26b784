"""Decoding and preprocessing speed of a clip, from the file path to `pixel_values`: torchcodec decoding only the
sampled frames against PyAV decoding the whole video, for the training path and for the evaluation path.

A clip is 8 frames 16 apart (`sample_frame_indices`, dense sampling), resized (shortest edge 224, bilinear),
centre-cropped to 224 and normalised with the CLIP mean and std.

Training path: one clip per video, centred in the video, preprocessed by `EVLVideoProcessor`.
- `pyav_whole_video`: what the reference implementation's training loader does: PyAV decodes every frame of the
  video, then the sampled ones are converted to RGB;
- `torchcodec_sampled`: `read_video_frames` decodes only the sampled frames with torchcodec;
- `processor_from_path`: `EVLVideoProcessor` given the path, decoding through the same torchcodec reader.

Evaluation path: 1 view (the centred clip) or the paper's 3 temporal views of an 8-frame model (3 clips spread
evenly over the video, one centre crop each), as `(views, T, 3, 224, 224)`.
- `pyav_reference_eval`: what the reference implementation's evaluation loader does: PyAV decodes every frame,
  every frame is converted to RGB, normalised as float and resized, and only then are the temporal clips and the
  centre crop cut out;
- `torchcodec_sampled`: the frames of all views are decoded in one `read_video_frames` call, then
  `EVLVideoProcessor` resizes, crops and normalises the views as a batch;
- `processor_from_path`: `EVLVideoProcessor` given the path once per view (`num_clips`, `clip_index`).
The two first methods are also checked to give the same views (mean absolute difference of their `pixel_values`).

The videos are generated once (10 s, 30 fps, 320x240, H.264 by libx264, a textured background panning
under moving shapes) into a cache folder, for each keyframe interval of `--keyframe-intervals`: 250 is
libx264's default (what a plain `ffmpeg -i in out.mp4` gives: keyframes at frames 0 and 250 only, so the
sampled frames 93..205 still need frames 0..205 decoded), 30 is one keyframe a second, common in files
made for streaming. Seeking can only skip what lies between keyframes, so the interval bounds the gain.
One thread everywhere (torch, FFmpeg decoding), one process; the methods take turns over `--repeats`
rounds and medians are reported.

    python benchmarks/bench_data_path.py
    python benchmarks/bench_data_path.py --repeats 10 --output docs/benchmark_results
    python benchmarks/bench_data_path.py --tiny        # seconds; what the tests run
"""

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmark_utils import emit, log, machine_info, markdown_table, median, ratio, target, targets_table


TRAINING_METHODS = ("pyav_whole_video", "torchcodec_sampled", "processor_from_path")
EVALUATION_METHODS = ("pyav_reference_eval", "torchcodec_sampled", "processor_from_path")
# 1 view, and the 3 temporal views with which the paper tests its 8-frame models.
EVALUATION_VIEWS = (1, 3)


def default_video_dir() -> Path:
    """`$EVL_HF_CACHE/benchmark_videos`, by default `~/.cache/evl_hf/benchmark_videos`, next to the synthetic data."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
    from synthetic_data import default_cache_dir

    return default_cache_dir().parent / "benchmark_videos"


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


def generate_videos(
    folder: Path, count: int, seconds: float, fps: int, height: int, width: int, keyframe_interval: int
) -> list[Path]:
    """Writes the benchmark videos once; a finished file is reused by later runs."""
    from torchcodec.encoders import VideoEncoder

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = folder / f"clip{index}_{width}x{height}_{fps}fps_{seconds:g}s_g{keyframe_interval}.mp4"
        if not path.exists():
            log(f"generating {path}")
            frames = render_video(index, int(seconds * fps), height, width)
            partial = path.with_suffix(".partial.mp4")
            VideoEncoder(frames, frame_rate=fps).to_file(
                str(partial), codec="libx264", pixel_format="yuv420p", extra_options={"g": keyframe_interval}
            )
            partial.rename(path)
        paths.append(path)
    return paths


def keyframe_positions(path: Path) -> list[int]:
    """Indices, in presentation order, of the video's keyframes (read from packet flags, nothing decoded)."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        packets = sorted((p for p in container.demux(stream) if p.size), key=lambda p: p.pts)
    return [index for index, packet in enumerate(packets) if packet.is_keyframe]


def pyav_whole_video(path: Path, num_frames: int, frame_stride: int) -> torch.Tensor:
    """Every frame decoded and kept, ordered by timestamp, then the sampled ones converted: uint8 `(T, 3, H, W)`."""
    import av

    from evl_hf.video_processing_evl import sample_frame_indices

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_count = 1
        decoded = sorted(container.decode(stream), key=lambda frame: frame.pts)
    indices = sample_frame_indices(len(decoded), num_frames, strategy="dense", frame_stride=frame_stride)
    frames = np.stack([decoded[i].to_ndarray(format="rgb24") for i in indices])  # (T, H, W, 3)
    return torch.from_numpy(frames).permute(0, 3, 1, 2)


def torchcodec_sampled(path: Path, num_frames: int, frame_stride: int) -> torch.Tensor:
    from evl_hf.video_processing_evl import read_video_frames, sample_frame_indices

    return read_video_frames(
        path, lambda total: sample_frame_indices(total, num_frames, strategy="dense", frame_stride=frame_stride)
    )


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


def time_training_method(method: str, paths: list[Path], processor, num_frames: int, frame_stride: int) -> float:
    """Seconds to turn every video of `paths` into `pixel_values` of shape `(1, T, 3, 224, 224)`."""
    start = time.perf_counter()
    for path in paths:
        if method == "processor_from_path":
            pixel_values = processor(
                videos=str(path), num_frames=num_frames, frame_stride=frame_stride, return_tensors="pt"
            )["pixel_values"]
        else:
            decode = pyav_whole_video if method == "pyav_whole_video" else torchcodec_sampled
            frames = decode(path, num_frames, frame_stride)
            pixel_values = processor(videos=[frames], return_tensors="pt")["pixel_values"]
        assert pixel_values.shape[:2] == (1, num_frames), pixel_values.shape
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


def time_case(case: tuple[str, int, str], paths: list[Path], processor, args) -> float:
    """Seconds for one `(path, views, method)` case over `paths`; `path` is "training" or "evaluation"."""
    data_path, num_views, method = case
    if data_path == "training":
        return time_training_method(method, paths, processor, args.num_frames, args.frame_stride)
    return time_evaluation_method(method, paths, processor, args.num_frames, args.frame_stride, num_views)


def evaluation_agreement(path: Path, processor, args, num_views: int) -> dict:
    """How far our evaluation views are from the reference order of work's, in normalised pixel units.

    They differ by resampling only (the reference resizes float frames without antialiasing; the processor resizes
    uint8 frames with it). For scale, the difference between a clip's successive frames (`frame_stride` apart) is
    reported too: views cut from the wrong frames would differ by about that much.
    """
    ours = evaluation_pixel_values("torchcodec_sampled", path, processor, args.num_frames, args.frame_stride, num_views)
    reference = pyav_reference_eval(path, args.num_frames, args.frame_stride, num_views, processor)
    return {
        "mean_abs_diff": (ours - reference).abs().mean().item(),
        "mean_abs_diff_between_clip_frames": (reference[:, 1:] - reference[:, :-1]).abs().mean().item(),
    }


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="alternating rounds over the methods")
    parser.add_argument("--num-videos", type=int, default=4, help="videos per keyframe interval")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--keyframe-intervals", default="250,30", help="comma-separated libx264 GOP sizes, in frames")
    parser.add_argument("--num-frames", type=int, default=8)
    parser.add_argument("--frame-stride", type=int, default=16)
    parser.add_argument(
        "--video-dir", type=Path, default=None, help="default $EVL_HF_CACHE/benchmark_videos (~/.cache/evl_hf/...)"
    )
    parser.add_argument("--tiny", action="store_true", help="2 short small videos, 2 rounds: a run in seconds")
    parser.add_argument("--output", help="folder to write data_path.json and data_path.md into")
    args = parser.parse_args(argv)
    if args.tiny:
        args.num_videos, args.seconds, args.height, args.width, args.repeats = 2, 4.0, 96, 128, 2
    args.keyframe_intervals = [int(g) for g in args.keyframe_intervals.split(",")]
    args.video_dir = args.video_dir or default_video_dir()
    return args


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(1)
    from evl_hf.video_processing_evl import EVLVideoProcessor

    processor = EVLVideoProcessor()
    videos = {
        gop: generate_videos(args.video_dir, args.num_videos, args.seconds, args.fps, args.height, args.width, gop)
        for gop in args.keyframe_intervals
    }
    cases = [("training", 1, method) for method in TRAINING_METHODS] + [
        ("evaluation", views, method) for views in EVALUATION_VIEWS for method in EVALUATION_METHODS
    ]
    for case in cases:  # warm-up: imports, FFmpeg libraries, file cache
        time_case(case, videos[args.keyframe_intervals[0]][:1], processor, args)

    seconds = {(gop, case): [] for gop in videos for case in cases}
    for round_index in range(args.repeats):
        for gop, paths in videos.items():
            for case in cases:
                seconds[gop, case].append(time_case(case, paths, processor, args))
        log(
            f"round {round_index + 1}/{args.repeats}: "
            + ", ".join(f"g{g} {p[:5]} {v}v {m} {s[-1]:.3f} s" for (g, (p, v, m)), s in seconds.items())
        )

    training, evaluation, ratios, targets = {}, {}, {}, {}
    training_rows, evaluation_rows, agreement_rows = [], [], []
    for gop, paths in videos.items():
        keyframes = keyframe_positions(paths[0])
        methods = {
            method: {
                "clips_per_s": len(paths) / median(seconds[gop, ("training", 1, method)]),
                "seconds_per_clip": median(seconds[gop, ("training", 1, method)]) / len(paths),
                "clips_per_s_runs": [len(paths) / s for s in seconds[gop, ("training", 1, method)]],
            }
            for method in TRAINING_METHODS
        }
        training[f"keyframe_interval_{gop}"] = {"keyframes_in_first_video": keyframes, "methods": methods}
        name = f"training_torchcodec_over_pyav_keyframe_interval_{gop}"
        ratios[name] = ratio(methods["torchcodec_sampled"]["clips_per_s"], methods["pyav_whole_video"]["clips_per_s"])
        targets[name] = target(ratios[name], at_least=3.0)
        training_rows += [
            [gop, len(keyframes), m, r["clips_per_s"], 1000 * r["seconds_per_clip"]] for m, r in methods.items()
        ]

        evaluation[f"keyframe_interval_{gop}"] = {}
        for views in EVALUATION_VIEWS:
            methods = {
                method: evaluation_speeds(seconds[gop, ("evaluation", views, method)], len(paths), views)
                for method in EVALUATION_METHODS
            }
            agreement = evaluation_agreement(paths[0], processor, args, views)
            evaluation[f"keyframe_interval_{gop}"][f"views_{views}"] = {"methods": methods, "agreement": agreement}
            differences = (agreement["mean_abs_diff"], agreement["mean_abs_diff_between_clip_frames"])
            agreement_rows.append([gop, views, *(f"{difference:.4f}" for difference in differences)])
            name = f"evaluation_{views}_view{'s' if views > 1 else ''}_torchcodec_over_pyav_keyframe_interval_{gop}"
            ratios[name] = ratio(
                methods["torchcodec_sampled"]["videos_per_s"], methods["pyav_reference_eval"]["videos_per_s"]
            )
            targets[name] = target(ratios[name], at_least=3.0)
            evaluation_rows += [
                [gop, views, m, r["videos_per_s"], r["clips_per_s"], 1000 * r["seconds_per_video"]]
                for m, r in methods.items()
            ]

    result = {
        "benchmark": "data_path",
        "settings": {
            "tiny": args.tiny,
            "num_videos": args.num_videos,
            "video": f"{args.seconds:g} s, {args.fps} fps, {args.width}x{args.height}, H.264 (libx264, yuv420p)",
            "keyframe_intervals": args.keyframe_intervals,
            "num_frames": args.num_frames,
            "frame_stride": args.frame_stride,
            "evaluation_views": list(EVALUATION_VIEWS),
            "transforms": "shortest edge 224 bilinear, centre crop 224, CLIP normalisation",
            "threads": 1,
            "repeats": args.repeats,
        },
        "machine": machine_info(),
        # The training path, under the key that plot_benchmarks.py and earlier results use.
        "videos": training,
        "evaluation": evaluation,
        "ratios": ratios,
        "targets": targets,
    }
    s = result["settings"]
    markdown = "\n".join(
        [
            f"{s['num_frames']} frames at stride {s['frame_stride']} from {s['num_videos']} videos per keyframe "
            f"interval ({s['video']}), one thread; medians of {s['repeats']} alternating rounds",
            "",
            "Training path (one centred clip per video):",
            "",
            markdown_table(["keyframe interval", "keyframes", "method", "clips/s", "ms/clip"], training_rows),
            "",
            "Evaluation path (1 view, or 3 temporal views x 1 centre crop, per video):",
            "",
            markdown_table(
                ["keyframe interval", "views", "method", "videos/s", "clips/s", "ms/video"], evaluation_rows
            ),
            "",
            "Same views? Mean absolute difference of the evaluation `pixel_values` (first video, normalised units):",
            "",
            markdown_table(
                [
                    "keyframe interval",
                    "views",
                    "torchcodec_sampled vs pyav_reference_eval",
                    "successive frames of a pyav_reference_eval clip",
                ],
                agreement_rows,
            ),
            "",
            targets_table(targets),
        ]
    )
    emit("data_path", result, markdown, args.output)


if __name__ == "__main__":
    main()
