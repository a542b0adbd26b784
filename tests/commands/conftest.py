"""Shared by the command tests: a tiny saved EVL model and videos encoded with torchcodec."""

import pytest
import torch
from torchcodec.encoders import VideoEncoder
from transformers import CLIPVisionConfig

from evl_hf import EVLConfig, EVLForVideoClassification, EVLVideoProcessor


LABELS = ["left", "right", "up", "down", "still"]


def encode_video(path, num_frames, *, height=48, width=64, fps=15, seed=0):
    """Writes an H.264 video of a bright square moving over noise, so that every frame differs."""
    generator = torch.Generator().manual_seed(seed)
    frames = torch.randint(0, 64, (num_frames, 3, height, width), dtype=torch.uint8, generator=generator)
    for t in range(num_frames):
        left = t % (width - 16)
        frames[t, :, 16:32, left : left + 16] = 255
    VideoEncoder(frames, frame_rate=fps).to_file(str(path), codec="libx264", pixel_format="yuv420p")
    return path


def save_tiny_model(folder, *, num_frames=4, frame_stride=4, seed=0, **config_overrides):
    """A 2-layer CLIP with 32x32 images and a decoder whose zero-initialised parts are given values."""
    torch.manual_seed(seed)
    vision_config = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8
    )
    config = EVLConfig(
        vision_config=vision_config,
        num_frames=num_frames,
        decoder_num_layers=2,
        id2label=dict(enumerate(LABELS)),
        label2id={label: i for i, label in enumerate(LABELS)},
        **config_overrides,
    )
    model = EVLForVideoClassification(config)
    # The temporal tables, position embeddings and query start at zero: random values make them count.
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if any(part in name for part in ("temporal_cross_attention", "temporal_pos_embed", "query_token")):
                parameter.copy_(torch.randn(parameter.shape) * 0.5)
    model.save_pretrained(folder)
    EVLVideoProcessor(
        num_frames=num_frames,
        frame_stride=frame_stride,
        size={"shortest_edge": 32},
        crop_size={"height": 32, "width": 32},
    ).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def model_folder(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny_evl"))
