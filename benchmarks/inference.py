"""Inference at scale: `classify_windows` on a long video (`timeline`), onnxruntime against PyTorch (`onnx`)."""

import subprocess
import tempfile
import time
from pathlib import Path

import torch

from evl_hf.inference import classify_windows, postprocess_logits
from evl_hf.onnx_export import export_onnx
from evl_hf.video_processing_evl import read_video_frames, window_frame_indices

from .harness import SHAPES, alternate, build_model, compare, log, median, options, ratio, video_dir, video_processor
from .harness import write


def timeline_arguments(parser):
    options(parser, shape=("vit-b16", None, list(SHAPES)), seconds=180.0, size="320x240", num_frames=8,
            frame_stride=16, baseline_windows=(12, "windows the per-window baseline runs on"), repeats=2,
            threads=(1, "1 makes CPU time a measure of work on a busy machine"), video_dir=None,
            name=("timeline", "written to <output>/<name>.json"))


def testsrc_video(folder: Path, seconds: float, width: int, height: int, fps: int = 30) -> Path:
    """A long H.264 video of FFmpeg's moving `testsrc2` pattern (too long to hold in memory as frames), made once."""
    path = folder / f"timeline_{seconds:g}s_{fps}fps_{width}x{height}.mp4"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial.mp4")
        subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                        f"testsrc2=size={width}x{height}:rate={fps}", "-t", str(seconds), "-c:v", "libx264",
                        "-pix_fmt", "yuv420p", str(partial)], check=True)  # fmt: skip
        partial.rename(path)
    return path


def timeline(args):
    """`classify_windows` (the backbone once per sampled frame, each window then only the rest of the decoder)
    against decoding, preprocessing and classifying every window on its own. The baseline runs on
    `--baseline-windows` windows spread over the video, scaled to all of them (every window is the same work)."""
    if args.quick:
        args.shape, args.seconds, args.repeats, args.baseline_windows = "tiny", 10.0, 1, 4
    width, height = map(int, args.size.split("x"))
    video = str(testsrc_video(video_dir(args.video_dir), args.seconds, width, height))
    model = build_model("evl", args.shape, num_frames=args.num_frames).eval()
    processor = video_processor(args.shape, num_frames=args.num_frames, frame_stride=args.frame_stride)
    frames = round(args.seconds * 30)
    windows = window_frame_indices(frames, args.num_frames, args.frame_stride, args.frame_stride)
    sampled = list(range(0, len(windows), max(len(windows) // args.baseline_windows, 1)))[: args.baseline_windows]
    found = {}

    def whole_video():
        found["timeline"] = classify_windows(model, processor, video, progress=False)

    def per_window():
        found["per_window"] = []
        with torch.inference_mode():
            for index in sampled:
                pixel_values = processor(read_video_frames(video, windows[index]), return_tensors="pt")["pixel_values"]
                found["per_window"].append(postprocess_logits(model(pixel_values=pixel_values).logits[0],
                                                              model.config))  # fmt: skip

    wall, cpu, measurements = alternate({"timeline": whole_video, "per_window": per_window}, args.repeats,
                                        threads=args.threads, label="timeline")  # fmt: skip
    compare(measurements)
    scale = len(windows) / len(sampled)  # the baseline's timed windows to the whole video
    seconds = {"timeline": wall["timeline"], "per_window": [s * scale for s in wall["per_window"]]}
    cpu_seconds = {"timeline": cpu["timeline"], "per_window": [s * scale for s in cpu["per_window"]]}
    difference = max((torch.tensor(found["timeline"]["probabilities"][i]) - p).abs().max().item()
                     for i, p in zip(sampled, found["per_window"]))  # fmt: skip
    return write(args.name, {
        "shape": args.shape, "video": {"seconds": args.seconds, "fps": 30, "frames": frames, "size": [width, height]},
        "num_frames": args.num_frames, "frame_stride": args.frame_stride, "num_windows": len(windows),
        "backbone_frames": len({f for w in windows for f in w}), "baseline_windows_timed": len(sampled),
        "threads": args.threads, "rounds": args.repeats, "whole_video_seconds": seconds,
        "whole_video_cpu_seconds": cpu_seconds, "max_probability_difference": difference,
        "speedup": ratio(median(seconds["per_window"]), median(seconds["timeline"])),
        "cpu_speedup": ratio(median(cpu_seconds["per_window"]), median(cpu_seconds["timeline"]))}, args.output)


def onnx_arguments(parser):
    options(parser, shape=("vit-b16", None, list(SHAPES)), num_frames=8, batch_size=1, repeats=5, threads=2, opset=18)


def onnx(args):
    """The model exported by `export_onnx` (what `evl-hf export` runs) under onnxruntime's CPUExecutionProvider,
    against the same model in eager PyTorch under `inference_mode`, the same clips, the same threads."""
    import onnxruntime

    if args.quick:
        args.shape, args.repeats = "tiny", 2
    model = build_model("evl", args.shape, num_frames=args.num_frames).eval()
    size = SHAPES[args.shape]["image_size"]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.onnx"
        start = time.perf_counter()
        export_onnx(model, path, opset=args.opset)
        export_seconds = time.perf_counter() - start
        file_mb = sum(p.stat().st_size for p in Path(folder).iterdir()) / 2**20  # graph and external weights
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        clip = torch.randn(args.batch_size, args.num_frames, 3, size, size, generator=torch.Generator().manual_seed(0))

        def pytorch():
            with torch.inference_mode():
                return model(pixel_values=clip).logits

        def onnxruntime_run():
            return torch.from_numpy(session.run(["logits"], {"pixel_values": clip.numpy()})[0])

        difference = (pytorch() - onnxruntime_run()).abs().max().item()
        log(f"export {export_seconds:.0f} s, {file_mb:.0f} MiB; largest logit difference {difference:.1e}")
        wall, _, measurements = alternate({"pytorch": pytorch, "onnxruntime": onnxruntime_run}, args.repeats,
                                          threads=args.threads, label="onnx")  # fmt: skip
    compare(measurements)
    medians = {name: median(values) for name, values in wall.items()}
    return write("onnx", {
        "shape": args.shape, "num_frames": args.num_frames, "batch_size": args.batch_size, "threads": args.threads,
        "opset": args.opset, "export_seconds": export_seconds, "onnx_file_mb": file_mb, "seconds": wall,
        "median_seconds": medians, "speedup_onnxruntime_vs_pytorch": ratio(medians["pytorch"], medians["onnxruntime"]),
        "max_logit_difference": difference}, args.output)  # fmt: skip


SUITES = {
    "timeline": ("evl-hf timeline's classify_windows on a 3-minute video against the model once per window",
                 timeline_arguments, timeline),
    "onnx": ("onnxruntime on an evl-hf export file against eager PyTorch, on the CPU", onnx_arguments, onnx),
}  # fmt: skip
