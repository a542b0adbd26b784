"""What every suite shares: machine record (`torch.utils.collect_env`), model and video builders, timed rounds that
alternate the systems (`torch.utils.benchmark.Timer`; on a shared machine a ratio survives the load, a time does
not), and the JSON written."""

import json
import math
import os
import resource
import statistics
import sys
import time
from importlib import metadata
from pathlib import Path

import torch
from torch.utils import benchmark

from evl_hf.testing_utils import TINY_VISION_SHAPE


ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
RESULTS = ROOT / "docs" / "benchmark_results"
NUM_LABELS = 400  # Kinetics-400
# (image_size, patch_size, hidden_size, intermediate_size, num_hidden_layers, num_attention_heads); vit-s16 has
# DeiT-S widths with CLIP's patch (a quarter of ViT-B/16's backbone work); tiny is the tests' tower
SHAPE_FIELDS = tuple(TINY_VISION_SHAPE)
SHAPES = {
    "vit-b16": dict(zip(SHAPE_FIELDS, (224, 16, 768, 3072, 12, 12))),
    "vit-l14": dict(zip(SHAPE_FIELDS, (224, 14, 1024, 4096, 24, 16))),
    "vit-s16": dict(zip(SHAPE_FIELDS, (224, 16, 384, 1536, 12, 6))),
    "tiny": dict(TINY_VISION_SHAPE),
}


def options(parser, **defaults) -> None:
    """`--snake_case` options, as every evl_hf command and example script spells them, typed by their default (bool: a
    switch, None: str), or `(default, help[, choices])`."""
    for name, value in defaults.items():
        default, help, choices = (value + (None,) * 3)[:3] if isinstance(value, tuple) else (value, None, None)
        flag = f"--{name}"
        if isinstance(default, bool):
            parser.add_argument(flag, action="store_true", help=help)
        else:
            kind = str if default is None else type(default)
            parser.add_argument(flag, type=kind, default=default, help=help, choices=choices)


def log(message: str) -> None:
    """Progress on stderr, so that stdout holds the results."""
    print(message, file=sys.stderr, flush=True)


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def ratio(numerator, denominator):
    return None if numerator is None or not denominator else numerator / denominator


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def machine() -> dict:
    """`torch.utils.collect_env`'s record, plus what the tables quote: the CPU, its fast-bf16/int8 flags, the load."""
    from torch.utils.collect_env import get_env_info

    env = get_env_info()._asdict()
    lscpu = dict(line.split(":", 1) for line in (env.pop("cpu_info") or "").splitlines() if ":" in line)
    flags = set(lscpu.get("Flags", "").split())
    installed = {d.metadata["Name"].lower(): d.version for d in metadata.distributions()}
    versions = {
        p: installed.get(p)
        for p in ("torch", "torchvision", "torchcodec", "transformers", "accelerate", "av", "torchao", "evl-hf")
    }
    # the machine is shared: the load says how quiet it was
    return {
        "cpu": lscpu.get("Model name", "unknown").strip(),
        "cpu_count": os.cpu_count(),
        "fast_bf16": bool(flags & {"avx512_bf16", "amx_bf16"}),
        "fast_int8": bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"}),
        "versions": versions,
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
        "collect_env": env,
        **({"gpu": torch.cuda.get_device_name()} if torch.cuda.is_available() else {}),
    }


# What a result must agree with before it is written. For each suite, `(path, expected)` for every figure derived
# from others in the same result (a ratio of two medians, a median of its runs, a rate of its time: equal to what its
# inputs give), and `(path, slice(low, high))` for a value that must lie in that range (a part within its whole, the
# reference suite's parity).


def _cpu_models(result):
    systems = result["systems"]
    if "evl" not in systems:  # `--systems` without it: the ratios are all None
        return
    evl = systems["evl"]
    for baseline in ("timesformer", "videomae"):
        if baseline in systems:
            for key, figure in (("train_step", "train_step_s"), ("train_peak_rss", "peak_rss_train_mb")):
                yield ("ratios", f"evl_{key}_over_{baseline}"), ratio(evl[figure], systems[baseline][figure])
    yield ("systems", "evl", "train_step_s"), median(evl["runs"]["train_step_s"])
    gflops_per_s = ratio(evl["backbone_inference_flops"] / 1e9, evl["backbone_inference_s"])
    yield ("ratios", "evl_backbone_gflops_over_matmul"), ratio(gflops_per_s, result["matmul_gflops_per_s"])


def _reference(result):
    times, runs, base = result["times"], result["runs"], result["runs"]["reference_fp32"]
    for key in result["ratios"]:
        system, mode = key.removesuffix("_speedup").rsplit("_", 1)
        yield ("times", system, f"{mode}_s"), median(runs[system][f"{mode}_s"])
        yield ("ratios", key), ratio(times["reference_fp32"][f"{mode}_s"], times[system][f"{mode}_s"])
        if "median_of_round_ratios" in result:  # each round's own ratio: both sides at that round's load
            rounds = list(map(ratio, base[f"{mode}_s"], runs[system][f"{mode}_s"]))
            yield ("median_of_round_ratios", key), median(rounds)
    yield ("max_abs_logit_diff", "evl_hf_fp32"), slice(0, 1e-4)  # parity: one set of weights in both


def _timeline(result):
    for key, seconds in (("speedup", "whole_video_seconds"), ("cpu_speedup", "whole_video_cpu_seconds")):
        yield (key,), ratio(median(result[seconds]["per_window"]), median(result[seconds]["timeline"]))


def _data_path(result):
    settings = result["settings"]
    gpu = settings["gpu_clips_per_s"]
    yield ("settings", "gpu_clips_per_s"), settings["gpu_tflops"] * 1e3 / settings["gflop_per_clip"]
    for size, video in result["videos"].items():
        methods = video["methods"]
        for name, method in methods.items():
            yield ("videos", size, "methods", name, "cores_per_gpu"), ratio(gpu, method["clips_per_s"])
            yield ("videos", size, "methods", name, "seconds_per_clip"), ratio(1, method["clips_per_s"])
        for interval in settings["prepare_videos"]["keyframe_intervals"]:
            prepared, sampled = methods[f"torchcodec_prepared_g{interval}"], methods["torchcodec_sampled"]
            key = f"training_{size}_prepared_g{interval}_over_torchcodec_sampled"
            yield ("ratios", key), ratio(prepared["clips_per_s"], sampled["clips_per_s"])
    for key, preparation in result["preparation"].items():
        yield ("preparation", key, "size_ratio"), ratio(preparation["bytes_after"], preparation["bytes_before"])
        seconds = preparation.get("video_seconds")  # GB per hour of video, in the results that have it
        for side in ("before", "after") if seconds else ():
            yield ("preparation", key, f"gb_per_hour_{side}"), ratio(preparation[f"bytes_{side}"] * 3.6e-6, seconds)
    for views, evaluation in result["evaluation"].items():
        for name, method in evaluation["methods"].items():
            yield ("evaluation", views, "methods", name, "clips_per_s"), int(views[6:]) * method["videos_per_s"]


def _data_wait(result):
    for name, run in result["runs"].items():
        yield ("runs", name, "data_wait_fraction"), ratio(run["data_wait_s"], run["train_loop_s"])
        yield ("runs", name, "data_wait_s"), slice(run["first_batch_of_epoch_wait_s"], run["train_loop_s"])


def _streaming(result):
    for name, entry in result["results"].items():
        yield ("results", name, "streamed", "clips_per_s"), median(entry["streamed"]["runs"])
        yield ("results", name, "map-style", "clips_per_s"), median(entry["map-style"]["runs"])
        streamed, map_style = entry["streamed"]["clips_per_s"], entry["map-style"]["clips_per_s"]
        yield ("results", name, "streamed_over_map_style"), ratio(streamed, map_style)


def _onnx(result):
    medians = result["median_seconds"]
    for name, seconds in result["seconds"].items():
        yield ("median_seconds", name), median(seconds)
    yield ("speedup_onnxruntime_vs_pytorch",), ratio(medians["pytorch"], medians["onnxruntime"])


def _gpu(result):
    archive_training = result.get("archive_training") or {"methods": {}}
    for name, method in archive_training["methods"].items():
        path = ("archive_training", "methods", name)
        yield (*path, "clips_per_s"), ratio(archive_training["batch_size"], method["seconds_per_batch"])
        for share in ("", "worker_"):
            yield (*path, f"{share}cpu_cores_per_1000_clips_per_s"), 1000 * method[f"{share}cpu_seconds_per_clip"]


DERIVED = {
    "cpu_models": _cpu_models,
    "reference": _reference,
    "timeline": _timeline,
    "data_path": _data_path,
    "data_wait": _data_wait,
    "streaming": _streaming,
    "onnx": _onnx,
    "gpu": _gpu,
}


def inconsistencies(kind: str, result: dict) -> list[str]:
    """What of a `kind` result disagrees with the values it is derived from, one line each (empty: all agree)."""
    found = []
    for path, expected in DERIVED.get(kind, lambda _: ())(result):
        value = result
        for key in path:
            value = value[key]
        where = ".".join(path)
        if isinstance(expected, slice):
            if value is None or not expected.start <= value <= expected.stop:
                found.append(f"{where} is {value}, outside [{expected.start}, {expected.stop}]")
        elif (value is None) != (expected is None) or (
            value is not None and not math.isclose(value, expected, rel_tol=1e-6)
        ):
            found.append(f"{where} is {value} but its inputs give {expected}")
    return found


def write(kind: str, result: dict, args, file: str | None = None, **settings) -> dict:
    """Suite `kind`'s result, options, `settings` and machine: printed, and with `--output` in DIR/<name>.json (name:
    `--name`, else `file`, else `kind`). A result whose derived figures disagree with their inputs
    ([`inconsistencies`]) is refused with a `ValueError` and written nowhere: the suite computed it wrongly."""
    given = {k: v for k, v in vars(args).items() if k not in ("output", "worker")}
    name, settings = args.name or file or kind, {**given, **settings}
    result = {"benchmark": kind, "settings": settings, **result}
    if found := inconsistencies(kind, result):
        raise ValueError(f"the {kind} result disagrees with itself, so it is not written:\n" + "\n".join(found))
    result["machine"] = {**machine(), **result.get("machine", {})}
    print(json.dumps(result, indent=2))
    if args.output:
        Path(args.output).mkdir(parents=True, exist_ok=True)
        Path(args.output, f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def measure(step, *, threads: int, label="", sub_label="", description="", min_run_time=0.0):
    """`Timer.blocked_autorange` of `step()` on `threads` threads: `(Measurement, CPU seconds per call)`. It calls
    `step` once to size its blocks, then at least one block: a step of seconds runs twice (the first a warm-up), a
    step of milliseconds as often as `min_run_time` allows. CPU time (all threads) is averaged over every call."""
    calls = []
    timer = benchmark.Timer(
        "calls.append(step())",
        globals={"calls": calls, "step": step},
        num_threads=threads,
        label=label,
        sub_label=sub_label,
        description=description,
    )
    cpu = time.process_time()
    measurement = timer.blocked_autorange(min_run_time=min_run_time)
    return measurement, (time.process_time() - cpu) / len(calls)


def alternate(steps: dict, rounds: int, *, threads: int, label: str = "", between=None, min_run_time: float = 0.0):
    """`measure`s every `steps[name]` once per round, the order rotating, after `between(round)`; logs `Compare`'s
    table. Returns `({name: [seconds per round]}, {name: [CPU seconds per round]})`."""
    names = list(steps)
    wall, cpu, measurements = {n: [] for n in names}, {n: [] for n in names}, []
    for index in range(rounds):
        between and between(index)
        for name in names[index % len(names) :] + names[: index % len(names)]:
            m, cpu_s = measure(
                steps[name],
                threads=threads,
                label=label,
                sub_label=name,
                description=f"round {index}",
                min_run_time=min_run_time,
            )
            wall[name].append(m.median), cpu[name].append(cpu_s), measurements.append(m)
        log(f"round {index + 1}/{rounds}: " + ", ".join(f"{n} {wall[n][-1]:.3f} s" for n in names))
    if measurements:
        log(str(benchmark.Compare(measurements)))
    return wall, cpu


def matmul_gflops(threads: int, size: int = 2048) -> float:
    """fp32 `torch.mm` throughput: what this machine gives right now (low when other jobs share the cores)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    m = benchmark.Timer("torch.mm(a, b)", globals={"a": a, "b": b, "torch": torch}, num_threads=threads).timeit(3)
    return 2 * size**3 / m.median / 1e9


def build_model(
    system: str = "evl",
    shape: str = "vit-b16",
    *,
    num_frames: int = 8,
    num_labels: int = NUM_LABELS,
    randomize: bool = True,
    attn_implementation: str | None = None,
):
    """A random `system` classifier (evl, videomae or timesformer) of `SHAPES[shape]`, seeded; an EVL model gets
    values for its zero-initialised parts so that every path contributes to the logits."""
    import transformers

    from evl_hf import EVLConfig, EVLForVideoClassification
    from evl_hf.testing_utils import randomize_zero_initialised

    torch.manual_seed(0)
    shapes = SHAPES[shape]
    labels = dict(
        id2label={i: f"class_{i}" for i in range(num_labels)}, label2id={f"class_{i}": i for i in range(num_labels)}
    )
    baselines = {"videomae": "VideoMAE", "timesformer": "Timesformer"}
    if system in baselines:
        config = getattr(transformers, f"{baselines[system]}Config")(**shapes, num_frames=num_frames, **labels)
        return getattr(transformers, f"{baselines[system]}ForVideoClassification")(config)
    if system != "evl":
        raise ValueError(f"unknown system {system!r}: expected evl, videomae or timesformer")
    config = EVLConfig(
        vision_config=transformers.CLIPVisionConfig(**shapes),
        num_frames=num_frames,
        decoder_num_layers=min(4, shapes["num_hidden_layers"]),
        **labels,
    )
    model = EVLForVideoClassification(config)
    if attn_implementation:
        model.evl.vision_model.set_attn_implementation(attn_implementation)
    return randomize_zero_initialised(model, std=0.02) if randomize else model


def video_processor(shape: str = "vit-b16", *, num_frames: int = 8, frame_stride: int = 16):
    from evl_hf import EVLVideoProcessor

    size = SHAPES[shape]["image_size"]
    return EVLVideoProcessor(
        num_frames=num_frames,
        frame_stride=frame_stride,
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
    )


def video_dir(given=None) -> Path:
    """Where generated videos are kept between runs: `given`, or `<synthetic-data cache>/../benchmark_videos`."""
    if given:
        return Path(given)
    sys.path.insert(0, str(EXAMPLES))
    from synthetic_data import default_cache_dir

    return default_cache_dir().parent / "benchmark_videos"


def videos(folder, count: int, seconds: float, height: int, width: int, fps: int = 30) -> list[Path]:
    """`count` H.264 videos from `evl_hf.testing_utils.encode_video` (libx264's defaults: crf 23, a keyframe every
    250 frames, as `ffmpeg -i in out.mp4` writes them), made once and reused."""
    from evl_hf.testing_utils import encode_video

    Path(folder).mkdir(parents=True, exist_ok=True)
    paths = [Path(folder, f"video{index}_{width}x{height}_{fps}fps_{seconds:g}s.mp4") for index in range(count)]
    for index, path in enumerate(paths):
        if not path.exists():  # written aside, then renamed: a run stopped halfway leaves no broken video
            encode_video(
                path.with_suffix(".partial.mp4"), round(seconds * fps), height=height, width=width, fps=fps, seed=index
            ).rename(path)
    return paths


def load_script(name: str = "run_video_classification"):
    """An example script as a module (examples/ is not a package; the script imports its neighbours)."""
    import importlib.util

    sys.path.insert(0, str(EXAMPLES))
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
