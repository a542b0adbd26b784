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
Frame archives: a video kept as baseline JPEG frames on a grid of every `frame_step`-th source frame, in one indexed
file (`.evlf`), so that a training clip costs a few JPEG decodes (libjpeg-turbo on the CPU, nvJPEG on a GPU) instead
of decoding a video stream from its previous keyframe.

Layout, little-endian:

- 12 bytes: the magic `EVLF`, the format version (uint32) and the length of the header (uint32);
- the header, UTF-8 JSON: `fps` (the source's, `null` when unknown), `num_frames` (the source's frame count),
  `width`, `height` (of the stored frames), `positions` (the source-frame index of each stored frame, increasing,
  the first 0) and `lengths` (the bytes of each JPEG);
- the JPEGs, one after the other in the order of `positions`.

Frames are addressed by source-frame index, so sampling, the short-video rule and test-time views read an archive
exactly as they read its video: an index between two stored frames gives the stored frame at or before it.

[`~video_utils.open_video`] opens an archive (a path, its bytes or a file object) as a [`FrameArchive`], which every
reader of videos in evl_hf accepts where it accepts a torchcodec `VideoDecoder`.
"""

import bisect
import contextlib
import json
import os
import struct
from dataclasses import dataclass, field
from functools import partial
from typing import BinaryIO

import torch
from transformers.video_utils import VideoMetadata

from .video_utils import VideoDecodingError


FRAME_ARCHIVE_EXTENSION = ".evlf"
FORMAT_VERSION = 1
MAGIC = b"EVLF"
_PREAMBLE = struct.Struct("<4sII")  # magic, format version, header length
_HEAD_BYTES = 16384  # read at once on opening: the header of a video of about 1,000 stored frames


def is_frame_archive(head: bytes) -> bool:
    """Whether data starting with `head` (at least 4 bytes) is a frame archive."""
    return bytes(head[:4]) == MAGIC


def frame_steps_dividing(frame_stride: int) -> list[int]:
    """The `frame_step`s whose grid holds every frame of a clip `frame_stride` frames apart (the divisors)."""
    return [step for step in range(1, frame_stride + 1) if frame_stride % step == 0]


class FrameStepError(ValueError):
    """A frame archive's grid does not hold the frames a clip needs (its step does not divide the frame stride)."""

    def __init__(self, message: str, frame_step: int, frame_stride: int):
        super().__init__(message)
        self.frame_step, self.frame_stride = frame_step, frame_stride


def check_frame_step(frame_step: int, frame_stride: int, name: str = "The frame archive") -> None:
    """Refuses a `frame_step` that does not divide `frame_stride`: the clip's frames would fall between stored ones."""
    if frame_stride % frame_step:
        raise FrameStepError(
            f"{name} keeps every {frame_step}th source frame, which does not divide the frame stride {frame_stride}: "
            f"a clip's frames would fall between the stored ones. Prepare the videos with `--frame_step` one of "
            f"{frame_steps_dividing(frame_stride)}, or train with a stride that is a multiple of {frame_step}.",
            frame_step,
            frame_stride,
        )


@dataclass
class FrameArchiveMetadata(VideoMetadata):
    """`VideoMetadata` of a frame archive, in source-frame units, with the step of its grid of stored frames."""

    frame_step: int = 1


@dataclass
class _StreamInfo:
    # What torchcodec's `VideoDecoder.metadata` gives that evl_hf reads.
    average_fps: float | None
    width: int
    height: int
    duration_seconds: float | None
    num_frames: int


class FrameArchive:
    """
    A frame archive open for reading (from [`~video_utils.open_video`]), read like a torchcodec `VideoDecoder`:
    `len()` is the source's frame count, `metadata` its frame rate and the stored frames' size, and
    `get_frames_at(indices)` decodes the frames at source-frame indices.

    Opening reads the header only; a clip reads the bytes of its frames and no others.

    Args:
        source (`str`, `os.PathLike`, `bytes` or a binary file object): the archive.
        name (`str`): how messages name it.
    """

    def __init__(self, source: "str | os.PathLike | bytes | BinaryIO", name: str):
        self.name = name
        if isinstance(source, (bytes, bytearray, memoryview)):
            self._data, self._path = memoryview(bytes(source)), None
        elif hasattr(source, "read"):
            source.seek(0)
            self._data, self._path = memoryview(source.read()), None
        else:
            self._data, self._path = None, os.fspath(source)
        if self._data is not None:
            size, head = len(self._data), bytes(self._data[:_HEAD_BYTES])
        else:
            size = os.path.getsize(self._path)
            with open(self._path, "rb") as file:
                head = file.read(_HEAD_BYTES)  # the whole header but for long videos: one read opens an archive
        preamble = head[: _PREAMBLE.size]
        if len(preamble) < _PREAMBLE.size or not is_frame_archive(preamble):
            raise VideoDecodingError(f"Cannot read frame archive {name}: it does not start as a frame archive does")
        _, version, header_length = _PREAMBLE.unpack(preamble)
        if version > FORMAT_VERSION:
            raise VideoDecodingError(
                f"Cannot read frame archive {name}: it was written in format version {version}, and this evl_hf "
                f"reads version {FORMAT_VERSION} and older. Install a newer evl_hf (in its checkout: `git pull && pip install .`)."
            )
        try:
            end = _PREAMBLE.size + header_length
            header = json.loads(
                head[_PREAMBLE.size : end] if end <= len(head) else self._read(_PREAMBLE.size, header_length)
            )
            self.positions = [int(position) for position in header["positions"]]
            lengths = [int(length) for length in header["lengths"]]
            fps, num_frames = header["fps"], int(header["num_frames"])
            width, height = int(header["width"]), int(header["height"])
        except (ValueError, KeyError, TypeError) as error:
            raise VideoDecodingError(f"Cannot read frame archive {name}: its header is damaged ({error})") from None
        if not self.positions or len(lengths) != len(self.positions) or self.positions[0] != 0:
            raise VideoDecodingError(f"Cannot read frame archive {name}: its index of frames is damaged")
        self._offsets = [_PREAMBLE.size + header_length]
        for length in lengths:
            self._offsets.append(self._offsets[-1] + length)
        if self._offsets[-1] > size:
            missing = len(self.positions) - bisect.bisect_right(self._offsets, size) + 1
            raise VideoDecodingError(
                f"Cannot read frame archive {name}: it is truncated ({size} bytes; its index lists "
                f"{len(self.positions)} frames in {self._offsets[-1]} bytes, the last {missing} of them missing). "
                "Prepare the video again."
            )
        steps = {b - a for a, b in zip(self.positions, self.positions[1:])}
        self.frame_step = min(steps) if steps else max(num_frames, 1)
        self.metadata = _StreamInfo(
            average_fps=fps,
            width=width,
            height=height,
            duration_seconds=num_frames / fps if fps else None,
            num_frames=num_frames,
        )

    def _read(self, offset: int, length: int) -> bytes:
        if self._data is not None:
            return bytes(self._data[offset : offset + length])
        with open(self._path, "rb") as file:
            file.seek(offset)
            return file.read(length)

    def __len__(self) -> int:
        return self.metadata.num_frames

    def stored_frame(self, index: int) -> int:
        """Which stored frame (its position in `positions`) shows source frame `index`: the one at or before it."""
        if not 0 <= index < len(self):
            raise IndexError(f"Frame index {index} is out of range for {self.name} with {len(self)} frames")
        return bisect.bisect_right(self.positions, index) - 1

    def read_jpegs(self, indices: list[int]) -> dict[int, torch.Tensor]:
        """The JPEG bytes (uint8 tensors) of the stored frames `indices` (positions in `positions`), read in order."""
        jpegs = {}
        if self._data is not None:
            for i in sorted(set(indices)):
                jpegs[i] = torch.frombuffer(
                    bytearray(self._data[self._offsets[i] : self._offsets[i + 1]]), dtype=torch.uint8
                )
            return jpegs
        with open(self._path, "rb") as file:
            for i in sorted(set(indices)):
                file.seek(self._offsets[i])
                data = file.read(self._offsets[i + 1] - self._offsets[i])
                jpegs[i] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        return jpegs

    def read_frames(self, indices, device: "str | torch.device" = "cpu") -> torch.Tensor:
        """
        Decodes the frames at source-frame `indices` (repeats allowed) with torchcodec's `decode_jpeg`: on the CPU
        (libjpeg-turbo), or as one batch on a CUDA `device` (nvJPEG).

        Returns:
            `torch.Tensor`: uint8 RGB `(len(indices), 3, height, width)` on `device`.

        Raises:
            `IndexError` for an index outside the video, [`~video_utils.VideoDecodingError`] naming the archive and
            the frame for a JPEG that does not decode.
        """
        from torchcodec.decoders import decode_jpeg

        stored = [self.stored_frame(int(index)) for index in indices]
        jpegs = self.read_jpegs(stored)
        order = list(jpegs)
        try:
            images = decode_jpeg([jpegs[i] for i in order], mode="RGB", device=device)
        except RuntimeError as error:
            # A batch fails as a whole: find the frame to name.
            if (broken := _first_undecodable([jpegs[i] for i in order])) is not None:
                raise _corrupt_frame(self.name, self.positions[order[broken]], error) from error
            raise
        decoded = dict(zip(order, images))
        return _stack_frames([decoded[i] for i in stored])

    def get_frames_at(self, indices):
        """The frames at source-frame `indices` as torchcodec's `FrameBatch` (`data` uint8 `(N, 3, H, W)`)."""
        from torchcodec import FrameBatch

        indices = [int(index) for index in indices]
        fps = self.metadata.average_fps or 1.0
        shown = torch.tensor([self.positions[self.stored_frame(index)] for index in indices], dtype=torch.float64)
        return FrameBatch(
            data=self.read_frames(indices),
            pts_seconds=shown / fps,
            duration_seconds=torch.full((len(indices),), self.frame_step / fps, dtype=torch.float64),
        )


def _stack_frames(images: list[torch.Tensor]) -> torch.Tensor:
    """A clip `(T, 3, H, W)` of decoded JPEGs. They are (3, H, W) views of (H, W, 3) memory: stacked as they lie, then
    permuted, a clip is one plain copy, and channels-last, the layout uint8 resizing is fastest in (both measured in
    docs/benchmarks.md)."""
    return torch.stack([image.permute(1, 2, 0) for image in images]).permute(0, 3, 1, 2)


def _first_undecodable(jpegs: list[torch.Tensor]) -> int | None:
    """The position of the first of `jpegs` that libjpeg-turbo cannot decode (None when all decode)."""
    from torchcodec.decoders import decode_jpeg

    for position, jpeg in enumerate(jpegs):
        try:
            decode_jpeg(jpeg, mode="RGB")
        except RuntimeError:
            return position
    return None


def _corrupt_frame(name: str, frame: int, error: Exception) -> VideoDecodingError:
    return VideoDecodingError(
        f"Cannot decode frame {frame} of frame archive {name}: its JPEG data is corrupted ({error}). Prepare the "
        "video again."
    )


@dataclass
class ClipJpegs:
    """
    A clip of a frame archive, sampled but not decoded: what a DataLoader worker hands over in place of pixels
    ([`read_clip_jpegs`]), for [`decode_clip_jpegs`] to decode with the rest of the batch on the training device.

    Args:
        name (`str`): the archive, as messages name it.
        jpegs (`list[torch.Tensor]`): the JPEG bytes (uint8 views of one tensor) of the clip's frames, in order
            (`views x T` frames for several temporal views); a frame sampled twice is the same view, decoded once.
        frames (`list[int]`): the source frame each JPEG shows, for messages.
        augmentation (`torch.Tensor` or `None`): a training clip's row of
            [`~video_transforms.draw_clip_augmentation`] for the archive's frame size; `None` for an evaluation clip.
        crop_size (`tuple[int, int]` or `None`): the `(height, width)` a training clip is cropped to.
        processor_kwargs (`dict`): the video processor's arguments for the clip, which place an evaluation clip's
            views (`num_clips`, `num_crops`, ...).
    """

    name: str
    jpegs: list[torch.Tensor]
    frames: list[int]
    augmentation: torch.Tensor | None = None
    crop_size: tuple[int, int] | None = None
    processor_kwargs: dict = field(default_factory=dict)


def read_clip_jpegs(video_processor, video, **kwargs) -> ClipJpegs:
    """
    The clip `video_processor(video, device_transforms=True, **kwargs)` would make of a frame archive, read but not
    decoded: the JPEGs of the frames the processor samples and, for a training clip (`do_augment=True`), the
    augmentation row it draws, with the processor's own sampler (`sample_frames`) and
    [`~video_transforms.draw_clip_augmentation`] on the archive's frame size. With the same `seed`, the same frames
    and the same draws: [`decode_clip_jpegs`] then gives the processor's clip, pixel for pixel on the CPU.

    Args:
        video_processor ([`EVLVideoProcessor`]): the processor whose settings `kwargs` override, as in a call.
        video (`str`, `os.PathLike`, `bytes`, a binary file object or a [`FrameArchive`]): a frame archive.

    Raises:
        `ValueError` naming `video` when it is not a frame archive; the errors of
        [`~video_utils.load_video_frames`] for an archive it cannot read or sample.
    """
    from .video_transforms import draw_clip_augmentation
    from .video_utils import _open_for_reading, _sampled_metadata

    reader, name = _open_for_reading(video)
    if not isinstance(reader, FrameArchive):
        raise ValueError(
            f"{name} is not a frame archive: only an archive's frames are handed over as JPEGs. Prepare the videos "
            "with `evl-hf prepare-videos --format frames`, or let the video processor decode them."
        )
    if kwargs.get("fps") is not None and "num_frames" not in kwargs:
        kwargs["num_frames"] = None  # as the processor's `preprocess`: `fps` for this call replaces `num_frames`
    options = video_processor._merge_and_standardize_kwargs(**kwargs)  # the processor's settings, then `kwargs`
    indices = _sampled_metadata(reader, name, partial(video_processor.sample_frames, **options)).frames_indices
    stored = [reader.stored_frame(index) for index in indices]
    jpegs = reader.read_jpegs(stored)
    # views of one tensor: a worker then hands over one shared-memory block a clip, not one a frame
    jpegs = dict(zip(jpegs, torch.cat(list(jpegs.values())).split([len(jpeg) for jpeg in jpegs.values()])))
    placing = {key: value for key, value in kwargs.items() if key != "seed"}  # the clip is drawn: the rest places it
    clip = ClipJpegs(name, [jpegs[i] for i in stored], [reader.positions[i] for i in stored], processor_kwargs=placing)
    if options["do_augment"]:
        draws = (options["min_crop_scale"], options["horizontal_flip"], options["rand_augment"], options["seed"])
        clip.augmentation = draw_clip_augmentation(reader.metadata.height, reader.metadata.width, *draws)
        clip.crop_size = (options["crop_size"].height, options["crop_size"].width)
    return clip


def decode_clip_jpegs(
    clips: list[ClipJpegs],
    video_processor=None,
    device: "str | torch.device" = "cpu",
    skip_undecodable: bool = False,
) -> dict:
    """
    Decodes the frames of a batch of clips from [`read_clip_jpegs`] in one `decode_jpeg` call (one nvJPEG batch on a
    CUDA `device`, libjpeg-turbo on the CPU), then makes each the clip `video_processor(..., device_transforms=True)`
    makes in a worker: training clips stacked, cropped by their augmentation rows only where their sizes differ
    ([`~video_transforms.stack_clips`]), an evaluation clip resized and cropped into its views by `video_processor` (needed for those only). The result is
    what [`EVLVideoProcessor.augment_batch`] takes.

    Args:
        clips (`list[ClipJpegs]`): training clips or evaluation clips, not both.
        video_processor ([`EVLVideoProcessor`], *optional*): for evaluation clips.
        device (`str` or `torch.device`): where to decode; the clips are made there.
        skip_undecodable (`bool`): leave out the clips with a JPEG that does not decode instead of raising.

    Returns:
        `dict`: `pixel_values`, uint8 `(B, T, 3, h, w)` (`(B, views, T, 3, h, w)` for several views) on `device`;
        for training clips `augmentation`, their rows `(B, 13)` on the CPU with the crop applied; `kept`, the
        positions in `clips` of the clips made, and `skipped`, the names of the others and why.

    Raises:
        [`~video_utils.VideoDecodingError`] naming the archive and the frame of a JPEG that does not decode (without
        `skip_undecodable`, or when no clip decodes).
    """
    from torchcodec.decoders import decode_jpeg

    from .video_transforms import stack_clips

    training = {clip.augmentation is not None for clip in clips}
    if len(training) != 1 or (training == {False} and video_processor is None):
        raise ValueError(
            "Expected a batch of training clips (with augmentation rows) or of evaluation clips with the video "
            f"processor that places their views, got {len(clips)} clips of kinds {training}"
        )
    unique = {id(jpeg): jpeg for clip in clips for jpeg in clip.jpegs}
    try:
        images = dict(zip(unique, decode_jpeg(list(unique.values()), mode="RGB", device=device)))
    except RuntimeError as error:
        # A batch fails as a whole: find the clips to leave out, or the frame to name.
        broken = {i: frame for i, clip in enumerate(clips) if (frame := _first_undecodable(clip.jpegs)) is not None}
        if not broken:
            raise
        errors = {i: _corrupt_frame(clips[i].name, clips[i].frames[frame], error) for i, frame in broken.items()}
        if not skip_undecodable or len(broken) == len(clips):
            raise next(iter(errors.values())) from error
        kept = [i for i in range(len(clips)) if i not in broken]
        result = decode_clip_jpegs([clips[i] for i in kept], video_processor, device)
        return {**result, "kept": kept, "skipped": {clips[i].name: str(errors[i]) for i in broken}}
    videos = [_stack_frames([images[id(jpeg)] for jpeg in clip.jpegs]) for clip in clips]
    if training == {True}:
        rows = torch.stack([clip.augmentation for clip in clips])  # a copy: a crop updates the box in place
        result = {"pixel_values": stack_clips(videos, rows, clips[0].crop_size), "augmentation": rows}
    else:
        kwargs = clips[0].processor_kwargs
        if any(clip.processor_kwargs != kwargs for clip in clips):
            raise ValueError("The evaluation clips of a batch were sampled with different processor arguments")
        kwargs = {**kwargs, "do_sample_frames": False, "device_transforms": True}
        result = {"pixel_values": video_processor(videos, return_tensors="pt", **kwargs)["pixel_values"]}
    return {**result, "kept": list(range(len(clips))), "skipped": {}}


def write_frame_archive(
    video,
    target: "str | os.PathLike | BinaryIO",
    *,
    frame_step: int = 4,
    size: tuple[int, int] | None = None,
    quality: int = 90,
    chunk_size: int = 32,
) -> dict:
    """
    Writes the frame archive of `video` (anything [`~video_utils.open_video`] reads): every `frame_step`-th frame,
    from the first, resized to `size` `(width, height)` (bilinear, antialiased; `None` keeps the size) and encoded as
    baseline JPEG at `quality` with torchcodec's `JpegEncoder` (libjpeg-turbo; torchvision's image codecs, the same
    code, are deprecated in its favour).

    Returns:
        `dict`: the header written (`fps`, `num_frames`, `width`, `height`, `positions`, `lengths`).
    """
    from torchcodec.encoders import JpegEncoder
    from torchvision.transforms.v2.functional import resize

    from .video_utils import open_video

    if frame_step < 1:
        raise ValueError(f"`frame_step` must be at least 1, got {frame_step}")
    decoder = open_video(video, num_ffmpeg_threads=1)
    if isinstance(decoder, FrameArchive):
        raise ValueError(f"{decoder.name} is a frame archive already; give its source video")
    num_frames = len(decoder)
    positions = list(range(0, num_frames, frame_step))
    jpegs = []
    for start in range(0, len(positions), chunk_size):
        frames = decoder.get_frames_at(positions[start : start + chunk_size]).data  # (N, 3, H, W) uint8
        if size is not None and (frames.shape[-1], frames.shape[-2]) != tuple(size):
            frames = resize(frames, [size[1], size[0]], antialias=True)
        jpegs += [JpegEncoder(frame).to_tensor(quality=quality) for frame in frames]
    height, width = frames.shape[-2:]
    header = {
        "fps": decoder.metadata.average_fps,
        "num_frames": num_frames,
        "width": int(width),
        "height": int(height),
        "positions": positions,
        "lengths": [len(jpeg) for jpeg in jpegs],
    }
    encoded = json.dumps(header, separators=(",", ":")).encode()
    with open(target, "wb") if not hasattr(target, "write") else contextlib.nullcontext(target) as file:
        file.write(_PREAMBLE.pack(MAGIC, FORMAT_VERSION, len(encoded)))
        file.write(encoded)
        for jpeg in jpegs:
            file.write(jpeg.numpy().tobytes())
    return header


__all__ = [
    "FORMAT_VERSION",
    "ClipJpegs",
    "FRAME_ARCHIVE_EXTENSION",
    "FrameArchive",
    "FrameArchiveMetadata",
    "FrameStepError",
    "check_frame_step",
    "decode_clip_jpegs",
    "frame_steps_dividing",
    "is_frame_archive",
    "read_clip_jpegs",
    "write_frame_archive",
]
