# Copyright 2025 The evl_hf Authors.
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
"""Image processor class for EVL, for clips given as lists of frames."""

from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from transformers.models.videomae.image_processing_videomae import VideoMAEImageProcessor


class EVLImageProcessor(VideoMAEImageProcessor):
    r"""
    Image processor for EVL clips given as lists of frames (PIL images, arrays or tensors), or batches of them, the
    interface older video models use: `pixel_values` `(batch_size, num_frames, 3, height, width)` preprocessed as by
    [`EVLVideoProcessor`] (which also samples and decodes videos). VideoMAE's processor with CLIP's mean and std, and
    grayscale or RGBA frames made RGB.
    """

    image_mean = OPENAI_CLIP_MEAN
    image_std = OPENAI_CLIP_STD
    do_convert_rgb = True
    model_input_names = ["pixel_values"]


__all__ = ["EVLImageProcessor"]
