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
Small models and real videos for tests and benchmarks, as `transformers.testing_utils` serves transformers' own: a
tiny CLIP configuration, EVL models whose zero-initialised parts are given values (a fresh EVL's temporal tables,
position embeddings and query token are zero, which would hide their share of the work or of an error), and H.264
files encoded with torchcodec.
"""

import torch
from transformers import CLIPVisionConfig

from .configuration_evl import EVLConfig
from .image_processing_evl import EVLImageProcessor
from .modeling_evl import EVLForVideoClassification
from .video_processing_evl import EVLVideoProcessor


LABELS = ["left", "right", "up", "down", "still"]
# the parameters a fresh EVL decoder starts at zero
ZERO_INITIALISED = ("temporal_cross_attention", "temporal_pos_embed", "query_token")


# The tiny CLIP vision tower: 32x32 images in 8x8 patches, 32 wide, a forward pass in milliseconds (also the
# benchmarks' `tiny` shape)
TINY_VISION_SHAPE = dict(
    image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2
)


def tiny_vision_config(**overrides) -> CLIPVisionConfig:
    """A `CLIPVisionConfig` of [`TINY_VISION_SHAPE`], with `overrides`."""
    return CLIPVisionConfig(**{**TINY_VISION_SHAPE, **overrides})


def tiny_config(**overrides) -> EVLConfig:
    """An [`EVLConfig`] on a 3-layer [`tiny_vision_config`]: 4 frames, 2 decoder layers, labels left, right, up."""
    values = dict(
        vision_config=tiny_vision_config(num_hidden_layers=3),
        num_frames=4,
        decoder_num_layers=2,
        id2label={0: "left", 1: "right", 2: "up"},
        label2id={"left": 0, "right": 1, "up": 2},
    )
    return EVLConfig(**{**values, **overrides})


def random_clip(batch_size: int = 2, num_frames: int = 4, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Random `pixel_values` `(batch_size, num_frames, 3, size, size)`, the same for the same `seed`."""
    return torch.randn(batch_size, num_frames, 3, size, size, generator=torch.Generator().manual_seed(seed))


def randomize_zero_initialised(model, std: float = 0.5, seed: int = 0):
    """Draws N(0, `std`) values for the decoder parameters a fresh EVL starts at zero; returns `model`."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if any(part in name for part in ZERO_INITIALISED):
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
    return model


def tiny_model(*, num_frames: int = 4, labels=LABELS, seed: int = 0, **config_overrides) -> EVLForVideoClassification:
    """A random EVL classifier on [`tiny_vision_config`] with 2 decoder layers, its zero-initialised parts drawn."""
    vision_config = config_overrides.pop("vision_config", None) or tiny_vision_config()
    config = EVLConfig(
        vision_config=vision_config,
        num_frames=num_frames,
        decoder_num_layers=2,
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        **config_overrides,
    )
    torch.manual_seed(seed)
    return randomize_zero_initialised(EVLForVideoClassification(config), seed=seed).eval()


def save_tiny_model(
    folder,
    *,
    num_frames: int = 4,
    frame_stride: int = 4,
    seed: int = 0,
    image_processor: bool = False,
    **config_overrides,
):
    """Saves a [`tiny_model`] and its video processor (32x32 crops, `frame_stride` apart) to `folder`, and with
    `image_processor` an [`EVLImageProcessor`] too, as the training script does; returns `folder`."""
    tiny_model(num_frames=num_frames, seed=seed, **config_overrides).save_pretrained(folder)
    sizes = dict(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    EVLVideoProcessor(num_frames=num_frames, frame_stride=frame_stride, **sizes).save_pretrained(folder)
    if image_processor:
        EVLImageProcessor(**sizes).save_pretrained(folder)
    return folder


def encode_video(
    path, num_frames: int, *, height: int = 48, width: int = 64, fps: int = 15, seed: int = 0, codec: str = "libx264"
):
    """Writes a video (H.264 unless `codec` says otherwise, e.g. "libvpx-vp9" for `.webm`) of a bright square moving
    over noise, so that every frame differs; returns `path`."""
    from torchcodec.encoders import VideoEncoder

    generator = torch.Generator().manual_seed(seed)
    frames = torch.randint(0, 64, (num_frames, 3, height, width), dtype=torch.uint8, generator=generator)
    for t in range(num_frames):
        left = t % (width - 16)
        frames[t, :, 16:32, left : left + 16] = 255
    VideoEncoder(frames, frame_rate=fps).to_file(str(path), codec=codec, pixel_format="yuv420p")
    return path


def limited_file_size(limit: int):
    """
    A `preexec_fn` for `subprocess`: the files the child writes stop at `limit` bytes with `EFBIG`, as on a full disk
    (`RLIMIT_FSIZE`, with SIGXFSZ ignored so that the write fails rather than the process being killed; FFmpeg and
    other programs it starts inherit both).
    """

    def limit_file_size():
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return limit_file_size
