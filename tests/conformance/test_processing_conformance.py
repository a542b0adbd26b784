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
"""transformers' video-processor and image-processor common suites against EVL's processors (see conftest.py)."""

import linecache
import traceback
import unittest

import torch
from transformers_tests.test_image_processing_common import ImageProcessingTester, ImageProcessingTestMixin
from transformers_tests.test_video_processing_common import VideoProcessingTestMixin, prepare_video_inputs

from evl_hf import EVLImageProcessor, EVLVideoProcessor


class EVLVideoProcessingTester:
    """Small videos (8 frames of 30-40 px) to a 20 px shortest edge and an 18 px centre crop."""

    def __init__(self, parent, batch_size=5, num_frames=8, num_channels=3, min_resolution=30, max_resolution=40):
        self.parent = parent
        self.batch_size = batch_size
        self.num_frames = num_frames
        self.num_channels = num_channels
        self.min_resolution = min_resolution
        self.max_resolution = max_resolution
        self.size = {"shortest_edge": 20}
        self.crop_size = {"height": 18, "width": 18}

    def prepare_video_processor_dict(self):
        return {
            "do_resize": True,
            "size": self.size,
            "do_center_crop": True,
            "crop_size": self.crop_size,
            "do_normalize": True,
            "image_mean": [0.5, 0.5, 0.5],
            "image_std": [0.5, 0.5, 0.5],
            "do_convert_rgb": True,
        }

    def expected_output_video_shape(self, videos):
        return self.num_frames, self.num_channels, self.crop_size["height"], self.crop_size["width"]

    def prepare_video_inputs(self, equal_resolution=False, return_tensors="pil"):
        return prepare_video_inputs(
            batch_size=self.batch_size,
            num_frames=self.num_frames,
            num_channels=self.num_channels,
            min_resolution=self.min_resolution,
            max_resolution=self.max_resolution,
            equal_resolution=equal_resolution,
            return_tensors=return_tensors,
        )


class EVLVideoProcessingConformanceTest(VideoProcessingTestMixin, unittest.TestCase):
    fast_video_processing_class = EVLVideoProcessor
    input_name = "pixel_values"

    def setUp(self):
        super().setUp()
        self.video_processor_tester = EVLVideoProcessingTester(self)

    @property
    def video_processor_dict(self):
        return self.video_processor_tester.prepare_video_processor_dict()

    def test_call_sample_frames(self):
        # The one documented deviation: transformers' processors raise when a video has fewer frames than
        # `num_frames`; EVL's plays the video and repeats its last frame, as the paper's sampling does. Everything the
        # common test checks before that step (no sampling when switched off, sampling `num_frames`, `fps` with and
        # without metadata) must pass, and it must fail there and nowhere else.
        try:
            super().test_call_sample_frames()
        except AssertionError as error:
            self.assertIn("ValueError not raised", str(error))
            frames = traceback.extract_tb(error.__traceback__)
        else:
            self.fail("the common test passed: the short-video deviation is gone, remove this override")
        common = [entry for entry in frames if entry.filename.endswith("test_video_processing_common.py")][-1]
        block = "".join(linecache.getline(common.filename, common.lineno + offset) for offset in range(3))
        self.assertIn("num_frames=10", block, f"the common test failed elsewhere, at line {common.lineno}")
        # What EVL does instead: 10 frames from an 8-frame video, the last one repeated.
        processor = self.fast_video_processing_class(**self.video_processor_dict, do_sample_frames=True)
        video = torch.arange(8, dtype=torch.uint8).view(8, 1, 1, 1).expand(8, 3, 32, 32).contiguous() * 30
        clip = processor(video, num_frames=10, frame_sampling="uniform", return_tensors="pt")["pixel_values"][0]
        self.assertEqual(clip.shape[0], 10)
        self.assertTrue(torch.equal(clip[-1], clip[-2]) and torch.equal(clip[-3], clip[-2]))


class EVLImageProcessingTester(ImageProcessingTester):
    """Frames of 30-400 px to a 20 px shortest edge and an 18 px centre crop."""

    def __init__(self, parent, **kwargs):
        kwargs.setdefault("size", {"shortest_edge": 20})
        kwargs.setdefault("crop_size", {"height": 18, "width": 18})
        kwargs.setdefault("image_mean", [0.5, 0.5, 0.5])
        kwargs.setdefault("image_std", [0.5, 0.5, 0.5])
        super().__init__(parent, **kwargs)

    def _get_image_processing_classes(self):
        # transformers infers the classes from the folder name of in-tree tests; EVL registers one backend
        return {"torchvision": EVLImageProcessor}


class EVLImageProcessingConformanceTest(ImageProcessingTestMixin, unittest.TestCase):
    image_processor_tester_class = EVLImageProcessingTester

    # The mixin's call tests pass single images and expect `(batch, channels, height, width)`. EVL's image processor,
    # like VideoMAE's, takes clips (lists of frames) and returns `(batch, frames, channels, height, width)`: the same
    # four tests, with clips.
    def _check_clips(self, return_tensors, num_channels=3, **kwargs):
        processor = EVLImageProcessor(**self.image_processor_dict)
        batch_size, num_frames = 3, 4
        clips = prepare_video_inputs(batch_size, num_frames, num_channels, 30, 60, return_tensors=return_tensors)
        crop = self.image_processor_tester.crop_size
        one = processor(clips[0], return_tensors="pt", **kwargs).pixel_values
        self.assertEqual(tuple(one.shape), (1, num_frames, num_channels, crop["height"], crop["width"]))
        batch = processor(clips, return_tensors="pt", **kwargs).pixel_values
        self.assertEqual(tuple(batch.shape), (batch_size, num_frames, num_channels, crop["height"], crop["width"]))

    def test_call_pil(self):
        self._check_clips("pil")

    def test_call_numpy(self):
        self._check_clips("np")

    def test_call_pytorch(self):
        self._check_clips("torch")

    def test_call_numpy_4_channels(self):
        self._check_clips(
            "np",
            num_channels=4,
            do_convert_rgb=False,
            input_data_format="channels_last",
            image_mean=[0.0, 0.0, 0.0, 0.0],
            image_std=[1.0, 1.0, 1.0, 1.0],
        )
