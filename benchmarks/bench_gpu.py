"""EVL with a half-precision backbone: throughput, peak memory and the logits it costs, at ViT-B/16 and ViT-L/14.

The recipe of the paper: the frozen CLIP backbone's weights are cast to bf16 or fp16 (half the memory, tensor
cores), the decoder and head keep fp32 weights, and the forward runs under `torch.autocast`. For each shape:
- accuracy: the same random weights and input through the fp32 model and the half-precision one, the max
  abs difference of the logits printed (the decoder's zero-initialised parameters are first drawn at random,
  so that every path of the model contributes to the logits);
- inference (`eval()`, `inference_mode`) and training (forward, loss, backward, AdamW on the decoder; fp16
  with a `GradScaler`) in clips/s, and peak memory: `torch.cuda.max_memory_allocated` on GPU, the process's
  peak RSS on CPU.

Then the decode rate: 8 frames at stride 16 from generated 640x360, 10 s, 30 fps H.264 videos (libx264's
default keyframe interval), with torchcodec's CPU decoder (one thread) and, when this torchcodec and FFmpeg can
use it, its CUDA (NVDEC) decoder; clips/s, uint8 frames on the decoder's device, no resize.

`--dtype int8` and `--dtype fp8` quantize the backbone's Linear layers with torchao instead
(`evl_hf.quantization.quantize_backbone`: int8 dynamic activations and weights; fp8 dynamic activations and
weights, which needs a CUDA GPU of compute capability 8.9 or more); on a GPU from bf16 weights under bf16
autocast, as torchao's CUDA kernels expect, on a CPU (int8 only) from fp32. Add `--compile`: quantized
matmuls are fast only compiled. fp8 without such a GPU, or int8/fp8 without torchao, skips with a message.

The backbone's attention runs through `--attn-implementation` (`sdpa`, `flash_attention_2` (needs the
flash-attn package and a GPU) or `eager`); the decoder's single-query attention always uses SDPA.

    python benchmarks/bench_gpu.py --output docs/benchmark_results    # bf16, sdpa, ViT-B/16 and ViT-L/14 on cuda
    python benchmarks/bench_gpu.py --dtype fp16 --attn-implementation flash_attention_2 --compile
    python benchmarks/bench_gpu.py --dtype int8 --compile --output docs/benchmark_results     # torchao
    python benchmarks/bench_gpu.py --dtype fp8 --compile --output docs/benchmark_results      # torchao, sm_89+
    python benchmarks/bench_gpu.py --tiny --device cpu                # seconds; what the tests run
    python benchmarks/bench_gpu.py --quick                            # ViT-B/16 only, few steps: `make test-gpu`
    python benchmarks/bench_gpu.py --device cpu --shapes vit-b16 --accuracy-only --accuracy-batch-size 1
"""

import argparse
import copy
import time
from pathlib import Path

import torch
from transformers import CLIPVisionConfig

from evl_hf.testing_utils import randomize_zero_initialised

from benchmark_utils import (
    VIT_SHAPES, default_video_dir, emit, log, machine_info, markdown_table, median, peak_rss_mb,
)  # fmt: skip


SHAPES = VIT_SHAPES
# this script's names -> those of evl_hf.quantization.DTYPES
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32", "int8": "int8", "fp8": "float8"}
QUANTIZED = ("int8", "fp8")
NUM_LABELS = 400


def build_model(shape: str, num_frames: int, attn_implementation: str, device: torch.device):
    """A randomly initialised fp32 EVL model, with every parameter non-zero."""
    from evl_hf import EVLConfig, EVLForVideoClassification

    shapes = SHAPES[shape]
    id2label = {i: f"class_{i}" for i in range(NUM_LABELS)}
    config = EVLConfig(
        vision_config=CLIPVisionConfig(**shapes),
        num_frames=num_frames,
        decoder_num_layers=min(4, shapes["num_hidden_layers"]),
        id2label=id2label,
        label2id={name: i for i, name in id2label.items()},
    )
    model = EVLForVideoClassification(config)
    model.evl.vision_model.set_attn_implementation(attn_implementation)
    randomize_zero_initialised(model, std=0.02)  # their share of the rounding error shows in the accuracy check
    return model.to(device)


def to_low_precision_backbone(model, dtype: str):
    """The paper's mixed precision: backbone weights in `dtype`, decoder and head in fp32; int8 and fp8 through
    torchao, from bf16 weights on a GPU."""
    from evl_hf import quantization

    if dtype in QUANTIZED:
        if next(model.parameters()).device.type == "cuda":
            model.evl.vision_model.to(torch.bfloat16)
        return quantization.quantize_backbone(model, DTYPES[dtype])
    model.evl.vision_model.to(quantization.DTYPES[DTYPES[dtype]][0])
    return model


def autocast_dtype(dtype: str, device: torch.device) -> torch.dtype | None:
    """What the forward runs under `torch.autocast` in: the half dtype; bf16 for a quantized backbone on a GPU."""
    if dtype in QUANTIZED:
        return torch.bfloat16 if device.type == "cuda" else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(dtype)


def skip_reason(dtype: str, device: torch.device) -> str | None:
    """Why `dtype` cannot run on `device` here, or None."""
    import importlib.util

    if dtype in QUANTIZED and importlib.util.find_spec("torchao") is None:
        return f"--dtype {dtype} needs torchao: pip install 'evl-hf[quantize]'"
    if dtype == "fp8" and (device.type != "cuda" or torch.cuda.get_device_capability(device) < (8, 9)):
        return "--dtype fp8 needs a CUDA GPU of compute capability 8.9 or more (Ada, Hopper, Blackwell)"
    return None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else peak_rss_mb()


def logits_difference(model, dtype: str, pixel_values: torch.Tensor) -> dict:
    """Max abs difference between the logits of the fp32 model and of its low-precision-backbone copy."""
    device = pixel_values.device
    model.eval()
    with torch.inference_mode():
        reference = model(pixel_values=pixel_values).logits.float()
    half = to_low_precision_backbone(copy.deepcopy(model), dtype).eval()
    autocast = autocast_dtype(dtype, device)
    with torch.inference_mode(), torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
        logits = half(pixel_values=pixel_values).logits.float()
    del half
    difference = (logits - reference).abs()
    return {
        "max_abs_diff": difference.max().item(),
        "mean_abs_diff": difference.mean().item(),
        "max_abs_logit": reference.abs().max().item(),
        "same_top1": (logits.argmax(-1) == reference.argmax(-1)).float().mean().item(),
    }


def time_steps(step, steps: int, warmup_steps: int, device: torch.device) -> list[float]:
    times = []
    for _ in range(warmup_steps + steps):
        synchronize(device)
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times[warmup_steps:]


def benchmark_shape(shape: str, args, device: torch.device) -> dict:
    dtype = args.dtype
    torch.manual_seed(0)
    model = build_model(shape, args.num_frames, args.attn_implementation, device)
    size = SHAPES[shape]["image_size"]
    pixel_values = torch.randn(args.batch_size, args.num_frames, 3, size, size, device=device)
    labels = torch.randint(0, NUM_LABELS, (args.batch_size,), device=device)

    result = {"accuracy": logits_difference(model, dtype, pixel_values[: args.accuracy_batch_size])}
    log(f"{shape}: logits max abs diff {args.dtype} vs fp32: {result['accuracy']['max_abs_diff']:.3g}")
    if args.accuracy_only:
        return result

    model = to_low_precision_backbone(model, dtype)
    forward = torch.compile(model) if args.compile else model
    autocast_to = autocast_dtype(dtype, device)
    autocast = lambda: torch.autocast(device.type, dtype=autocast_to, enabled=autocast_to is not None)  # noqa: E731

    model.eval()
    reset_peak_memory(device)

    def inference_step():
        with torch.inference_mode(), autocast():
            forward(pixel_values=pixel_values)

    times = time_steps(inference_step, args.steps, args.warmup_steps, device)
    result["inference"] = {
        "seconds_per_batch": median(times),
        "clips_per_s": args.batch_size / median(times),
        "peak_memory_mb": peak_memory_mb(device),
    }

    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == "fp16")
    reset_peak_memory(device)

    def training_step():
        with autocast():
            loss = forward(pixel_values=pixel_values, labels=labels).loss
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    times = time_steps(training_step, args.steps, args.warmup_steps, device)
    result["train"] = {
        "seconds_per_step": median(times),
        "clips_per_s": args.batch_size / median(times),
        "peak_memory_mb": peak_memory_mb(device),
    }
    log(
        f"{shape}: inference {result['inference']['clips_per_s']:.1f} clips/s, "
        f"training {result['train']['clips_per_s']:.1f} clips/s"
    )
    return result


def decode_rates(args) -> dict:
    """Clips/s of torchcodec's CPU decoder and, where it works here, its CUDA decoder: `{device: result}`."""
    from torchcodec.decoders import VideoDecoder

    from bench_data_path import generate_videos
    from evl_hf.video_processing_evl import read_video_frames, sample_frame_indices

    height, width, seconds = (96, 128, 4.0) if args.tiny else (360, 640, 10.0)
    # libx264's default GOP, as most downloaded datasets have
    paths = generate_videos(Path(args.video_dir or default_video_dir()), args.decode_videos, seconds, 30, height, width)
    indices = lambda total: sample_frame_indices(total, args.num_frames, strategy="dense", frame_stride=16)  # noqa: E731
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    results = {}
    for device in devices:
        decode = lambda path: read_video_frames(VideoDecoder(str(path), device=device, num_ffmpeg_threads=1), indices)  # noqa: E731
        try:
            decode(paths[0])  # warm-up: FFmpeg libraries, CUDA context, file cache
            times = []
            for _ in range(args.decode_rounds):
                synchronize(torch.device(device))
                start = time.perf_counter()
                for path in paths:
                    frames = decode(path)
                synchronize(torch.device(device))
                times.append(time.perf_counter() - start)
        except Exception as error:  # e.g. an FFmpeg built without NVDEC: reported, not fatal
            results[device] = {"error": f"{type(error).__name__}: {error}"}
            log(f"decode on {device}: {results[device]['error']}")
            continue
        assert frames.shape[0] == args.num_frames and frames.device.type == device, (frames.shape, frames.device)
        results[device] = {"clips_per_s": len(paths) / median(times), "seconds_runs": times}
        log(f"decode on {device}: {results[device]['clips_per_s']:.1f} clips/s")
    return {"video": f"{width}x{height}, {seconds:g} s, 30 fps, H.264, keyframe every 250 frames", "devices": results}


def to_markdown(result: dict) -> str:
    s, machine = result["settings"], result["machine"]
    headers = [
        "shape",
        "inference (clips/s)",
        "inference peak (MiB)",
        "training (clips/s)",
        "training peak (MiB)",
        f"logits max abs diff {s['dtype']} vs fp32",
    ]
    rows = [
        [
            shape,
            r.get("inference", {}).get("clips_per_s"),
            r.get("inference", {}).get("peak_memory_mb"),
            r.get("train", {}).get("clips_per_s"),
            r.get("train", {}).get("peak_memory_mb"),
            f"{r['accuracy']['max_abs_diff']:.2e} (largest logit {r['accuracy']['max_abs_logit']:.2f})",
        ]
        for shape, r in result["results"].items()
    ]
    timed = "" if s["accuracy_only"] else f"batch {s['batch_size']}, "
    precision = "fp32 throughout" if s["dtype"] == "fp32" else f"{s['dtype']} backbone + fp32 decoder under autocast"
    if s["dtype"] in QUANTIZED:
        precision = f"torchao {s['dtype']} backbone (dynamic activations) + fp32 decoder" + (
            " under bf16 autocast" if s["device"].startswith("cuda") else ""
        )
    title = (
        f"{machine.get('gpu', machine['cpu'])}, {precision}, "
        f"{s['attn_implementation']} attention, compile {'on' if s['compile'] else 'off'}, {s['num_frames']} frames, "
        f"{timed}logits compared on {s['accuracy_batch_size']} clip(s); peak memory = {s['peak_memory']}"
    )
    lines = [title, "", markdown_table(headers, rows)]
    if result.get("decode"):
        decode = result["decode"]
        rows = [[device, r.get("clips_per_s"), r.get("error", "")] for device, r in decode["devices"].items()]
        lines += ["", f"Decoding {s['num_frames']} frames at stride 16 ({decode['video']}):", ""]
        lines.append(markdown_table(["torchcodec decoder", "clips/s", "error"], rows))
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=None, help="default cuda when available, else cpu")
    parser.add_argument("--dtype", choices=DTYPES, default="bf16", help="backbone weights and autocast dtype; int8 "
                        "and fp8: torchao quantization of the backbone")  # fmt: skip
    parser.add_argument("--attn-implementation", default="sdpa", choices=("sdpa", "flash_attention_2", "eager"))
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--shapes", default="vit-b16,vit-l14", help=f"comma-separated subset of {','.join(SHAPES)}")
    parser.add_argument("--batch-size", type=int, default=None, help="default 16 (2 with --tiny)")
    parser.add_argument("--accuracy-batch-size", type=int, default=2, help="clips in the fp32-vs-half logits check")
    parser.add_argument("--accuracy-only", action="store_true", help="only the logits check (e.g. full shapes on CPU)")
    parser.add_argument("--num-frames", type=int, default=8)
    parser.add_argument("--steps", type=int, default=None, help="timed steps, default 10 (2 with --tiny)")
    parser.add_argument("--warmup-steps", type=int, default=None, help="default 3, 10 with --compile (1 with --tiny)")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes only, for a run in seconds")
    parser.add_argument("--quick", action="store_true", help="ViT-B/16 at batch 4, 3 steps, 1 decode video: the real "
                        "code paths in under a minute on a GPU, not numbers to quote")  # fmt: skip
    parser.add_argument("--decode-videos", type=int, default=4, help="videos in the decode-rate measurement (0: skip it)")
    parser.add_argument("--decode-rounds", type=int, default=3)
    parser.add_argument("--video-dir", default=None, help="where the decode videos are generated (default: the cache)")
    parser.add_argument("--output", help="folder to write gpu_<dtype>.json and .md (gpu_on_cpu_<dtype>.* on CPU) into")
    args = parser.parse_args(argv)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.tiny:
        args.shapes = "tiny"
        args.decode_videos, args.decode_rounds = min(args.decode_videos, 2), 1
    if args.quick:
        args.shapes, args.batch_size = "vit-b16", args.batch_size or 4
        args.steps, args.warmup_steps = args.steps or 3, 2 if args.warmup_steps is None else args.warmup_steps
        args.decode_videos, args.decode_rounds = min(args.decode_videos, 1), 1
    args.shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    for shape in args.shapes:
        if shape not in SHAPES:
            parser.error(f"unknown shape {shape!r}, expected some of {list(SHAPES)}")
    args.batch_size = args.batch_size or (2 if args.tiny else 16)
    args.steps = args.steps or (2 if args.tiny else 10)
    if args.warmup_steps is None:
        args.warmup_steps = 1 if args.tiny else 10 if args.compile else 3
    return args


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        # A true fp32 reference for the accuracy check, and fp32 timings that mean fp32.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    if reason := skip_reason(args.dtype, device):
        log(f"skipped: {reason}")
        return
    results = {shape: benchmark_shape(shape, args, device) for shape in args.shapes}
    decode = decode_rates(args) if args.decode_videos and not args.accuracy_only else None
    machine = machine_info()
    if device.type == "cuda":
        machine["gpu"] = torch.cuda.get_device_name(device)
    result = {
        "benchmark": "gpu",
        "settings": {
            "tiny": args.tiny,
            "quick": args.quick,
            "device": str(device),
            "dtype": args.dtype,
            "attn_implementation": args.attn_implementation,
            "compile": args.compile,
            "accuracy_only": args.accuracy_only,
            "batch_size": args.batch_size,
            "accuracy_batch_size": args.accuracy_batch_size,
            "num_frames": args.num_frames,
            "steps": args.steps,
            "warmup_steps": args.warmup_steps,
            "peak_memory": "torch.cuda.max_memory_allocated" if device.type == "cuda" else "process peak RSS",
        },
        "machine": machine,
        "results": results,
        "decode": decode,
    }
    # A CPU run (the tests, or the accuracy check at full shapes) must not pass for GPU numbers.
    name = ("gpu" if device.type == "cuda" else "gpu_on_cpu") + f"_{args.dtype}"
    emit(name, result, to_markdown(result), args.output)


if __name__ == "__main__":
    main()
