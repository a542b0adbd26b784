"""evl_hf against the reference implementation, one set of weights: parity, then alternating rounds (`reference`).

The reference (OpenGVLab/efficient-video-recognition) is cloned at run time into `--reference-dir` and imported from
there; nothing of it lives in this repository. Its `EVLTransformer` gets random weights (the zero-initialised decoder
tables drawn at random), the same weights go into `EVLForVideoClassification` (backbone key by key, decoder and head
through `evl_hf.convert_evl_original_to_hf`), and that model is loaded again the user's way,
`from_pretrained(**from_pretrained_kwargs(dtype))`: bf16 backbone, bf16 compiled, int8 (torchao) compiled. In this
process only, the reference's temporal cross attention allocates on the input's device (it hard-codes cuda), and its
backbone loader is given random weights instead of an OpenAI CLIP file.
"""

import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from evl_hf import EVLForVideoClassification
from evl_hf.convert_evl_original_to_hf import convert_state_dict
from evl_hf.quantization import compile_model, from_pretrained_kwargs

from .harness import NUM_LABELS, SHAPES, alternate, build_model, compare, log, machine, matmul_gflops, median, options
from .harness import ratio, write


URL = "https://github.com/OpenGVLab/efficient-video-recognition"
COMMIT = "b282e8b"  # the commit the committed results ran against
# system -> (backbone dtype for evl_hf.quantization.from_pretrained_kwargs, compiled)
LOADED = {"evl_hf_bf16": ("bfloat16", False), "evl_hf_bf16_compiled": ("bfloat16", True),
          "evl_hf_int8_compiled": ("int8", True)}  # fmt: skip


def add_arguments(parser):
    options(parser, reference_dir=(None, f"a checkout of {URL}, cloned there when missing (default: in the cache)"),
            shape=("vit-b16", None, list(SHAPES)), batch_size=2, num_frames=8, rounds=5, threads=2,
            systems=(",".join(LOADED), "rows next to reference_fp32 and evl_hf_fp32 (empty: none)"),
            modes=("inference,train", "what each round times"), name=("reference", "written to <output>/<name>.json"))


def checkout(reference_dir) -> Path:
    """The reference's checkout, cloned at `COMMIT` when the folder has no model.py."""
    from .harness import video_dir

    folder = Path(reference_dir or video_dir().parent / "efficient-video-recognition").expanduser()
    if not (folder / "model.py").is_file():
        if folder.exists() and any(folder.iterdir()):
            raise SystemExit(f"error: --reference-dir {folder} has no model.py and is not empty: pass a checkout of "
                             f"{URL} (git clone {URL}.git), or an empty or missing folder to clone into.")  # fmt: skip
        log(f"cloning {URL} into {folder}")
        try:
            subprocess.run(["git", "clone", "--quiet", f"{URL}.git", str(folder)], check=True)
            subprocess.run(["git", "-C", str(folder), "checkout", "--quiet", COMMIT], check=True)
        except (OSError, subprocess.CalledProcessError) as error:
            raise SystemExit(f"error: could not clone {URL} into {folder} ({error}): clone it yourself "
                             f"(git clone {URL}.git) and pass --reference-dir.")  # fmt: skip
    return folder


def build_reference(folder: Path, shape: dict, num_frames: int):
    """The reference `EVLTransformer`, frozen fp32 backbone of `shape`, random weights throughout."""
    sys.path.insert(0, str(folder))  # its model.py imports its siblings by their bare names
    spec = importlib.util.spec_from_file_location("evl_reference_model", folder / "model.py")
    reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference)
    from vision_transformer import VisionTransformer2D, vit_presets

    patch, size = shape["patch_size"], shape["image_size"]
    preset = dict(feature_dim=shape["hidden_size"], input_size=(size, size), patch_size=(patch, patch),
                  num_heads=shape["num_attention_heads"], num_layers=shape["num_hidden_layers"],
                  mlp_factor=shape["intermediate_size"] / shape["hidden_size"], ln_pre=True)  # fmt: skip
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
        num_frames=num_frames, backbone_name="bench", backbone_type="bench", backbone_mode="freeze_fp32",
        decoder_num_layers=min(4, shape["num_hidden_layers"]), decoder_qkv_dim=shape["hidden_size"],
        decoder_num_heads=shape["num_attention_heads"], num_classes=NUM_LABELS)  # fmt: skip
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
    backbone = {"embeddings.class_embedding": source["cls_token"],
                # a Linear over (channel, row, column)-flattened patches is CLIP's convolution kernel
                "embeddings.patch_embedding.weight": source["patch_embed.proj.weight"].view(width, 3, patch, patch),
                "embeddings.position_embedding.weight": source["pos_embed"],
                "pre_layrnorm.weight": source["ln_pre.weight"], "pre_layrnorm.bias": source["ln_pre.bias"]}  # fmt: skip
    names = {"attn.": "self_attn.", "mlp.": "mlp.", "norm1.": "layer_norm1.", "norm2.": "layer_norm2."}
    for key, value in source.items():
        if key.startswith("blocks."):
            _, index, rest = key.split(".", 2)
            prefix = next(p for p in names if rest.startswith(p))
            backbone[f"encoder.layers.{index}.{names[prefix]}{rest[len(prefix):]}"] = value
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
    modes = args.modes.split(",")
    record = machine()
    wanted = [name for name in args.systems.split(",") if name]
    skipped = {n: f"this CPU has no fast {LOADED[n][0]} instructions" for n in wanted
               if not record["fast_bf16" if LOADED[n][0] == "bfloat16" else "fast_int8"]}  # fmt: skip
    if any(LOADED[n][0] == "int8" for n in wanted) and importlib.util.find_spec("torchao") is None:
        skipped.update({n: "needs torchao: pip install 'evl-hf[quantize]'" for n in wanted if LOADED[n][0] == "int8"})
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    torch.manual_seed(0)
    models = {"reference_fp32": build_reference(checkout(args.reference_dir), SHAPES[args.shape], args.num_frames)}
    models["evl_hf_fp32"] = to_evl_hf(models["reference_fp32"], args.shape, args.num_frames)
    compile_s = {}
    for name in wanted:
        if name in skipped:
            log(f"{name} skipped: {skipped[name]}")
            continue
        models[name] = reload(models["evl_hf_fp32"], LOADED[name][0])
        if LOADED[name][1]:
            start = time.perf_counter()
            compile_model(models[name].eval(), batch_size=args.batch_size, num_frames=args.num_frames)
            compile_s[name] = {"inference_s": time.perf_counter() - start}
    size = SHAPES[args.shape]["image_size"]
    pixel_values = torch.randn(args.batch_size, args.num_frames, 3, size, size)
    labels = torch.randint(0, NUM_LABELS, (args.batch_size,))
    calls = {name: steps(name, model, pixel_values, labels) for name, model in models.items()}
    logits = {name: call["inference"]() for name, call in calls.items()}
    base = logits["reference_fp32"]
    differences = {name: (value - base).abs().max().item() for name, value in logits.items()}
    same_top1 = {name: (value.argmax(-1) == base.argmax(-1)).float().mean().item() for name, value in logits.items()}
    if "train" in modes:
        for name, call in calls.items():  # a training step's own compilation, outside the rounds
            start = time.perf_counter()
            call["train"]()
            if name in compile_s:
                compile_s[name]["train_s"] = time.perf_counter() - start
    matmul, loads = [], []

    def probe(index):
        matmul.append(matmul_gflops(args.threads))
        loads.append(round(os.getloadavg()[0], 2))

    runs, measurements = {name: {} for name in calls}, []
    for mode in ("inference", "train"):
        if mode not in modes:
            for name in calls:
                runs[name].update({f"{mode}_s": [], f"{mode}_cpu_s": []})
            continue
        wall, cpu, found = alternate({name: call[mode] for name, call in calls.items()}, args.rounds,
                                     threads=args.threads, label=mode, between=probe)  # fmt: skip
        measurements += found
        for name in calls:
            runs[name].update({f"{mode}_s": wall[name], f"{mode}_cpu_s": cpu[name]})
    compare(measurements)
    times = {name: {key: median(values) for key, values in run.items()} for name, run in runs.items()}
    ratios, paired, cpu_ratios = {}, {}, {}
    for name in list(calls)[1:]:
        for mode in modes:
            key, ref = f"{name}_{mode}_speedup", runs["reference_fp32"]
            ratios[key] = ratio(times["reference_fp32"][f"{mode}_s"], times[name][f"{mode}_s"])
            cpu_ratios[key] = ratio(times["reference_fp32"][f"{mode}_cpu_s"], times[name][f"{mode}_cpu_s"])
            # each round's own ratio: both sides saw that round's load
            paired[key] = median([ratio(b, t) for b, t in zip(ref[f"{mode}_s"], runs[name][f"{mode}_s"])])
    settings = {"shape": args.shape, "batch_size": args.batch_size, "num_frames": args.num_frames,
                "rounds": args.rounds, "threads": args.threads, "modes": modes, "reference": f"{URL}@{COMMIT}"}
    return write(args.name, {
        "settings": settings, "machine": {"loadavg_at_start": load_at_start}, "max_abs_logit_diff": differences,
        "same_top1_as_reference": same_top1, "skipped_because": skipped, "compile_s": compile_s, "times": times,
        "runs": runs, "matmul_gflops_per_s_runs": matmul, "loadavg_runs": loads, "ratios": ratios,
        "median_of_round_ratios": paired, "cpu_time_ratios": cpu_ratios}, args.output)  # fmt: skip


SUITES = {"reference": ("evl_hf (fp32, bf16, bf16/int8 + compile) against the reference implementation: parity, "
                        "speed", add_arguments, run)}  # fmt: skip
