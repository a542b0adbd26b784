"""EVL with a low-precision backbone on a GPU (or the CPU): throughput, peak memory, logit error, decode (`gpu`).

The paper's recipe: the frozen backbone's weights in bf16 or fp16, decoder and head fp32, the forward under
`torch.autocast`; int8 and fp8 quantize the backbone's Linear layers with torchao instead (fp8 needs compute
capability 8.9+). Then the decode rate of torchcodec's CPU decoder and, where this build can, its CUDA decoder.
`torch.utils.benchmark.Timer` synchronizes CUDA around every timed block.
"""

import copy
import importlib.util

import torch

from evl_hf import quantization
from evl_hf.video_processing_evl import read_video_frames, sample_frame_indices
from torchcodec.decoders import VideoDecoder

from .harness import NUM_LABELS, SHAPES, build_model, log, measure, options, peak_rss_mb, video_dir, videos, write


DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32", "int8": "int8", "fp8": "float8"}


def add_arguments(parser):
    options(parser, device=(None, "default cuda when available, else cpu"), dtype=("bf16", None, list(DTYPES)),
            attn_implementation=("sdpa", None, ["sdpa", "flash_attention_2", "eager"]), compile=False,
            shapes="vit-b16,vit-l14", batch_size=16, accuracy_batch_size=2,
            accuracy_only=(False, "only the logits check (full shapes on a CPU)"), num_frames=8,
            decode_videos=(4, "0: no decode measurement"), tiny=(False, "tiny shapes, batch 2: seconds, on a CPU too"),
            video_dir=None)


def low_precision(model, dtype: str):
    if dtype in ("int8", "fp8"):  # torchao's CUDA kernels expect bf16 weights under bf16 autocast
        if next(model.parameters()).is_cuda:
            model.evl.vision_model.to(torch.bfloat16)
        return quantization.quantize_backbone(model, DTYPES[dtype])
    model.evl.vision_model.to(quantization.DTYPES[DTYPES[dtype]][0])
    return model


def autocast(dtype: str, device: torch.device):
    to = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(dtype)
    if dtype in ("int8", "fp8") and device.type == "cuda":
        to = torch.bfloat16
    return torch.autocast(device.type, dtype=to, enabled=to is not None)


def peak_memory_mb(device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else peak_rss_mb()


def benchmark_shape(shape: str, args, device) -> dict:
    model = build_model("evl", shape, num_frames=args.num_frames, attn_implementation=args.attn_implementation)
    model = model.to(device).eval()
    size = SHAPES[shape]["image_size"]
    pixel_values = torch.randn(args.batch_size, args.num_frames, 3, size, size, device=device)
    labels = torch.randint(0, NUM_LABELS, (args.batch_size,), device=device)
    with torch.inference_mode():
        reference = model(pixel_values=pixel_values[: args.accuracy_batch_size]).logits.float()
    low = low_precision(copy.deepcopy(model) if args.accuracy_only else model, args.dtype).eval()
    with torch.inference_mode(), autocast(args.dtype, device):
        logits = low(pixel_values=pixel_values[: args.accuracy_batch_size]).logits.float()
    difference = (logits - reference).abs()
    result = {"accuracy": {"max_abs_diff": difference.max().item(), "mean_abs_diff": difference.mean().item(),
                           "max_abs_logit": reference.abs().max().item(),
                           "same_top1": (logits.argmax(-1) == reference.argmax(-1)).float().mean().item()}}
    log(f"{shape}: logits max abs diff {args.dtype} vs fp32 {result['accuracy']['max_abs_diff']:.3g}")
    if args.accuracy_only:
        return result
    forward = torch.compile(low) if args.compile else low
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def inference():
        with torch.inference_mode(), autocast(args.dtype, device):
            forward(pixel_values=pixel_values)

    inference()  # warm-up (and compilation)
    m, _ = measure(inference, threads=torch.get_num_threads(), min_run_time=args.min_run_time)
    result["inference"] = {"seconds_per_batch": m.median, "clips_per_s": args.batch_size / m.median,
                           "peak_memory_mb": peak_memory_mb(device)}
    low.train()
    optimizer = torch.optim.AdamW([p for p in low.parameters() if p.requires_grad], lr=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=args.dtype == "fp16")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def train():
        with autocast(args.dtype, device):
            loss = forward(pixel_values=pixel_values, labels=labels).loss
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    train()
    m, _ = measure(train, threads=torch.get_num_threads(), min_run_time=args.min_run_time)
    result["train"] = {"seconds_per_step": m.median, "clips_per_s": args.batch_size / m.median,
                       "peak_memory_mb": peak_memory_mb(device)}
    log(f"{shape}: inference {result['inference']['clips_per_s']:.1f}, training {result['train']['clips_per_s']:.1f}"
        " clips/s")
    return result


def decode_rates(args) -> dict:
    """Clips/s (8 frames at stride 16, uint8 on the decoder's device) of torchcodec's CPU and CUDA decoders."""
    height, width, seconds = (96, 128, 4.0) if args.tiny else (360, 640, 10.0)
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
        log(f"decode on {device}: {results[device]['clips_per_s']:.1f} clips/s")
    return {"video": f"{width}x{height}, {seconds:g} s, 30 fps, H.264, keyframe every 250 frames", "devices": results}


def run(args):
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    args.min_run_time = 1.0 if device.type == "cuda" else 0.0
    if args.tiny:
        args.shapes, args.batch_size, args.decode_videos = "tiny", 2, min(args.decode_videos, 2)
    if args.quick:  # the real code paths at ViT-B/16 in about a minute on a GPU; `make test-gpu` runs it
        args.shapes, args.batch_size, args.decode_videos, args.min_run_time = "vit-b16", 4, 1, 0.0
    if device.type == "cuda":  # a true fp32 reference, and fp32 timings that mean fp32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    if args.dtype in ("int8", "fp8") and importlib.util.find_spec("torchao") is None:
        raise SystemExit(f"error: --dtype {args.dtype} needs torchao: pip install 'evl-hf[quantize]'")
    if args.dtype == "fp8" and (device.type != "cuda" or torch.cuda.get_device_capability(device) < (8, 9)):
        raise SystemExit("error: --dtype fp8 needs a CUDA GPU of compute capability 8.9 or more")
    results = {shape: benchmark_shape(shape, args, device) for shape in args.shapes.split(",")}
    decode = decode_rates(args) if args.decode_videos and not args.accuracy_only else None
    settings = {"tiny": args.tiny, "quick": args.quick, "device": str(device), "dtype": args.dtype,
                "attn_implementation": args.attn_implementation, "compile": args.compile,
                "accuracy_only": args.accuracy_only, "batch_size": args.batch_size,
                "accuracy_batch_size": args.accuracy_batch_size, "num_frames": args.num_frames,
                "peak_memory": "torch.cuda.max_memory_allocated" if device.type == "cuda" else "process peak RSS"}
    # a CPU run must not pass for GPU numbers
    name = ("gpu" if device.type == "cuda" else "gpu_on_cpu") + f"_{args.dtype}"
    return write(name, {"settings": settings, "results": results, "decode": decode}, args.output)


SUITES = {"gpu": ("bf16/fp16/int8/fp8 backbone: clips/s, peak memory and logit error; torchcodec CPU/CUDA decode",
                  add_arguments, run)}  # fmt: skip
