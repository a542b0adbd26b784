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
"""Video processor class for EVL: frame sampling, training augmentation, multi-view placement, CLIP preprocessing.
Videos are read by `video_utils`."""

import importlib
import os
import warnings
from collections.abc import Callable
from typing import Literal
from urllib.parse import urlparse

import torch
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PILImageResampling, SizeDict
from transformers.processing_utils import Unpack, VideosKwargs
from transformers.video_processing_utils import BaseVideoProcessor
from transformers.video_utils import VideoInput, VideoMetadata

# Private names: the old public ones go through the deprecation of `__getattr__` below.
from .frame_archives import check_frame_step
from .video_transforms import augment_clips, crop_to_one_size, draw_clip_augmentation
from .video_utils import FRAME_SAMPLING_STRATEGIES, clip_span, sample_frame_indices
from .video_utils import is_video_decoder as _is_decoder
from .video_utils import load_video_frames as _load_frames


def _is_video_source(video) -> bool:
    """Whether `video` is read from a source (a path, URL or decoder), whose frames are then sampled."""
    return isinstance(video, (str, os.PathLike)) or _is_decoder(video)


class EVLVideoProcessorKwargs(VideosKwargs, total=False):
    r"""
    frame_sampling (`str`): `"dense"` (frames `frame_stride` apart, the paper), `"uniform"` or `"segment"`.
    frame_stride (`int`): distance between two sampled frames for `"dense"` sampling.
    num_clips (`int`): number of evenly spaced temporal views of the video (multi-view testing).
    clip_index (`int`): which temporal view to return; `None` returns all `num_clips` of them as views.
    num_crops (`int`): number of spatial views, crops spread along each frame's longer side (1: the centre crop).
    do_augment (`bool`): training: random frames, crop, flip and RandAugment (see [`~video_transforms.augment_clips`]).
    min_crop_scale (`float`): smallest fraction of the frame area the training crop covers.
    horizontal_flip (`bool`): flip half of the training clips (only for labels blind to left and right).
    rand_augment (`bool`): RandAugment, 4 operations at magnitude 7 of 10 (the paper's recipe), in training.
    seed (`int`): seed of a training clip's draws (frames, crop, flip, RandAugment); without it, torch's generator.
    device_transforms (`bool`): uint8 clips, resized and cropped (training: with their `augmentation`, cropped only if
        their sizes differ), for [`~EVLVideoProcessor.augment_batch`] to augment and normalise on the model's device.
    """

    frame_sampling: Literal["dense", "uniform", "segment"] | None
    frame_stride: int | None
    num_clips: int | None
    clip_index: int | None
    num_crops: int | None
    do_augment: bool | None
    min_crop_scale: float | None
    horizontal_flip: bool | None
    rand_augment: bool | None
    seed: int | None
    device_transforms: bool | None


class EVLVideoProcessor(BaseVideoProcessor):
    r"""
    Video processor for EVL, the one place where clips are made: samples `num_frames` frames (or `fps` per second)
    with [`sample_frame_indices`], decoding only those, resizes their shortest edge to 224 (bilinear), crops the
    centre 224x224 and normalises with the CLIP mean and std. Frames given as uint8 `(T, C, H, W)` tensors or arrays
    are the clip unless `do_sample_frames=True`. Several views ([`EVLVideoProcessorKwargs`]) are spatial-major.
    """

    resample = PILImageResampling.BILINEAR
    image_mean = OPENAI_CLIP_MEAN
    image_std = OPENAI_CLIP_STD
    size = {"shortest_edge": 224}
    default_to_square = False
    crop_size = {"height": 224, "width": 224}
    do_resize = True
    do_center_crop = True
    do_rescale = True
    rescale_factor = 1 / 255
    do_normalize = True
    do_convert_rgb = True
    do_sample_frames = None
    num_frames = 8
    frame_sampling = "dense"
    frame_stride = 16
    num_clips = 1
    clip_index = None
    num_crops = 1
    do_augment = False
    min_crop_scale = 0.08
    horizontal_flip = False
    rand_augment = False
    device_transforms = False
    valid_kwargs = EVLVideoProcessorKwargs
    model_input_names = ["pixel_values"]

    def __init__(self, **kwargs: Unpack[EVLVideoProcessorKwargs]):
        # an unknown strategy is refused on construction (or loading), not at the first video
        sample_frame_indices(1, 1, strategy=kwargs.get("frame_sampling", self.frame_sampling))
        if kwargs.get("fps") is not None:
            if kwargs.get("num_frames") is not None:
                raise ValueError("`num_frames` and `fps` are mutually exclusive arguments, please use only one!")
            kwargs["num_frames"] = None  # the frame count then follows from each video's length
        super().__init__(**kwargs)

    def preprocess(self, videos: VideoInput, **kwargs: Unpack[EVLVideoProcessorKwargs]) -> BatchFeature:
        r"""
        `videos`: a video or a batch: paths, torchcodec decoders, uint8 `(T, C, H, W)` tensors or arrays, or frames;
        `kwargs` ([`EVLVideoProcessorKwargs`]) override the processor's attributes for this call. Returns
        `pixel_values` `(batch_size, num_frames, 3, height, width)`, or `(batch_size, views, num_frames, 3, height,
        width)` for several views (a list of per-video tensors without `return_tensors`).
        """
        if kwargs.get("do_sample_frames", self.do_sample_frames) is None:
            first = videos[0] if isinstance(videos, (list, tuple)) and videos else videos
            kwargs["do_sample_frames"] = _is_video_source(first)  # files and decoders are sampled, frames are the clip
        if kwargs.get("fps") is not None and "num_frames" not in kwargs:
            kwargs["num_frames"] = None  # `fps` given for this call replaces the processor's `num_frames`
        batch = super().preprocess(videos, **kwargs)
        batch["pixel_values"] = batch.pop("pixel_values_videos")
        return batch

    def sample_frames(
        self,
        metadata: VideoMetadata,
        num_frames: int | None = None,
        fps: float | None = None,
        frame_sampling: str | None = None,
        frame_stride: int | None = None,
        num_clips: int | None = None,
        clip_index: int | None = None,
        do_augment: bool | None = None,
        seed: int | None = None,
        **kwargs,
    ) -> list[int]:
        """Indices of the frames to keep from [`sample_frame_indices`] (never failing on a short video); with
        `clip_index=None`, those of all `num_clips` temporal views, one after the other."""
        if fps is not None and num_frames is not None:
            raise ValueError("`num_frames` and `fps` are mutually exclusive arguments, please use only one!")
        fps, frame_sampling = fps if fps is not None else self.fps, frame_sampling or self.frame_sampling
        if fps is not None:
            if not metadata.fps:
                raise ValueError(
                    f"Sampling fps={fps} frames per second needs the video's frame rate, which its "
                    "metadata lacks (frames given as arrays carry none): pass `video_metadata` with "
                    "`fps`, or `num_frames` instead of `fps`."
                )
            # As transformers' default sampler: at least one frame, frames spread over the whole video.
            num_frames = max(1, int(metadata.total_num_frames / metadata.fps * fps))
            frame_sampling = "segment" if frame_sampling == "segment" else "uniform"
        num_clips = 1 if do_augment else num_clips or self.num_clips
        views = [0] if do_augment else range(num_clips) if clip_index is None else [clip_index]
        random = (torch.Generator().manual_seed(seed) if seed is not None else True) if do_augment else False
        options = dict(strategy=frame_sampling, frame_stride=frame_stride or self.frame_stride, num_clips=num_clips)
        if frame_sampling == "dense" and getattr(metadata, "frame_step", 1) > 1:  # a frame archive's grid
            check_frame_step(metadata.frame_step, options["frame_stride"])
        return [
            index
            for view in views
            for index in sample_frame_indices(
                metadata.total_num_frames, num_frames or self.num_frames, random=random, clip_index=view, **options
            )
        ]

    def fetch_videos(self, video_url_or_urls, sample_indices_fn: Callable | None = None):
        """Reads paths, URLs and torchcodec decoders with [`~video_utils.load_video_frames`] (every frame without
        `sample_indices_fn`), YouTube pages with transformers' loader. Returns the frames and their `VideoMetadata`
        (tuples for a list)."""
        video = video_url_or_urls
        if isinstance(video, (list, tuple)):
            return tuple(zip(*[self.fetch_videos(one, sample_indices_fn) for one in video]))
        if isinstance(video, str) and urlparse(video).netloc in ("youtube.com", "www.youtube.com"):  # through yt_dlp
            return super().fetch_videos(video, sample_indices_fn=sample_indices_fn)
        return _load_frames(video, sample_indices_fn or (lambda metadata: range(metadata.total_num_frames)))

    def _decode_and_sample_videos(
        self, videos: VideoInput, video_metadata, do_sample_frames=None, sample_indices_fn: Callable | None = None
    ):
        # Paths, URLs and torchcodec decoders (what a `datasets` `Video` column holds) are read by `fetch_videos`,
        # decoding only the sampled frames: transformers' batching helpers know neither decoders nor `os.PathLike`.
        batch = list(videos) if isinstance(videos, (list, tuple)) else [videos]
        if batch and _is_video_source(batch[0]):
            return self.fetch_videos(batch, sample_indices_fn=sample_indices_fn)
        return super()._decode_and_sample_videos(videos, video_metadata, do_sample_frames, sample_indices_fn)

    def augment_batch(self, pixel_values: torch.Tensor, augmentation=None, device=None) -> torch.Tensor:
        """The device half of `device_transforms=True`: uint8 `pixel_values` `(B, T, 3, h, w)` or `(B, views, T, 3, h,
        w)` -> normalised float32 on `device`; with their `augmentation` rows `(B, 13)`, training clips are flipped and
        RandAugmented first, each with its own draws ([`~video_transforms.augment_clips`])."""
        pixel_values = pixel_values.to(device, non_blocking=True)
        if augmentation is not None:
            pixel_values = augment_clips(pixel_values, augmentation, (self.crop_size.height, self.crop_size.width))
        mean, std = tuple(self.image_mean), tuple(self.image_std)  # hashable: transformers caches the fused ones
        frames = pixel_values.flatten(0, -4)
        frames = self.rescale_and_normalize(frames, self.do_rescale, self.rescale_factor, self.do_normalize, mean, std)
        return frames.view(pixel_values.shape)

    def _spatial_crops(self, video: torch.Tensor, crop_size: SizeDict, num_crops: int) -> list[torch.Tensor]:
        """`num_crops` crops of `video` (`(T, 3, H, W)`, resized), spread evenly along the side with more room: the
        centre for one, both ends and the centre for three (the paper's three-crop testing)."""
        if num_crops == 1:
            return [self.center_crop(video, crop_size)]
        room_y, room_x = video.shape[-2] - crop_size.height, video.shape[-1] - crop_size.width
        offsets = [round(view / (num_crops - 1) * max(room_y, room_x)) for view in range(num_crops)]
        corners = [(offset, room_x // 2) if room_y > room_x else (room_y // 2, offset) for offset in offsets]
        return [video[..., top : top + crop_size.height, left : left + crop_size.width] for top, left in corners]

    def _preprocess(
        self,
        videos: list[torch.Tensor],
        do_resize: bool,
        size: SizeDict,
        resample,
        do_center_crop: bool,
        crop_size: SizeDict,
        do_rescale: bool,
        rescale_factor: float,
        do_normalize: bool,
        image_mean,
        image_std,
        return_tensors=None,
        num_clips: int = 1,
        clip_index: int | None = None,
        num_crops: int = 1,
        do_augment: bool = False,
        min_crop_scale: float = 0.08,
        horizontal_flip: bool = False,
        rand_augment: bool = False,
        seed: int | None = None,
        device_transforms: bool = False,
        **kwargs,
    ) -> BatchFeature:
        processed, augmentations, draws = [], [], (min_crop_scale, horizontal_flip, rand_augment, seed)
        crop = (crop_size.height, crop_size.width)
        for video in videos:  # uint8 (frames, 3, H, W); frames = temporal views x T
            if do_augment:  # torchvision's draws, per clip; with `device_transforms` applied by `augment_batch`
                augmentation = draw_clip_augmentation(*video.shape[-2:], *draws)
                augmentations += [augmentation] if device_transforms else []
                views = [video] if device_transforms else [augment_clips(video[None], augmentation[None], crop)[0]]
            else:
                if do_resize:
                    video = self.resize(video, size=size, resample=resample)
                views = self._spatial_crops(video, crop_size, num_crops) if do_center_crop else [video]
            num_temporal_views = num_clips if clip_index is None and not do_augment else 1
            # (crops, temporal views * T, 3, h, w) -> (views, T, 3, h, w)
            views = (views[0][None] if len(views) == 1 else torch.stack(views)).unflatten(1, (num_temporal_views, -1))
            views = views.flatten(0, 1)
            if not device_transforms:
                views = self.rescale_and_normalize(
                    views.flatten(0, 1), do_rescale, rescale_factor, do_normalize, image_mean, image_std
                ).view(views.shape)
            processed.append(views[0] if len(views) == 1 else views)
        processed = crop_to_one_size(processed, augmentations, crop) if augmentations else processed  # device crops
        data = {"pixel_values_videos": processed, **({"augmentation": augmentations} if augmentations else {})}
        if return_tensors == "pt" and len(processed) == 1:  # a view, not the copy `BatchFeature` would stack
            data = {name: values[0][None] for name, values in data.items()}
        return BatchFeature(data=data, tensor_type=return_tensors)


# Names moved to `video_utils` and `inference` keep working, with a warning, for one release.
_MOVED = {
    "VideoDecodingError": "video_utils.VideoDecodingError",
    "_diagnose_unopenable_video": "video_utils._diagnose_unopenable_video",
    "_is_video_decoder": "video_utils.is_video_decoder",
    "load_video_frames": "video_utils.load_video_frames",
    "open_video": "video_utils.open_video",
    "read_video_frames": "video_utils.read_video_frames",
    "window_frame_indices": "inference.window_frame_indices",
}


def __getattr__(name: str):
    if name not in _MOVED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    new_place = f"{__package__}.{_MOVED[name]}"
    warnings.warn(
        f"`{__name__}.{name}` moved to `{new_place}`; the old name goes in the next release.", FutureWarning, 2
    )
    # `importlib` rather than `from .inference import`: a saved processor's copied files then do not include it.
    module, new_name = new_place.rsplit(".", 1)
    return getattr(importlib.import_module(module), new_name)


__all__ = [
    "EVLVideoProcessor",
    "EVLVideoProcessorKwargs",
    "FRAME_SAMPLING_STRATEGIES",
    "clip_span",
    "sample_frame_indices",
]
