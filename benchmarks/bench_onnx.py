"""Inference speed of an `evl-hf export` ONNX file under onnxruntime against the same model in PyTorch, on the CPU.

The model has the shapes of `--shape` (ViT-B/16 by default) with random weights, 8 frames and 400 labels (built as in
`bench_timeline.py`). It is
exported with `export_onnx` (what `evl-hf export` runs), then both run the same random clips of `--batch-size`:
PyTorch in eval mode under `torch.inference_mode`, onnxruntime's `CPUExecutionProvider` with its default graph
optimisations. Both use `--threads` threads. They take turns over `--repeats` rounds after one warm-up each; medians
are reported, with the largest difference between their logits.

    python benchmarks/bench_onnx.py
    python benchmarks/bench_onnx.py --repeats 5 --output docs/benchmark_results
    python benchmarks/bench_onnx.py --tiny        # seconds (after the export); what the tests run
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench_timeline import SHAPES, build_model
from benchmark_utils import emit, log, machine_info, markdown_table, median, ratio


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="vit-b16", choices=sorted(SHAPES))
    parser.add_argument("--num-frames", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--opset", type=int, default=18)
    parser.add_argument("--tiny", action="store_true", help="tiny model, 2 rounds")
    parser.add_argument("--output", help="folder to write onnx.json and onnx.md into")
    args = parser.parse_args(argv)
    if args.tiny:
        args.shape, args.repeats = "tiny", 2
    torch.set_num_threads(args.threads)

    import onnxruntime

    from evl_hf.onnx_export import export_onnx

    model, _ = build_model(args.shape, args.num_frames, frame_stride=16)
    size = model.config.vision_config.image_size
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.onnx"
        log(f"exporting {args.shape} to ONNX")
        start = time.perf_counter()
        export_onnx(model, path, opset=args.opset)
        export_seconds = time.perf_counter() - start
        file_mb = path.stat().st_size / 2**20 + sum(p.stat().st_size for p in Path(folder).glob("*.data")) / 2**20
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

        generator = torch.Generator().manual_seed(0)
        clips = [torch.randn(args.batch_size, args.num_frames, 3, size, size, generator=generator) for _ in range(2)]

        def run_pytorch(pixel_values):
            with torch.inference_mode():
                return model(pixel_values=pixel_values).logits

        def run_onnxruntime(pixel_values):
            return torch.from_numpy(session.run(["logits"], {"pixel_values": pixel_values.numpy()})[0])

        max_difference = max((run_pytorch(c) - run_onnxruntime(c)).abs().max().item() for c in clips)  # and warm-up
        seconds = {"pytorch": [], "onnxruntime": []}
        for round_index in range(args.repeats):
            for name, function in (("pytorch", run_pytorch), ("onnxruntime", run_onnxruntime)):
                start = time.perf_counter()
                function(clips[round_index % 2])
                seconds[name].append(time.perf_counter() - start)
            log(f"round {round_index}: pytorch {seconds['pytorch'][-1]:.2f} s, onnxruntime {seconds['onnxruntime'][-1]:.2f} s")

    pytorch, onnx_runtime = median(seconds["pytorch"]), median(seconds["onnxruntime"])
    output = {
        "benchmark": "onnx",
        "shape": args.shape,
        "num_frames": args.num_frames,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "opset": args.opset,
        "export_seconds": export_seconds,
        "onnx_file_mb": file_mb,
        "seconds": seconds,
        "median_seconds": {"pytorch": pytorch, "onnxruntime": onnx_runtime},
        "speedup_onnxruntime_vs_pytorch": ratio(pytorch, onnx_runtime),
        "max_logit_difference": max_difference,
        "machine": machine_info(),
    }
    markdown = (
        f"{args.shape}, {args.num_frames} frames, batch {args.batch_size}, {args.threads} threads, fp32, median of "
        f"{args.repeats} alternating rounds\n\n"
        + markdown_table(
            ["runtime", "seconds per batch", "clips/s"],
            [["PyTorch (eager)", pytorch, args.batch_size / pytorch],
             ["onnxruntime (CPU)", onnx_runtime, args.batch_size / onnx_runtime]],
        )  # fmt: skip
        + f"\n\nonnxruntime / PyTorch speed: {ratio(pytorch, onnx_runtime):.2f}x; largest logit difference "
        f"{max_difference:.1e}; export {export_seconds:.0f} s, file {file_mb:.0f} MiB"
    )
    emit("onnx", output, markdown, args.output)


if __name__ == "__main__":
    sys.exit(main())
