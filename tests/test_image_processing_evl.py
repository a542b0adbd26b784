"""Tests of EVL's image processor, for clips given as lists of frames."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PILImageResampling

from evl_hf.image_processing_evl import EVLImageProcessor
from evl_hf.video_processing_evl import EVLVideoProcessor


@pytest.fixture(scope="module")
def clip():
    """A uint8 clip of 8 frames, (T, 3, H, W), landscape so resizing and cropping both act."""
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (8, 3, 36, 60), dtype=torch.uint8, generator=generator)


def test_defaults_are_clip_preprocessing():
    processor = EVLImageProcessor()
    assert list(processor.image_mean) == OPENAI_CLIP_MEAN
    assert list(processor.image_std) == OPENAI_CLIP_STD
    assert processor.size.shortest_edge == 224
    assert (processor.crop_size.height, processor.crop_size.width) == (224, 224)
    assert processor.resample == PILImageResampling.BILINEAR
    assert processor.model_input_names == ["pixel_values"]


def test_a_clip_as_a_list_of_frames_gives_pixel_values_b_t_c_h_w(clip):
    pixel_values = EVLImageProcessor()(list(clip), return_tensors="pt")["pixel_values"]
    assert pixel_values.shape == (1, 8, 3, 224, 224)
    assert pixel_values.dtype == torch.float32


def test_a_batch_of_clips_gives_one_row_per_clip(clip):
    processor = EVLImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    pixel_values = processor([list(clip), list(clip.flip(0))], return_tensors="pt")["pixel_values"]
    assert pixel_values.shape == (2, 8, 3, 32, 32)
    torch.testing.assert_close(pixel_values[1], pixel_values[0].flip(0))


def test_pil_numpy_and_tensor_frames_give_the_same_pixel_values(clip):
    processor = EVLImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    channels_last = clip.permute(0, 2, 3, 1).numpy()
    from_tensors = processor(list(clip), return_tensors="pt")["pixel_values"]
    from_numpy = processor(list(channels_last), return_tensors="pt")["pixel_values"]
    from_pil = processor([Image.fromarray(frame) for frame in channels_last], return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(from_numpy, from_tensors)
    torch.testing.assert_close(from_pil, from_tensors)


def test_grayscale_frames_become_three_channels(clip):
    gray = [Image.fromarray(frame[0].numpy(), mode="L") for frame in clip]
    pixel_values = EVLImageProcessor()(gray, return_tensors="pt")["pixel_values"]
    assert pixel_values.shape == (1, 8, 3, 224, 224)
    # The same gray level in every channel, so after normalisation the channels differ only by mean and std.
    mean = torch.tensor(OPENAI_CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(OPENAI_CLIP_STD).view(3, 1, 1)
    unnormalised = pixel_values[0] * std + mean
    torch.testing.assert_close(unnormalised[:, 0], unnormalised[:, 2])


@pytest.mark.parametrize("size", [224, 32])
def test_matches_the_video_processor_on_the_same_frames(clip, size):
    kwargs = {"size": {"shortest_edge": size}, "crop_size": {"height": size, "width": size}}
    from_images = EVLImageProcessor(**kwargs)(list(clip), return_tensors="pt")["pixel_values"]
    from_video = EVLVideoProcessor(**kwargs)(clip, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(from_images, from_video, rtol=0, atol=1e-5)


def test_round_trips_through_save_pretrained_as_preprocessor_config(tmp_path):
    processor = EVLImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64})
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["image_processor_type"] == "EVLImageProcessor"
    assert np.allclose(saved["image_mean"], OPENAI_CLIP_MEAN)

    loaded = EVLImageProcessor.from_pretrained(tmp_path)
    assert loaded.size.shortest_edge == 64
    assert loaded.to_dict() == processor.to_dict()
