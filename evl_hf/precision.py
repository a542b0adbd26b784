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
The fastest backbone precision a device offers, and where compiled models keep their cache.

[`choose_dtype`] turns a device into a name of `evl_hf.quantization.DTYPES`, with the reason:

```python
>>> from evl_hf import EVLForVideoClassification
>>> from evl_hf.precision import choose_dtype
>>> from evl_hf.quantization import from_pretrained_kwargs

>>> dtype, reason = choose_dtype("cpu")  # for example ("int8", "cpu: AVX-512 VNNI without AMX, ...")
>>> model = EVLForVideoClassification.from_pretrained("path/to/model", **from_pretrained_kwargs(dtype))  # doctest: +SKIP
```

The choice reads the CPU's instruction sets rather than timing kernels. A one-second timing of the backbone's
largest matmul ((1576, 768) x (768, 3072), 2 threads) on a shared 2-core AMD EPYC gave 38, 35, 35 GFLOP/s in fp32,
76, 67, 74 in bf16 and 64, 101, 69 in int8 (`torch._int_mm`) in three runs: int8 came first once and second twice,
while on the whole model int8 + compile was 1.5x faster than bf16 + compile on that CPU (quantizing activations and
the fused epilogues count as much as the matmul). A short timing is neither stable on a shared machine nor a
prediction of the model's speed; the instruction sets are both, and they are what the measured routes depend on.
"""

import logging
import os
from pathlib import Path

import torch


logger = logging.getLogger(__name__)


def cpu_features() -> dict[str, bool]:
    """The instruction sets of this CPU that decide its fastest precision (from `torch.cpu`, which reads cpuinfo):
    `amx` (AMX tiles, Intel Sapphire Rapids and later), `avx512_vnni` (int8 dot products) and `avx512_bf16`."""
    return {
        "amx": torch.cpu._is_amx_tile_supported(),
        "avx512_vnni": torch.cpu._is_vnni_supported(),
        "avx512_bf16": torch.cpu._is_avx512_bf16_supported(),
    }


def choose_dtype(device="cpu", compile: bool = True) -> tuple[str, str]:
    """
    The fastest backbone precision on `device` among those whose effect on the predictions is measured (the int8
    agreement and the bf16 logits in docs/benchmarks.md), with a one-line reason, which is also logged.

    - CUDA: `"bfloat16"` where the GPU supports it (compute capability 8.0 or more), else `"float32"`.
    - CPU with AMX: `"bfloat16"` (bf16 + compile was the fastest route on an AMX Xeon, ahead of int8 + compile).
    - CPU with AVX-512 VNNI and no AMX: `"int8"` when torchao is installed and the model is compiled (int8 + compile
      was the fastest route on an AMD EPYC); `"bfloat16"` when the CPU has AVX-512 BF16 and torchao is missing or
      the model runs eagerly (eager int8, 2.6-3.1 s, was slower than eager bf16, 2.0 s, on that EPYC); `"int8"`
      eagerly without AVX-512 BF16; `"float32"` without either.
    - Anything else: `"float32"` (bf16 matmuls without bf16 instructions ran 8x slower than fp32).

    Args:
        device (`str` or `torch.device`): where the model will run.
        compile (`bool`): whether the model will be compiled ([`evl_hf.quantization.compile_model`]).

    Returns:
        `tuple[str, str]`: the dtype name (a key of `evl_hf.quantization.DTYPES`) and the reason.
    """
    import importlib.util

    device = torch.device(device)
    if device.type == "cuda":
        capability = torch.cuda.get_device_capability(device)
        dtype = "bfloat16" if capability >= (8, 0) else "float32"
        reason = f"{device}: compute capability {capability[0]}.{capability[1]}, " + (
            "bf16 tensor cores" if dtype == "bfloat16" else "no bf16 tensor cores (8.0 or more needed)"
        )
    elif device.type == "cpu":
        features = cpu_features()
        has_torchao = importlib.util.find_spec("torchao") is not None
        if features["amx"]:
            dtype, reason = "bfloat16", "cpu: AMX, where bf16 is the fastest route"
        elif features["avx512_vnni"] and has_torchao and (compile or not features["avx512_bf16"]):
            dtype = "int8"
            reason = "cpu: AVX-512 VNNI without AMX, torchao installed" + (", compiled" if compile else "")
        elif features["avx512_bf16"]:
            dtype = "bfloat16"
            reason = "cpu: AVX-512 BF16 without AMX, " + (
                "torchao not installed (int8 would be faster compiled: pip install 'evl-hf[quantize]')"
                if features["avx512_vnni"] and not has_torchao
                else "not compiled (eager int8 is slower than bf16)"
                if features["avx512_vnni"]
                else "no VNNI"
            )
        else:
            dtype = "float32"
            reason = "cpu: neither AMX nor AVX-512 BF16" + (
                " (VNNI, but torchao is not installed)" if features["avx512_vnni"] else " nor VNNI"
            )
    else:
        dtype, reason = "float32", f"{device}: only float32 is measured on {device.type}"
    logger.info(f"--dtype auto: {dtype} ({reason})")
    return dtype, reason


def inductor_cache_dir() -> Path:
    """
    Where `torch.compile` keeps its compiled kernels between processes: `$TORCHINDUCTOR_CACHE_DIR` when set, else
    `$EVL_HF_CACHE/inductor`, else `~/.cache/evl_hf/inductor` (`$XDG_CACHE_HOME` honoured). PyTorch's own default is
    under the temporary folder, which a reboot or a fresh container empties; a compiled ViT-B/16 then pays its whole
    compilation again (about a minute on two cores) instead of reading its kernels. Sets `TORCHINDUCTOR_CACHE_DIR` for this process when it was not set.
    """
    if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        if "EVL_HF_CACHE" in os.environ:
            folder = Path(os.environ["EVL_HF_CACHE"]).expanduser() / "inductor"
        else:
            folder = (
                Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser() / "evl_hf" / "inductor"
            )
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])


__all__ = ["choose_dtype", "cpu_features", "inductor_cache_dir"]
