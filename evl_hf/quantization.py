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
"""The precisions an EVL model runs in, and compiled inference.

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
    that shape, so that the calls that follow, of the same shape, run compiled at once. The modules are compiled,
    not `forward`, so that every route through the model (`forward`, the `get_frame_features` and
    `decode_frame_features` of sliding windows) runs compiled; another shape compiles once more the first time it
    is seen. Returns the model.
    """
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


__all__ = [
    "DTYPES",
    "QUANTIZED_DTYPES",
    "torchao_config",
    "from_pretrained_kwargs",
    "quantize_backbone",
    "is_quantized",
    "compile_model",
]
