"""Augmentation split between the DataLoader workers (draws and crop, uint8) and the model's device (flip, RandAugment,
normalisation, in batches): the same clips as torchvision's transforms on each clip, drawn per clip."""

import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from training_utils import run_video_classification

from evl_hf import EVLVideoProcessor
from evl_hf.video_transforms import AUGMENTATION_SIZE, augment_clips, crop_clip, draw_clip_augmentation


CROP = 32
OPTIONS = dict(do_augment=True, horizontal_flip=True, rand_augment=True, return_tensors="pt")


@pytest.fixture(scope="module")
def processor():
    return EVLVideoProcessor(size={"shortest_edge": CROP}, crop_size={"height": CROP, "width": CROP}, num_frames=4)


def random_clip(seed: int, height: int = 48, width: int = 64) -> torch.Tensor:
    """uint8 (4, 3, height, width) with structure (a gradient) under noise, so that every operation changes it."""
    noise = torch.randint(0, 256, (4, 3, height, width), generator=torch.Generator().manual_seed(seed))
    ramp = torch.linspace(0, 255, width).expand(4, 3, height, width)
    return ((noise + ramp) / 2).to(torch.uint8)


def torchvision_clip(video: torch.Tensor, seed: int, processor: EVLVideoProcessor) -> torch.Tensor:
    """What torchvision's own transforms make of the clip, seeded as the processor seeds them, normalised."""
    transforms = v2.Compose(
        [
            v2.RandomResizedCrop((CROP, CROP), scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)),
            v2.RandomHorizontalFlip(),
            v2.RandAugment(num_ops=4, magnitude=7, num_magnitude_bins=11),
        ]
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        clip = transforms(tv_tensors.Video(video)).as_subclass(torch.Tensor)
    mean, std = torch.tensor(processor.image_mean).view(3, 1, 1), torch.tensor(processor.image_std).view(3, 1, 1)
    return (clip / 255 - mean) / std


def test_both_paths_give_torchvisions_clips_under_the_same_seed(processor):
    videos, seeds = [random_clip(i) for i in range(16)], [1000 + i for i in range(16)]
    expected = torch.stack([torchvision_clip(video, seed, processor) for video, seed in zip(videos, seeds)])
    on_cpu = torch.stack(
        [processor(video, seed=seed, **OPTIONS)["pixel_values"][0] for video, seed in zip(videos, seeds)]
    )
    worker = [processor(video, seed=seed, device_transforms=True, **OPTIONS) for video, seed in zip(videos, seeds)]
    pixel_values = torch.cat([clip["pixel_values"] for clip in worker])
    # clips of one size come uncropped: the device crops them too
    assert pixel_values.dtype == torch.uint8 and pixel_values.shape == (16, 4, 3, 48, 64)
    on_device = processor.augment_batch(pixel_values, torch.cat([clip["augmentation"] for clip in worker]), "cpu")
    assert on_device.dtype == torch.float32
    torch.testing.assert_close(on_cpu, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(on_device, expected, atol=1e-5, rtol=0)


def test_the_device_can_crop_too_when_the_clips_have_one_size(processor):
    videos, seeds = torch.stack([random_clip(i) for i in range(6)]), list(range(6))
    rows = torch.stack([draw_clip_augmentation(48, 64, 0.08, True, True, seed) for seed in seeds])
    uncropped = processor.augment_batch(videos, rows)
    expected = torch.stack([torchvision_clip(video, seed, processor) for video, seed in zip(videos, seeds)])
    torch.testing.assert_close(uncropped, expected, atol=1e-5, rtol=0)


def test_every_clip_of_a_batch_draws_its_own_parameters(processor):
    video = random_clip(0)
    rows = torch.stack([draw_clip_augmentation(48, 64, 0.08, True, True, seed) for seed in range(32)])
    assert rows.shape == (32, AUGMENTATION_SIZE)
    assert len({tuple(row[:4].tolist()) for row in rows}) > 24  # crop boxes
    assert 4 <= rows[:, 4].sum() <= 28  # flips
    assert len({tuple(row[5:].tolist()) for row in rows}) > 24  # RandAugment operations and signs
    assert len(set(rows[:, 5::2].flatten().tolist())) >= 10  # of the 14 operations, most appear
    # one batch of the same clip: each clip is what it would be alone
    batch = torch.stack([crop_clip(video, row, (CROP, CROP)) for row in rows.clone()])
    cropped_rows = rows.clone()
    cropped_rows[:, :4] = torch.tensor([0, 0, CROP, CROP])
    together = augment_clips(batch, cropped_rows, (CROP, CROP))
    alone = torch.cat([augment_clips(clip[None], row[None], (CROP, CROP)) for clip, row in zip(batch, cropped_rows)])
    assert torch.equal(together, alone)
    assert len({clip.sum().item() for clip in together}) == 32


def test_a_clips_frames_share_its_draws(processor):
    frame = random_clip(3)[:1]
    clip = processor(frame.expand(4, -1, -1, -1), seed=5, device_transforms=True, **OPTIONS)
    augmented = processor.augment_batch(clip["pixel_values"], clip["augmentation"])[0]
    assert all(torch.equal(augmented[0], augmented[t]) for t in range(1, 4))


def test_clips_of_different_shapes_stack_in_uint8(processor):
    clips = [random_clip(0, 48, 64), random_clip(1, 90, 40), random_clip(2, 32, 32)]
    batch = processor(clips, seed=0, device_transforms=True, **OPTIONS)
    assert batch["pixel_values"].shape == (3, 4, 3, CROP, CROP) and batch["pixel_values"].dtype == torch.uint8
    assert batch["augmentation"].shape == (3, AUGMENTATION_SIZE)


def test_evaluation_normalises_on_the_device_as_on_the_cpu(processor):
    clips = [random_clip(0, 48, 64), random_clip(1, 90, 40)]
    for views in ({}, {"num_crops": 3}):
        on_cpu = processor(clips, return_tensors="pt", **views)["pixel_values"]
        uint8 = processor(clips, return_tensors="pt", device_transforms=True, **views)["pixel_values"]
        assert uint8.dtype == torch.uint8
        torch.testing.assert_close(processor.augment_batch(uint8), on_cpu, atol=1e-5, rtol=0)


def test_float_clips_are_refused_with_what_to_do(processor):
    rows = torch.stack([draw_clip_augmentation(CROP, CROP, seed=0)])
    with pytest.raises(ValueError, match="uint8 clips.*device_transforms=True"):
        processor.augment_batch(torch.zeros(1, 4, 3, CROP, CROP), rows)


def test_the_training_step_gets_the_clips_the_workers_would_have_made(tiny_clip, videos, tmp_path):
    """The training script's dataset, collate and trainer: uint8 clips from the workers, augmented and normalised in
    `_prepare_inputs`, equal the float32 clips of workers that do it all (training, and multi-view evaluation)."""
    from datasets import Dataset
    from transformers import TrainingArguments

    script = run_video_classification
    processor = EVLVideoProcessor(
        size={"shortest_edge": CROP}, crop_size={"height": CROP, "width": CROP}, num_frames=4
    )
    paths = sorted(str(path) for path in (videos / "train").glob("*/*.mp4"))
    rows = Dataset.from_dict({"video": paths, "labels": [0] * len(paths)})
    model = script.EVLForVideoClassification.from_clip_pretrained(tiny_clip, num_frames=4, decoder_num_layers=2)
    arguments = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    trainer = script.VideoClassificationTrainer(model=model, args=arguments, processing_class=processor)
    for options in [dict(train=True, rand_augment=True, horizontal_flip=True), dict(train=False, num_crops=3)]:
        batches = [
            script.collate_fn(
                [
                    script.VideoClipDataset(rows, "video", processor, device_transforms=on, **options)[i]
                    for i in range(8)
                ]
            )
            for on in (True, False)
        ]
        assert batches[0]["pixel_values"].dtype == torch.uint8
        on_device = trainer._prepare_inputs(batches[0])["pixel_values"]
        torch.testing.assert_close(on_device, batches[1]["pixel_values"], atol=1e-5, rtol=0)
        assert "augmentation" not in batches[0]  # read by the step, not given to the model


def test_the_collate_crops_only_clips_that_would_not_stack(processor):
    script = run_video_classification
    sizes = [(48, 64), (48, 64), (90, 40)]
    clips = [
        processor(random_clip(i, *size), seed=i, device_transforms=True, **OPTIONS) for i, size in enumerate(sizes)
    ]
    examples = [
        {"pixel_values": clip["pixel_values"][0], "augmentation": clip["augmentation"][0], "labels": 0}
        for clip in clips
    ]
    alike = script.collate_fn(examples[:2])
    assert alike["pixel_values"].shape == (2, 4, 3, 48, 64)  # the device crops them
    with pytest.raises(ValueError, match="crop_size"):
        script.collate_fn(examples)
    mixed = script.collate_fn(examples, crop_size=(CROP, CROP))
    assert mixed["pixel_values"].shape == (3, 4, 3, CROP, CROP)
    expected = processor.augment_batch(alike["pixel_values"], alike["augmentation"])
    torch.testing.assert_close(processor.augment_batch(mixed["pixel_values"][:2], mixed["augmentation"][:2]), expected)
