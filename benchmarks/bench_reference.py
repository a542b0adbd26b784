"""EVL in evl_hf against the reference implementation on CPU: one set of weights, parity, then alternating timings.

The reference implementation is OpenGVLab/efficient-video-recognition; pass a checkout of it with
`--reference-dir` (nothing of it is copied here: it is imported from that folder). The script

1. builds the reference `EVLTransformer` (ViT-B/16 shapes, 4 decoder layers, 400 classes, frozen fp32
   backbone) with random weights, its zero-initialised decoder tables drawn at random so that every path
   of the decoder contributes to the logits;
2. maps the same weights into `EVLForVideoClassification` (the backbone key by key, the decoder and head
   through `evl_hf.convert_evl_original_to_hf`), and prints the largest logit difference in fp32;
3. saves that model and loads it again with `from_pretrained(**evl_hf.quantization.from_pretrained_kwargs(dtype))`:
   - `evl_hf_bf16`: `dtype=torch.bfloat16`, the CLIP backbone in bf16, the decoder and head in fp32. Only on a
     CPU with bf16 instructions (`avx512_bf16` or AMX in the `lscpu` flags); elsewhere bf16 runs at a fraction of
     fp32 speed and the row is skipped;
   - `evl_hf_bf16_compiled`: the same, its backbone compiled with `evl_hf.quantization.compile_model`;
   - `evl_hf_int8_compiled`: `quantization_config=TorchAoConfig(Int8DynamicActivationInt8WeightConfig())`
     (torchao's dynamic int8 on the backbone's Linear layers; decoder and head fp32), compiled. Only on a CPU
     with int8 dot-product instructions (`avx512_vnni`, `avx_vnni` or `amx_int8`), and with torchao installed;
   the compile time (the first call of each shape, inference and training step apart) is reported on its own;
4. times, in rounds that alternate the systems (their order rotating from round to round), one inference
   (`eval()`, `torch.inference_mode()`) and one training step (forward, cross-entropy, backward, AdamW on
   the trainable parameters) per system, and reports medians over the rounds and their ratios.

Two patches are applied to the reference in this process only (its files are not touched): its temporal
cross attention allocates its output on `cuda`, here on the input's device; and its backbone weight loader
(which reads an OpenAI CLIP JIT file) is given random weights instead.

    python benchmarks/bench_reference.py --reference-dir ../efficient-video-recognition
    python benchmarks/bench_reference.py --reference-dir ../efficient-video-recognition --rounds 7 --output docs/benchmark_results
    python benchmarks/bench_reference.py --reference-dir ../efficient-video-recognition --profile   # per-op CPU time
"""

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from bench_cpu_models import matmul_gflops
from bench_gpu import build_model
from benchmark_utils import VIT_SHAPES, emit, fmt, log, machine_info, markdown_table, median, ratio, target, targets_table


NUM_LABELS = 400
SYSTEMS = ("reference_fp32", "evl_hf_fp32", "evl_hf_bf16", "evl_hf_bf16_compiled", "evl_hf_int8_compiled")
# system -> backbone dtype (a name of evl_hf.quantization.DTYPES) and whether it is compiled
LOADED_SYSTEMS = {
    "evl_hf_bf16": ("bfloat16", False),
    "evl_hf_bf16_compiled": ("bfloat16", True),
    "evl_hf_int8_compiled": ("int8", True),
}
REFERENCE_URL = "https://github.com/OpenGVLab/efficient-video-recognition"


def cpu_flags() -> set[str]:
    try:
        flags = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return set(flags.split())


def cpu_has_fast_bf16() -> bool:
    """Whether the CPU has bf16 matrix instructions (`avx512_bf16`, or AMX on recent Xeons)."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def cpu_has_fast_int8() -> bool:
    """Whether the CPU has int8 dot-product instructions (VNNI, or AMX), which torchao's int8 matmuls use."""
    return bool(cpu_flags() & {"avx512_vnni", "avx_vnni", "amx_int8"})


def skip_reason(dtype: str, args) -> str | None:
    """Why the rows of backbone `dtype` cannot be measured here, or None."""
    if dtype == "bfloat16":
        if args.no_bf16:
            return "--no-bf16"
        if not cpu_has_fast_bf16():
            return "no avx512_bf16 or AMX in the lscpu flags: bf16 matmuls would be slower than fp32"
        return None
    if args.no_int8:
        return "--no-int8"
    if not cpu_has_fast_int8():
        return "no avx512_vnni, avx_vnni or AMX in the lscpu flags: int8 matmuls would not be faster than fp32"
    if importlib.util.find_spec("torchao") is None:
        return "torchao is not installed: pip install 'evl-hf[quantize]'"
    return None


def import_reference(reference_dir: str):
    """The reference's `model` module, imported from its checkout (which imports its `vision_transformer`)."""
    folder = Path(reference_dir).expanduser().resolve()
    missing = [name for name in ("model.py", "vision_transformer.py", "weight_loaders.py") if not (folder / name).is_file()]
    if missing:
        raise SystemExit(
            f"error: --reference-dir {reference_dir} has no {', '.join(missing)}: pass a checkout of "
            f"{REFERENCE_URL} (git clone {REFERENCE_URL}.git)."
        )
    sys.path.insert(0, str(folder))  # model.py imports its siblings by their bare names
    spec = importlib.util.spec_from_file_location("evl_reference_model", folder / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cross_attention_on_input_device(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The reference temporal cross attention, with its output allocated where the inputs are (it hard-codes cuda).

    `q`, `k`: `(batch, frames, 1 + patches, heads, head_dim)`; returns `(batch, frames, 1 + patches, width)`."""
    batch, frames, tokens = q.shape[:3]
    output = torch.zeros(batch, frames, tokens, self.w1.shape[-1], device=q.device)
    output[:, 1:, 1:] += self.forward_half(q[:, 1:], k[:, :-1], self.w1)  # frames 1.. look back
    output[:, :-1, 1:] += self.forward_half(q[:, :-1], k[:, 1:], self.w2)  # frames ..T-2 look ahead
    return output


def build_reference(reference, shape: dict, num_frames: int):
    """The reference `EVLTransformer` with a frozen fp32 backbone of `shape`, random weights throughout."""
    from vision_transformer import VisionTransformer2D, vit_presets

    patch, size = shape["patch_size"], shape["image_size"]
    preset = {
        "feature_dim": shape["hidden_size"],
        "input_size": (size, size),
        "patch_size": (patch, patch),
        "num_heads": shape["num_attention_heads"],
        "num_layers": shape["num_hidden_layers"],
        "mlp_factor": shape["intermediate_size"] / shape["hidden_size"],
        "ln_pre": True,  # CLIP's pre-layernorm, as the reference's CLIP presets
    }
    vit_presets["bench"] = preset

    def random_backbone(path):
        state_dict = VisionTransformer2D(**preset).state_dict()
        state_dict["patch_embed.proj.bias"].zero_()  # CLIP's patch embedding has no bias
        return state_dict

    reference.weight_loader_fn_dict["bench"] = random_backbone
    reference.TemporalCrossAttention.forward = _cross_attention_on_input_device
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
            if not parameter.any():  # query token, temporal position embeddings and cross-attention tables
                parameter.normal_(std=0.02)
    return model


def reference_backbone_to_clip(state_dict: dict, shape: dict) -> dict:
    """The reference `VisionTransformer2D` weights under `CLIPVisionModel`'s names."""
    patch, width = shape["patch_size"], shape["hidden_size"]
    renamed = {
        "embeddings.class_embedding": state_dict["cls_token"],
        # Its patch embedding is a Linear over (channels, row, column)-flattened patches: CLIP's convolution kernel.
        "embeddings.patch_embedding.weight": state_dict["patch_embed.proj.weight"].view(width, 3, patch, patch),
        "embeddings.position_embedding.weight": state_dict["pos_embed"],
        "pre_layrnorm.weight": state_dict["ln_pre.weight"],
        "pre_layrnorm.bias": state_dict["ln_pre.bias"],
    }
    layer_names = {"attn.": "self_attn.", "mlp.": "mlp.", "norm1.": "layer_norm1.", "norm2.": "layer_norm2."}
    for key, value in state_dict.items():
        if key.startswith("blocks."):
            _, index, rest = key.split(".", 2)
            prefix = next(p for p in layer_names if rest.startswith(p))
            renamed[f"encoder.layers.{index}.{layer_names[prefix]}{rest[len(prefix):]}"] = value
    return renamed


def build_evl_hf(reference_model, shape_name: str, num_frames: int):
    """`EVLForVideoClassification` holding the reference model's weights."""
    from evl_hf.convert_evl_original_to_hf import convert_state_dict

    shape = VIT_SHAPES[shape_name]
    model = build_model(shape_name, num_frames, "sdpa", torch.device("cpu"))
    backbone = reference_backbone_to_clip(reference_model.backbone[0].state_dict(), shape)
    missing, unexpected = model.evl.vision_model.load_state_dict(backbone, strict=False)
    assert not unexpected and set(missing) <= {"post_layernorm.weight", "post_layernorm.bias"}, (missing, unexpected)
    model.load_state_dict(convert_state_dict(reference_model.state_dict()), strict=False)
    return model


def load_backbone_in(model, dtype: str):
    """The user's path to a bf16 or int8 backbone: save, then `from_pretrained(**from_pretrained_kwargs(dtype))`."""
    from evl_hf import EVLForVideoClassification
    from evl_hf.quantization import from_pretrained_kwargs, is_quantized

    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        loaded = EVLForVideoClassification.from_pretrained(folder, **from_pretrained_kwargs(dtype))
    backbone_dtypes = {p.dtype for p in loaded.evl.vision_model.parameters()}
    decoder = [p for n, p in loaded.named_parameters() if not n.startswith("evl.vision_model.")]
    assert {p.dtype for p in decoder} == {torch.float32} and not is_quantized(loaded.evl.decoder)
    if dtype == "bfloat16":
        assert backbone_dtypes == {torch.bfloat16}, backbone_dtypes
    else:
        assert is_quantized(loaded.evl.vision_model)
    return loaded


def logits_of(name: str, model, pixel_values: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.inference_mode():
        if name == "reference_fp32":
            return model(pixel_values.transpose(1, 2)).float()  # the reference takes (B, C, T, H, W)
        return model(pixel_values=pixel_values).logits.float()


def make_steps(name: str, model, pixel_values: torch.Tensor, labels: torch.Tensor) -> dict:
    """One inference and one training step of `model`, as callables."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    is_reference = name == "reference_fp32"
    inputs = pixel_values.transpose(1, 2) if is_reference else pixel_values

    def loss_of():
        if is_reference:
            return F.cross_entropy(model(inputs), labels)
        return model(pixel_values=inputs, labels=labels).loss

    def inference():
        model.eval()
        with torch.inference_mode():
            model(inputs) if is_reference else model(pixel_values=inputs)

    def train():
        model.train()
        loss_of().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return {"inference": inference, "train": train}


def timed(step) -> tuple[float, float]:
    """Wall-clock and CPU seconds (all threads of this process) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    step()
    return time.perf_counter() - wall, time.process_time() - cpu


def profile_inference(name: str, step, rows: int) -> str:
    """Self CPU time per operator of one inference."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    return f"{name}\n" + prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference-dir", required=True, help=f"a checkout of {REFERENCE_URL}")
    parser.add_argument("--shape", default="vit-b16", choices=list(VIT_SHAPES))
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--num-frames", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds; medians over them")
    parser.add_argument("--warmup-steps", type=int, default=1, help="untimed steps per system and mode first")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-bf16", action="store_true", help="skip the bf16-backbone rows")
    parser.add_argument("--no-int8", action="store_true", help="skip the int8-backbone row")
    parser.add_argument("--profile", action="store_true", help="print per-op self CPU time of one inference each")
    parser.add_argument("--profile-rows", type=int, default=15)
    parser.add_argument("--modes", default="inference,train", help="what each round times: inference, train or both")
    parser.add_argument("--name", default="reference", help="the results are written to <output>/<name>.json and .md")
    parser.add_argument("--output", help="folder to write <name>.json and <name>.md into")
    args = parser.parse_args(argv)
    args.modes = [mode.strip() for mode in args.modes.split(",")]
    if not args.modes or set(args.modes) - {"inference", "train"}:
        parser.error(f"--modes {','.join(args.modes)}: expected inference, train or inference,train")
    return args


def to_markdown(result: dict) -> str:
    s, times, m = result["settings"], result["times"], result["machine"]
    title = (
        f"{m['cpu']}, {s['shape']} shapes, {s['num_frames']} frames, batch {s['batch_size']}, {s['threads']} threads; "
        f"medians of {s['rounds']} alternating rounds (load average {fmt(m['loadavg_at_start'][0])} at the start, "
        f"{fmt(m['loadavg_at_end'][0])} at the end)"
    )
    rows = []
    base = times["reference_fp32"]
    for name in SYSTEMS:
        if name not in times:
            rows.append([name, "skipped", "", "", "", "", "", "", "", result["skipped_because"][name]])
            continue
        t, paired = times[name], result["median_of_round_ratios"]
        rows.append(
            [
                name,
                t["inference_s"],
                ratio(base["inference_s"], t["inference_s"]),
                paired.get(f"{name}_inference_speedup", 1.0),
                t["inference_cpu_s"],
                t["train_s"],
                ratio(base["train_s"], t["train_s"]),
                paired.get(f"{name}_train_speedup", 1.0 if t["train_s"] is not None else None),
                t["train_cpu_s"],
                f"{result['max_abs_logit_diff'][name]:.1e}",
            ]
        )
    headers = [
        "system",
        "inference (s)",
        "speed-up",
        "median of round speed-ups",
        "inference CPU (s)",
        "train step (s)",
        "speed-up",
        "median of round speed-ups",
        "train step CPU (s)",
        "max abs logit diff vs reference",
    ]
    quiet = (
        f"fp32 `torch.mm` 2048x2048 per round (a quiet machine gives the most): "
        f"{', '.join(f'{g:.0f}' for g in result['matmul_gflops_per_s_runs'])} GFLOP/s; load average per round: "
        f"{', '.join(fmt(load) for load in result['loadavg_runs'])}"
    )
    compile_rows = [[name, t["inference_s"], t.get("train_s")] for name, t in result["compile_s"].items()]
    compile_table = markdown_table(["system", "first inference: compile + run (s)", "first train step (s)"],
                                   compile_rows)  # fmt: skip
    lines = [title, "", markdown_table(headers, rows), "", quiet, "", "Compilation, before the timed rounds "
             "(first call of each shape; a training step compiles the backbone once more, under autograd's no-grad "
             "mode):", "", compile_table, "", targets_table(result["targets"])]  # fmt: skip
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    reference = import_reference(args.reference_dir)
    shape = VIT_SHAPES[args.shape]
    load_at_start = [round(x, 2) for x in os.getloadavg()]

    torch.manual_seed(0)
    log("building the reference model")
    models = {"reference_fp32": build_reference(reference, shape, args.num_frames)}
    models["evl_hf_fp32"] = build_evl_hf(models["reference_fp32"], args.shape, args.num_frames)
    skipped_because = {}
    compile_s = {}
    for name, (dtype, compiled) in LOADED_SYSTEMS.items():
        if skip_reason(dtype, args):
            skipped_because[name] = skip_reason(dtype, args)
            log(f"{name} row skipped: {skipped_because[name]}")
            continue
        log(f"loading {name}")
        models[name] = load_backbone_in(models["evl_hf_fp32"], dtype)
        if compiled:
            from evl_hf.quantization import compile_model

            start = time.perf_counter()
            compile_model(models[name].eval(), batch_size=args.batch_size, num_frames=args.num_frames)
            compile_s[name] = {"inference_s": time.perf_counter() - start}
            log(f"{name}: compiled and warmed in {compile_s[name]['inference_s']:.0f} s")

    size = shape["image_size"]
    pixel_values = torch.randn(args.batch_size, args.num_frames, 3, size, size)
    labels = torch.randint(0, NUM_LABELS, (args.batch_size,))

    logits = {name: logits_of(name, model, pixel_values) for name, model in models.items()}
    differences = {name: (value - logits["reference_fp32"]).abs().max().item() for name, value in logits.items()}
    same_top1 = {
        name: (value.argmax(-1) == logits["reference_fp32"].argmax(-1)).float().mean().item()
        for name, value in logits.items()
    }
    for name, difference in differences.items():
        log(f"max |logit diff| {name} vs reference_fp32: {difference:.2e}")

    steps = {name: make_steps(name, model, pixel_values, labels) for name, model in models.items()}
    if args.profile:
        for name, step in steps.items():
            step["inference"]()  # warm-up outside the profile
            print(profile_inference(name, step["inference"], args.profile_rows), flush=True)

    for name, step in steps.items():
        for index in range(args.warmup_steps):
            step["inference"]()
            if "train" in args.modes:
                wall, _ = timed(step["train"])
                if index == 0 and name in compile_s:
                    compile_s[name]["train_s"] = wall  # the training step's own compilation, and one step
    runs = {name: {f"{mode}_{unit}": [] for mode in ("inference", "train") for unit in ("s", "cpu_s")} for name in steps}
    matmul, loads = [], []
    names = list(steps)
    for round_index in range(args.rounds):
        matmul.append(matmul_gflops(2048, args.threads))
        loads.append(round(os.getloadavg()[0], 2))
        order = names[round_index % len(names) :] + names[: round_index % len(names)]
        for name in order:
            for mode in args.modes:
                wall, cpu = timed(steps[name][mode])
                runs[name][f"{mode}_s"].append(wall)
                runs[name][f"{mode}_cpu_s"].append(cpu)
        log(
            f"round {round_index + 1}/{args.rounds} (matmul {matmul[-1]:.0f} GFLOP/s, load {loads[-1]}): "
            + ", ".join(f"{n} " + "/".join(f"{runs[n][f'{mode}_s'][-1]:.2f}" for mode in args.modes) + " s" for n in names)
        )

    times = {name: {key: median(values) for key, values in run.items()} for name, run in runs.items()}
    base = times["reference_fp32"]
    ratios, cpu_time_ratios, paired_ratios = {}, {}, {}
    for name in names[1:]:
        for mode in ("inference", "train"):
            key = f"{name}_{mode}_speedup"
            ratios[key] = ratio(base[f"{mode}_s"], times[name][f"{mode}_s"])
            cpu_time_ratios[key] = ratio(base[f"{mode}_cpu_s"], times[name][f"{mode}_cpu_s"])
            # each round's own ratio: both sides saw that round's load
            paired_ratios[key] = median(
                [ratio(b, t) for b, t in zip(runs["reference_fp32"][f"{mode}_s"], runs[name][f"{mode}_s"])]
            )
    goals = {
        "evl_hf_fp32_inference_speedup": 1.15,
        "evl_hf_bf16_inference_speedup": 1.8,
        "evl_hf_bf16_train_speedup": 2.2,
        "evl_hf_bf16_compiled_inference_speedup": 2.3,
        "evl_hf_int8_compiled_inference_speedup": 3.0,
    }
    targets = {key: target(ratios.get(key), at_least=goal) for key, goal in goals.items() if key in ratios}
    targets["evl_hf_fp32_max_abs_logit_diff"] = target(differences["evl_hf_fp32"], at_most=1e-4)

    machine = machine_info()
    machine["loadavg_at_start"] = load_at_start
    machine["fast_bf16"] = cpu_has_fast_bf16()
    machine["fast_int8"] = cpu_has_fast_int8()
    machine["threads"] = torch.get_num_threads()
    from importlib import metadata

    machine["versions"]["torchao"] = metadata.version("torchao") if importlib.util.find_spec("torchao") else None
    result = {
        "benchmark": "reference",
        "settings": {
            "shape": args.shape,
            "batch_size": args.batch_size,
            "num_frames": args.num_frames,
            "rounds": args.rounds,
            "warmup_steps": args.warmup_steps,
            "threads": args.threads,
            "modes": args.modes,
            "reference": REFERENCE_URL,
        },
        "machine": machine,
        "max_abs_logit_diff": differences,
        "same_top1_as_reference": same_top1,
        "skipped_because": skipped_because,
        "compile_s": compile_s,
        "times": times,
        "runs": runs,
        "matmul_gflops_per_s_runs": matmul,
        "loadavg_runs": loads,
        "ratios": ratios,
        "median_of_round_ratios": paired_ratios,
        "cpu_time_ratios": cpu_time_ratios,
        "targets": targets,
    }
    emit(args.name, result, to_markdown(result), args.output)


if __name__ == "__main__":
    main()
