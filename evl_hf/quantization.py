# Copyright 2026 The evl_hf authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""The precisions an EVL model runs in, and compiled inference: `torch.compile` in the process, or an AOTInductor
package compiled ahead of time and loaded without compiling.

Every precision applies to the frozen CLIP backbone only; the decoder, its query token, the temporal modules,
`fc_norm` and the classifier stay in float32 (what the models' `from_pretrained` puts in `modules_to_not_convert`
when the quantization config does not say). A name turns into the `from_pretrained` arguments that give it:

```python
>>> from evl_hf.quantization import from_pretrained_kwargs

>>> from_pretrained_kwargs("bfloat16")
{'dtype': torch.bfloat16}
>>> sorted(from_pretrained_kwargs("int8"))  # TorchAoConfig(Int8DynamicActivationInt8WeightConfig()); needs torchao
['quantization_config']
```
"""

import os

import torch


# name -> (backbone dtype, torchao config class name or None). The quantized rows keep float32 activations around
# the quantized matmuls; "int8" quantizes activations on the fly too (dynamic), which is what makes it fast on CPUs
# with VNNI/AMX, "int8-weight-only" only stores the weights in int8, "float8" needs a CUDA GPU of compute capability
# 8.9 or more.
DTYPES = {
    "float32": (torch.float32, None),
    "bfloat16": (torch.bfloat16, None),
    "float16": (torch.float16, None),
    "int8": (torch.float32, "Int8DynamicActivationInt8WeightConfig"),
    "int8-weight-only": (torch.float32, "Int8WeightOnlyConfig"),
    "float8": (torch.float32, "Float8DynamicActivationFloat8WeightConfig"),
}
QUANTIZED_DTYPES = tuple(name for name, (_, quant_type) in DTYPES.items() if quant_type is not None)
INSTALL_HINT = "pip install 'evl-hf[quantize]'"


def _check_name(dtype: str):
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}.")


def torchao_config(dtype: str):
    """The torchao quantization config (a fresh object) of a quantized `dtype`, such as `"int8"`.

    Raises:
        `ImportError`: torchao is not installed; the message names the extra that installs it.
    """
    _check_name(dtype)
    quant_type = DTYPES[dtype][1]
    if quant_type is None:
        raise ValueError(f"dtype {dtype!r} is not quantized; quantized ones are {', '.join(QUANTIZED_DTYPES)}.")
    try:
        import torchao.quantization
    except ImportError as error:
        raise ImportError(
            f"dtype {dtype!r} quantizes the backbone with torchao, which is not installed: {INSTALL_HINT}"
        ) from error
    return getattr(torchao.quantization, quant_type)()


def from_pretrained_kwargs(dtype: str) -> dict:
    """What to pass to [`EVLForVideoClassification.from_pretrained`] for the backbone to run in `dtype` (a key of
    `DTYPES`): `{"dtype": torch.bfloat16}`, or `{"quantization_config": TorchAoConfig(...)}` for a quantized one."""
    _check_name(dtype)
    if dtype not in QUANTIZED_DTYPES:
        return {"dtype": DTYPES[dtype][0]}
    from transformers import TorchAoConfig

    return {"quantization_config": TorchAoConfig(torchao_config(dtype))}


def quantize_backbone(model, dtype: str):
    """
    Quantize, in place, the Linear layers of the CLIP backbone of a model already in memory (one just built, or in
    training) to `dtype`, such as `"int8"`; the weights are those that
    `from_pretrained(..., **from_pretrained_kwargs(dtype))` gives. The model has no quantizer attached, so the
    Trainer takes it (the frozen int8 backbone runs without autograd), but `save_pretrained` cannot write its torchao
    tensors: save the float32 weights it was quantized from, or load with `from_pretrained_kwargs` for a quantized
    model that saves. Returns the model.
    """
    from torchao.quantization import quantize_

    quantize_(model.base_model.vision_model, torchao_config(dtype))
    return model


def is_quantized(model) -> bool:
    """Whether some weight of `model` is a quantized tensor (loaded with a quantization config, or quantized in place
    with `torchao.quantization.quantize_`)."""
    return getattr(model, "is_quantized", False) or any(
        type(parameter) not in (torch.Tensor, torch.nn.Parameter) for parameter in model.parameters()
    )


def compile_model(model, batch_size: int = 1, num_frames: int | None = None):
    """
    Compile the CLIP backbone and each decoder layer of `model` in place with `torch.compile`, and warm them: one
    forward pass of `batch_size` clips of `num_frames` frames (default `config.num_frames`) compiles the graphs for
    that shape, so that the calls that follow, of the same shape, run compiled at once; the compiled kernels are kept in
    [`evl_hf.precision.inductor_cache_dir`] for the next process. The modules are compiled,
    not `forward`, so that every route through the model (`forward`, the `get_frame_features` and
    `decode_frame_features` of sliding windows) runs compiled; another shape compiles once more the first time it
    is seen. Returns the model.
    """
    from .precision import inductor_cache_dir

    inductor_cache_dir()  # kept between processes: a second process starts in seconds
    vision = model.config.vision_config
    # The decoder is small in FLOPs but many small operations: eager, it was a third of an int8 inference.
    for module in (model.base_model.vision_model, *model.base_model.decoder.layers):
        module.compile()
    num_frames = model.config.num_frames if num_frames is None else num_frames
    size = (batch_size, num_frames, vision.num_channels, vision.image_size, vision.image_size)
    # Made outside inference mode, as the clips of a data loader are: an inference tensor would fail the guards.
    pixel_values = torch.zeros(size, device=next(model.parameters()).device)
    with torch.inference_mode():
        model(pixel_values=pixel_values)
    return model


class LogitsOnly(torch.nn.Module):
    """`model` from `pixel_values` to a plain `logits` tensor, the signature graph exporters take."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).logits


class LogitsAndPooledOutput(LogitsOnly):
    """`model` from `pixel_values` to `(logits, pooler_output)`: what one forward gives `evl-hf predict`."""

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outputs = self.model(pixel_values=pixel_values)
        return outputs.logits, outputs.pooler_output


def export_compiled(model, path, *, dtype: str, batch_size: int = 2) -> str:
    """
    Compiles `model` ahead of time into an AOTInductor package (`torch.export` then
    `torch._inductor.aoti_compile_and_package`) from `pixel_values` `(batch_size, num_frames, 3, height, width)` to
    `logits` `(batch_size, num_labels)` and `pooler_output` `(batch_size, hidden_size)`, any batch size, the model's
    `num_frames` and image size. The int8 (torchao) backbone exports and compiles too. [`load_compiled`] runs it
    without compiling.

    Args:
        model ([`EVLForVideoClassification`]): the classifier, loaded with the backbone in `dtype`, in eval mode.
        path (`str` or `os.PathLike`): the `.pt2` file to write.
        dtype (`str`): the name of `DTYPES` the backbone was loaded in, stored in the package.
        batch_size (`int`, *optional*, defaults to 2): batch size of the example the graph is traced with (not 1,
            which `torch.export` would make a constant).

    Returns:
        `str`: the package's path.
    """
    config, vision = model.config, model.config.vision_config
    device = next(model.parameters()).device
    size = (batch_size, config.num_frames, vision.num_channels, vision.image_size, vision.image_size)
    example = torch.randn(size, device=device)
    metadata = {
        "dtype": dtype,
        "device": device.type,
        "num_labels": config.num_labels,
        "num_frames": config.num_frames,
        "image_size": vision.image_size,
    }
    with torch.no_grad():
        program = torch.export.export(
            LogitsAndPooledOutput(model).eval(),
            (example,),
            dynamic_shapes={"pixel_values": {0: torch.export.Dim("batch_size")}},
        )
    return torch._inductor.aoti_compile_and_package(
        program,
        package_path=str(path),
        inductor_configs={"aot_inductor.metadata": {key: str(value) for key, value in metadata.items()}},
    )


def load_compiled(model, package):
    """
    Makes `model`'s forward run an AOTInductor package written by [`export_compiled`] from this model (`package`: its
    path, or what `torch._inductor.aoti_load_package` returned; its `get_metadata()["dtype"]` names the backbone dtype)
    when it is called with `pixel_values` of the package's clip shape alone, as in `model(pixel_values=x).logits`:
    nothing is compiled. Calls that ask for more (labels, attentions, hidden states) or another clip shape run the
    model itself, which should be loaded in the package's dtype. Returns the model.

    Raises:
        `ValueError`: the package was made for another number of labels, clip length, image size or device.
    """
    from .modeling_evl import EVLVideoClassifierOutput

    runner = torch._inductor.aoti_load_package(str(package)) if isinstance(package, (str, os.PathLike)) else package
    metadata, config = runner.get_metadata(), model.config
    device = next(model.parameters()).device.type
    expected = {
        "num_labels": str(config.num_labels),
        "num_frames": str(config.num_frames),
        "image_size": str(config.vision_config.image_size),
        "device": device,
    }
    wrong = {key: (metadata.get(key), value) for key, value in expected.items() if metadata.get(key) != value}
    if wrong:
        found = ", ".join(f"{key} {package} (the model has {value})" for key, (package, value) in wrong.items())
        raise ValueError(
            f"The compiled package was not exported from this model: it has {found}. Export it again from "
            "this model with `evl-hf export --format aoti`."
        )
    size = config.vision_config.image_size
    eager_forward, clip_shape = model.forward, (config.num_frames, config.vision_config.num_channels, size, size)

    def forward(pixel_values=None, labels=None, **kwargs):
        if labels is None and not any(kwargs.values()) and tuple(pixel_values.shape[1:]) == clip_shape:
            # The package was compiled for the contiguous layout of its example and does not check strides: a
            # channels-last clip would be read as if it were contiguous.
            outputs = runner(pixel_values.contiguous())
            logits, pooled = (outputs, None) if torch.is_tensor(outputs) else outputs  # older packages: logits alone
            return EVLVideoClassifierOutput(logits=logits, pooler_output=pooled)
        return eager_forward(pixel_values=pixel_values, labels=labels, **kwargs)

    model.forward = forward
    return model


__all__ = [
    "DTYPES",
    "QUANTIZED_DTYPES",
    "torchao_config",
    "from_pretrained_kwargs",
    "quantize_backbone",
    "is_quantized",
    "compile_model",
    "LogitsOnly",
    "LogitsAndPooledOutput",
    "export_compiled",
    "load_compiled",
]
