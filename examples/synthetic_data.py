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
"""A generated video classification dataset that only a temporal model can solve.

Every clip shows one object (a square, disc, triangle or diamond of random size and colour, on a random background)
that moves in a straight line toward one edge of the frame; the label is that edge: `left`, `right`, `up` or `down`.
Where the object starts is random over the whole frame, and the trajectories are drawn so that, in a frame picked at
random from a clip, the object's position has the same distribution for every label: a single frame says nothing
about the label, only the order of the frames does.

The clips are real H.264 mp4 files, written with torchcodec, in the `videofolder` layout that
`datasets.load_dataset("videofolder", ...)` reads (one folder per label):

    <root>/<version>/train/left/00000.mp4
    <root>/<version>/validation/up/00012.mp4

`<version>` is a hash of the generator's settings, so a dataset is generated once and reused by every later run with
the same settings, and different settings never mix.

The multi-label variant ([`generate_synthetic_multi_label_dataset`]) shows one or two objects, each moving toward its
own edge; the labels are the set of those edges. Its clips are listed in JSON lines files, the format the training
script reads for multi-label data:

    <root>/multi-label-<version>/train.jsonl        {"video": "train/00000.mp4", "labels": ["left", "up"]}
    <root>/multi-label-<version>/validation.jsonl
"""

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch


SYNTHETIC_MOTION_LABELS = ("left", "right", "up", "down")
SHAPES = ("square", "disc", "triangle", "diamond")

# Bump when the rendering or the encoding changes, so that cached datasets made by an older generator are not reused.
GENERATOR_VERSION = 3

# Marks a finished dataset folder; a folder without it is an interrupted generation and is never used.
_COMPLETE_MARKER = "synthetic_motion.json"
_MULTI_LABEL_MARKER = "synthetic_multi_label.json"


def default_cache_dir() -> Path:
    """`$EVL_HF_CACHE/synthetic_motion`, by default `~/.cache/evl_hf/synthetic_motion` (`$XDG_CACHE_HOME` honoured)."""
    if "EVL_HF_CACHE" in os.environ:
        return Path(os.environ["EVL_HF_CACHE"]).expanduser() / "synthetic_motion"
    cache_home = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser()
    return cache_home / "evl_hf" / "synthetic_motion"


@dataclass(frozen=True)
class SyntheticMotionConfig:
    """
    Settings of the synthetic-motion dataset. Every field is part of the cache key.

    Args:
        train_videos_per_label (`int`): clips per label in the `train` split.
        validation_videos_per_label (`int`): clips per label in the `validation` split.
        num_frames (`int`): frames per clip.
        frame_size (`int`): height and width of the (square) frames, in pixels. Even, as H.264 in yuv420p needs.
        frame_rate (`int`): frames per second written in the file; it only matters to players.
        min_object_size, max_object_size (`int`): range of the object's width in pixels.
        min_speed, max_speed (`float`): range of the object's speed in pixels per frame. The speed is lowered for
            a clip when the whole path would not fit in the frame.
        seed (`int`): the dataset is a pure function of these settings.
    """

    train_videos_per_label: int = 300
    validation_videos_per_label: int = 50
    num_frames: int = 22
    frame_size: int = 64
    frame_rate: int = 12
    min_object_size: int = 14
    max_object_size: int = 22
    min_speed: float = 1.0
    max_speed: float = 2.0
    seed: int = 0

    def __post_init__(self):
        if self.frame_size % 2 or self.frame_size < 16:
            raise ValueError(f"frame_size must be even and at least 16, got {self.frame_size}.")
        if not 2 <= self.min_object_size <= self.max_object_size <= self.frame_size // 2:
            raise ValueError(
                f"Need 2 <= min_object_size <= max_object_size <= frame_size / 2, got {self.min_object_size}, "
                f"{self.max_object_size} for frame_size {self.frame_size}."
            )
        if not 0 < self.min_speed <= self.max_speed:
            raise ValueError(f"Need 0 < min_speed <= max_speed, got {self.min_speed}, {self.max_speed}.")
        if self.num_frames < 2:
            raise ValueError(f"num_frames must be at least 2 for anything to move, got {self.num_frames}.")
        if self.train_videos_per_label < 1 or self.validation_videos_per_label < 1:
            raise ValueError("Each split needs at least one clip per label.")

    @property
    def version(self) -> str:
        """Short hash of the settings and of the generator version: the name of the dataset's cache folder."""
        key = json.dumps({"generator_version": GENERATOR_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(key.encode()).hexdigest()[:12]


def sample_trajectory(rng: np.random.Generator, label: str, config: SyntheticMotionConfig) -> tuple[np.ndarray, int]:
    """
    Draws the path of one object moving toward the edge named by `label`.

    Returns the object's centre in every frame, `(num_frames, 2)` as (x, y) in pixels, and its size in pixels.

    Along the axis of motion, the path's start is uniform over the positions that keep the object in the frame for
    the whole clip. Across it, the position is drawn from the distribution that the motion axis has at a random time
    (a uniform start plus a uniform fraction of the path), so the position at a random frame is distributed alike
    for all four labels.
    """
    if label not in SYNTHETIC_MOTION_LABELS:
        raise ValueError(f"label must be one of {SYNTHETIC_MOTION_LABELS}, got {label!r}.")
    size = int(rng.integers(config.min_object_size, config.max_object_size + 1))
    half = size / 2
    room = config.frame_size - size  # distance the object's centre can travel while fully visible
    speed = float(rng.uniform(config.min_speed, config.max_speed))
    path_length = min(speed * (config.num_frames - 1), room)

    start = half + rng.uniform(0, room - path_length)  # low end of the path, along the motion axis
    across = half + rng.uniform(0, room - path_length) + rng.uniform(0, path_length)
    progress = np.linspace(0.0, path_length, config.num_frames)
    along = start + (progress if label in ("right", "down") else path_length - progress)
    across = np.full(config.num_frames, across)
    # Image coordinates: x grows to the right, y grows downward.
    centres = np.stack([along, across] if label in ("left", "right") else [across, along], axis=1)
    return centres, size


def _shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, half: float) -> np.ndarray:
    """Pixels covered by `shape`, centred at the origin, given pixel offsets `dx`, `dy` from its centre."""
    if shape == "square":
        return (np.abs(dx) <= half) & (np.abs(dy) <= half)
    if shape == "disc":
        return dx**2 + dy**2 <= half**2
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= half
    # Upward triangle: inside the base line and within both slanted sides.
    return (dy <= half) & (2 * np.abs(dx) <= dy + half)


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, size=3).astype(np.float32)


def render_clip(rng: np.random.Generator, label: str | list[str], config: SyntheticMotionConfig) -> torch.Tensor:
    """One clip as a uint8 tensor `(num_frames, 3, frame_size, frame_size)`, RGB: an object moving toward the edge
    named by `label`, or one object per label of a list, drawn in its order (a later one passes over an earlier)."""
    objects = []
    for name in [label] if isinstance(label, str) else label:
        centres, size = sample_trajectory(rng, name, config)
        objects.append((centres, size, SHAPES[int(rng.integers(len(SHAPES)))]))
    background = _random_colour(rng)
    colours = []
    for _ in objects:
        colour = _random_colour(rng)
        # A colour the eye (and the codec's chroma subsampling) tells apart from the background and the other objects.
        while min(np.abs(colour - other).sum() for other in [background, *colours]) < 150:
            colour = _random_colour(rng)
        colours.append(colour)
    # Static texture, identical in every frame, so that the only thing that changes over time is the objects.
    texture = rng.normal(0.0, 6.0, size=(config.frame_size, config.frame_size, 1)).astype(np.float32)
    canvas = np.clip(background + texture, 0, 255)  # (H, W, 3)

    pixel = np.arange(config.frame_size, dtype=np.float32) + 0.5
    frames = np.empty((config.num_frames, config.frame_size, config.frame_size, 3), dtype=np.uint8)
    for t in range(config.num_frames):
        frame = canvas
        for (centres, size, shape), colour in zip(objects, colours):
            x, y = centres[t]
            mask = _shape_mask(shape, pixel[None, :] - x, pixel[:, None] - y, size / 2)  # (H, W)
            frame = np.where(mask[..., None], colour, frame)
        frames[t] = frame.astype(np.uint8)
    return torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous()  # (T, 3, H, W)


def _write_mp4(frames: torch.Tensor, path: Path, frame_rate: int):
    from torchcodec.encoders import VideoEncoder

    # crf 18 keeps the edges of small objects crisp; yuv420p is what every H.264 decoder plays. One encoder thread and
    # no macroblock tree: with x264's mbtree, about one clip in ten came out slightly different from one process to
    # the next, from the same frames, so two generations of the dataset were not byte-identical.
    VideoEncoder(frames, frame_rate=frame_rate).to_file(
        str(path),
        codec="libx264",
        pixel_format="yuv420p",
        crf=18,
        preset="veryfast",
        extra_options={"threads": 1, "x264-params": "mbtree=0"},
    )


def _cached(dataset_dir: Path, marker: str, write) -> Path:
    """`dataset_dir`, first made by `write(staging_folder)` unless `marker` in it says it is complete.

    Generation writes to a temporary folder next to the final one and renames it when done, so an interrupted run
    leaves nothing that a later run would take for a dataset, and concurrent processes end up with the same folder.
    """
    if (dataset_dir / marker).is_file():
        return dataset_dir
    # A hidden folder of this process's own, created with the usual permissions, renamed into place when complete.
    staging = dataset_dir.parent / f".{dataset_dir.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    staging.mkdir(parents=True)
    try:
        write(staging)
        try:
            staging.rename(dataset_dir)
        except OSError:
            # Another process finished the same dataset first (or left an unfinished folder behind).
            if not (dataset_dir / marker).is_file():
                shutil.rmtree(dataset_dir, ignore_errors=True)
                staging.rename(dataset_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dataset_dir


def _splits(config: SyntheticMotionConfig):
    return enumerate([("train", config.train_videos_per_label), ("validation", config.validation_videos_per_label)])


def generate_synthetic_motion_dataset(
    cache_dir: str | os.PathLike | None = None, config: SyntheticMotionConfig | None = None, **config_kwargs
) -> Path:
    """
    Returns the folder of the synthetic-motion dataset for `config`, generating it first when it is not cached.

    Args:
        cache_dir (`str` or `os.PathLike`, *optional*):
            Parent folder of the cached datasets; defaults to [`default_cache_dir`].
        config ([`SyntheticMotionConfig`], *optional*):
            Dataset settings; keyword arguments build one when it is not given.

    Returns:
        `Path`: a folder holding `train/<label>/*.mp4` and `validation/<label>/*.mp4`.
    """
    config = config if config is not None else SyntheticMotionConfig(**config_kwargs)
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()

    def write(staging: Path):
        for split_index, (split, per_label) in _splits(config):
            for label_index, label in enumerate(SYNTHETIC_MOTION_LABELS):
                label_dir = staging / split / label
                label_dir.mkdir(parents=True)
                for index in range(per_label):
                    # One stream per clip: clips do not depend on how many others are generated.
                    rng = np.random.default_rng([config.seed, split_index, label_index, index])
                    _write_mp4(render_clip(rng, label, config), label_dir / f"{index:05d}.mp4", config.frame_rate)
        summary = {"generator_version": GENERATOR_VERSION, "labels": list(SYNTHETIC_MOTION_LABELS), **asdict(config)}
        (staging / _COMPLETE_MARKER).write_text(json.dumps(summary, indent=2))

    return _cached(cache_dir / config.version, _COMPLETE_MARKER, write)


def sample_label_set(rng: np.random.Generator) -> list[str]:
    """One or two different directions, equally likely, as a sorted list: every direction is in 3/8 of the clips."""
    count = 1 + int(rng.integers(2))
    return sorted(rng.choice(SYNTHETIC_MOTION_LABELS, size=count, replace=False).tolist())


def generate_synthetic_multi_label_dataset(
    cache_dir: str | os.PathLike | None = None, config: SyntheticMotionConfig | None = None, **config_kwargs
) -> Path:
    """
    Returns the folder of the synthetic multi-label motion dataset for `config`, generating it first when it is not
    cached: clips of one or two objects moving toward different edges, labelled with the set of those edges.

    A split holds as many clips as the single-label dataset's (`4 * <split>_videos_per_label`), so the same settings
    cost about the same to generate and to train on.

    Returns:
        `Path`: a folder holding `train.jsonl` and `validation.jsonl`, JSON lines of `{"video": <path relative to the
        folder>, "labels": [<direction>, ...]}`, and the clips in `train/` and `validation/`.
    """
    config = config if config is not None else SyntheticMotionConfig(**config_kwargs)
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()

    def write(staging: Path):
        for split_index, (split, per_label) in _splits(config):
            (staging / split).mkdir()
            rows = []
            for index in range(len(SYNTHETIC_MOTION_LABELS) * per_label):
                # A stream per clip, apart from the single-label dataset's by its leading key.
                rng = np.random.default_rng([config.seed, 2, split_index, index])
                labels = sample_label_set(rng)
                _write_mp4(render_clip(rng, labels, config), staging / split / f"{index:05d}.mp4", config.frame_rate)
                rows.append({"video": f"{split}/{index:05d}.mp4", "labels": labels})
            (staging / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
        summary = {"generator_version": GENERATOR_VERSION, "labels": list(SYNTHETIC_MOTION_LABELS), **asdict(config)}
        (staging / _MULTI_LABEL_MARKER).write_text(json.dumps(summary, indent=2))

    return _cached(cache_dir / f"multi-label-{config.version}", _MULTI_LABEL_MARKER, write)


__all__ = [
    "SYNTHETIC_MOTION_LABELS",
    "SyntheticMotionConfig",
    "default_cache_dir",
    "generate_synthetic_motion_dataset",
    "generate_synthetic_multi_label_dataset",
    "render_clip",
    "sample_label_set",
    "sample_trajectory",
]
