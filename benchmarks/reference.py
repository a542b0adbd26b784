"""evl_hf against the reference implementation (`reference`), and what a bf16 or int8 backbone changes (`precision`).

The reference (OpenGVLab/efficient-video-recognition) is cloned at run time into `--reference_dir`; nothing of it is
kept here. Its random weights go into `EVLForVideoClassification`, which is also loaded the user's way with a bf16 or
int8 backbone, compiled or not. In this process only, its temporal cross attention allocates on the input's device
(it hard-codes cuda), and its backbone loader returns random weights instead of reading an OpenAI CLIP file.
`precision` compares the predictions of such a model with fp32: a trained one on its validation videos, and a random
CLIP made into EVL with `from_clip_pretrained`."""

import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import CLIPVisionConfig, CLIPVisionModel

from evl_hf import EVLForVideoClassification, EVLVideoProcessor
from evl_hf.convert_evl_original_to_hf import convert_state_dict
from evl_hf.precision import choose_dtype, cpu_features
from evl_hf.quantization import compile_model, from_pretrained_kwargs
from evl_hf.testing_utils import randomize_zero_initialised

from .harness import (
    NUM_LABELS,
    SHAPES,
    alternate,
    build_model,
    load_script,
    log,
    machine,
    matmul_gflops,
    median,
    options,
    ratio,
    video_processor,
    videos,
    write,
)


URL = "https://github.com/OpenGVLab/efficient-video-recognition"
COMMIT = "b282e8b"  # the commit the committed results ran against
# system -> (backbone dtype for evl_hf.quantization.from_pretrained_kwargs, compiled)
LOADED = {
    "evl_hf_bf16": ("bfloat16", False),
    "evl_hf_bf16_compiled": ("bfloat16", True),
    "evl_hf_int8_compiled": ("int8", True),
    # what `evl-hf predict --dtype auto --compile` loads on this machine (evl_hf.precision.choose_dtype)
    "evl_hf_auto_compiled": ("auto", True),
}


def add_arguments(parser):
    options(
        parser,
        reference_dir=(None, f"a checkout of {URL}, cloned there when missing (default: in the cache)"),
        shape=("vit-b16", None, list(SHAPES)),
        batch_size=2,
        num_frames=8,
        rounds=5,
        threads=2,
        systems=(",".join(LOADED), "rows next to reference_fp32 and evl_hf_fp32 (empty: none)"),
        modes=("inference,train", "what each round times"),
    )


def checkout(reference_dir) -> Path:
    """The reference's checkout, cloned at `COMMIT` when the folder has no model.py."""
    from .harness import video_dir

    folder = Path(reference_dir or video_dir().parent / "efficient-video-recognition").expanduser()
    if not (folder / "model.py").is_file():
        log(f"{folder} has no model.py: cloning {URL} into it")
        try:  # git refuses a folder that is not empty, and says so
            subprocess.run(["git", "clone", "--quiet", f"{URL}.git", str(folder)], check=True)
            subprocess.run(["git", "-C", str(folder), "checkout", "--quiet", COMMIT], check=True)
        except (OSError, subprocess.CalledProcessError) as error:
            raise SystemExit(
                f"error: --reference_dir {folder} has no model.py and cloning {URL} there failed "
                f"({error}): clone it yourself (git clone {URL}.git) and pass its folder."
            )
    return folder


def build_reference(folder: Path, shape: dict, num_frames: int):
    """The reference `EVLTransformer`, frozen fp32 backbone of `shape`, random weights throughout."""
    sys.path.insert(0, str(folder))  # its model.py imports its siblings by their bare names
    spec = importlib.util.spec_from_file_location("evl_reference_model", folder / "model.py")
    reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference)
    from vision_transformer import VisionTransformer2D, vit_presets

    patch, size = shape["patch_size"], shape["image_size"]
    preset = dict(
        feature_dim=shape["hidden_size"],
        input_size=(size, size),
        patch_size=(patch, patch),
        num_heads=shape["num_attention_heads"],
        num_layers=shape["num_hidden_layers"],
        mlp_factor=shape["intermediate_size"] / shape["hidden_size"],
        ln_pre=True,
    )
    vit_presets["bench"] = preset

    def random_backbone(path):
        state_dict = VisionTransformer2D(**preset).state_dict()
        state_dict["patch_embed.proj.bias"].zero_()  # CLIP's patch embedding has no bias
        return state_dict

    def cross_attention_on_input_device(self, q, k):
        # q, k: (batch, frames, 1 + patches, heads, head_dim) -> (batch, frames, 1 + patches, width)
        out = torch.zeros(*q.shape[:3], self.w1.shape[-1], device=q.device)
        out[:, 1:, 1:] += self.forward_half(q[:, 1:], k[:, :-1], self.w1)
        out[:, :-1, 1:] += self.forward_half(q[:, :-1], k[:, 1:], self.w2)
        return out

    reference.weight_loader_fn_dict["bench"] = random_backbone
    reference.TemporalCrossAttention.forward = cross_attention_on_input_device
    model = reference.EVLTransformer(
        num_frames=num_frames,
        backbone_name="bench",
        backbone_type="bench",
        backbone_mode="freeze_fp32",
        decoder_num_layers=min(4, shape["num_hidden_layers"]),
        decoder_qkv_dim=shape["hidden_size"],
        decoder_num_heads=shape["num_attention_heads"],
        num_classes=NUM_LABELS,
    )
    with torch.no_grad():
        for parameter in model.parameters():
            if not parameter.any():  # query token, temporal position embeddings, cross-attention tables
                parameter.normal_(std=0.02)
    return model


def to_evl_hf(reference_model, shape_name: str, num_frames: int):
    """`EVLForVideoClassification` holding the reference model's weights."""
    shape = SHAPES[shape_name]
    patch, width = shape["patch_size"], shape["hidden_size"]
    source = reference_model.backbone[0].state_dict()
    backbone = {
        "embeddings.class_embedding": source["cls_token"],
        # a Linear over (channel, row, column)-flattened patches is CLIP's convolution kernel
        "embeddings.patch_embedding.weight": source["patch_embed.proj.weight"].view(width, 3, patch, patch),
        "embeddings.position_embedding.weight": source["pos_embed"],
        "pre_layrnorm.weight": source["ln_pre.weight"],
        "pre_layrnorm.bias": source["ln_pre.bias"],
    }
    names = {"attn.": "self_attn.", "mlp.": "mlp.", "norm1.": "layer_norm1.", "norm2.": "layer_norm2."}
    for key, value in source.items():
        if key.startswith("blocks."):
            _, index, rest = key.split(".", 2)
            prefix = next(p for p in names if rest.startswith(p))
            backbone[f"encoder.layers.{index}.{names[prefix]}{rest[len(prefix) :]}"] = value
    model = build_model("evl", shape_name, num_frames=num_frames, randomize=False)
    missing, unexpected = model.evl.vision_model.load_state_dict(backbone, strict=False)
    assert not unexpected and set(missing) <= {"post_layernorm.weight", "post_layernorm.bias"}, (missing, unexpected)
    model.load_state_dict(convert_state_dict(reference_model.state_dict()), strict=False)
    return model


def reload(model, dtype: str):
    """The user's route to a bf16 or int8 backbone: save, then `from_pretrained(**from_pretrained_kwargs(dtype))`."""
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        return EVLForVideoClassification.from_pretrained(folder, **from_pretrained_kwargs(dtype))


def steps(name: str, model, pixel_values, labels) -> dict:
    """One inference and one training step (forward, cross-entropy, backward, AdamW) of `model`, as callables."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    is_reference = name == "reference_fp32"
    inputs = pixel_values.transpose(1, 2) if is_reference else pixel_values  # the reference takes (B, C, T, H, W)

    def logits():
        return model(inputs) if is_reference else model(pixel_values=inputs).logits

    def inference():
        model.eval()
        with torch.inference_mode():
            return logits().float()

    def train():
        model.train()
        F.cross_entropy(logits(), labels).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return {"inference": inference, "train": train}


def run(args):
    if args.quick:
        args.shape, args.rounds = "tiny", 2
    torch.set_num_threads(args.threads)
    modes, record, wanted = args.modes.split(","), machine(), [name for name in args.systems.split(",") if name]
    auto, reason = choose_dtype("cpu", compile=True)
    dtypes = {name: auto if dtype == "auto" else dtype for name, (dtype, _) in LOADED.items()}
    skipped = {
        n: f"this CPU has no fast {dtypes[n]} instructions"
        for n in wanted
        if LOADED[n][0] != "auto" and not record["fast_bf16" if dtypes[n] == "bfloat16" else "fast_int8"]
    }
    if importlib.util.find_spec("torchao") is None:
        skipped.update({n: "needs torchao: pip install 'evl-hf[quantize]'" for n in wanted if dtypes[n] == "int8"})
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    torch.manual_seed(0)
    models = {"reference_fp32": build_reference(checkout(args.reference_dir), SHAPES[args.shape], args.num_frames)}
    models["evl_hf_fp32"] = to_evl_hf(models["reference_fp32"], args.shape, args.num_frames)
    compile_s = {}
    for name in (n for n in wanted if n not in skipped):
        models[name], start = reload(models["evl_hf_fp32"], dtypes[name]), time.perf_counter()
        if LOADED[name][1]:
            compile_model(models[name].eval(), batch_size=args.batch_size, num_frames=args.num_frames)
            compile_s[name] = {"inference_s": time.perf_counter() - start}
    size = SHAPES[args.shape]["image_size"]
    pixel_values = torch.randn(args.batch_size, args.num_frames, 3, size, size)
    calls = {
        name: steps(name, model, pixel_values, torch.randint(0, NUM_LABELS, (args.batch_size,)))
        for name, model in models.items()
    }
    logits = {name: call["inference"]() for name, call in calls.items()}
    base = logits["reference_fp32"]
    for name, call in calls.items() if "train" in modes else ():  # a training step's own compilation, untimed
        start = time.perf_counter()
        call["train"]()
        if name in compile_s:
            compile_s[name]["train_s"] = time.perf_counter() - start
    matmul, loads, runs = [], [], {name: {} for name in calls}
    for mode in ("inference", "train"):
        wall, cpu = alternate(
            {n: c[mode] for n, c in calls.items()},
            args.rounds if mode in modes else 0,
            threads=args.threads,
            label=mode,
            between=lambda _: (matmul.append(matmul_gflops(args.threads)), loads.append(round(os.getloadavg()[0], 2))),
        )
        for name in calls:
            runs[name].update({f"{mode}_s": wall[name], f"{mode}_cpu_s": cpu[name]})
    times = {name: {key: median(values) for key, values in run.items()} for name, run in runs.items()}
    ratios, paired, cpu_ratios, ref = {}, {}, {}, runs["reference_fp32"]
    for key, name, mode in ((f"{n}_{m}_speedup", n, m) for n in list(calls)[1:] for m in modes):
        ratios[key] = ratio(times["reference_fp32"][f"{mode}_s"], times[name][f"{mode}_s"])
        cpu_ratios[key] = ratio(times["reference_fp32"][f"{mode}_cpu_s"], times[name][f"{mode}_cpu_s"])
        # each round's own ratio: both sides saw that round's load
        paired[key] = median([ratio(b, t) for b, t in zip(ref[f"{mode}_s"], runs[name][f"{mode}_s"])])
    return write(
        "reference",
        {
            "machine": {"loadavg_at_start": load_at_start, "cpu_features": cpu_features()},
            "auto_dtype": {"dtype": auto, "reason": reason},
            "max_abs_logit_diff": {name: (value - base).abs().max().item() for name, value in logits.items()},
            "same_top1_as_reference": {
                n: (v.argmax(-1) == base.argmax(-1)).float().mean().item() for n, v in logits.items()
            },
            "skipped_because": skipped,
            "compile_s": compile_s,
            "times": times,
            "runs": runs,
            "matmul_gflops_per_s_runs": matmul,
            "loadavg_runs": loads,
            "ratios": ratios,
            "median_of_round_ratios": paired,
            "cpu_time_ratios": cpu_ratios,
        },
        args,
        modes=modes,
        reference=f"{URL}@{COMMIT}",
    )


def precision_arguments(parser):
    options(
        parser,
        model=(None, "folder of a trained EVL model (omitted: the trained part is skipped)"),
        validation_dir=(None, "<label>/*.mp4 validation videos (default: the synthetic-motion dataset's)"),
        random_clips=(32, "clips for the random model (0: skip it)"),
        random_shape=("vit-b16", None, list(SHAPES)),
        batch_size=8,
        dtype=("bfloat16", None, ["bfloat16", "float16", "int8"]),
        compile=(False, "compile the --dtype model (compile_model)"),
        threads=2,
    )


def load_both(folder, dtype: str, compile: bool, batch_size: int) -> dict:
    models = {
        "fp32": EVLForVideoClassification.from_pretrained(folder).eval(),
        "low": EVLForVideoClassification.from_pretrained(folder, **from_pretrained_kwargs(dtype)).eval(),
    }
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
    result = {
        "clips": fp32.shape[0],
        "top1_agreement": (fp32.argmax(-1) == low.argmax(-1)).float().mean().item(),
        "max_abs_logit_diff": difference.max().item(),
        "mean_abs_logit_diff": difference.mean().item(),
        "max_abs_logit": fp32.abs().max().item(),
        # how close the fp32 model's two best classes are: a flip needs a difference of this size
        "min_top1_margin": (top2[:, 0] - top2[:, 1]).min().item(),
    }
    if labels is not None:
        result["accuracy_fp32"] = (fp32.argmax(-1) == labels).float().mean().item()
        result["accuracy_low"] = (low.argmax(-1) == labels).float().mean().item()
    return result


def precision(args):
    torch.set_num_threads(args.threads)
    start, models, scratch = time.perf_counter(), {}, tempfile.TemporaryDirectory()
    if args.quick:  # 4 generated clips in a folder of their own for the tiny random model
        args.random_shape, args.random_clips, args.batch_size = "tiny", 4, 2
        videos(Path(scratch.name, "clips", "any"), 4, 1.0, 48, 64)
        args.validation_dir = args.validation_dir or str(Path(scratch.name, "clips"))
    if args.validation_dir is None:
        args.validation_dir = str(load_script("synthetic_data").generate_synthetic_motion_dataset() / "validation")
    if args.model:
        if not Path(args.model, "config.json").is_file():
            raise SystemExit(f"error: --model {args.model} has no config.json: pass a training run's output folder.")
        pair = load_both(args.model, args.dtype, args.compile, args.batch_size)
        label2id = pair["fp32"].config.label2id
        clips = [p for p in sorted(Path(args.validation_dir).glob("*/*.mp4")) if p.parent.name in label2id]
        if not clips:
            raise SystemExit(
                f"error: no <label>/*.mp4 with labels {sorted(label2id)} under --validation_dir "
                f"{args.validation_dir}: pass the validation folder of the model's dataset."
            )
        labels = torch.tensor([label2id[p.parent.name] for p in clips])
        models["trained"] = compare_logits(
            pair, EVLVideoProcessor.from_pretrained(args.model), clips, args.batch_size, labels
        )
        models["trained"]["model"] = args.model
    if args.random_clips:
        torch.manual_seed(0)
        shape, clip_dir, evl_dir = SHAPES[args.random_shape], Path(scratch.name, "clip"), Path(scratch.name, "evl")
        CLIPVisionModel(CLIPVisionConfig(**shape)).save_pretrained(clip_dir)
        id2label = {i: f"class_{i}" for i in range(NUM_LABELS)}
        model = EVLForVideoClassification.from_clip_pretrained(
            clip_dir,
            num_frames=8,
            decoder_num_layers=min(4, shape["num_hidden_layers"]),
            id2label=id2label,
            label2id={name: i for i, name in id2label.items()},
        )
        randomize_zero_initialised(model, std=0.02).save_pretrained(evl_dir)
        clips = sorted(Path(args.validation_dir).glob("*/*.mp4"))[: args.random_clips]
        models["random_clip"] = compare_logits(
            load_both(evl_dir, args.dtype, args.compile, args.batch_size),
            video_processor(args.random_shape, frame_stride=3),
            clips,
            args.batch_size,
        )
        models["random_clip"]["shape"] = args.random_shape
    if not models:
        raise SystemExit("error: nothing to measure: pass --model and/or a positive --random_clips.")
    scratch.cleanup()
    name = "precision" if args.dtype == "bfloat16" else f"precision_{args.dtype}"
    return write("precision", {"seconds": time.perf_counter() - start, "models": models}, args, name)


# route -> `evl-hf predict` options; "aoti" runs the package `evl-hf export --format aoti --dtype auto` wrote
ROUTES = {
    "fp32": ["--dtype", "float32"],
    "bf16_compiled": ["--dtype", "bfloat16", "--compile"],
    "int8_compiled": ["--dtype", "int8", "--compile"],
    "auto_compiled": ["--dtype", "auto", "--compile"],
    "aoti": [],
}


def startup_arguments(parser):
    options(
        parser,
        shape=("vit-b16", None, list(SHAPES)),
        num_frames=8,
        routes=(",".join(ROUTES), "what to time, of " + ", ".join(ROUTES)),
    )


def evl_hf_command(arguments: list, cache_dir: Path) -> float:
    """Seconds from the start of an `evl-hf` process to its end, with its own inductor cache folder."""
    environment = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache_dir)}
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "evl_hf", *arguments], env=environment, capture_output=True, text=True
    )
    if done.returncode:
        raise SystemExit(f"error: evl-hf {' '.join(arguments)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def startup(args):
    """Time to the first prediction: `evl-hf predict` on one video, a whole process, per route; cold (an empty
    inductor cache) then warm (the cache the cold run filled). The AOTInductor package is exported once first."""
    if args.quick:
        args.shape = "tiny"
    wanted = [name for name in args.routes.split(",") if name]
    unknown = set(wanted) - set(ROUTES)
    if unknown:
        raise SystemExit(f"error: --routes {', '.join(sorted(unknown))}: not routes; routes are {', '.join(ROUTES)}")
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="evl_hf_startup_") as folder:
        scratch = Path(folder)
        model_dir, package = scratch / "model", scratch / "model.pt2"
        build_model("evl", args.shape, num_frames=args.num_frames).save_pretrained(model_dir)
        video_processor(args.shape, num_frames=args.num_frames, frame_stride=2).save_pretrained(model_dir)
        (video,) = videos(scratch / "videos", 1, 1.0, 240, 320)
        export_s = None
        if "aoti" in wanted:
            log("exporting the AOTInductor package (--dtype auto)")
            export = [*"export --format aoti --dtype auto --model".split(), str(model_dir), "--output", str(package)]
            export_s = evl_hf_command(export, scratch / "cache_export")
        seconds = {}
        for name in wanted:
            route = ["--aoti_package", str(package)] if name == "aoti" else ROUTES[name]
            output = str(scratch / f"{name}.jsonl")
            predict = [*"predict --num_workers 0 --batch_size 1 --model".split(), str(model_dir), "--output", output]
            cache = scratch / f"cache_{name}"
            seconds[name] = {}
            for state in ("cold", "warm"):
                log(f"{name}, {state}")
                seconds[name][f"{state}_s"] = evl_hf_command([*predict, str(video), *route], cache)
    return write(
        "startup",
        {
            "machine": {"loadavg_at_start": load_at_start, "cpu_features": cpu_features()},
            "auto_dtype": dict(zip(("dtype", "reason"), choose_dtype("cpu", compile=True))),
            "export_aoti_s": export_s,
            "first_prediction": seconds,
        },
        args,
    )


SUITES = {
    "reference": (
        "evl_hf (fp32, bf16, bf16/int8 + compile) against the reference implementation: parity, speed",
        add_arguments,
        run,
    ),
    "precision": (
        "what a bf16/int8 backbone changes in the predictions of a trained and a random model",
        precision_arguments,
        precision,
    ),
    "startup": (
        "time to the first prediction of an evl-hf predict process per route (eager, compiled, AOTInductor), "
        "cold and warm inductor cache",
        startup_arguments,
        startup,
    ),
}
