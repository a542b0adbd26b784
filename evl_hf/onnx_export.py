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
"""
ONNX export of an EVL classifier, from `pixel_values` to `logits`, and its check against PyTorch with onnxruntime.

The graph comes from `torch.onnx.export` (the `torch.export` based exporter, which needs `onnxscript`). The input is
`pixel_values`, float32 `(batch_size, num_frames, 3, height, width)` as [`EVLVideoProcessor`] returns it, and the
output `logits`, `(batch_size, num_labels)`; the batch and frame dimensions are dynamic (clips of another length
than the model's `num_frames`, at least 2 frames, use the interpolated temporal position embedding, as in PyTorch).
The label names, the clip length and the image size are stored in the file's metadata. Needs the `export` extra.
"""

import json


DEFAULT_OPSET = 18


def require_export_extra():
    """Raises an `ImportError` that names the extra to install when onnx, onnxscript or onnxruntime is missing."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise ImportError(
            f"Exporting to ONNX needs onnx, onnxscript and onnxruntime ({error}): pip install 'evl-hf[export]'"
        ) from None


def export_onnx(model, path, *, opset: int = DEFAULT_OPSET, batch_size: int = 2):
    """
    Writes `model` as an ONNX graph from `pixel_values` to `logits` with dynamic batch and frame dimensions.

    Args:
        model ([`EVLForVideoClassification`]):
            The classifier, in float32 (on the CPU or a GPU).
        path (`str` or `os.PathLike`):
            The `.onnx` file to write.
        opset (`int`, *optional*, defaults to 18):
            The ONNX opset version.
        batch_size (`int`, *optional*, defaults to 2):
            Batch size of the example input the graph is traced with; any batch size runs afterwards. Its clip length
            is the model's `num_frames`; any length from 2 frames runs afterwards.
    """
    require_export_extra()
    import onnx
    import torch

    from .quantization import LogitsOnly, is_quantized

    if is_quantized(model):
        # torchao's quantized tensors have no ONNX lowering; an ONNX graph is quantized by onnxruntime instead.
        raise ValueError(
            "export writes the float32 model to ONNX; this model's backbone is quantized (torchao), which ONNX cannot "
            "express. Export the float32 checkpoint it was quantized from, then quantize the ONNX file with "
            "onnxruntime.quantization.quantize_dynamic, or run the PyTorch model with `--dtype int8 --compile`."
        )
    config = model.config
    size = config.vision_config.image_size
    example = torch.randn(
        batch_size, config.num_frames, config.vision_config.num_channels, size, size, device=model.device
    )

    wrapper = LogitsOnly(model).eval()
    with torch.no_grad():
        torch.onnx.export(
            wrapper,
            (example,),
            str(path),
            dynamo=True,
            opset_version=opset,
            input_names=["pixel_values"],
            output_names=["logits"],
            dynamic_shapes={
                "pixel_values": {0: torch.export.Dim("batch_size"), 1: torch.export.Dim("num_frames", min=2)}
            },
            verbose=False,
        )
    # The weights may sit in a `.data` file next to the graph (the exporter's choice for large models): only the graph
    # is read and rewritten, and it keeps pointing at that file.
    graph = onnx.load(str(path), load_external_data=False)
    metadata = {
        "id2label": json.dumps({str(i): label for i, label in config.id2label.items()}),
        "num_frames": str(config.num_frames),
        "image_size": str(size),
    }
    for key, value in metadata.items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(graph, str(path))


def check_onnx(
    model, path, *, shapes: tuple[tuple[int, int], ...] | None = None, seed: int = 0
) -> tuple[float, float]:
    """
    Runs the ONNX file with onnxruntime on random batches. `shapes`: the `(batch_size, num_frames)` of each batch; by
    default 3 clips of the model's length and 1 clip of twice that length.

    Returns:
        `tuple[float, float]`: the largest difference between onnxruntime's and PyTorch's logits, and the largest
        PyTorch logit in absolute value (the scale that difference is rounding of).
    """
    require_export_extra()
    import onnxruntime
    import torch

    config = model.config
    size = config.vision_config.image_size
    generator = torch.Generator().manual_seed(seed)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    difference = scale = 0.0
    for batch_size, num_frames in shapes or ((3, config.num_frames), (1, 2 * config.num_frames)):
        pixel_values = torch.randn(
            batch_size, num_frames, config.vision_config.num_channels, size, size, generator=generator
        )
        (logits,) = session.run(["logits"], {"pixel_values": pixel_values.numpy()})
        with torch.no_grad():
            expected = model(pixel_values=pixel_values.to(model.device)).logits.cpu()  # PyTorch where the model is
        difference = max(difference, (torch.from_numpy(logits) - expected).abs().max().item())
        scale = max(scale, expected.abs().max().item())
    return difference, scale


def onnx_tolerance(scale: float) -> float:
    """The largest difference between onnxruntime's and PyTorch's logits that is rounding: the same fp32 graph in
    two runtimes differs by rounding only, which grows with the size of the logits (`scale`, the largest in absolute
    value): 1e-4 for logits up to 1, relative beyond."""
    return 1e-4 * max(1.0, scale)


__all__ = ["DEFAULT_OPSET", "check_onnx", "export_onnx", "onnx_tolerance", "require_export_extra"]
