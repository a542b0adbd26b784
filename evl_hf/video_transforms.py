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
"""Training augmentation split between the DataLoader workers and the model's device.

A worker draws a clip's random parameters (crop box, flip, RandAugment operations) exactly as torchvision's
`RandomResizedCrop`, `RandomHorizontalFlip` and `RandAugment` would on the clip and hands over the uint8 clip with its
parameters, cropped in uint8 only where the clips of a batch differ in size and would not stack otherwise
([`stack_clips`]). The device then crops, flips, applies RandAugment and normalises whole batches, each clip with its
own parameters: torchvision's transforms on a batched tensor would draw one set for the whole batch
(pytorch/vision#8484).
"""

from functools import cache

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F


RAND_AUGMENT_OPS = 4  # the paper's "rand-m7-n4"
RAND_AUGMENT_MAGNITUDE = 7
RAND_AUGMENT_BINS = 11
# An augmentation row: top, left, height, width of the crop box, flip, then (operation, negated) per RandAugment step.
AUGMENTATION_SIZE = 5 + 2 * RAND_AUGMENT_OPS
NO_OPERATION = -1


# Built once: a module costs more to build than a clip's draws. Neither keeps state between calls.
@cache
def _rand_augment() -> v2.RandAugment:
    return v2.RandAugment(
        num_ops=RAND_AUGMENT_OPS, magnitude=RAND_AUGMENT_MAGNITUDE, num_magnitude_bins=RAND_AUGMENT_BINS
    )


@cache
def _random_resized_crop(min_crop_scale: float) -> v2.RandomResizedCrop:
    return v2.RandomResizedCrop(1, scale=(min_crop_scale, 1.0), ratio=(3 / 4, 4 / 3))


def draw_clip_augmentation(
    height: int,
    width: int,
    min_crop_scale: float = 0.08,
    horizontal_flip: bool = False,
    rand_augment: bool = False,
    seed: int | None = None,
) -> torch.Tensor:
    """
    Draws a clip's augmentation for frames of `height` x `width`, consuming the random numbers in the order torchvision's
    `Compose([RandomResizedCrop, RandomHorizontalFlip, RandAugment])` does, so that with the same `seed` (torch's
    generator seeded with `seed + 1`, not the frame sampler's `seed`) the clip is the same. Without `seed` it
    draws from torch's global generator. Returns an int64 row of `AUGMENTATION_SIZE`: the crop box (top, left, height,
    width), whether to flip, and per RandAugment step the operation's index in `RandAugment._AUGMENTATION_SPACE` and
    whether its magnitude is negated (`NO_OPERATION` and 0 without RandAugment).
    """
    row = [NO_OPERATION, 0] * RAND_AUGMENT_OPS
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            # not the frame sampler's stream; the CPU generator only (torch.manual_seed queues CUDA's too, at a cost)
            torch.default_generator.manual_seed(seed + 1)
        # the box only depends on the frame size: a stride-0 view stands in for the clip
        frame = torch.empty((), dtype=torch.uint8).expand(1, 3, height, width)
        box = _random_resized_crop(min_crop_scale).make_params([frame])
        flip = horizontal_flip and bool(torch.rand(1) < 0.5)
        if rand_augment:
            augment = _rand_augment()
            names = list(augment._AUGMENTATION_SPACE)
            for step in range(RAND_AUGMENT_OPS):
                name, (magnitudes, signed) = augment._get_random_item(augment._AUGMENTATION_SPACE)
                # the sign is drawn only for operations with a magnitude, as RandAugment does (none depends on size)
                negated = signed and magnitudes(RAND_AUGMENT_BINS, height, width) is not None
                row[2 * step : 2 * step + 2] = [names.index(name), int(negated and bool(torch.rand(()) <= 0.5))]
    return torch.tensor([box["top"], box["left"], box["height"], box["width"], int(flip), *row])


def crop_clip(video: torch.Tensor, augmentation: torch.Tensor, crop_size: tuple[int, int]) -> torch.Tensor:
    """Crops `video` `(T, 3, H, W)` to the box of its `augmentation` row and resizes it to `crop_size` (bilinear,
    antialiased, as `RandomResizedCrop`); the row's box becomes the whole crop, so that it is not cropped again."""
    top, left, height, width = augmentation[:4].tolist()
    video = F.resized_crop(video, top, left, height, width, list(crop_size), antialias=True)
    augmentation[:4] = torch.tensor([0, 0, *crop_size])
    return video


def crop_to_one_size(videos: list[torch.Tensor], augmentation, crop_size: tuple[int, int] | None) -> list:
    """
    uint8 training clips `(T, 3, H, W)` as they are when their frames share a size, so that the device crops them too
    ([`augment_clips`]), otherwise each cropped here to the box of its `augmentation` row (updated in place, as
    [`crop_clip`] does) and resized to `crop_size`. In a CPU worker the crop costs about a quarter of a frame-archive
    clip's time; the larger copy to the device costs it far less (docs/benchmarks.md).
    """
    if len({tuple(video.shape[-2:]) for video in videos}) > 1:
        if crop_size is None:
            raise ValueError("Training clips of different frame sizes stack once cropped: give the `crop_size`.")
        return [crop_clip(video, row, crop_size) for video, row in zip(videos, augmentation)]
    return videos


def stack_clips(videos: list[torch.Tensor], augmentation, crop_size: tuple[int, int] | None) -> torch.Tensor:
    """Stacks uint8 training clips `(T, 3, H, W)` for [`augment_clips`], cropped first only where their frame sizes
    differ ([`crop_to_one_size`])."""
    return torch.stack(crop_to_one_size(videos, augmentation, crop_size))


def augment_clips(videos: torch.Tensor, augmentation: torch.Tensor, crop_size: tuple[int, int]) -> torch.Tensor:
    """
    Applies each clip's drawn augmentation to a batch on its device: `videos` uint8 `(B, T, 3, H, W)`, `augmentation`
    `(B, AUGMENTATION_SIZE)` rows of [`draw_clip_augmentation`]. Returns uint8 `(B, T, 3, crop_height, crop_width)`.
    Clips not yet cropped are cropped one by one; the flip and each RandAugment step are applied to the clips that share
    them at once, on all their frames.
    """
    if videos.dtype != torch.uint8 or videos.ndim != 5 or augmentation.shape != (len(videos), AUGMENTATION_SIZE):
        raise ValueError(
            f"Expected uint8 clips (B, T, 3, H, W) and (B, {AUGMENTATION_SIZE}) augmentation rows, got "
            f"{videos.dtype} {tuple(videos.shape)} and {tuple(augmentation.shape)}: make them with the video "
            "processor's `device_transforms=True`."
        )
    rows = augmentation.tolist()
    whole = [0, 0, *crop_size]
    if tuple(videos.shape[-2:]) != tuple(crop_size) or any(row[:4] != whole for row in rows):
        videos = torch.stack([crop_clip(clip, row, crop_size) for clip, row in zip(videos, augmentation.clone())])
    else:
        videos = videos.clone()  # changed in place below
    flipped = [index for index, row in enumerate(rows) if row[4]]
    if flipped:
        videos[flipped] = videos[flipped].flip(-1)
    augment = _rand_augment()
    names = list(augment._AUGMENTATION_SPACE)
    for step in range(RAND_AUGMENT_OPS):
        groups = {}
        for index, row in enumerate(rows):
            if row[5 + 2 * step] != NO_OPERATION:
                groups.setdefault(tuple(row[5 + 2 * step : 7 + 2 * step]), []).append(index)
        for (operation, negated), indices in groups.items():
            name = names[operation]
            magnitudes = augment._AUGMENTATION_SPACE[name][0](RAND_AUGMENT_BINS, *crop_size)
            magnitude = (
                0.0 if magnitudes is None else float(magnitudes[RAND_AUGMENT_MAGNITUDE]) * (-1 if negated else 1)
            )
            clips = videos[indices]
            frames = augment._apply_image_or_video_transform(
                clips.flatten(0, 1), name, magnitude, interpolation=augment.interpolation, fill=augment._fill
            )
            videos[indices] = frames.view(clips.shape)
    return videos


__all__ = [
    "AUGMENTATION_SIZE",
    "augment_clips",
    "crop_clip",
    "crop_to_one_size",
    "draw_clip_augmentation",
    "stack_clips",
]
