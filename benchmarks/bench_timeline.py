"""Speed of `evl-hf timeline` (`classify_windows`) against calling the model once per window.

The video is 3 minutes at 30 fps (5,400 frames, 320x240, H.264 from FFmpeg's `testsrc2` pattern), generated once
into a cache folder. The model has the shapes of `--shape` (ViT-B/16 by default) with random weights and an 8-frame
clip at `frame_stride` 16, the paper's 8x16 model; windows start every 16 frames (the command's default), which
gives 331 windows.

- `timeline`: `classify_windows` on the whole video: the backbone runs once per sampled frame (338 frames) and the
  temporal cross attention once per pair of neighbouring frames; each window then runs only the rest of the decoder.
- `per_window`: for a window, `read_video_frames` decodes its 8 frames, `EVLVideoProcessor` preprocesses them and
  the model classifies the clip: what a loop over windows calling the model does. On a CPU running the baseline on
  all 331 windows takes too long to repeat, so it runs on `--baseline-windows` windows spread evenly over the video,
  and its time for the whole video is the mean time per window times the number of windows (every window costs the
  same: the same shapes, the same work).

Both methods run in the same process, one after the other in each of `--repeats` rounds, on `--threads` threads (1
by default); the speed-up is the ratio of the medians, in wall-clock time and in CPU time of the process. On a shared
machine the load changes between the two methods' turns, which moves wall-clock time; with one thread, CPU time
measures the work done. The probabilities of the baseline's windows are compared with the timeline's. Results are
written after every round.

    python benchmarks/bench_timeline.py                              # ViT-B/16, 3-minute video
    python benchmarks/bench_timeline.py --repeats 3 --output docs/benchmark_results
    python benchmarks/bench_timeline.py --tiny                       # seconds; what the tests run
"""

import argparse
import subprocess
import sys
import time
from pathlib import Path

import torch

from evl_hf.testing_utils import randomize_zero_initialised

from benchmark_utils import (
    VIT_SHAPES, default_video_dir, emit, log, machine_info, markdown_table, median, ratio, target, targets_table
)  # fmt: skip


# ViT-S/16 (DeiT-S widths with CLIP's patch size): a quarter of ViT-B/16's backbone work, for a busy CPU.
SHAPES = {**VIT_SHAPES, "vit-s16": {**VIT_SHAPES["vit-b16"], "hidden_size": 384, "intermediate_size": 1536,
                                    "num_attention_heads": 6}}  # fmt: skip


def generate_video(folder: Path, seconds: float, fps: int, height: int, width: int) -> Path:
    """An H.264 video of FFmpeg's moving `testsrc2` test pattern, made once and reused."""
    path = folder / f"timeline_{seconds:g}s_{fps}fps_{width}x{height}.mp4"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        log(f"generating {path}")
        partial = path.with_suffix(".partial.mp4")
        subprocess.run(
            ["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size={width}x{height}:rate={fps}",
             "-t", str(seconds), "-c:v", "libx264", "-pix_fmt", "yuv420p", str(partial)],
            check=True,
        )  # fmt: skip
        partial.rename(path)
    return path


def build_model(shape: str, num_frames: int, frame_stride: int):
    from transformers import CLIPVisionConfig

    from evl_hf import EVLConfig, EVLForVideoClassification, EVLVideoProcessor

    torch.manual_seed(0)
    vision = SHAPES[shape]
    config = EVLConfig(
        vision_config=CLIPVisionConfig(**vision),
        num_frames=num_frames,
        decoder_num_layers=min(4, vision["num_hidden_layers"]),
        num_labels=400,
    )
    # the zero-initialised temporal parts get values, so that they do real work
    model = randomize_zero_initialised(EVLForVideoClassification(config).eval(), std=0.02)
    size = vision["image_size"]
    processor = EVLVideoProcessor(
        num_frames=num_frames,
        frame_stride=frame_stride,
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
    )
    return model, processor


def time_timeline(model, processor, video) -> tuple[float, float, dict]:
    """Wall-clock and CPU seconds of `classify_windows` on the whole video, and its result."""
    from evl_hf.inference import classify_windows

    start, start_cpu = time.perf_counter(), time.process_time()
    result = classify_windows(model, processor, video, progress=False)
    return time.perf_counter() - start, time.process_time() - start_cpu, result


def time_per_window(model, processor, video, windows: list[list[int]]) -> tuple[float, float, list[torch.Tensor]]:
    """Wall-clock and CPU seconds per window of the model called once per window, and the windows' probabilities."""
    from evl_hf.inference import postprocess_logits
    from evl_hf.video_processing_evl import read_video_frames

    probabilities = []
    start, start_cpu = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        for indices in windows:
            pixel_values = processor(read_video_frames(video, indices), return_tensors="pt")["pixel_values"]
            probabilities.append(postprocess_logits(model(pixel_values=pixel_values).logits[0], model.config))
    wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    return wall / len(windows), cpu / len(windows), probabilities


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="vit-b16", choices=sorted(SHAPES))
    parser.add_argument("--seconds", type=float, default=180.0)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--num-frames", type=int, default=8)
    parser.add_argument("--frame-stride", type=int, default=16)
    parser.add_argument("--baseline-windows", type=int, default=12, help="windows the per-window baseline runs on")
    parser.add_argument("--repeats", type=int, default=2, help="alternating rounds of the two methods")
    parser.add_argument("--threads", type=int, default=1, help="1 makes CPU time a measure of work on a busy machine")
    parser.add_argument("--video-dir", type=Path, default=None)
    parser.add_argument("--tiny", action="store_true", help="tiny model, 10 s video, 1 round: a run in seconds")
    parser.add_argument("--output", help="folder to write timeline.json and timeline.md into")
    args = parser.parse_args(argv)
    if args.tiny:
        args.shape, args.seconds, args.repeats, args.baseline_windows = "tiny", 10.0, 1, 4
    torch.set_num_threads(args.threads)

    from evl_hf.video_processing_evl import window_frame_indices

    video = generate_video(args.video_dir or default_video_dir(), args.seconds, args.fps, args.height, args.width)
    model, processor = build_model(args.shape, args.num_frames, args.frame_stride)
    num_video_frames = round(args.seconds * args.fps)
    windows = window_frame_indices(num_video_frames, args.num_frames, args.frame_stride, args.frame_stride)
    step = max(len(windows) // args.baseline_windows, 1)
    sampled = list(range(0, len(windows), step))[: args.baseline_windows]
    log(f"{len(windows)} windows; the baseline runs on windows {sampled}")

    seconds = {"timeline": [], "per_window": []}  # whole video, wall clock
    cpu_seconds = {"timeline": [], "per_window": []}  # whole video, CPU time of this process
    max_difference = 0.0
    for round_index in range(args.repeats):
        wall, cpu, result = time_timeline(model, processor, str(video))
        seconds["timeline"].append(wall)
        cpu_seconds["timeline"].append(cpu)
        log(f"round {round_index}: timeline {wall:.1f} s ({cpu:.1f} s CPU) for {len(result['windows'])} windows")
        wall, cpu, probabilities = time_per_window(model, processor, str(video), [windows[i] for i in sampled])
        seconds["per_window"].append(wall * len(windows))
        cpu_seconds["per_window"].append(cpu * len(windows))
        log(f"round {round_index}: per-window baseline {wall:.2f} s/window ({cpu:.2f} s CPU), whole video "
            f"{wall * len(windows):.1f} s")  # fmt: skip
        for index, expected in zip(sampled, probabilities):
            difference = (torch.tensor(result["probabilities"][index]) - expected).abs().max().item()
            max_difference = max(max_difference, difference)
        # written after every round, so that a long run stopped early keeps what it measured
        report(args, windows, sampled, seconds, cpu_seconds, max_difference, round_index + 1)


def report(args, windows, sampled, seconds, cpu_seconds, max_difference, rounds):
    speedup = ratio(median(seconds["per_window"]), median(seconds["timeline"]))
    cpu_speedup = ratio(median(cpu_seconds["per_window"]), median(cpu_seconds["timeline"]))
    output = {
        "benchmark": "timeline",
        "shape": args.shape,
        "video": {"seconds": args.seconds, "fps": args.fps, "frames": round(args.seconds * args.fps),
                  "size": [args.width, args.height]},  # fmt: skip
        "num_frames": args.num_frames,
        "frame_stride": args.frame_stride,
        "stride_frames": args.frame_stride,
        "num_windows": len(windows),
        "backbone_frames": len({frame for window in windows for frame in window}),
        "baseline_windows_timed": len(sampled),
        "threads": args.threads,
        "rounds": rounds,
        "whole_video_seconds": seconds,
        "whole_video_cpu_seconds": cpu_seconds,
        "max_probability_difference": max_difference,
        "targets": {
            "speedup_timeline_vs_per_window": target(speedup, at_least=5),
            "cpu_speedup_timeline_vs_per_window": target(cpu_speedup, at_least=5),
        },
        "machine": machine_info(),
    }
    rows = [
        ["timeline (classify_windows)", median(seconds["timeline"]), median(cpu_seconds["timeline"])],
        ["model once per window", median(seconds["per_window"]), median(cpu_seconds["per_window"])],
    ]
    markdown = (
        f"{args.shape}, {args.num_frames}x{args.frame_stride}, {args.seconds:g} s at {args.fps} fps, "
        f"{len(windows)} windows, {args.threads} threads, median of {rounds} rounds\n\n"
        + markdown_table(["method", "whole video, wall (s)", "whole video, CPU (s)"], rows)
        + f"\n\nspeed-up: {speedup:.2f}x wall clock, {cpu_speedup:.2f}x CPU time; largest probability difference "
        f"{max_difference:.1e}\n\n"
        + targets_table(output["targets"])
    )
    emit("timeline", output, markdown, args.output)


if __name__ == "__main__":
    sys.exit(main())
