"""What a bf16 or int8 backbone (decoder and head fp32) changes in the predictions, against fp32 (`precision`).

Each model is loaded twice from one folder, `from_pretrained(folder)` and with
`evl_hf.quantization.from_pretrained_kwargs(dtype)` (optionally compiled), and both run on the same clips:
`trained`, a model of the training script (`--model`) on its validation videos; `random_clip`, a random CLIP made
into EVL with `from_clip_pretrained`, its decoder drawn at random, on the first `--random-clips` videos upscaled.
"""

import tempfile
import time
from pathlib import Path

import torch

from evl_hf import EVLForVideoClassification, EVLVideoProcessor
from evl_hf.quantization import compile_model, from_pretrained_kwargs
from evl_hf.testing_utils import randomize_zero_initialised
from transformers import CLIPVisionConfig, CLIPVisionModel

from .harness import NUM_LABELS, SHAPES, log, options, video_processor, videos, write


def add_arguments(parser):
    options(parser, model=(None, "folder of a trained EVL model (omitted: the trained part is skipped)"),
            validation_dir=(None, "<label>/*.mp4 validation videos (default: the synthetic-motion dataset's)"),
            random_clips=(32, "clips for the random model (0: skip it)"), random_shape=("vit-b16", None, list(SHAPES)),
            batch_size=8, dtype=("bfloat16", None, ["bfloat16", "float16", "int8"]),
            compile=(False, "compile the --dtype model (compile_model)"), threads=2)


def load_both(folder, dtype: str, compile: bool, batch_size: int) -> dict:
    models = {"fp32": EVLForVideoClassification.from_pretrained(folder).eval(),
              "low": EVLForVideoClassification.from_pretrained(folder, **from_pretrained_kwargs(dtype)).eval()}
    if compile:
        compile_model(models["low"], batch_size)
    return models


def compare_logits(models: dict, processor, clips: list, batch_size: int, labels=None) -> dict:
    """Both models on the same preprocessed clips: top-1 agreement, logit differences, accuracy where labelled."""
    logits = {name: [] for name in models}
    for start in range(0, len(clips), batch_size):
        pixel_values = processor([str(p) for p in clips[start : start + batch_size]], return_tensors="pt")
        with torch.inference_mode():
            for name, model in models.items():
                logits[name].append(model(pixel_values=pixel_values["pixel_values"]).logits.float())
    fp32, low = (torch.cat(logits[name]) for name in ("fp32", "low"))
    difference, top2 = (low - fp32).abs(), fp32.topk(2, dim=-1).values
    result = {"clips": fp32.shape[0], "top1_agreement": (fp32.argmax(-1) == low.argmax(-1)).float().mean().item(),
              "max_abs_logit_diff": difference.max().item(), "mean_abs_logit_diff": difference.mean().item(),
              "max_abs_logit": fp32.abs().max().item(),
              # how close the fp32 model's two best classes are: a flip needs a difference of this size
              "min_top1_margin": (top2[:, 0] - top2[:, 1]).min().item()}  # fmt: skip
    if labels is not None:
        result["accuracy_fp32"] = (fp32.argmax(-1) == labels).float().mean().item()
        result["accuracy_low"] = (low.argmax(-1) == labels).float().mean().item()
    return result


def run(args):
    torch.set_num_threads(args.threads)
    start, models, scratch = time.perf_counter(), {}, tempfile.TemporaryDirectory()
    if args.quick:
        args.random_shape, args.random_clips, args.batch_size = "tiny", 4, 2
        args.validation_dir = args.validation_dir or str(videos(Path(scratch.name) / "clips", 4, 1.0, 48, 64)[0].parent.parent)
    if args.validation_dir is None:
        from .harness import load_script

        args.validation_dir = str(load_script("synthetic_data").generate_synthetic_motion_dataset() / "validation")
    if args.model:
        if not Path(args.model, "config.json").is_file():
            raise SystemExit(f"error: --model {args.model} has no config.json: pass the output folder of a training run.")
        pair = load_both(args.model, args.dtype, args.compile, args.batch_size)
        label2id = pair["fp32"].config.label2id
        clips = [p for p in sorted(Path(args.validation_dir).glob("*/*.mp4")) if p.parent.name in label2id]
        if not clips:
            raise SystemExit(f"error: no <label>/*.mp4 with labels {sorted(label2id)} under --validation-dir "
                             f"{args.validation_dir}: pass the validation folder of the model's dataset.")  # fmt: skip
        labels = torch.tensor([label2id[p.parent.name] for p in clips])
        models["trained"] = compare_logits(pair, EVLVideoProcessor.from_pretrained(args.model), clips,
                                           args.batch_size, labels)  # fmt: skip
        models["trained"]["model"] = args.model
    if args.random_clips:
        torch.manual_seed(0)
        shape = SHAPES[args.random_shape]
        clip_dir, evl_dir = Path(scratch.name, "clip"), Path(scratch.name, "evl")
        CLIPVisionModel(CLIPVisionConfig(**shape)).save_pretrained(clip_dir)
        id2label = {i: f"class_{i}" for i in range(NUM_LABELS)}
        model = EVLForVideoClassification.from_clip_pretrained(
            clip_dir, num_frames=8, decoder_num_layers=min(4, shape["num_hidden_layers"]), id2label=id2label,
            label2id={name: i for i, name in id2label.items()})  # fmt: skip
        randomize_zero_initialised(model, std=0.02).save_pretrained(evl_dir)
        clips = sorted(Path(args.validation_dir).glob("*/*.mp4"))[: args.random_clips]
        models["random_clip"] = compare_logits(load_both(evl_dir, args.dtype, args.compile, args.batch_size),
                                               video_processor(args.random_shape, frame_stride=3), clips,
                                               args.batch_size)  # fmt: skip
        models["random_clip"]["shape"] = args.random_shape
    if not models:
        raise SystemExit("error: nothing to measure: pass --model and/or a positive --random-clips.")
    log(f"precision: {time.perf_counter() - start:.0f} s")
    settings = {"validation_dir": args.validation_dir, "random_clips": args.random_clips,
                "batch_size": args.batch_size, "threads": args.threads, "dtype": args.dtype, "compile": args.compile}
    name = "precision" if args.dtype == "bfloat16" else f"precision_{args.dtype}"
    scratch.cleanup()
    return write(name, {"settings": settings, "seconds": time.perf_counter() - start, "models": models}, args.output)


SUITES = {"precision": ("what a bf16/int8 backbone changes in the predictions of a trained and a random model",
                        add_arguments, run)}  # fmt: skip
