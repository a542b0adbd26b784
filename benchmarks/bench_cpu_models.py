"""Training step time, peak memory and inference throughput of EVL against end-to-end video transformers on CPU.

Systems, all with random weights and ViT-B/16 shapes (224 px, patch 16, width 768, 12 layers), 8 frames:
- `evl`: `EVLForVideoClassification` with its CLIP backbone frozen (only the decoder and head train);
- `videomae`: `VideoMAEForVideoClassification`, trained end to end;
- `timesformer`: `TimesformerForVideoClassification` (divided space-time attention), trained end to end.

Every measurement of a system runs in a fresh subprocess, so that its peak RSS is its own, and the
systems take turns (round robin, `--repeats` rounds) so that the noise of a shared machine spreads over
all of them; medians over the rounds are reported. In each subprocess: build the model, run inference
(`eval()`, `torch.inference_mode()`) for `--warmup-steps` + `--steps` batches, then training steps
(forward, loss, backward, AdamW step) for as many. The main process measures fp32 `torch.mm`
throughput once per round, for the achieved-GFLOP/s ratio.

FLOPs are counted with `torch.utils.flop_counter.FlopCounterMode` on the meta device (no compute), for
the whole model and for EVL's backbone (`model.evl.vision_model`); the backbone's inference time is
taken with forward hooks inside the timed EVL inference.

    python benchmarks/bench_cpu_models.py                         # full run, 3 rounds
    python benchmarks/bench_cpu_models.py --repeats 5 --output docs/benchmark_results
    python benchmarks/bench_cpu_models.py --tiny --repeats 1      # seconds; what the tests run
"""

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from functools import partial

import torch

from benchmark_utils import (
    VIT_SHAPES,
    emit,
    fmt,
    log,
    machine_info,
    markdown_table,
    median,
    peak_rss_mb,
    ratio,
    target,
    targets_table,
)


SYSTEMS = ("evl", "videomae", "timesformer")
NUM_LABELS = 400  # Kinetics-400

VIT_B16 = VIT_SHAPES["vit-b16"]
TINY = VIT_SHAPES["tiny"]


def build_model(system: str, shapes: dict, num_frames: int):
    """A randomly initialised classifier for `system`, with the ViT `shapes` given."""
    id2label = {i: f"class_{i}" for i in range(NUM_LABELS)}
    label2id = {name: i for i, name in id2label.items()}
    if system == "evl":
        from transformers import CLIPVisionConfig

        from evl_hf import EVLConfig, EVLForVideoClassification

        config = EVLConfig(
            vision_config=CLIPVisionConfig(**shapes),
            num_frames=num_frames,
            decoder_num_layers=min(4, shapes["num_hidden_layers"]),
            id2label=id2label,
            label2id=label2id,
        )
        return EVLForVideoClassification(config)
    if system == "videomae":
        from transformers import VideoMAEConfig, VideoMAEForVideoClassification

        config = VideoMAEConfig(**shapes, num_frames=num_frames, id2label=id2label, label2id=label2id)
        return VideoMAEForVideoClassification(config)
    if system == "timesformer":
        from transformers import TimesformerConfig, TimesformerForVideoClassification

        config = TimesformerConfig(**shapes, num_frames=num_frames, id2label=id2label, label2id=label2id)
        return TimesformerForVideoClassification(config)
    raise ValueError(f"unknown system {system!r}, expected one of {SYSTEMS}")


def backbone_of(model):
    """EVL's frozen CLIP encoder, or None for the end-to-end systems."""
    evl = getattr(model, "evl", None)
    return getattr(evl, "vision_model", None)


def attention_implementation(model) -> str | None:
    config = backbone_of(model).config if backbone_of(model) is not None else model.config
    return getattr(config, "_attn_implementation", None)


def training_step(model, optimizer, pixel_values, labels) -> None:
    loss = model(pixel_values=pixel_values, labels=labels).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def record_saved_for_backward(model, saved: dict):
    """Hooks that note, in `saved`, the bytes of every activation autograd keeps for backward (parameters excluded).

    They tell whether a training step keeps more than it needs to: for EVL, a frozen backbone should leave
    nothing there but the decoder's inputs. Saved tensors stay alive until backward, so storages are not reused.
    """
    parameter_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameter_storages:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    return torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor)


def run_worker(args) -> dict:
    """One system, one fresh process: inference then training timings, peak RSS after each."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shapes = TINY if args.tiny else VIT_B16
    size = shapes["image_size"]
    model = build_model(args.worker, shapes, args.num_frames)
    pixel_values = torch.randn(args.batch_size, args.num_frames, 3, size, size)
    labels = torch.randint(0, NUM_LABELS, (args.batch_size,))
    result = {
        "parameters": sum(p.numel() for p in model.parameters()),
        "rss_after_build_mb": peak_rss_mb(),
        "attn_implementation": attention_implementation(model),
    }

    # The backbone's share of the inference, timed where it runs rather than in a second forward.
    # From the patch embedding to the last encoder layer, so it holds however the model calls the encoder.
    backbone, backbone_times, hooks = backbone_of(model), [], []
    if backbone is not None:
        enter = lambda *_: backbone_times.append(-time.perf_counter())  # noqa: E731
        leave = lambda *_: backbone_times.__setitem__(-1, backbone_times[-1] + time.perf_counter())  # noqa: E731
        hooks = [
            backbone.embeddings.register_forward_pre_hook(enter),
            backbone.encoder.layers[-1].register_forward_hook(leave),
        ]

    model.eval()
    inference = []
    with torch.inference_mode():
        for _ in range(args.warmup_steps + args.steps):
            start = time.perf_counter()
            model(pixel_values=pixel_values)
            inference.append(time.perf_counter() - start)
    result["inference_s"] = inference[args.warmup_steps :]
    result["peak_rss_inference_mb"] = peak_rss_mb()
    if backbone is not None and len(backbone_times) == len(inference):
        result["backbone_inference_s"] = backbone_times[args.warmup_steps :]
    for hook in hooks:
        hook.remove()

    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    result["trainable_parameters"] = sum(p.numel() for p in trainable)
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    train, saved = [], {}
    for step in range(args.warmup_steps + args.steps):
        # The first step (a warm-up one unless there is none) also notes what autograd keeps; the hooks cost little.
        recording = record_saved_for_backward(model, saved) if step == 0 else contextlib.nullcontext()
        start = time.perf_counter()
        with recording:
            training_step(model, optimizer, pixel_values, labels)
        train.append(time.perf_counter() - start)
    result["saved_for_backward_mb"] = sum(saved.values()) / 2**20
    result["train_step_s"] = train[args.warmup_steps :]
    result["peak_rss_train_mb"] = peak_rss_mb()

    if backbone is not None and args.compile_backbone:
        # The same frozen encoder through torch.compile (inductor, weights frozen into the graph), on the frames
        # folded into the batch; last, so that compilation does not weigh on the peak RSS figures above.
        from torch._inductor import config as inductor_config

        inductor_config.freezing = True
        compiled = torch.compile(backbone.eval())
        frames = pixel_values.flatten(0, 1)
        compiled_times = []
        with torch.inference_mode():
            start = time.perf_counter()
            compiled(pixel_values=frames)
            result["backbone_compile_s"] = time.perf_counter() - start
            for _ in range(args.warmup_steps + args.steps):
                start = time.perf_counter()
                compiled(pixel_values=frames)
                compiled_times.append(time.perf_counter() - start)
        result["backbone_compiled_inference_s"] = compiled_times[args.warmup_steps :]
    return result


def count_flops(system: str, shapes: dict, num_frames: int, batch_size: int) -> dict:
    """FLOPs of one inference forward and of one training forward+backward, counted on the meta device.

    The forwards run with autograd enabled even for inference: the FLOPs are the same, and
    FlopCounterMode's module tracker fails on views of parameters taken under `no_grad`.
    """
    from torch.utils.flop_counter import FlopCounterMode

    size = shapes["image_size"]
    with torch.device("meta"):
        model = build_model(system, shapes, num_frames)
        pixel_values = torch.randn(batch_size, num_frames, 3, size, size)
        labels = torch.randint(0, NUM_LABELS, (batch_size,))
    if system == "evl":
        # The input check reads a value (`isfinite().all()`), which meta tensors do not have; it does no FLOPs.
        model.evl._check_pixel_values = lambda pixel_values: None
    counts = {}
    model.eval()
    with FlopCounterMode(display=False) as counter:
        model(pixel_values=pixel_values)
    counts["inference_flops"] = counter.get_total_flops()
    model.train()
    with FlopCounterMode(display=False) as counter:
        model(pixel_values=pixel_values, labels=labels).loss.backward()
    counts["train_flops"] = counter.get_total_flops()
    backbone = backbone_of(model)
    if backbone is not None:
        # The frozen CLIP encoder on the frames folded into the batch: (B * T, 3, H, W).
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            backbone(pixel_values=pixel_values.flatten(0, 1))
        counts["backbone_inference_flops"] = counter.get_total_flops()
    return counts


def matmul_gflops(size: int, threads: int, repeats: int = 3) -> float:
    """fp32 `torch.mm` throughput on two square `size` x `size` matrices: the machine's practical peak."""
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - start)
    return 2 * size**3 / median(times) / 1e9


def run_subprocess(system: str, args) -> dict:
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker", system,
        "--threads", str(args.threads),
        "--batch-size", str(args.batch_size),
        "--num-frames", str(args.num_frames),
        "--warmup-steps", str(args.warmup_steps),
        "--steps", str(args.steps),
    ]  # fmt: skip
    if args.compile_backbone:
        command.append("--compile-backbone")
    if args.tiny:
        command.append("--tiny")
    threads = str(args.threads)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{system} worker failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def pooled(results: list[dict], key: str) -> list[float]:
    """The timings under `key` of every round, in one list."""
    return [x for r in results for x in r.get(key, [])]


def summarize(runs: dict, flops: dict, matmul: list, args) -> dict:
    systems = {}
    for system, results in runs.items():
        flat = partial(pooled, results)
        train_s, inference_s = median(flat("train_step_s")), median(flat("inference_s"))
        summary = {
            "train_step_s": train_s,
            "inference_s": inference_s,
            "inference_clips_per_s": ratio(args.batch_size, inference_s),
            "train_clips_per_s": ratio(args.batch_size, train_s),
            "peak_rss_train_mb": median([r["peak_rss_train_mb"] for r in results]),
            "peak_rss_inference_mb": median([r["peak_rss_inference_mb"] for r in results]),
            "rss_after_build_mb": median([r["rss_after_build_mb"] for r in results]),
            "saved_for_backward_mb": median([r["saved_for_backward_mb"] for r in results]),
            "parameters": results[0]["parameters"],
            "trainable_parameters": results[0]["trainable_parameters"],
            "attn_implementation": results[0]["attn_implementation"],
            **flops[system],
            "inference_gflop_per_clip": flops[system]["inference_flops"] / args.batch_size / 1e9,
            "inference_gflops_per_s": ratio(flops[system]["inference_flops"] / 1e9, inference_s),
            "train_gflops_per_s": ratio(flops[system]["train_flops"] / 1e9, train_s),
            "runs": {
                k: flat(k)
                for k in ("train_step_s", "inference_s", "backbone_inference_s", "backbone_compiled_inference_s")
                if flat(k)
            },
        }
        backbone_s = median(flat("backbone_inference_s"))
        if backbone_s is not None:
            summary["backbone_inference_s"] = backbone_s
            summary["backbone_share_of_inference"] = ratio(backbone_s, inference_s)
            summary["backbone_inference_gflops_per_s"] = ratio(
                flops[system]["backbone_inference_flops"] / 1e9, backbone_s
            )
        compiled_s = median(flat("backbone_compiled_inference_s"))
        if compiled_s is not None:
            summary["backbone_compiled_inference_s"] = compiled_s
            summary["backbone_compile_s"] = median([r["backbone_compile_s"] for r in results])
            summary["backbone_compiled_inference_gflops_per_s"] = ratio(
                flops[system]["backbone_inference_flops"] / 1e9, compiled_s
            )
        systems[system] = summary

    matmul_peak = median(matmul)
    get = lambda system, key: systems.get(system, {}).get(key)  # noqa: E731
    ratios = {
        "evl_train_step_over_evl_inference": ratio(get("evl", "train_step_s"), get("evl", "inference_s")),
        "evl_train_step_over_timesformer": ratio(get("evl", "train_step_s"), get("timesformer", "train_step_s")),
        "evl_train_peak_rss_over_timesformer": ratio(
            get("evl", "peak_rss_train_mb"), get("timesformer", "peak_rss_train_mb")
        ),
        "evl_train_step_over_videomae": ratio(get("evl", "train_step_s"), get("videomae", "train_step_s")),
        "evl_train_peak_rss_over_videomae": ratio(
            get("evl", "peak_rss_train_mb"), get("videomae", "peak_rss_train_mb")
        ),
        "evl_backbone_gflops_over_matmul": ratio(get("evl", "backbone_inference_gflops_per_s"), matmul_peak),
        "evl_compiled_backbone_gflops_over_matmul": ratio(
            get("evl", "backbone_compiled_inference_gflops_per_s"), matmul_peak
        ),
    }
    targets = {
        "evl_train_step_over_evl_inference": target(ratios["evl_train_step_over_evl_inference"], at_most=1.15),
        "evl_train_step_over_timesformer": target(ratios["evl_train_step_over_timesformer"], at_most=0.5),
        "evl_train_peak_rss_over_timesformer": target(ratios["evl_train_peak_rss_over_timesformer"], at_most=0.6),
        "evl_backbone_gflops_over_matmul": target(ratios["evl_backbone_gflops_over_matmul"], at_least=0.8),
    }
    if ratios["evl_compiled_backbone_gflops_over_matmul"] is not None:  # measured with --compile-backbone only
        targets["evl_compiled_backbone_gflops_over_matmul"] = target(
            ratios["evl_compiled_backbone_gflops_over_matmul"], at_least=0.8
        )
    return {
        "benchmark": "cpu_models",
        "settings": {
            "tiny": args.tiny,
            "shapes": TINY if args.tiny else VIT_B16,
            "num_frames": args.num_frames,
            "batch_size": args.batch_size,
            "dtype": "float32",
            "threads": args.threads,
            "repeats": args.repeats,
            "warmup_steps": args.warmup_steps,
            "steps": args.steps,
            "matmul_size": args.matmul_size,
        },
        "machine": machine_info(),
        "matmul_gflops_per_s": matmul_peak,
        "matmul_gflops_per_s_runs": matmul,
        "systems": systems,
        "ratios": ratios,
        "targets": targets,
    }


def to_markdown(result: dict) -> str:
    s = result["settings"]
    headers = [
        "system",
        "train step (s)",
        "peak RSS train (MiB)",
        "inference (s/batch)",
        "inference (clips/s)",
        "GFLOP/clip",
        "inference GFLOP/s",
        "saved for backward (MiB)",
        "trainable params",
    ]
    rows = [
        [
            name,
            r["train_step_s"],
            r["peak_rss_train_mb"],
            r["inference_s"],
            r["inference_clips_per_s"],
            r["inference_gflop_per_clip"],
            r["inference_gflops_per_s"],
            r["saved_for_backward_mb"],
            f"{r['trainable_parameters'] / 1e6:.1f}M of {r['parameters'] / 1e6:.1f}M",
        ]
        for name, r in result["systems"].items()
    ]
    shape = "tiny shapes" if s["tiny"] else "ViT-B/16 shapes"
    title = (
        f"{shape}, {s['num_frames']} frames, batch {s['batch_size']}, fp32, {s['threads']} threads; "
        f"medians of {s['repeats']} alternating rounds x {s['steps']} step(s) "
        f"after {s['warmup_steps']} warm-up step(s)"
    )
    lines = [title, "", markdown_table(headers, rows), ""]
    evl = result["systems"].get("evl", {})
    lines.append(
        f"fp32 `torch.mm` ({s['matmul_size']}x{s['matmul_size']}): {fmt(result['matmul_gflops_per_s'], 1)} GFLOP/s"
    )
    if "backbone_inference_s" in evl:
        lines.append(
            f"EVL backbone in inference: {fmt(evl['backbone_inference_s'])} s "
            f"({fmt(100 * evl['backbone_share_of_inference'], 0)}% of the inference), "
            f"{fmt(evl['backbone_inference_gflops_per_s'], 1)} GFLOP/s"
        )
    if "backbone_compiled_inference_s" in evl:
        lines.append(
            f"EVL backbone through torch.compile (inductor, frozen weights; compiled in "
            f"{fmt(evl['backbone_compile_s'], 0)} s): {fmt(evl['backbone_compiled_inference_s'])} s, "
            f"{fmt(evl['backbone_compiled_inference_gflops_per_s'], 1)} GFLOP/s"
        )
    lines += ["", targets_table(result["targets"])]
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma-separated subset of {','.join(SYSTEMS)}")
    parser.add_argument("--repeats", type=int, default=3, help="alternating rounds over the systems")
    parser.add_argument(
        "--warmup-steps", type=int, default=2, help="untimed batches per process and mode (the optimizer settles in 2)"
    )
    parser.add_argument("--steps", type=int, default=1, help="timed batches per process and mode")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--num-frames", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--matmul-size", type=int, default=None, help="default 2048 (256 with --tiny)")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes, for a run in seconds")
    parser.add_argument(
        "--compile-backbone",
        action="store_true",
        help="also time EVL's frozen backbone through torch.compile (inductor; adds a compilation per round)",
    )
    parser.add_argument("--output", help="folder to write cpu_models.json and cpu_models.md into")
    parser.add_argument("--worker", choices=SYSTEMS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.matmul_size is None:
        args.matmul_size = 256 if args.tiny else 2048
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(run_worker(args)))
        return
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    for system in systems:
        if system not in SYSTEMS:
            raise SystemExit(f"unknown system {system!r}, expected some of {SYSTEMS}")

    shapes = TINY if args.tiny else VIT_B16
    flops = {system: count_flops(system, shapes, args.num_frames, args.batch_size) for system in systems}
    runs, matmul, loads = {system: [] for system in systems}, [], []
    for round_index in range(args.repeats):
        loads.append(round(os.getloadavg()[0], 2))
        matmul.append(matmul_gflops(args.matmul_size, args.threads))
        log(f"round {round_index + 1}/{args.repeats}: matmul {matmul[-1]:.1f} GFLOP/s, load {os.getloadavg()[0]:.2f}")
        for system in systems:
            runs[system].append(run_subprocess(system, args))
            r = runs[system][-1]
            log(
                f"  {system}: train {median(r['train_step_s']):.3f} s, inference {median(r['inference_s']):.3f} s, "
                f"peak RSS {r['peak_rss_train_mb']:.0f} MiB"
            )
    result = summarize(runs, flops, matmul, args)
    # Other work on a shared machine shows here: a 1-minute load above the thread count means contention.
    result["machine"]["loadavg_1min_at_round_start"] = loads
    emit("cpu_models", result, to_markdown(result), args.output)


if __name__ == "__main__":
    main()
