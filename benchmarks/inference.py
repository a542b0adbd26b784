"""Inference at scale and on a GPU: `classify_windows` on a long video (`timeline`), onnxruntime against PyTorch
(`onnx`), and a low-precision backbone (`gpu`: bf16/fp16 weights with decoder and head fp32 under `torch.autocast`,
or torchao int8/fp8, fp8 on compute capability 8.9+; clips/s, peak memory, logit error; torchcodec's CPU and, where
it can, CUDA decode rate; training clips of frame archives decoded on the device or on the CPU; `Timer` synchronizes
CUDA itself)."""

import importlib.util
import itertools
import subprocess
import tempfile
import time
from pathlib import Path

import torch
from torchcodec.decoders import VideoDecoder

from evl_hf import quantization
from evl_hf.inference import classify_windows, postprocess_logits, window_frame_indices
from evl_hf.onnx_export import export_onnx
from evl_hf.video_utils import read_video_frames, sample_frame_indices

from .harness import (
    NUM_LABELS,
    SHAPES,
    alternate,
    build_model,
    measure,
    median,
    options,
    peak_rss_mb,
    ratio,
    video_dir,
    video_processor,
    videos,
    write,
)


def timeline_arguments(parser):
    options(
        parser,
        shape=("vit-b16", None, list(SHAPES)),
        seconds=180.0,
        size="320x240",
        num_frames=8,
        frame_stride=16,
        baseline_windows=(12, "windows the per-window baseline runs on"),
        repeats=2,
        threads=(1, "1 makes CPU time a measure of work on a busy machine"),
        video_dir=None,
    )


def testsrc_video(folder: Path, seconds: float, width: int, height: int, fps: int = 30) -> Path:
    """A long H.264 video of FFmpeg's moving `testsrc2` pattern (too long to hold in memory as frames), made once."""
    path = folder / f"timeline_{seconds:g}s_{fps}fps_{width}x{height}.mp4"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial.mp4")
        subprocess.run(
            [
                "ffmpeg",
                "-loglevel",
                "error",
                "-y",
                "-f",
                "lavfi",
                "-i",
                f"testsrc2=size={width}x{height}:rate={fps}",
                "-t",
                str(seconds),
                "-c:v",
                "libx264",
                "-pix_fmt",
                "yuv420p",
                str(partial),
            ],
            check=True,
        )
        partial.rename(path)
    return path


def timeline(args):
    """`classify_windows` against the model once per window, on `--baseline_windows` windows spread over the video
    and scaled to all of them (every window is the same work)."""
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
                found["per_window"].append(
                    postprocess_logits(model(pixel_values=pixel_values).logits[0], model.config)
                )

    wall, cpu = alternate(
        {"timeline": whole_video, "per_window": per_window}, args.repeats, threads=args.threads, label="timeline"
    )
    scale = len(windows) / len(sampled)  # the baseline's timed windows to the whole video
    seconds = {"timeline": wall["timeline"], "per_window": [s * scale for s in wall["per_window"]]}
    cpu_seconds = {"timeline": cpu["timeline"], "per_window": [s * scale for s in cpu["per_window"]]}
    difference = max(
        (torch.tensor(found["timeline"]["probabilities"][i]) - p).abs().max().item()
        for i, p in zip(sampled, found["per_window"])
    )
    return write(
        "timeline",
        {
            "shape": args.shape,
            "video": {"seconds": args.seconds, "fps": 30, "frames": frames, "size": [width, height]},
            "num_windows": len(windows),
            "backbone_frames": len({f for w in windows for f in w}),
            "baseline_windows_timed": len(sampled),
            "rounds": args.repeats,
            "whole_video_seconds": seconds,
            "whole_video_cpu_seconds": cpu_seconds,
            "max_probability_difference": difference,
            "speedup": ratio(median(seconds["per_window"]), median(seconds["timeline"])),
            "cpu_speedup": ratio(median(cpu_seconds["per_window"]), median(cpu_seconds["timeline"])),
        },
        args,
    )


def onnx_arguments(parser):
    options(parser, shape=("vit-b16", None, list(SHAPES)), num_frames=8, batch_size=1, repeats=5, threads=2, opset=18)


def onnx(args):
    """`export_onnx`'s file under onnxruntime's CPUExecutionProvider against eager PyTorch, same clip and threads."""
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
        steps = {
            "pytorch": torch.inference_mode()(lambda: model(pixel_values=clip).logits),
            "onnxruntime": lambda: torch.from_numpy(session.run(["logits"], {"pixel_values": clip.numpy()})[0]),
        }
        difference = (steps["pytorch"]() - steps["onnxruntime"]()).abs().max().item()
        wall, _ = alternate(steps, args.repeats, threads=args.threads, label="onnx")
    medians = {name: median(values) for name, values in wall.items()}
    return write(
        "onnx",
        {
            "opset": args.opset,
            "export_seconds": export_seconds,
            "onnx_file_mb": file_mb,
            "seconds": wall,
            "median_seconds": medians,
            "speedup_onnxruntime_vs_pytorch": ratio(medians["pytorch"], medians["onnxruntime"]),
            "max_logit_difference": difference,
        },
        args,
    )


DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32", "int8": "int8", "fp8": "float8"}


def gpu_arguments(parser):
    options(
        parser,
        device=(None, "default cuda when available, else cpu"),
        dtype=("bf16", None, list(DTYPES)),
        attn_implementation=("sdpa", None, ["sdpa", "flash_attention_2", "eager"]),
        compile=False,
        shapes="vit-b16,vit-l14",
        batch_size=16,
        accuracy_batch_size=2,
        accuracy_only=(False, "only the logits check (full shapes on a CPU)"),
        num_frames=8,
        decode_videos=(4, "0: no decode measurement"),
        archive_batch_size=(32, "training clips of frame archives per batch, decoded on the device; 0: not measured"),
        video_dir=None,
    )


def low_precision(model, dtype: str, device):
    """The backbone in `dtype` (decoder and head fp32) and the autocast to run it under."""
    if dtype in ("int8", "fp8"):
        if device.type == "cuda":  # torchao's CUDA kernels expect bf16 weights under bf16 autocast
            model.evl.vision_model.to(torch.bfloat16)
        model = quantization.quantize_backbone(model, DTYPES[dtype])
    else:
        model.evl.vision_model.to(quantization.DTYPES[DTYPES[dtype]][0])
    to = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(
        dtype, torch.bfloat16 if dtype in ("int8", "fp8") and device.type == "cuda" else None
    )
    return model, lambda: torch.autocast(device.type, dtype=to, enabled=to is not None)


def timed(step, args, device) -> dict:
    """`step` once (warm-up, compilation), then timed; seconds, clips/s and the peak memory of its calls."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step()
    m, _ = measure(step, threads=torch.get_num_threads(), min_run_time=args.min_run_time)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else peak_rss_mb()
    return {"seconds_per_step": m.median, "clips_per_s": args.batch_size / m.median, "peak_memory_mb": peak}


def benchmark_shape(shape: str, args, device) -> dict:
    model = build_model("evl", shape, num_frames=args.num_frames, attn_implementation=args.attn_implementation)
    size = SHAPES[shape]["image_size"]
    pixel_values = torch.randn(args.batch_size, args.num_frames, 3, size, size, device=device)
    labels = torch.randint(0, NUM_LABELS, (args.batch_size,), device=device)
    with torch.inference_mode():
        reference = model.to(device).eval()(pixel_values=pixel_values[: args.accuracy_batch_size]).logits.float()
    low, autocast = low_precision(model, args.dtype, device)
    with torch.inference_mode(), autocast():
        logits = low.eval()(pixel_values=pixel_values[: args.accuracy_batch_size]).logits.float()
    difference = (logits - reference).abs()
    result = {
        "accuracy": {
            "max_abs_diff": difference.max().item(),
            "mean_abs_diff": difference.mean().item(),
            "max_abs_logit": reference.abs().max().item(),
            "same_top1": (logits.argmax(-1) == reference.argmax(-1)).float().mean().item(),
        }
    }
    if args.accuracy_only:
        return result
    forward = torch.compile(low) if args.compile else low

    def inference():
        with torch.inference_mode(), autocast():
            forward(pixel_values=pixel_values)

    result["inference"] = timed(inference, args, device)
    optimizer = torch.optim.AdamW([p for p in low.train().parameters() if p.requires_grad], lr=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=args.dtype == "fp16")

    def train():
        with autocast():
            loss = forward(pixel_values=pixel_values, labels=labels).loss
        scaler.scale(loss).backward()
        scaler.step(optimizer), scaler.update(), optimizer.zero_grad(set_to_none=True)

    result["train"] = timed(train, args, device)
    return result


def decode_rates(args) -> dict:
    """Clips/s (8 frames at stride 16, uint8 on the decoder's device) of torchcodec's CPU and CUDA decoders."""
    height, width, seconds = (96, 128, 4.0) if args.shapes == "tiny" else (360, 640, 10.0)
    paths = videos(video_dir(args.video_dir), args.decode_videos, seconds, height, width)
    indices = lambda total: sample_frame_indices(total, args.num_frames, strategy="dense", frame_stride=16)  # noqa: E731
    results = {}
    for device in ["cpu"] + ["cuda"] * torch.cuda.is_available():

        def decode():
            for path in paths:
                frames = read_video_frames(VideoDecoder(str(path), device=device, num_ffmpeg_threads=1), indices)
                assert frames.shape[0] == args.num_frames and frames.device.type == device

        try:
            decode()  # FFmpeg libraries, CUDA context, file cache
            m, _ = measure(decode, threads=1)
        except Exception as error:  # an FFmpeg without NVDEC, say: reported, not fatal
            results[device] = {"error": f"{type(error).__name__}: {error}"}
            continue
        results[device] = {"clips_per_s": len(paths) / m.median}
    return {"video": f"{width}x{height}, {seconds:g} s, 30 fps, H.264, keyframe every 250 frames", "devices": results}


def archive_rates(args, device) -> dict:
    """
    A batch of training clips (`--num_frames` at stride 16, RandomResizedCrop, flip and RandAugment) from frame
    archives of the decode videos (every 4th frame, short side 256 as `evl-hf prepare-videos --format frames` writes
    them), on one CPU thread: `device_decode` reads the JPEGs and the draws on the CPU (a DataLoader worker's share,
    `worker_cpu_seconds_per_clip`), then decodes them in one batch (nvJPEG on CUDA), crops and augments on `device`
    (the training step's); `worker_decode` decodes and crops with the video processor on the CPU (the worker's share)
    and augments on `device`. CPU seconds are the process's (all its threads, the wait for the GPU included) per clip.
    """
    from evl_hf.commands.prepare_videos import scaled_size
    from evl_hf.frame_archives import decode_clip_jpegs, read_clip_jpegs, write_frame_archive

    height, width, seconds = (96, 128, 4.0) if args.shapes == "tiny" else (360, 640, 10.0)
    size = scaled_size(width, height, 256)
    archives = []
    for path in videos(video_dir(args.video_dir), args.decode_videos, seconds, height, width):
        archive = path.with_name(f"{path.stem}_every4_{size[0]}x{size[1]}.evlf")
        if not archive.exists():  # written aside, then renamed, as the videos are
            write_frame_archive(path, archive.with_suffix(".partial"), frame_step=4, size=size)
            archive.with_suffix(".partial").rename(archive)
        archives.append(str(archive))
    processor = video_processor(args.shapes.split(",")[0], num_frames=args.num_frames, frame_stride=16)
    options = dict(do_augment=True, horizontal_flip=True, rand_augment=True, device_transforms=True)
    batch, seeds = [archives[i % len(archives)] for i in range(args.archive_batch_size)], itertools.count()

    def read():  # a worker's share with --decode_device
        return [read_clip_jpegs(processor, path, seed=next(seeds), **options) for path in batch]

    def decode():  # a worker's share without
        clips = [processor(path, seed=next(seeds), return_tensors="pt", **options) for path in batch]
        return torch.cat([clip["pixel_values"] for clip in clips]), torch.cat([clip["augmentation"] for clip in clips])

    def device_decode():
        made = decode_clip_jpegs(read(), device=device)
        return processor.augment_batch(made["pixel_values"], made["augmentation"], device=device)

    def worker_decode():
        return processor.augment_batch(*decode(), device=device)

    def timed(step):  # seconds per batch, CPU seconds per clip
        step()  # nvJPEG's and the CUDA kernels' start, the file cache
        m, cpu_seconds = measure(step, threads=1, min_run_time=args.min_run_time)
        return m.median, cpu_seconds / len(batch)

    methods = {}
    for name, (step, worker_share) in {
        "device_decode": (device_decode, read),
        "worker_decode": (worker_decode, decode),
    }.items():
        (seconds, cpu_seconds), (_, worker_cpu_seconds) = timed(step), timed(worker_share)
        methods[name] = {
            "seconds_per_batch": seconds,
            "clips_per_s": len(batch) / seconds,
            "cpu_seconds_per_clip": cpu_seconds,
            "worker_cpu_seconds_per_clip": worker_cpu_seconds,
            "cpu_cores_per_1000_clips_per_s": 1000 * cpu_seconds,
            "worker_cpu_cores_per_1000_clips_per_s": 1000 * worker_cpu_seconds,
        }
    clips = read()  # the same clips decoded both ways: nvJPEG against libjpeg-turbo
    on_device, on_cpu = (decode_clip_jpegs(clips, device=where)["pixel_values"] for where in (device, "cpu"))
    return {
        "archives": f"{size[0]}x{size[1]}, every 4th frame of {len(archives)} decode video(s), JPEG quality 90",
        "batch_size": len(batch),
        "methods": methods,
        "mean_abs_difference_device_vs_cpu_decode": (on_device.cpu().float() - on_cpu.float()).abs().mean().item(),
    }


def gpu(args):
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    args.min_run_time = 1.0 if device.type == "cuda" else 0.0
    if args.quick:  # the code paths in a minute: ViT-B/16 on a GPU (what `make test-gpu` runs), tiny on a CPU
        args.shapes, args.batch_size = ("vit-b16", 4) if device.type == "cuda" else ("tiny", 2)
        args.decode_videos, args.min_run_time = 1, 0.0
        args.archive_batch_size = min(args.archive_batch_size, 8 if device.type == "cuda" else 2)
    if device.type == "cuda":  # a true fp32 reference, and fp32 timings that mean fp32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    if args.dtype in ("int8", "fp8") and importlib.util.find_spec("torchao") is None:
        raise SystemExit(f"error: --dtype {args.dtype} needs torchao: pip install 'evl-hf[quantize]'")
    if args.dtype == "fp8" and (device.type != "cuda" or torch.cuda.get_device_capability(device) < (8, 9)):
        raise SystemExit("error: --dtype fp8 needs a CUDA GPU of compute capability 8.9 or more")
    results = {shape: benchmark_shape(shape, args, device) for shape in args.shapes.split(",")}
    decode = decode_rates(args) if args.decode_videos and not args.accuracy_only else None
    measured = args.decode_videos and args.archive_batch_size and not args.accuracy_only
    archive_training = archive_rates(args, device) if measured else None
    name = ("gpu" if device.type == "cuda" else "gpu_on_cpu") + f"_{args.dtype}"  # CPU runs pass for no GPU numbers
    return write(
        "gpu",
        {"results": results, "decode": decode, "archive_training": archive_training},
        args,
        name,
        device=str(device),
        peak_memory="torch.cuda.max_memory_allocated" if device.type == "cuda" else "process peak RSS",
    )


SUITES = {
    "timeline": (
        "evl-hf timeline's classify_windows on a 3-minute video against the model once per window",
        timeline_arguments,
        timeline,
    ),
    "onnx": ("onnxruntime on an evl-hf export file against eager PyTorch, on the CPU", onnx_arguments, onnx),
    "gpu": (
        "bf16/fp16/int8/fp8 backbone: clips/s, peak memory and logit error; torchcodec CPU/CUDA decode",
        gpu_arguments,
        gpu,
    ),
}
