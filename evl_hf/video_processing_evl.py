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
"""Video processor class for EVL: sampling, decoding, training augmentation, multi-view placement, CLIP preprocessing."""

import errno
import os
import stat
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, BinaryIO, Literal

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PILImageResampling, SizeDict
from transformers.processing_utils import Unpack, VideosKwargs
from transformers.video_processing_utils import BaseVideoProcessor
from transformers.video_utils import VideoInput, VideoMetadata


if TYPE_CHECKING:
    from torchcodec.decoders import VideoDecoder


FRAME_SAMPLING_STRATEGIES = ("dense", "uniform", "segment")


class VideoDecodingError(ValueError):
    """A video file could not be read; the message names the file and says what is wrong with it."""


def clip_span(num_frames: int, frame_stride: int) -> int:
    """Frames of video that `num_frames` frames `frame_stride` apart cover, from the first to the last."""
    return (num_frames - 1) * frame_stride + 1


def _short_video_indices(num_video_frames: int, num_frames: int, frame_stride: int) -> list[int]:
    # A video shorter than a clip plays from its first frame and repeats its last one, as the reference does.
    return [min(i * frame_stride, num_video_frames - 1) for i in range(num_frames)]


def window_frame_indices(num_video_frames: int, num_frames: int, frame_stride: int, window_stride: int):
    """
    The frames of every window of a long video: `num_frames` frames `frame_stride` apart, one window starting every
    `window_stride` frames for as long as a window fits in the video. A video shorter than one window gets a single
    window, made as [`sample_frame_indices`] makes a clip of a short video.

    Returns:
        `list[list[int]]`: one list of `num_frames` frame indices per window, in time order.
    """
    if min(num_video_frames, num_frames, frame_stride, window_stride) < 1:
        raise ValueError(
            f"Need at least one video frame, frame and stride, got num_video_frames={num_video_frames}, "
            f"num_frames={num_frames}, frame_stride={frame_stride}, window_stride={window_stride}"
        )
    span = clip_span(num_frames, frame_stride)
    if num_video_frames < span:
        return [_short_video_indices(num_video_frames, num_frames, frame_stride)]
    starts = range(0, num_video_frames - span + 1, window_stride)
    return [[start + i * frame_stride for i in range(num_frames)] for start in starts]


def sample_frame_indices(
    num_video_frames: int,
    num_frames: int,
    *,
    strategy: Literal["dense", "uniform", "segment"] = "dense",
    frame_stride: int = 16,
    random: bool | torch.Generator = False,
    num_clips: int = 1,
    clip_index: int = 0,
) -> list[int]:
    """
    Choose which `num_frames` frames of a video of `num_video_frames` frames make up a clip (non-decreasing indices).

    - `"dense"` (the paper): frames `frame_stride` apart, in a window centred in the video, or the `clip_index`-th of
      `num_clips` windows spread from its start to its end; with `random` (training) the window starts anywhere.
    - `"uniform"`: one frame every `num_video_frames / num_frames` frames, at the centre of each stretch (or at offset
      `(clip_index + 0.5) / num_clips` of it); `random` shifts the whole grid by one random offset.
    - `"segment"` (TSN): one frame per equal segment, a random one with `random`, otherwise placed like `"uniform"`.

    A video shorter than the clip needs is played from its first frame and its last frame repeated, as the reference
    implementation does. `random` is `True` (torch's global generator) or a `torch.Generator` for reproducible draws.
    """
    if strategy not in FRAME_SAMPLING_STRATEGIES:
        raise ValueError(f"Unknown frame sampling strategy {strategy!r}; expected one of {FRAME_SAMPLING_STRATEGIES}")
    if num_video_frames < 1:
        raise ValueError(f"Cannot sample frames from a video with {num_video_frames} frames")
    if num_frames < 1:
        raise ValueError(f"`num_frames` must be at least 1, got {num_frames}")
    if frame_stride < 1:
        raise ValueError(f"`frame_stride` must be at least 1, got {frame_stride}")
    if num_clips < 1 or not 0 <= clip_index < num_clips:
        raise ValueError(f"Need 0 <= clip_index < num_clips, got clip_index={clip_index}, num_clips={num_clips}")
    is_random = isinstance(random, torch.Generator) or bool(random)
    generator = random if isinstance(random, torch.Generator) else None
    if is_random and num_clips > 1:
        raise ValueError("`num_clips > 1` selects fixed test-time views; it cannot be combined with `random`")

    step = frame_stride if strategy == "dense" else 1
    if num_video_frames < clip_span(num_frames, step):
        return _short_video_indices(num_video_frames, num_frames, step)

    if strategy == "dense":
        slack = num_video_frames - (num_frames - 1) * frame_stride - 1
        if is_random:
            start = int(torch.randint(slack + 1, (), generator=generator))
        elif num_clips == 1:
            start = slack // 2
        else:
            start = round(slack * clip_index / (num_clips - 1))
        return [start + i * frame_stride for i in range(num_frames)]

    if strategy == "segment" and is_random:
        bounds = [i * num_video_frames // num_frames for i in range(num_frames + 1)]
        return [
            bounds[i] + int(torch.randint(bounds[i + 1] - bounds[i], (), generator=generator))
            for i in range(num_frames)
        ]
    if is_random:
        offset = float(torch.rand((), generator=generator))
        # `min` guards against float rounding of (T - 1 + offset) / T up to 1.
        last = num_video_frames - 1
        return [min(int((i + offset) * num_video_frames / num_frames), last) for i in range(num_frames)]
    # Offset (clip_index + 0.5) / num_clips inside each stretch, in integer arithmetic so it is exact.
    return [
        (2 * num_clips * i + 2 * clip_index + 1) * num_video_frames // (2 * num_clips * num_frames)
        for i in range(num_frames)
    ]


def _is_video_decoder(obj) -> bool:
    # A torchcodec VideoDecoder exists only once torchcodec is imported: this keeps importing this module free of it.
    decoders = sys.modules.get("torchcodec.decoders")
    return decoders is not None and isinstance(obj, decoders.VideoDecoder)


def _diagnose_unopenable_video(source, head: bytes) -> str:
    """Says, as precisely as cheap checks allow, why FFmpeg could not open `source` (whose first bytes are `head`)
    as a video."""
    from torchcodec.decoders import AudioDecoder

    try:
        if head.decode("utf-8") and b"\x00" not in head:
            return "it is a text file, not a video"
    except UnicodeDecodeError:
        pass
    try:
        if hasattr(source, "seek"):
            source.seek(0)
        AudioDecoder(source)
        return "it has an audio stream but no video stream"
    except (RuntimeError, ValueError):
        pass
    return "its data is not a video container FFmpeg recognises (the file is corrupted or truncated)"


def open_video(
    video: "str | os.PathLike | bytes | BinaryIO", num_ffmpeg_threads: int = 1, *, name: str | None = None
) -> "VideoDecoder":
    """
    A torchcodec `VideoDecoder` of a video file, of its bytes (a `datasets` row with stored bytes) or of a binary
    file object, counting frames exactly, with `num_ffmpeg_threads` threads (0: FFmpeg chooses). Every failure is a
    `FileNotFoundError`, `IsADirectoryError` or [`VideoDecodingError`] that names the video (`name`, by default its
    path) and says what is wrong with it: the one way a video is opened, for reading it once or many times.
    """
    from torchcodec.decoders import VideoDecoder

    if isinstance(video, (bytes, bytearray, memoryview)):
        source, head = bytes(video), bytes(video[:4096])
        label = repr(name) if name else f"({len(source)} bytes)"
        if not source:
            raise VideoDecodingError(f"Cannot read video {label}: its data is empty (0 bytes)")
    elif hasattr(video, "read"):
        source, label = video, repr(name or getattr(video, "name", None) or "the given file object")
        head = source.read(4096)
        source.seek(0)
        if not head:
            raise VideoDecodingError(f"Cannot read video {label}: its data is empty (0 bytes)")
    else:
        source = os.fspath(video)
        label = repr(name or source)
        if not os.path.exists(source):
            raise FileNotFoundError(errno.ENOENT, "Video file not found", source)
        if os.path.isdir(source):
            raise IsADirectoryError(errno.EISDIR, "Expected a video file but got a directory", source)
        file_stat = os.stat(source)
        # FFmpeg would block forever on a pipe with no writer, or read a device without end.
        if not stat.S_ISREG(file_stat.st_mode):
            raise VideoDecodingError(f"Cannot read video {label}: it is not a regular file (a pipe or a device)")
        if file_stat.st_size == 0:
            raise VideoDecodingError(f"Cannot read video {label}: the file is empty (0 bytes)")
        with open(source, "rb") as file:
            head = file.read(4096)
    try:
        decoder = VideoDecoder(source, seek_mode="exact", num_ffmpeg_threads=num_ffmpeg_threads)
    except (RuntimeError, ValueError) as error:
        raise VideoDecodingError(f"Cannot read video {label}: {_diagnose_unopenable_video(source, head)}") from error
    if len(decoder) == 0:
        raise VideoDecodingError(f"Cannot read video {label}: its video stream has no frames (truncated?)")
    return decoder


def load_video_frames(
    video: "str | os.PathLike | VideoDecoder", sample_indices_fn: Callable[..., Sequence[int]]
) -> tuple[torch.Tensor, VideoMetadata]:
    """
    Decodes the frames `sample_indices_fn(metadata=...)` picks, and no other, with torchcodec (a path is opened with
    [`open_video`]). Every failure names the video and its problem.

    Returns:
        `tuple[torch.Tensor, VideoMetadata]`: uint8 RGB frames `(T, 3, H, W)` in the order of the indices, and the
        video's metadata with `frames_indices` set.
    """
    if _is_video_decoder(video):
        name = "the given VideoDecoder"
    else:
        # As many FFmpeg threads as torch uses: all cores in the main process, one in a DataLoader worker, where the
        # workers are the parallelism (a few sampled frames decode fastest on one thread: no frame-thread pipeline)
        name, video = repr(os.fspath(video)), open_video(video, num_ffmpeg_threads=torch.get_num_threads())
    info = video.metadata
    metadata = VideoMetadata(
        total_num_frames=len(video),
        fps=info.average_fps,
        width=info.width,
        height=info.height,
        duration=info.duration_seconds,
        video_backend="torchcodec",
    )
    if metadata.total_num_frames == 0:
        raise VideoDecodingError(f"Cannot read video {name}: its video stream has no frames (truncated?)")
    indices = [int(index) for index in sample_indices_fn(metadata=metadata)]
    if not indices:
        raise ValueError(f"No frame indices given for video {name}")
    if out_of_range := [index for index in indices if not 0 <= index < metadata.total_num_frames]:
        raise IndexError(
            f"Frame indices {out_of_range} are out of range for video {name} with {metadata.total_num_frames} frames"
        )
    metadata.frames_indices = indices
    try:
        frames = video.get_frames_at(indices).data
    except (RuntimeError, ValueError, IndexError) as error:
        raise VideoDecodingError(
            f"Cannot decode frames {sorted(set(indices))} of video {name}: the file is truncated or its data is "
            "corrupted"
        ) from error
    if frames.shape[-1] == 3 and frames.shape[1] != 3:  # a decoder opened with dimension_order="NHWC"
        frames = frames.permute(0, 3, 1, 2)
    return frames.contiguous(), metadata


def read_video_frames(video: "str | os.PathLike | VideoDecoder", indices_or_fn) -> torch.Tensor:
    """
    Decodes some frames of a video (a path, or a torchcodec decoder as a `datasets` `Video` column gives) as uint8
    RGB `(T, 3, H, W)`. `indices_or_fn`: frame indices (repeats allowed) or a function from the video's frame count
    to them, e.g. `lambda n: sample_frame_indices(n, 8)`. Raises `FileNotFoundError` or `IsADirectoryError` for a
    wrong path, `VideoDecodingError` for a file that cannot be decoded, `IndexError` for an index outside the video.
    """
    indices_fn = indices_or_fn if callable(indices_or_fn) else lambda num_video_frames: indices_or_fn
    return load_video_frames(video, lambda metadata: indices_fn(metadata.total_num_frames))[0]


class EVLVideoProcessorKwargs(VideosKwargs, total=False):
    r"""
    frame_sampling (`str`): `"dense"` (frames `frame_stride` apart, the paper), `"uniform"` or `"segment"`.
    frame_stride (`int`): distance between two sampled frames for `"dense"` sampling.
    num_clips (`int`): number of evenly spaced temporal views of the video (multi-view testing).
    clip_index (`int`): which temporal view to return; `None` returns all `num_clips` of them as views.
    num_crops (`int`): number of spatial views, crops spread along each frame's longer side (1: the centre crop).
    do_augment (`bool`): training: random frames and [`~EVLVideoProcessor.augment`] in place of resize and crop.
    min_crop_scale (`float`): smallest fraction of the frame area the training crop covers.
    horizontal_flip (`bool`): flip half of the training clips (only for labels blind to left and right).
    rand_augment (`bool`): RandAugment, 4 operations at magnitude 7 of 10 (the paper's recipe), in training.
    seed (`int`): seed of a training clip's draws (frames, crop, flip, RandAugment); without it, torch's generator.
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
        if isinstance(videos, os.PathLike):
            videos = os.fspath(videos)
        elif isinstance(videos, (list, tuple)) and videos and isinstance(videos[0], os.PathLike):
            videos = [os.fspath(video) for video in videos]
        if kwargs.get("do_sample_frames", self.do_sample_frames) is None:
            # files and decoders are sampled, frames are the clip
            first = videos[0] if isinstance(videos, (list, tuple)) and videos else videos
            kwargs["do_sample_frames"] = isinstance(first, str) or _is_video_decoder(first)
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
        return [
            index
            for view in views
            for index in sample_frame_indices(
                metadata.total_num_frames, num_frames or self.num_frames, random=random, clip_index=view, **options
            )
        ]

    def fetch_videos(self, video_url_or_urls, sample_indices_fn: Callable | None = None):
        """Decodes paths and torchcodec decoders with [`load_video_frames`] (all frames without `sample_indices_fn`),
        URLs with transformers' loader. Returns the frames and their `VideoMetadata` (tuples for a list)."""
        if isinstance(video_url_or_urls, (list, tuple)):
            return tuple(zip(*[self.fetch_videos(video, sample_indices_fn) for video in video_url_or_urls]))
        if isinstance(video_url_or_urls, str) and video_url_or_urls.startswith(("http://", "https://")):
            return super().fetch_videos(video_url_or_urls, sample_indices_fn=sample_indices_fn)
        every_frame = lambda metadata: range(metadata.total_num_frames)  # noqa: E731
        return load_video_frames(video_url_or_urls, sample_indices_fn or every_frame)

    def _decode_and_sample_videos(
        self, videos: VideoInput, video_metadata, do_sample_frames=None, sample_indices_fn: Callable | None = None
    ):
        # transformers' batching helpers do not know torchcodec decoders (what a `datasets` `Video` column holds):
        # they are read like paths, decoding only the sampled frames.
        if _is_video_decoder(videos):
            videos = [videos]
        if isinstance(videos, (list, tuple)) and videos and _is_video_decoder(videos[0]):
            return self.fetch_videos(list(videos), sample_indices_fn=sample_indices_fn)
        return super()._decode_and_sample_videos(videos, video_metadata, do_sample_frames, sample_indices_fn)

    def augment(
        self,
        video: torch.Tensor,
        crop_size: SizeDict,
        min_crop_scale: float,
        horizontal_flip: bool,
        rand_augment: bool,
        seed: int | None = None,
    ) -> torch.Tensor:
        """
        Training augmentation of a clip, uint8 `(T, 3, H, W)` -> `(T, 3, crop_height, crop_width)`: RandomResizedCrop
        (area `min_crop_scale`-1, aspect ratio 3/4-4/3), optional horizontal flip and RandAugment ("rand-m7-n4"), drawn
        once per clip so that every frame gets the same ones and the motion between frames is intact.
        """
        crop = (crop_size.height, crop_size.width)
        transforms = [v2.RandomResizedCrop(crop, scale=(min_crop_scale, 1.0), ratio=(3 / 4, 4 / 3))]
        if horizontal_flip:
            transforms.append(v2.RandomHorizontalFlip())
        if rand_augment:
            transforms.append(v2.RandAugment(num_ops=4, magnitude=7, num_magnitude_bins=11))
        # torchvision draws from torch's global generator: a seeded clip borrows it without disturbing it.
        with torch.random.fork_rng(devices=[], enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed + 1)  # not the frame sampler's stream
            return v2.Compose(transforms)(tv_tensors.Video(video)).as_subclass(torch.Tensor)

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
        **kwargs,
    ) -> BatchFeature:
        processed = []
        for video in videos:  # uint8 (frames, 3, H, W); frames = temporal views x T
            if do_augment:
                views = [self.augment(video, crop_size, min_crop_scale, horizontal_flip, rand_augment, seed)]
            else:
                if do_resize:
                    video = self.resize(video, size=size, resample=resample)
                views = self._spatial_crops(video, crop_size, num_crops) if do_center_crop else [video]
            num_temporal_views = num_clips if clip_index is None and not do_augment else 1
            # (crops, temporal views * T, 3, h, w) -> (views, T, 3, h, w)
            views = torch.stack(views).unflatten(1, (num_temporal_views, -1)).flatten(0, 1)
            views = self.rescale_and_normalize(
                views.flatten(0, 1), do_rescale, rescale_factor, do_normalize, image_mean, image_std
            ).view(views.shape)
            processed.append(views[0] if len(views) == 1 else views)
        return BatchFeature(data={"pixel_values_videos": processed}, tensor_type=return_tensors)


__all__ = [
    "EVLVideoProcessor",
    "EVLVideoProcessorKwargs",
    "VideoDecodingError",
    "load_video_frames",
    "open_video",
    "read_video_frames",
    "sample_frame_indices",
    "window_frame_indices",
    "clip_span",
    "FRAME_SAMPLING_STRATEGIES",
]
