"""Quantized and compiled EVL: torchao through `from_pretrained`, the precision table, and compiled inference."""

import json
import sys

import pytest
import torch
from transformers import CLIPVisionConfig


torchao = pytest.importorskip("torchao")
from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8Tensor, Int8WeightOnlyConfig  # noqa: E402
from transformers import TorchAoConfig  # noqa: E402

from evl_hf import EVLConfig, EVLForVideoClassification, EVLModel  # noqa: E402
from evl_hf.quantization import (  # noqa: E402
    DTYPES,
    compile_model,
    from_pretrained_kwargs,
    is_quantized,
    quantize_backbone,
    torchao_config,
)


QUANT_TYPES = {"int8": Int8DynamicActivationInt8WeightConfig, "int8-weight-only": Int8WeightOnlyConfig}
# fp32 vs int8 logits (at most 0.3) of the tiny model below on `clips`: measured 0.0004-0.0012 over 4 seeds.
LOGITS_TOLERANCE = 0.01


def tiny_model(seed=0):
    torch.manual_seed(seed)
    vision_config = CLIPVisionConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8
    )
    model = EVLForVideoClassification(EVLConfig(vision_config=vision_config, decoder_num_layers=2, num_labels=5))
    # The temporal tables, position embeddings and query start at zero: random values make them count.
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if any(part in name for part in ("temporal_cross_attention", "temporal_pos_embed", "query_token")):
                parameter.copy_(torch.randn(parameter.shape) * 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_evl")
    tiny_model().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def clips():
    return torch.randn(2, 8, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def fp32_logits(model_folder, clips):
    with torch.no_grad():
        return EVLForVideoClassification.from_pretrained(model_folder).eval()(clips).logits


def linear_weights(module):
    return {name: m.weight for name, m in module.named_modules() if isinstance(m, torch.nn.Linear)}


def assert_only_backbone_quantized(model):
    backbone = linear_weights(model.evl.vision_model)
    assert backbone and all(isinstance(weight, Int8Tensor) for weight in backbone.values())
    # The decoder (its attention views k_proj.weight per head), query token, temporal modules and the head
    for module in (model.evl.decoder, model.fc_norm, model.classifier):
        for name, parameter in module.named_parameters():
            assert type(parameter) is torch.nn.Parameter and parameter.dtype == torch.float32, name


@pytest.mark.parametrize("dtype", list(QUANT_TYPES))
def test_from_pretrained_with_torchao_config_quantizes_only_the_backbone_linear_layers(model_folder, dtype):
    config = TorchAoConfig(QUANT_TYPES[dtype]())
    model = EVLForVideoClassification.from_pretrained(model_folder, quantization_config=config)
    assert_only_backbone_quantized(model)
    assert is_quantized(model)


@pytest.mark.parametrize("dtype", list(QUANT_TYPES))
def test_quantized_logits_are_close_to_float32(model_folder, clips, fp32_logits, dtype):
    model = EVLForVideoClassification.from_pretrained(model_folder, **from_pretrained_kwargs(dtype)).eval()
    with torch.no_grad():
        logits = model(clips).logits
    assert logits.dtype == torch.float32
    difference = (logits - fp32_logits).abs().max().item()
    assert 0 < difference < LOGITS_TOLERANCE  # not zero: the backbone did run quantized


def test_quantized_base_model_keeps_its_decoder_in_float32(model_folder, clips):
    model = EVLModel.from_pretrained(model_folder, **from_pretrained_kwargs("int8"))
    assert all(isinstance(weight, Int8Tensor) for weight in linear_weights(model.vision_model).values())
    assert all(type(p) is torch.nn.Parameter for p in model.decoder.parameters())
    with torch.no_grad():
        assert model(clips).pooler_output.dtype == torch.float32


def test_quantized_model_loads_with_a_frozen_backbone(model_folder):
    model = EVLForVideoClassification.from_pretrained(model_folder, **from_pretrained_kwargs("int8"))
    assert not any(p.requires_grad for p in model.evl.vision_model.parameters())
    assert all(p.requires_grad for p in model.evl.decoder.parameters())


def test_save_pretrained_round_trips_a_quantized_model(model_folder, clips, tmp_path):
    model = EVLForVideoClassification.from_pretrained(model_folder, **from_pretrained_kwargs("int8")).eval()
    model.save_pretrained(tmp_path)
    # transformers 5 writes safetensors only; torchao's tensors are flattened into it, with their metadata
    assert (tmp_path / "model.safetensors").is_file() and not list(tmp_path.glob("*.bin"))
    assert json.loads((tmp_path / "config.json").read_text())["quantization_config"]["quant_method"] == "torchao"
    reloaded = EVLForVideoClassification.from_pretrained(tmp_path).eval()  # no quantization_config: the saved one
    assert_only_backbone_quantized(reloaded)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(clips).logits, model(clips).logits, rtol=0, atol=0)


def test_quantize_backbone_of_a_model_in_memory_equals_loading_quantized(model_folder, clips):
    loaded = EVLForVideoClassification.from_pretrained(model_folder, **from_pretrained_kwargs("int8")).eval()
    in_memory = quantize_backbone(EVLForVideoClassification.from_pretrained(model_folder), "int8").eval()
    assert_only_backbone_quantized(in_memory)
    assert is_quantized(in_memory) and not getattr(in_memory, "is_quantized", False)  # the Trainer takes it
    with torch.no_grad():
        torch.testing.assert_close(in_memory(clips).logits, loaded(clips).logits, rtol=0, atol=0)


def test_from_pretrained_kwargs_gives_a_dtype_or_a_torchao_config():
    assert from_pretrained_kwargs("float32") == {"dtype": torch.float32}
    assert from_pretrained_kwargs("bfloat16") == {"dtype": torch.bfloat16}
    assert from_pretrained_kwargs("float16") == {"dtype": torch.float16}
    for dtype, quant_type in QUANT_TYPES.items():
        (config,) = from_pretrained_kwargs(dtype).values()
        assert isinstance(config, TorchAoConfig) and type(config.quant_type) is quant_type
    with pytest.raises(ValueError, match="'int4' is not one of float32, bfloat16, float16, int8"):
        from_pretrained_kwargs("int4")
    assert set(DTYPES) >= {"float32", "bfloat16", "float16", "int8"}


def test_a_quantized_dtype_without_torchao_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchao.quantization", None)  # what `import` finds when torchao is absent
    with pytest.raises(ImportError, match=r"torchao, which is not installed: pip install 'evl-hf\[quantize\]'"):
        torchao_config("int8")


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["int8", "bfloat16"])
def test_compiled_model_matches_eager_and_compiles_once_for_the_warmed_shape(model_folder, clips, dtype):
    eager = EVLForVideoClassification.from_pretrained(model_folder, **from_pretrained_kwargs(dtype)).eval()
    with torch.inference_mode():
        expected = eager(clips).logits
    torch._dynamo.reset()
    compiled = compile_model(
        EVLForVideoClassification.from_pretrained(model_folder, **from_pretrained_kwargs(dtype)).eval(),
        batch_size=clips.shape[0],
        num_frames=clips.shape[1],
    )
    frames_seen = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert frames_seen >= 1  # the warm-up compiled
    with torch.inference_mode():
        logits = compiled(clips).logits
        compiled(clips)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == frames_seen  # no compilation after warming
    torch.testing.assert_close(logits, expected, rtol=0, atol=0.05 if dtype == "bfloat16" else 0.02)


# (amx, avx512_vnni, avx512_bf16, torchao installed, compiled) -> the dtype `--dtype auto` runs on that CPU
CPU_CHOICES = {
    (True, True, True, True, True): "bfloat16",  # AMX Xeon: bf16 + compile beat int8 + compile
    (False, True, True, True, True): "int8",  # AMD EPYC: int8 + compile beat bf16 + compile
    (False, True, True, True, False): "bfloat16",  # eager int8 was slower than eager bf16 there
    (False, True, True, False, True): "bfloat16",
    (False, True, False, True, False): "int8",
    (False, True, False, False, True): "float32",
    (False, False, True, True, True): "bfloat16",
    (False, False, False, True, True): "float32",
}


@pytest.mark.parametrize(("features", "expected"), list(CPU_CHOICES.items()))
def test_choose_dtype_follows_the_cpu_instruction_sets(monkeypatch, features, expected):
    from evl_hf import precision

    amx, vnni, bf16, has_torchao, compiled = features
    monkeypatch.setattr(precision, "cpu_features", lambda: {"amx": amx, "avx512_vnni": vnni, "avx512_bf16": bf16})
    if not has_torchao:
        monkeypatch.setitem(sys.modules, "torchao", None)  # what find_spec reports for a package that is absent
    dtype, reason = precision.choose_dtype("cpu", compile=compiled)
    assert dtype == expected
    assert reason.startswith("cpu: ") and "\n" not in reason


def test_choose_dtype_on_this_machine_logs_one_line(caplog):
    from evl_hf.precision import choose_dtype, cpu_features

    with caplog.at_level("INFO", logger="evl_hf.precision"):
        dtype, reason = choose_dtype(torch.device("cpu"))
    assert dtype in DTYPES and dtype != "float16"
    assert f"--dtype auto: {dtype} ({reason})" in caplog.text
    assert set(cpu_features()) == {"amx", "avx512_vnni", "avx512_bf16"}


def test_choose_dtype_keeps_float32_where_nothing_else_is_measured():
    from evl_hf.precision import choose_dtype

    assert choose_dtype("meta")[0] == "float32"


@pytest.mark.parametrize(
    ("environment", "expected"),
    [
        ({"TORCHINDUCTOR_CACHE_DIR": "{tmp}/chosen"}, "{tmp}/chosen"),
        ({"EVL_HF_CACHE": "{tmp}/evl"}, "{tmp}/evl/inductor"),
        ({"XDG_CACHE_HOME": "{tmp}/xdg"}, "{tmp}/xdg/evl_hf/inductor"),
    ],
)
def test_the_inductor_cache_lives_in_the_evl_hf_cache_unless_told(monkeypatch, tmp_path, environment, expected):
    from evl_hf.precision import inductor_cache_dir

    for name in ("TORCHINDUCTOR_CACHE_DIR", "EVL_HF_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value.format(tmp=tmp_path))
    assert inductor_cache_dir() == tmp_path / expected.format(tmp=tmp_path).removeprefix(f"{tmp_path}/")
    # torch.compile reads its folder from there
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    assert cache_dir() == str(inductor_cache_dir())


@pytest.mark.slow
def test_an_aoti_package_of_the_int8_model_runs_as_the_eager_model_without_compiling(model_folder, clips, tmp_path):
    from evl_hf.quantization import export_compiled, load_compiled

    model = EVLForVideoClassification.from_pretrained(model_folder, **from_pretrained_kwargs("int8")).eval()
    with torch.inference_mode():
        expected = model(clips).logits
        attentions = model(clips, output_attentions=True).decoder_attentions
    path = export_compiled(model, tmp_path / "int8.pt2", dtype="int8")
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()  # reset() keeps them: the export and earlier tests' compiles counted there
    load_compiled(model, path)
    with torch.inference_mode():
        logits = model(pixel_values=clips).logits
        three = model(pixel_values=torch.cat([clips, clips[:1]])).logits  # another batch size
        channels_last = model(pixel_values=clips.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)).logits
        with_attentions = model(clips, output_attentions=True)  # what the package does not give: the model runs it
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 0  # nothing compiled in this process
    torch.testing.assert_close(logits, expected, rtol=0, atol=0.02)
    torch.testing.assert_close(three[:2], logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(channels_last, logits, rtol=0, atol=1e-5)  # the package assumes contiguous input
    assert attentions is not None and len(with_attentions.decoder_attentions) == len(attentions)
