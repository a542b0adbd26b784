"""What a bf16 or int8 CLIP backbone (decoder and head in fp32) changes in EVL's predictions, against the fp32 model.

Two models, each loaded twice, once in fp32 and once with the backbone in `--dtype`: `from_pretrained` with
`evl_hf.quantization.from_pretrained_kwargs(dtype)`, that is `dtype=torch.bfloat16` (which halves the backbone
only) or, for int8, `quantization_config=TorchAoConfig(Int8DynamicActivationInt8WeightConfig())` (torchao; the
backbone's Linear layers only), optionally compiled (`--compile`, `evl_hf.quantization.compile_model`); and run
on the same clips:

- `trained`: a model trained with `examples/run_video_classification.py` (`--model DIR`, by default the
  embedded synthetic-motion run), on the validation videos of the synthetic-motion dataset, decoded and
  preprocessed by the model's own video processor;
- `random_clip`: a randomly initialised ViT-B/16 CLIP saved to a folder, turned into EVL with
  `from_clip_pretrained`, its decoder drawn at random (the zero-initialised tables too), saved and loaded
  again; the first `--random-clips` validation videos, upsampled to 224 px, are its input.

For each: top-1 accuracy of both (where labels are known), top-1 agreement between them, and the max and mean
absolute logit difference.

    python benchmarks/bench_precision.py --model outputs/evl-synthetic-motion --output docs/benchmark_results
    python benchmarks/bench_precision.py --model outputs/evl-synthetic-motion --random-clips 0   # trained model only
    python benchmarks/bench_precision.py --model outputs/evl-synthetic-motion --dtype int8 --compile --output docs/benchmark_results
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import CLIPVisionConfig, CLIPVisionModel

from evl_hf.quantization import DTYPES
from evl_hf.testing_utils import randomize_zero_initialised

from benchmark_utils import (
    VIT_SHAPES, emit, fmt, log, machine_info, markdown_table, synthetic_data
)  # fmt: skip


def validation_videos(validation_dir: Path, label2id: dict) -> list[tuple[Path, int]]:
    """`(path, label index)` for every `<label>/*.mp4` under `validation_dir`, in a fixed order."""
    videos = [
        (path, label2id[path.parent.name])
        for path in sorted(validation_dir.glob("*/*.mp4"))
        if path.parent.name in label2id
    ]
    if not videos:
        raise SystemExit(
            f"error: no <label>/*.mp4 videos with labels {sorted(label2id)} under {validation_dir}: pass the "
            "validation folder of the model's dataset with --validation-dir."
        )
    return videos


def predict(models: dict, processor, videos: list, batch_size: int) -> dict:
    """Logits of each model on the same preprocessed clips: `{name: (num_videos, num_labels)}`."""
    logits = {name: [] for name in models}
    for start in range(0, len(videos), batch_size):
        paths = [str(path) for path, _ in videos[start : start + batch_size]]
        pixel_values = processor(paths, return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            for name, model in models.items():
                logits[name].append(model(pixel_values=pixel_values).logits.float())
        log(f"  {min(start + batch_size, len(videos))}/{len(videos)} clips")
    return {name: torch.cat(values) for name, values in logits.items()}


def agreement(logits: dict, labels: torch.Tensor | None) -> dict:
    fp32, low = logits["fp32"], logits["low"]
    difference = (low - fp32).abs()
    top2 = fp32.topk(2, dim=-1).values
    result = {
        "clips": fp32.shape[0],
        "top1_agreement": (fp32.argmax(-1) == low.argmax(-1)).float().mean().item(),
        "max_abs_logit_diff": difference.max().item(),
        "mean_abs_logit_diff": difference.mean().item(),
        "max_abs_logit": fp32.abs().max().item(),
        # how close the fp32 model's first and second classes are: a flip needs a difference of this size
        "min_top1_margin": (top2[:, 0] - top2[:, 1]).min().item(),
    }
    if labels is not None:
        result["accuracy_fp32"] = (fp32.argmax(-1) == labels).float().mean().item()
        result["accuracy_low"] = (low.argmax(-1) == labels).float().mean().item()
    return result


def load_both(folder: str, dtype: str, compile: bool, batch_size: int) -> dict:
    """`{"fp32": model, "low": the same weights with the backbone in dtype}`, in eval mode; with `compile`, the
    low-precision one compiled and warmed on `batch_size` clips."""
    from evl_hf import EVLForVideoClassification
    from evl_hf.quantization import compile_model, from_pretrained_kwargs, is_quantized

    models = {
        "fp32": EVLForVideoClassification.from_pretrained(folder),
        "low": EVLForVideoClassification.from_pretrained(folder, **from_pretrained_kwargs(dtype)),
    }
    for model in models.values():
        model.eval()
    if dtype in ("bfloat16", "float16"):
        assert models["low"].evl.vision_model.embeddings.patch_embedding.weight.dtype == getattr(torch, dtype)
    else:
        assert is_quantized(models["low"])
    decoder_and_head = [p for name, p in models["low"].named_parameters() if not name.startswith("evl.vision_model.")]
    assert all(parameter.dtype == torch.float32 for parameter in decoder_and_head)
    if compile:
        start = time.perf_counter()
        compile_model(models["low"], batch_size)
        log(f"  compiled and warmed in {time.perf_counter() - start:.0f} s")
    return models


def measure_trained(args) -> dict:
    from evl_hf import EVLVideoProcessor

    models = load_both(args.model, args.dtype, args.compile, args.batch_size)
    processor = EVLVideoProcessor.from_pretrained(args.model)
    videos = validation_videos(Path(args.validation_dir), models["fp32"].config.label2id)
    log(f"trained model {args.model}: {len(videos)} validation videos")
    logits = predict(models, processor, videos, args.batch_size)
    result = agreement(logits, torch.tensor([label for _, label in videos]))
    result["model"] = args.model
    result["vision_config"] = {key: getattr(models["fp32"].config.vision_config, key) for key in VIT_SHAPES["tiny"]}
    return result


def measure_random_clip(args) -> dict:
    from evl_hf import EVLForVideoClassification, EVLVideoProcessor

    torch.manual_seed(0)
    shape = VIT_SHAPES[args.random_shape]
    with tempfile.TemporaryDirectory() as clip_dir, tempfile.TemporaryDirectory() as evl_dir:
        CLIPVisionModel(CLIPVisionConfig(**shape)).save_pretrained(clip_dir)
        id2label = {i: f"class_{i}" for i in range(400)}
        model = EVLForVideoClassification.from_clip_pretrained(
            clip_dir,
            num_frames=8,
            decoder_num_layers=min(4, shape["num_hidden_layers"]),
            id2label=id2label,
            label2id={name: i for i, name in id2label.items()},
        )
        randomize_zero_initialised(model, std=0.02)
        model.save_pretrained(evl_dir)
        models = load_both(evl_dir, args.dtype, args.compile, args.batch_size)
    size = shape["image_size"]
    processor = EVLVideoProcessor(
        num_frames=8, frame_stride=3, size={"shortest_edge": size}, crop_size={"height": size, "width": size}
    )
    videos = sorted(Path(args.validation_dir).glob("*/*.mp4"))[: args.random_clips]
    log(f"random {args.random_shape} CLIP: {len(videos)} clips")
    logits = predict(models, processor, [(path, None) for path in videos], args.batch_size)
    result = agreement(logits, None)
    result["shape"] = args.random_shape
    return result


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def to_markdown(result: dict) -> str:
    headers = [
        "model",
        "clips",
        "top-1 agreement",
        "accuracy fp32",
        f"accuracy {result['settings']['dtype']}",
        "max abs logit diff",
        "mean abs logit diff",
        "largest logit",
        "smallest top-1 margin",
    ]
    rows = []
    for key, r in result["models"].items():
        rows.append(
            [
                f"trained ({r['model']})" if key == "trained" else f"random {r['shape']} CLIP, random decoder",
                r["clips"],
                percent(r["top1_agreement"]),
                percent(r.get("accuracy_fp32")),
                percent(r.get("accuracy_low")),
                f"{r['max_abs_logit_diff']:.1e}",
                f"{r['mean_abs_logit_diff']:.1e}",
                fmt(r["max_abs_logit"]),
                f"{r['min_top1_margin']:.1e}",
            ]
        )
    settings = result["settings"]
    low = settings["dtype"] + (" compiled" if settings["compile"] else "")
    title = f"{result['machine']['cpu']}: fp32 model against the same weights loaded with a {low} backbone (decoder and head fp32)"
    return "\n".join([title, "", markdown_table(headers, rows)])


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="folder of a trained EVL model; omitted: the trained-model part is skipped")
    parser.add_argument(
        "--validation-dir",
        help="folder of <label>/*.mp4 validation videos (default: the synthetic-motion dataset's, generated if needed)",
    )
    parser.add_argument("--random-clips", type=int, default=32, help="clips for the random ViT-B/16 model (0: skip)")
    parser.add_argument("--random-shape", default="vit-b16", choices=list(VIT_SHAPES))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--dtype", default="bfloat16", choices=[name for name in DTYPES if name != "float32"],
                        help="the backbone precision compared with fp32 (int8: torchao's dynamic int8)")  # fmt: skip
    parser.add_argument("--compile", action="store_true", help="torch.compile the --dtype model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", help="folder to write precision[_<dtype>].json and .md into")
    args = parser.parse_args(argv)
    if args.model and not Path(args.model, "config.json").is_file():
        parser.error(f"--model {args.model} has no config.json: pass the output folder of a training run.")
    if args.validation_dir is None:
        args.validation_dir = str(synthetic_data().generate_synthetic_motion_dataset() / "validation")
    return args


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    models = {}
    if args.model:
        models["trained"] = measure_trained(args)
    if args.random_clips:
        models["random_clip"] = measure_random_clip(args)
    if not models:
        sys.exit("error: nothing to measure: pass --model and/or a positive --random-clips.")
    result = {
        "benchmark": "precision",
        "settings": {
            "validation_dir": args.validation_dir,
            "random_clips": args.random_clips,
            "batch_size": args.batch_size,
            "threads": args.threads,
            "dtype": args.dtype,
            "compile": args.compile,
        },
        "machine": machine_info(),
        "seconds": time.perf_counter() - start,
        "models": models,
    }
    name = "precision" if args.dtype == "bfloat16" else f"precision_{args.dtype}"
    emit(name, result, to_markdown(result), args.output)


if __name__ == "__main__":
    main()
