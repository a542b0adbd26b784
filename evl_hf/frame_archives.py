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
from dataclasses import dataclass
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
            for i in order:
                try:
                    decode_jpeg(jpegs[i], mode="RGB")
                except RuntimeError:
                    raise VideoDecodingError(
                        f"Cannot decode frame {self.positions[i]} of frame archive {self.name}: its JPEG data is "
                        f"corrupted ({error}). Prepare the video again."
                    ) from error
            raise
        decoded = dict(zip(order, images))
        # The images are (3, H, W) views of (H, W, 3) memory: stacked as they lie, then permuted, a clip is one plain
        # copy, and channels-last, the layout uint8 resizing is fastest in (both measured in docs/benchmarks.md).
        return torch.stack([decoded[i].permute(1, 2, 0) for i in stored]).permute(0, 3, 1, 2)

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
    "FRAME_ARCHIVE_EXTENSION",
    "FrameArchive",
    "FrameArchiveMetadata",
    "FrameStepError",
    "check_frame_step",
    "frame_steps_dividing",
    "is_frame_archive",
    "write_frame_archive",
]
