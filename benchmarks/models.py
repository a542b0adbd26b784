"""EVL against VideoMAE and TimeSformer on CPU (`cpu_models`): training step, inference, peak RSS (a fresh process
per system and round, the systems taking turns), FLOPs (`FlopCounterMode`, meta device), `torch.mm` per round."""

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time

import torch
import torch._inductor.config
from torch.utils.flop_counter import FlopCounterMode

from .harness import (
    NUM_LABELS,
    ROOT,
    build_model,
    log,
    matmul_gflops,
    measure,
    median,
    options,
    peak_rss_mb,
    ratio,
    write,
)


SYSTEMS = ("evl", "videomae", "timesformer")


def add_arguments(parser):
    options(
        parser,
        systems=(",".join(SYSTEMS), "comma-separated subset of evl,videomae,timesformer"),
        repeats=(3, "alternating rounds, a fresh process per system in each"),
        batch_size=2,
        num_frames=8,
        threads=2,
        compile_backbone=(False, "also time EVL's backbone compiled"),
    )
    parser.add_argument("--worker", choices=SYSTEMS, help=argparse.SUPPRESS)


def saved_for_backward(model, saved: dict):
    """Notes in `saved` the bytes of each activation autograd keeps for backward (parameters excluded): a frozen
    backbone should leave nothing there but the decoder's inputs."""
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    return torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor)


def worker(args) -> dict:
    """One system in this process: inference, then training steps (forward, loss, backward, AdamW)."""
    shape = "tiny" if args.quick else "vit-b16"
    model = build_model(args.worker, shape, num_frames=args.num_frames, randomize=False)
    size = model.config.image_size if args.worker != "evl" else model.config.vision_config.image_size
    pixel_values = torch.randn(args.batch_size, args.num_frames, 3, size, size)
    labels = torch.randint(0, NUM_LABELS, (args.batch_size,))
    result = {"parameters": sum(p.numel() for p in model.parameters()), "rss_after_build_mb": peak_rss_mb()}
    # the backbone's share, timed where it runs (patch embedding to last layer) inside the timed inference
    backbone = getattr(getattr(model, "evl", None), "vision_model", None)
    spans, hooks = [], []
    if backbone is not None:
        hooks = [
            backbone.embeddings.register_forward_pre_hook(lambda *_: spans.append(-time.perf_counter())),
            backbone.encoder.layers[-1].register_forward_hook(
                lambda *_: spans.__setitem__(-1, spans[-1] + time.perf_counter())
            ),
        ]
    m, _ = measure(torch.inference_mode()(lambda: model.eval()(pixel_values=pixel_values)), threads=args.threads)
    result.update(inference_s=[m.median], peak_rss_inference_mb=peak_rss_mb())
    if spans:
        result["backbone_inference_s"] = [median(spans)]
    for hook in hooks:
        hook.remove()
    trainable = [p for p in model.train().parameters() if p.requires_grad]
    result["trainable_parameters"] = sum(p.numel() for p in trainable)
    optimizer, saved = torch.optim.AdamW(trainable, lr=1e-4), {}

    def train(record=False):
        with saved_for_backward(model, saved) if record else contextlib.nullcontext():
            model(pixel_values=pixel_values, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    train(record=True)
    result["saved_for_backward_mb"] = sum(saved.values()) / 2**20
    m, _ = measure(train, threads=args.threads)
    result.update(train_step_s=[m.median], peak_rss_train_mb=peak_rss_mb())
    if backbone is not None and args.compile_backbone:
        torch._inductor.config.freezing = True  # frozen weights folded into the graph
        compiled, frames = torch.compile(backbone.eval()), pixel_values.flatten(0, 1)
        with torch.inference_mode():
            start = time.perf_counter()
            compiled(pixel_values=frames)
            result["backbone_compile_s"] = time.perf_counter() - start
            m, _ = measure(lambda: compiled(pixel_values=frames), threads=args.threads)
        result["backbone_compiled_inference_s"] = [m.median]
    return result


def count_flops(system: str, shape: str, num_frames: int, batch_size: int) -> dict:
    """FLOPs of an inference forward and of a training forward+backward, on the meta device (nothing computed)."""
    with torch.device("meta"):
        model = build_model(system, shape, num_frames=num_frames, randomize=False)
        size = model.config.image_size if system != "evl" else model.config.vision_config.image_size
        pixel_values = torch.randn(batch_size, num_frames, 3, size, size)
        labels = torch.randint(0, NUM_LABELS, (batch_size,))

    def flops(step) -> int:  # autograd stays on: FlopCounterMode fails on views of parameters taken under no_grad
        with FlopCounterMode(display=False) as counter:
            step()
        return counter.get_total_flops()

    counts = {
        "inference_flops": flops(lambda: model.eval()(pixel_values=pixel_values)),
        "train_flops": flops(lambda: model.train()(pixel_values=pixel_values, labels=labels).loss.backward()),
    }
    if system == "evl":  # the frozen backbone on the frames folded into the batch, as EVL runs it
        frames = pixel_values.flatten(0, 1)
        counts["backbone_inference_flops"] = flops(lambda: model.evl.vision_model(pixel_values=frames))
    return counts


def run(args):
    if args.worker:
        print(json.dumps(worker(args)))
        return None
    systems, repeats = args.systems.split(","), 1 if args.quick else args.repeats
    command = [
        sys.executable,
        "-m",
        "benchmarks",
        "cpu_models",
        "--threads",
        str(args.threads),
        "--batch_size",
        str(args.batch_size),
        "--num_frames",
        str(args.num_frames),
    ] + ["--quick"] * args.quick
    command += ["--compile_backbone"] * args.compile_backbone
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(ROOT)}
    runs, matmul = {s: [] for s in systems}, []
    for index in range(repeats):
        matmul.append(matmul_gflops(args.threads))
        for system in systems[index % len(systems) :] + systems[: index % len(systems)]:
            done = subprocess.run([*command, "--worker", system], capture_output=True, text=True, env=env, cwd=ROOT)
            if done.returncode:
                raise RuntimeError(f"{system} worker failed:\n{done.stderr[-4000:]}")
            runs[system].append(json.loads(done.stdout.strip().splitlines()[-1]))
        log(
            f"round {index + 1}/{repeats}: matmul {matmul[-1]:.0f} GFLOP/s, "
            + ", ".join(f"{s} train {runs[s][-1]['train_step_s'][0]:.2f} s" for s in systems)
        )
    shape = "tiny" if args.quick else "vit-b16"
    result = {
        s: summarize(r, count_flops(s, shape, args.num_frames, args.batch_size), args.batch_size)
        for s, r in runs.items()
    }
    get = lambda system, key: result.get(system, {}).get(key)  # noqa: E731
    ratios = {
        "evl_train_step_over_evl_inference": ratio(get("evl", "train_step_s"), get("evl", "inference_s")),
        **{
            f"evl_train_step_over_{b}": ratio(get("evl", "train_step_s"), get(b, "train_step_s"))
            for b in ("timesformer", "videomae")
        },
        **{
            f"evl_train_peak_rss_over_{b}": ratio(get("evl", "peak_rss_train_mb"), get(b, "peak_rss_train_mb"))
            for b in ("timesformer", "videomae")
        },
        "evl_backbone_gflops_over_matmul": ratio(get("evl", "backbone_inference_gflops_per_s"), median(matmul)),
    }
    if get("evl", "backbone_compiled_inference_gflops_per_s"):
        ratios["evl_compiled_backbone_gflops_over_matmul"] = ratio(
            get("evl", "backbone_compiled_inference_gflops_per_s"), median(matmul)
        )
    return write(
        "cpu_models",
        {
            "matmul_gflops_per_s": median(matmul),
            "matmul_gflops_per_s_runs": matmul,
            "systems": result,
            "ratios": ratios,
        },
        args,
        shape=shape,
        repeats=repeats,
        dtype="float32",
        timing="torch.utils.benchmark.Timer.blocked_autorange, median of its blocks",
    )


def summarize(results: list, flops: dict, batch_size: int) -> dict:
    pooled = {
        k: [x for r in results for x in r.get(k, [])]
        for k in ("train_step_s", "inference_s", "backbone_inference_s", "backbone_compiled_inference_s")
    }
    train_s, inference_s = median(pooled["train_step_s"]), median(pooled["inference_s"])
    summary = {
        "train_step_s": train_s,
        "inference_s": inference_s,
        "inference_clips_per_s": ratio(batch_size, inference_s),
        "train_clips_per_s": ratio(batch_size, train_s),
        **{
            k: median([r[k] for r in results])
            for k in ("peak_rss_train_mb", "peak_rss_inference_mb", "rss_after_build_mb", "saved_for_backward_mb")
        },
        "parameters": results[0]["parameters"],
        "trainable_parameters": results[0]["trainable_parameters"],
        **flops,
        "inference_gflop_per_clip": flops["inference_flops"] / batch_size / 1e9,
        "inference_gflops_per_s": ratio(flops["inference_flops"] / 1e9, inference_s),
        "train_gflops_per_s": ratio(flops["train_flops"] / 1e9, train_s),
        "runs": {k: v for k, v in pooled.items() if v},
    }
    for key, name in (
        ("backbone_inference_s", "backbone_inference"),
        ("backbone_compiled_inference_s", "backbone_compiled_inference"),
    ):
        if pooled[key]:
            summary[key] = median(pooled[key])
            summary[f"{name}_gflops_per_s"] = ratio(flops["backbone_inference_flops"] / 1e9, summary[key])
    if "backbone_inference_s" in summary:
        summary["backbone_share_of_inference"] = ratio(summary["backbone_inference_s"], inference_s)
    if pooled["backbone_compiled_inference_s"]:
        summary["backbone_compile_s"] = median([r["backbone_compile_s"] for r in results])
    return summary


SUITES = {
    "cpu_models": (
        "EVL against VideoMAE-B and TimeSformer-B on CPU: train step, inference, RSS, FLOPs",
        add_arguments,
        run,
    )
}
