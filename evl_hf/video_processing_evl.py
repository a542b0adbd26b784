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
"""Video processor class for EVL: frame sampling, torchcodec decoding and CLIP preprocessing."""

import errno
import os
import stat
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Literal

import torch
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PILImageResampling
from transformers.processing_utils import Unpack, VideosKwargs
from transformers.video_processing_utils import BaseVideoProcessor
from transformers.video_utils import VideoInput, VideoMetadata


if TYPE_CHECKING:
    from torchcodec.decoders import VideoDecoder


FRAME_SAMPLING_STRATEGIES = ("dense", "uniform", "segment")


class VideoDecodingError(ValueError):
    """A video file could not be read; the message names the file and says what is wrong with it."""


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
    Choose which frames of a video make up a clip.

    Strategies:
        - `"dense"` (the paper): `num_frames` frames `frame_stride` apart. At inference the window is centred in the
          video, or, for multi-view testing, is the `clip_index`-th of `num_clips` windows spread evenly from the
          start to the end of the video. With `random` the window starts anywhere it fits (training).
        - `"uniform"`: one frame every `num_video_frames / num_frames` frames, covering the whole video. At
          inference each frame is at the centre of its stretch (or at offset `(clip_index + 0.5) / num_clips` of it);
          with `random` the whole grid is shifted by one random offset, keeping the spacing exact.
        - `"segment"` (TSN): the video is cut into `num_frames` equal segments and one frame is taken from each: a
          random one per segment with `random`, otherwise placed like `"uniform"`.

    A video shorter than the clip needs (`(num_frames - 1) * frame_stride + 1` frames for `"dense"`, `num_frames`
    otherwise) is played from its first frame and its last frame repeated, as the reference implementation does.

    Args:
        num_video_frames (`int`):
            Number of frames in the video, at least 1.
        num_frames (`int`):
            Number of frames in the clip, `T`.
        strategy (`str`, *optional*, defaults to `"dense"`):
            One of `"dense"`, `"uniform"`, `"segment"`.
        frame_stride (`int`, *optional*, defaults to 16):
            Distance between two sampled frames for `"dense"`; unused otherwise.
        random (`bool` or `torch.Generator`, *optional*, defaults to `False`):
            Sample at random (training). `True` uses torch's global generator; pass a `torch.Generator` for
            reproducible draws.
        num_clips (`int`, *optional*, defaults to 1):
            Number of evenly spaced temporal views at inference.
        clip_index (`int`, *optional*, defaults to 0):
            Which of the `num_clips` views to return, in `[0, num_clips)`.

    Returns:
        `list[int]`: `num_frames` frame indices in `[0, num_video_frames)`, non-decreasing.
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
    if num_video_frames < (num_frames - 1) * step + 1:
        return [min(i * step, num_video_frames - 1) for i in range(num_frames)]

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
    # A torchcodec VideoDecoder can only exist once torchcodec is imported; looking it up this way keeps importing
    # this module free of torchcodec (and of the FFmpeg libraries it loads).
    decoders = sys.modules.get("torchcodec.decoders")
    return decoders is not None and isinstance(obj, decoders.VideoDecoder)


def _diagnose_unopenable_video(path: str) -> str:
    """Says, as precisely as cheap checks allow, why FFmpeg could not open `path` as a video."""
    from torchcodec.decoders import AudioDecoder

    with open(path, "rb") as file:
        head = file.read(4096)
    try:
        head.decode("utf-8")
        is_text = b"\x00" not in head
    except UnicodeDecodeError:
        is_text = False
    if is_text:
        return "it is a text file, not a video"
    try:
        AudioDecoder(path)
        return "it has an audio stream but no video stream"
    except (RuntimeError, ValueError):
        pass
    return "its data is not a video container FFmpeg recognises (the file is corrupted or truncated)"


def _open_video(video: "str | os.PathLike | VideoDecoder") -> tuple["VideoDecoder", str]:
    """
    Opens `video` for decoding and checks it has frames.

    Returns:
        `tuple[VideoDecoder, str]`: the decoder and a name for the video to use in error messages.
    """
    if _is_video_decoder(video):
        name = "the given VideoDecoder"
        decoder = video
    else:
        from torchcodec.decoders import VideoDecoder

        path = os.fspath(video)
        name = repr(path)
        if not os.path.exists(path):
            raise FileNotFoundError(errno.ENOENT, "Video file not found", path)
        if os.path.isdir(path):
            raise IsADirectoryError(errno.EISDIR, "Expected a video file but got a directory", path)
        file_stat = os.stat(path)
        # FFmpeg would block forever on a pipe with no writer, or read a device without end.
        if not stat.S_ISREG(file_stat.st_mode):
            raise VideoDecodingError(f"Cannot read video {name}: it is not a regular file (a pipe or a device)")
        if file_stat.st_size == 0:
            raise VideoDecodingError(f"Cannot read video {name}: the file is empty (0 bytes)")
        try:
            # "exact" scans the packets once: frame counts are then right for variable frame rate and truncated
            # files, where the header's estimate is not.
            decoder = VideoDecoder(path, seek_mode="exact")
        except (RuntimeError, ValueError) as err:
            raise VideoDecodingError(f"Cannot read video {name}: {_diagnose_unopenable_video(path)}") from err
    if len(decoder) == 0:
        raise VideoDecodingError(f"Cannot read video {name}: its video stream has no frames (is the file truncated?)")
    return decoder, name


def _decode_frames(decoder: "VideoDecoder", name: str, indices: Sequence[int]) -> torch.Tensor:
    """Decodes the frames at `indices` (and no other) of an opened video as uint8 `(T, 3, H, W)`."""
    num_video_frames = len(decoder)
    indices = [int(index) for index in indices]
    if not indices:
        raise ValueError(f"No frame indices given for video {name}")
    out_of_range = [index for index in indices if not 0 <= index < num_video_frames]
    if out_of_range:
        raise IndexError(
            f"Frame indices {out_of_range} are out of range for video {name} with {num_video_frames} frames"
        )
    # Each distinct frame is decoded once, in file order, which keeps seeking forward.
    unique_indices = sorted(set(indices))
    try:
        frames = decoder.get_frames_at(unique_indices).data
    except (RuntimeError, ValueError, IndexError) as err:
        raise VideoDecodingError(
            f"Cannot decode frames {unique_indices} of video {name}: the file is truncated or its data is corrupted"
        ) from err
    if frames.shape[-1] == 3 and frames.shape[1] != 3:  # a decoder opened with dimension_order="NHWC"
        frames = frames.permute(0, 3, 1, 2)
    row = {index: position for position, index in enumerate(unique_indices)}
    return frames[[row[index] for index in indices]].contiguous()


def read_video_frames(
    video: "str | os.PathLike | VideoDecoder",
    indices_or_fn: Sequence[int] | Callable[[int], Sequence[int]],
) -> torch.Tensor:
    """
    Decodes some frames of a video with torchcodec, seeking to each instead of decoding the whole video.

    Args:
        video (`str`, `os.PathLike` or `torchcodec.decoders.VideoDecoder`):
            Path of a video file, or an opened decoder (what a `datasets` `Video` column gives).
        indices_or_fn (`Sequence[int]` or `Callable[[int], Sequence[int]]`):
            Frame indices to decode (repeats allowed), or a function from the number of frames in the video to those
            indices, e.g. `lambda n: sample_frame_indices(n, 8)`.

    Returns:
        `torch.Tensor`: uint8 RGB frames of shape `(T, 3, H, W)`, in the order of the indices.

    Raises:
        `FileNotFoundError`, `IsADirectoryError`: `video` is a missing path or a folder.
        `VideoDecodingError`: the file cannot be decoded (empty, not a video, no video stream, truncated, corrupted).
        `IndexError`: an index is outside the video.
    """
    decoder, name = _open_video(video)
    indices = indices_or_fn(len(decoder)) if callable(indices_or_fn) else indices_or_fn
    return _decode_frames(decoder, name, indices)


class EVLVideosKwargs(VideosKwargs, total=False):
    r"""
    frame_sampling (`str`, *optional*, defaults to `self.frame_sampling`):
        How to choose the `num_frames` frames: `"dense"` (fixed `frame_stride`, as the paper), `"uniform"` or
        `"segment"`. See [`sample_frame_indices`].
    frame_stride (`int`, *optional*, defaults to `self.frame_stride`):
        Distance between two sampled frames for `"dense"` sampling.
    num_clips (`int`, *optional*, defaults to `self.num_clips`):
        Number of evenly spaced temporal views of the video (multi-view testing).
    clip_index (`int`, *optional*, defaults to `self.clip_index`):
        Which of the `num_clips` views to sample.
    """

    frame_sampling: Literal["dense", "uniform", "segment"] | None
    frame_stride: int | None
    num_clips: int | None
    clip_index: int | None


def _is_undecoded(videos) -> bool:
    """Whether `videos` is a video file or decoder, or a batch of them, rather than frames."""
    if isinstance(videos, (list, tuple)) and videos:
        videos = videos[0]
    return isinstance(videos, (str, os.PathLike)) or _is_video_decoder(videos)


class EVLVideoProcessor(BaseVideoProcessor):
    r"""
    Video processor for EVL: samples `num_frames` frames, resizes their shortest edge to 224 (bilinear), crops the
    centre 224x224 and normalises with the CLIP mean and std.

    Videos given as paths (or torchcodec decoders) are sampled with [`sample_frame_indices`] and only the sampled
    frames are decoded. Videos given as frames (uint8 `(T, C, H, W)` tensors or arrays, or lists of frames) are taken
    as the clip unless `do_sample_frames=True` is passed; that is what `do_sample_frames=None`, the default, means.

    Returns `pixel_values` of shape `(batch_size, num_frames, 3, height, width)`.
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
    clip_index = 0
    valid_kwargs = EVLVideosKwargs
    model_input_names = ["pixel_values"]

    def __init__(self, **kwargs: Unpack[EVLVideosKwargs]):
        super().__init__(**kwargs)

    def preprocess(self, videos: VideoInput, **kwargs: Unpack[EVLVideosKwargs]) -> BatchFeature:
        r"""
        Args:
            videos (`VideoInput`):
                A video or a batch of videos: paths, torchcodec decoders, uint8 `(T, C, H, W)` tensors or arrays, or
                lists of frames.
            kwargs ([`EVLVideosKwargs`]):
                Overrides of the processor's attributes for this call.

        Returns:
            [`BatchFeature`] with `pixel_values` of shape `(batch_size, num_frames, 3, height, width)` (a list of
            `(num_frames, 3, height, width)` tensors without `return_tensors`).
        """
        if isinstance(videos, os.PathLike):
            videos = os.fspath(videos)
        elif isinstance(videos, (list, tuple)) and videos and isinstance(videos[0], os.PathLike):
            videos = [os.fspath(video) for video in videos]
        if kwargs.get("do_sample_frames", self.do_sample_frames) is None:
            kwargs["do_sample_frames"] = _is_undecoded(videos)
        batch = super().preprocess(videos, **kwargs)
        batch["pixel_values"] = batch.pop("pixel_values_videos")
        return batch

    def sample_frames(
        self,
        metadata: VideoMetadata,
        num_frames: int | None = None,
        frame_sampling: str | None = None,
        frame_stride: int | None = None,
        num_clips: int | None = None,
        clip_index: int | None = None,
        **kwargs,
    ) -> list[int]:
        """
        Indices of the frames to keep, from [`sample_frame_indices`]; unlike the default sampler this never fails on
        a short video (its last frame is repeated).

        Args:
            metadata (`VideoMetadata`):
                Metadata of the video; only `total_num_frames` is used.
            num_frames, frame_sampling, frame_stride, num_clips, clip_index:
                Default to the processor's attributes.

        Returns:
            `list[int]`: `num_frames` frame indices.
        """
        return sample_frame_indices(
            metadata.total_num_frames,
            num_frames if num_frames is not None else self.num_frames,
            strategy=frame_sampling if frame_sampling is not None else self.frame_sampling,
            frame_stride=frame_stride if frame_stride is not None else self.frame_stride,
            num_clips=num_clips if num_clips is not None else self.num_clips,
            clip_index=clip_index if clip_index is not None else self.clip_index,
        )

    def fetch_videos(self, video_url_or_urls, sample_indices_fn: Callable | None = None):
        """
        Decodes videos given by path (or torchcodec decoder) with torchcodec, only at the frames `sample_indices_fn`
        picks (every frame without it). URLs are left to transformers' loader.

        Returns:
            `tuple`: the frames (uint8 `(T, 3, H, W)`) and their `VideoMetadata`, or a pair of tuples for a list.
        """
        if isinstance(video_url_or_urls, (list, tuple)):
            return tuple(zip(*[self.fetch_videos(video, sample_indices_fn) for video in video_url_or_urls]))
        if isinstance(video_url_or_urls, str) and video_url_or_urls.startswith(("http://", "https://")):
            return super().fetch_videos(video_url_or_urls, sample_indices_fn=sample_indices_fn)

        decoder, name = _open_video(video_url_or_urls)
        metadata = VideoMetadata(
            total_num_frames=len(decoder),
            fps=decoder.metadata.average_fps,
            width=decoder.metadata.width,
            height=decoder.metadata.height,
            duration=decoder.metadata.duration_seconds,
            video_backend="torchcodec",
        )
        if sample_indices_fn is None:
            indices = list(range(len(decoder)))
        else:
            indices = [int(index) for index in sample_indices_fn(metadata=metadata)]
        metadata.frames_indices = indices
        return _decode_frames(decoder, name, indices), metadata

    def _decode_and_sample_videos(
        self,
        videos: VideoInput,
        video_metadata: VideoMetadata | dict,
        do_sample_frames: bool | None = None,
        sample_indices_fn: Callable | None = None,
    ):
        # transformers' batching helpers do not know torchcodec decoders (what a `datasets` `Video` column holds):
        # they are read like paths, decoding only the sampled frames.
        if _is_video_decoder(videos):
            videos = [videos]
        if isinstance(videos, (list, tuple)) and videos and _is_video_decoder(videos[0]):
            return self.fetch_videos(list(videos), sample_indices_fn=sample_indices_fn)
        return super()._decode_and_sample_videos(
            videos,
            video_metadata=video_metadata,
            do_sample_frames=do_sample_frames,
            sample_indices_fn=sample_indices_fn,
        )


__all__ = [
    "FRAME_SAMPLING_STRATEGIES",
    "EVLVideoProcessor",
    "EVLVideosKwargs",
    "VideoDecodingError",
    "read_video_frames",
    "sample_frame_indices",
]
