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
Reading videos and finding them.

- Reading: [`open_video`] opens a file, its bytes, a binary file object or an http(s) URL with torchcodec and says
  what is wrong with a video that does not open; [`load_video_frames`] and [`read_video_frames`] decode only the
  frames asked for; [`read_video_metadata`] gives a video's `VideoMetadata`. Every reader of a video (the video
  processor, training, the `evl-hf` commands) comes through here.
- Finding: the video file extensions, folders searched for them, and lists of videos (Kinetics-style `.txt`, CSV,
  JSON lines), as training, `evl-hf predict` and `evl-hf prepare-videos` read them.
"""

import csv
import errno
import json
import os
import stat
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Literal, NamedTuple

import torch
from transformers.video_utils import VideoMetadata


if TYPE_CHECKING:
    from torchcodec.decoders import VideoDecoder

    from .frame_archives import FrameArchive


# The containers FFmpeg reads that video datasets use, and frame archives: what folders are searched for.
VIDEO_EXTENSIONS = (
    ".mp4",
    ".m4v",
    ".mov",
    ".mkv",
    ".webm",
    ".avi",
    ".mpg",
    ".mpeg",
    ".wmv",
    ".flv",
    ".ts",
    ".3gp",
    ".ogv",
    ".evlf",  # frame archives (`evl_hf.frame_archives`), written by `evl-hf prepare-videos --format frames`
)
# Files read as lists of videos rather than as videos.
VIDEO_LIST_EXTENSIONS = (".txt", ".csv", ".json", ".jsonl")


class VideoDecodingError(ValueError):
    """A video could not be read; the message names the video and says what is wrong with it."""


def is_video_decoder(obj) -> bool:
    """Whether `obj` is an open video: a torchcodec `VideoDecoder` (what a `datasets` `Video` column holds) or a
    [`~frame_archives.FrameArchive`]."""
    # The classes exist only once their modules are imported: this keeps importing this module free of them.
    decoders, archives = sys.modules.get("torchcodec.decoders"), sys.modules.get("evl_hf.frame_archives")
    return (decoders is not None and isinstance(obj, decoders.VideoDecoder)) or (
        archives is not None and isinstance(obj, archives.FrameArchive)
    )


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


def _download(url: str, label: str, timeout: float) -> bytes:
    # Read here rather than by FFmpeg, whose reads from a server that stops answering never time out.
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.read()
    except urllib.error.HTTPError as error:
        if error.code in (404, 410):
            raise FileNotFoundError(errno.ENOENT, f"Video not found (the server answered {error.code})", url) from None
        raise ConnectionError(
            f"Cannot download video {label}: the server answered {error.code} {error.reason}"
        ) from None
    except OSError as error:  # URLError, or a timeout or reset while reading
        reason = getattr(error, "reason", error)
        if isinstance(reason, TimeoutError):
            raise TimeoutError(f"Cannot download video {label}: the server sent nothing for {timeout} s") from None
        raise ConnectionError(f"Cannot download video {label}: {reason}") from None


def _label(video, name: str | None = None) -> str:
    """How messages name `video`: `name` when given, else its path or URL, or what kind of object it is."""
    if name:
        return repr(name)
    if is_video_decoder(video):
        return getattr(video, "name", None) or "the given VideoDecoder"
    if isinstance(video, (bytes, bytearray, memoryview)):
        return f"({len(video)} bytes)"
    if hasattr(video, "read"):
        return repr(getattr(video, "name", None) or "the given file object")
    return repr(os.fspath(video))


def open_video(
    video: "str | os.PathLike | bytes | BinaryIO",
    num_ffmpeg_threads: int = 1,
    *,
    name: str | None = None,
    timeout: float = 60.0,
) -> "VideoDecoder | FrameArchive":
    """
    A torchcodec `VideoDecoder` of a video: a file, its bytes (a `datasets` row with stored bytes), a binary file
    object or an http(s) URL, counting frames exactly, with `num_ffmpeg_threads` threads (0: FFmpeg chooses). The one
    way a video is opened, for reading it once or many times.

    A URL is downloaded whole (as transformers' own video loader does), giving up when the server sends nothing for
    `timeout` seconds. A frame archive (`evl-hf prepare-videos --format frames`), recognised by its first bytes
    whatever its name, opens as a [`~frame_archives.FrameArchive`], read as a decoder is.

    Every error names the video (`name`, by default its path or URL) and says what is wrong.

    Raises:
        `FileNotFoundError`: a missing file, or a URL the server does not have.
        `IsADirectoryError`: a folder where a video was expected.
        `ConnectionError`: a URL whose server cannot be reached.
        `TimeoutError`: a URL whose server sends nothing for `timeout` seconds.
        `VideoDecodingError`: the data is not a video.
    """
    from torchcodec.decoders import VideoDecoder

    from .frame_archives import FrameArchive, is_frame_archive

    label = _label(video, name)
    if isinstance(video, str) and video.startswith(("http://", "https://")):
        video = _download(video, label, timeout)
    if isinstance(video, (bytes, bytearray, memoryview)):
        source, head = bytes(video), bytes(video[:4096])
        if not source:
            raise VideoDecodingError(f"Cannot read video {label}: its data is empty (0 bytes)")
    elif hasattr(video, "read"):
        source, head = video, video.read(4096)
        source.seek(0)
        if not head:
            raise VideoDecodingError(f"Cannot read video {label}: its data is empty (0 bytes)")
    else:
        source = os.fspath(video)
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
    if is_frame_archive(head):
        return FrameArchive(source, label)
    try:
        decoder = VideoDecoder(source, seek_mode="exact", num_ffmpeg_threads=num_ffmpeg_threads)
    except (RuntimeError, ValueError) as error:
        raise VideoDecodingError(f"Cannot read video {label}: {_diagnose_unopenable_video(source, head)}") from error
    if len(decoder) == 0:
        raise VideoDecodingError(f"Cannot read video {label}: its video stream has no frames (truncated?)")
    return decoder


def _open_for_reading(video) -> "tuple[VideoDecoder | FrameArchive, str]":
    """
    The reader of `video` and the name messages give it: the one place that tells the kinds of video apart, so that
    [`load_video_frames`], [`read_video_frames`] and [`read_video_metadata`] read each kind alike. A reader has
    `metadata`, `len` and `get_frames_at` as torchcodec's `VideoDecoder` has; [`open_video`] gives a
    [`~frame_archives.FrameArchive`] for an archive of JPEG frames.
    """
    if is_video_decoder(video):
        return video, _label(video)
    # As many FFmpeg threads as torch uses: all cores in the main process, one in a DataLoader worker, where the
    # workers are the parallelism (a few sampled frames decode fastest on one thread: no frame-thread pipeline)
    return open_video(video, num_ffmpeg_threads=torch.get_num_threads()), _label(video)


def read_video_metadata(video: "str | os.PathLike | bytes | BinaryIO | VideoDecoder") -> VideoMetadata:
    """
    The `VideoMetadata` of a video (anything [`load_video_frames`] reads, a decoder without reopening it): its frame
    count (exact), frame rate (`None` when the container does not say), width, height and duration in seconds. A
    frame archive's are its source video's, in a [`~frame_archives.FrameArchiveMetadata`] with its `frame_step`.
    """
    reader, _ = _open_for_reading(video)
    info = reader.metadata
    fields = dict(
        total_num_frames=len(reader),
        fps=info.average_fps,
        width=info.width,
        height=info.height,
        duration=info.duration_seconds,
    )
    if (frame_step := getattr(reader, "frame_step", None)) is not None:  # a frame archive, and its grid's step
        from .frame_archives import FrameArchiveMetadata

        return FrameArchiveMetadata(**fields, video_backend="evl_hf.frame_archives", frame_step=frame_step)
    return VideoMetadata(**fields, video_backend="torchcodec")


def load_video_frames(
    video: "str | os.PathLike | bytes | BinaryIO | VideoDecoder", sample_indices_fn: Callable[..., Sequence[int]]
) -> tuple[torch.Tensor, VideoMetadata]:
    """
    Decodes the frames `sample_indices_fn(metadata=...)` picks, and no other, of a video: a path, URL, bytes or file
    object ([`open_video`]) or an open torchcodec decoder. Every failure names the video and its problem.

    Returns:
        `tuple[torch.Tensor, VideoMetadata]`: uint8 RGB frames `(T, 3, H, W)` in the order of the indices (a
        channels-last tensor where the decoder writes pixels so), and the video's metadata with `frames_indices` set.
    """
    reader, name = _open_for_reading(video)
    metadata = _sampled_metadata(reader, name, sample_indices_fn)
    indices = metadata.frames_indices
    try:
        frames = reader.get_frames_at(indices).data
    except VideoDecodingError:  # names the file and the frame already
        raise
    except (RuntimeError, ValueError, IndexError) as error:
        raise VideoDecodingError(
            f"Cannot decode frames {sorted(set(indices))} of video {name}: the file is truncated or its data is "
            "corrupted"
        ) from error
    if frames.shape[-1] == 3 and frames.shape[1] != 3:  # a decoder opened with dimension_order="NHWC"
        frames = frames.permute(0, 3, 1, 2)
    return frames, metadata  # channels-last in memory where decoded so: uint8 resizing is fastest there


def _sampled_metadata(reader, name: str, sample_indices_fn: Callable[..., Sequence[int]]) -> VideoMetadata:
    """The metadata of an open video with `frames_indices` set to the frames `sample_indices_fn` picks, checked: the
    frames [`load_video_frames`] decodes, and a frame archive's worker hands over undecoded."""
    metadata = read_video_metadata(reader)
    if metadata.total_num_frames == 0:
        raise VideoDecodingError(f"Cannot read video {name}: its video stream has no frames (truncated?)")
    try:
        indices = [int(index) for index in sample_indices_fn(metadata=metadata)]
    except ValueError as error:
        from .frame_archives import FrameStepError, check_frame_step

        if isinstance(error, FrameStepError):  # the sampler knows the stride, the reader the file
            check_frame_step(error.frame_step, error.frame_stride, name=f"Frame archive {name}")
        raise
    if not indices:
        raise ValueError(f"No frame indices given for video {name}")
    if out_of_range := [index for index in indices if not 0 <= index < metadata.total_num_frames]:
        raise IndexError(
            f"Frame indices {out_of_range} are out of range for video {name} with {metadata.total_num_frames} frames"
        )
    metadata.frames_indices = indices
    return metadata


def read_video_frames(video: "str | os.PathLike | bytes | BinaryIO | VideoDecoder", indices_or_fn) -> torch.Tensor:
    """
    Decodes some frames of a video (anything [`load_video_frames`] reads) as uint8 RGB `(T, 3, H, W)`.
    `indices_or_fn`: frame indices (repeats allowed) or a function from the video's frame count to them, e.g.
    `lambda n: sample_frame_indices(n, 8)`. Raises `FileNotFoundError` or `IsADirectoryError` for a wrong path,
    `VideoDecodingError` for a file that cannot be decoded, `IndexError` for an index outside the video.
    """
    indices_fn = indices_or_fn if callable(indices_or_fn) else lambda num_video_frames: indices_or_fn
    return load_video_frames(video, lambda metadata: indices_fn(metadata.total_num_frames))[0]


# Frame sampling: which frames of a video make a clip, in source-frame units, whatever the video is stored as.
FRAME_SAMPLING_STRATEGIES = ("dense", "uniform", "segment")


def clip_span(num_frames: int, frame_stride: int) -> int:
    """Frames of video that `num_frames` frames `frame_stride` apart cover, from the first to the last."""
    return (num_frames - 1) * frame_stride + 1


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
        # A video shorter than a clip plays from its first frame and repeats its last one, as the reference does.
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


def is_video_file(path: "str | os.PathLike") -> bool:
    """Whether `path` has one of the [`VIDEO_EXTENSIONS`] (in any case)."""
    return os.fspath(path).lower().endswith(VIDEO_EXTENSIONS)


def walk_videos(folder: "str | os.PathLike", skip: Path | None = None) -> list[str]:
    """Every file with a video extension under `folder`, in sorted order, leaving out the folder `skip` (resolved)."""
    videos = []
    for root, folders, files in os.walk(folder):
        folders[:] = sorted(name for name in folders if skip is None or (Path(root) / name).resolve() != skip)
        videos += [os.path.join(root, name) for name in sorted(files) if is_video_file(name)]
    return videos


class VideoList(NamedTuple):
    """The rows of a video list, each a `dict` of its columns as written (paths not yet resolved), and the columns."""

    rows: list[dict]
    columns: list[str]


def _is_integer(text: str) -> bool:
    return text.lstrip("-").isdigit()


def read_video_list(
    path: "str | os.PathLike",
    *,
    video_column: str = "video",
    label_column: str = "label",
    require_labels=False,
    label_separator: str | None = None,
) -> VideoList:
    """
    Reads a list of videos:

    - `.txt`: one video per line, `path` or `path label_index` (the Kinetics lists; the path may contain spaces, the
      index is the last word); blank lines and lines starting with `#` are skipped. Rows are `{video_column: path}`
      and, with an index, `{label_column: index}`.
    - `.csv`: a header and one row per video, the path in the `video_column` column (or else a `path` column).
    - `.json` / `.jsonl`: one JSON object per line (or one JSON array of objects), the path under `video_column`.

    With `require_labels`, every row must have a label (a `.txt` line its index). Paths are as written; resolve them
    with [`resolve_video_path`].

    Multi-label lists: a JSON label may be a list of names, and with `label_separator` a CSV label cell may join
    several names (`run;jump`); when any cell does, every row's label becomes a list. Labels must then be lists in
    every row, and no list may be empty.

    Raises:
        `ValueError`: the list is malformed or empty; the message names the file, the line and what was expected.
    """
    path = os.fspath(path)
    suffix = os.path.splitext(path)[1].lower()
    with open(path, encoding="utf-8", newline="") as file:
        text = file.read()
    rows, columns = [], [video_column]
    if suffix == ".csv":
        reader = csv.DictReader(text.splitlines())
        columns = list(reader.fieldnames or [])
        column = video_column if video_column in columns else "path" if "path" in columns else None
        if column is None:
            raise ValueError(
                f"{path}: no {video_column!r} (or 'path') column with the videos; its columns are "
                f"{columns}. The first line must name the columns."
            )
        rows = [{**row, video_column: row[column]} for row in reader if (row.get(column) or "").strip()]
    elif suffix in (".json", ".jsonl"):
        stripped = text.strip()
        try:
            if stripped.startswith("["):
                rows = json.loads(stripped)
            else:
                rows = [json.loads(line) for line in stripped.splitlines() if line.strip()]
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not JSON lines or a JSON array of objects ({error}).") from None
        for number, row in enumerate(rows, start=1):
            if not isinstance(row, dict) or video_column not in row:
                raise ValueError(
                    f"{path}, entry {number}: expected an object with a {video_column!r} field, got {row!r}."
                )
        columns = list(dict.fromkeys(key for row in rows for key in row))
    else:
        for number, line in enumerate(text.splitlines(), start=1):
            entry = line.strip()
            if not entry or entry.startswith("#"):
                continue
            parts = entry.rsplit(maxsplit=1)
            if len(parts) == 2 and _is_integer(parts[1]):
                rows.append({video_column: parts[0], label_column: int(parts[1])})
            elif require_labels:
                raise ValueError(f"{path}, line {number}: expected `<video path> <label index>`, got {line!r}.")
            else:
                rows.append({video_column: entry})
        columns = [video_column, label_column] if any(label_column in row for row in rows) else [video_column]
    if suffix == ".csv" and label_separator and any(label_separator in (row.get(label_column) or "") for row in rows):
        for row in rows:
            names = [name.strip() for name in (row.get(label_column) or "").split(label_separator)]
            row[label_column] = [name for name in names if name]
    lists = [isinstance(row.get(label_column), list) for row in rows]
    if any(lists) and not all(lists):
        single = [number for number, is_list in enumerate(lists, start=1) if not is_list]
        raise ValueError(
            f"{path}: {label_column!r} is a list of labels in some entries and a single label in others "
            f"(entries {single[:5]}). For multi-label training write every entry's labels as a list, "
            f'a single one too (["run"]).'
        )
    if empty := [number for number, row in enumerate(rows, start=1) if row.get(label_column) == []]:
        raise ValueError(
            f"{path}: entries {empty[:5]} have an empty {label_column!r} list; every video needs at least "
            "one label. Label them or leave them out."
        )
    unlabelled = [number for number, row in enumerate(rows, start=1) if row.get(label_column) in (None, "")]
    if require_labels and unlabelled:
        raise ValueError(f"{path}: entries {unlabelled[:5]} have no {label_column!r}; every video needs a label.")
    if not rows:
        raise ValueError(f"{path} lists no videos.")
    return VideoList(rows, columns)


def resolve_video_path(video: str, root: "str | os.PathLike") -> str:
    """`video` as written in a list, made absolute from `root` (the list's folder, or a dataset root) when relative."""
    return video if os.path.isabs(video) else os.path.normpath(os.path.join(root, video))


__all__ = [
    "FRAME_SAMPLING_STRATEGIES",
    "VIDEO_EXTENSIONS",
    "clip_span",
    "sample_frame_indices",
    "VideoDecodingError",
    "is_video_decoder",
    "load_video_frames",
    "open_video",
    "read_video_frames",
    "read_video_metadata",
    "VIDEO_LIST_EXTENSIONS",
    "VideoList",
    "is_video_file",
    "read_video_list",
    "resolve_video_path",
    "walk_videos",
]
