#!/usr/bin/env python
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
Fine-tune EVL (a frozen CLIP image encoder with a small temporal decoder) for video classification with the Trainer.

With no data or model arguments it trains a small randomly initialised EVL on a generated synthetic-motion dataset
(an object moving toward one of four edges), a few minutes on a laptop CPU:

    accelerate launch examples/run_video_classification.py

On your own videos, from CLIP weights (one folder per label, or a CSV / JSON lines / Kinetics-style list):

    accelerate launch examples/run_video_classification.py \
        --model_name_or_path openai/clip-vit-base-patch16 \
        --train_dir videos/train --validation_dir videos/validation \
        --output_dir outputs/evl-vitb16-8f --per_device_train_batch_size 32 --learning_rate 4e-4 --max_steps 5000

All arguments can also come from a JSON file: `examples/run_video_classification.py args.json`. See docs/training.md
for the Kinetics-400 recipes of the paper, multi-GPU and multi-node runs.
"""

import argparse
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import evaluate
import numpy as np
import torch
import torch.nn.functional as F
from datasets import ClassLabel, Dataset, DatasetDict, Video, load_dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

import transformers
from accelerate.utils import gather_object
from transformers import (
    AutoConfig,
    CLIPVisionConfig,
    HfArgumentParser,
    PreTrainedConfig,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)
from transformers.modeling_outputs import ImageClassifierOutput
from transformers.trainer_utils import SchedulerType

import evl_hf.video_accuracy
from evl_hf import EVLConfig, EVLForVideoClassification
from evl_hf.image_processing_evl import EVLImageProcessor
from evl_hf.synthetic_data import SyntheticMotionConfig, default_cache_dir, generate_synthetic_motion_dataset
from evl_hf.video_processing_evl import (
    FRAME_SAMPLING_STRATEGIES,
    EVLVideoProcessor,
    VideoDecodingError,
    read_video_frames,
    sample_frame_indices,
)


logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".avi", ".mov", ".mpeg", ".webm", ".m4v")

# The arguments that choose the data and the model. When none is given, the script runs its embedded default: the
# synthetic-motion dataset and a small randomly initialised CLIP, with the settings below.
DATA_SOURCE_ARGUMENTS = ("dataset_name", "train_dir", "validation_dir", "train_file", "validation_file")
MODEL_SOURCE_ARGUMENTS = ("model_name_or_path",)
# ModelArguments that go into EVLConfig. When training continues from an EVL checkpoint, the architectural ones must
# match its weights; the others may change.
ARCHITECTURE_OPTIONS = (
    "decoder_num_layers",
    "decoder_num_heads",
    "use_temporal_conv",
    "use_temporal_pos_embed",
    "use_temporal_cross_attention",
)
EVL_OPTIONS = ("num_frames", *ARCHITECTURE_OPTIONS, "decoder_mlp_dropout", "classifier_dropout", "freeze_backbone")

# The embedded default's backbone: a 2-layer, 128-wide ViT on 64x64 frames in 8x8 patches, random weights.
SYNTHETIC_BACKBONE = {
    "hidden_size": 128,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "image_size": 64,
    "patch_size": 8,
}
# Defaults of every other argument for the embedded run; arguments given on the command line still win.
SYNTHETIC_DEFAULTS = {
    "output_dir": "outputs/evl-synthetic-motion",
    "num_frames": 8,
    "frame_stride": 3,
    "min_crop_scale": 0.5,
    "decoder_num_layers": 2,
    "decoder_mlp_dropout": 0.0,
    "classifier_dropout": 0.0,
    "do_train": True,
    "do_eval": True,
    "max_steps": 900,
    "per_device_train_batch_size": 16,
    "per_device_eval_batch_size": 16,
    "learning_rate": 1e-3,
    "weight_decay": 0.05,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 0,
    "logging_steps": 50,
    "save_steps": 300,
    "save_total_limit": 1,
    "dataloader_num_workers": 1,
    "seed": 42,
}


@dataclass
class ModelArguments:
    """Which model to fine-tune, and the EVL options of a model built from CLIP weights."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": (
                "A Hub id or local folder of a CLIP checkpoint (CLIPModel or CLIPVisionModel; a new EVL is built "
                "around its vision tower) or of an EVL checkpoint (training continues from it). Without it, a small "
                "randomly initialised CLIP vision model is used (for the embedded synthetic-motion run)."
            )
        },
    )
    num_frames: int | None = field(
        default=None, metadata={"help": "Frames per clip (T). Defaults to the EVL checkpoint's, otherwise 8."}
    )
    decoder_num_layers: int | None = field(
        default=None, metadata={"help": "Decoder layers (M): the last M encoder layers are read. Defaults to 4."}
    )
    decoder_num_heads: int | None = field(
        default=None, metadata={"help": "Decoder attention heads. Defaults to the backbone's."}
    )
    decoder_mlp_dropout: float | None = field(
        default=None, metadata={"help": "Dropout in the decoder MLPs. Defaults to 0.5 (the paper's)."}
    )
    classifier_dropout: float | None = field(
        default=None, metadata={"help": "Dropout before the classifier. Defaults to 0.5 (the paper's)."}
    )
    use_temporal_conv: bool = field(
        default=True, metadata={"help": "Temporal depthwise convolution on the frame features."}
    )
    use_temporal_pos_embed: bool = field(default=True, metadata={"help": "Temporal position embedding."})
    use_temporal_cross_attention: bool = field(
        default=True, metadata={"help": "Temporal cross attention between adjacent frames."}
    )
    freeze_backbone: bool = field(
        default=True,
        metadata={"help": "Keep the CLIP encoder frozen (the paper). `--freeze_backbone False` fine-tunes it too."},
    )
    ignore_mismatched_sizes: bool = field(
        default=False,
        metadata={"help": "Replace the classifier of an EVL checkpoint whose labels differ from the dataset's."},
    )
    cache_dir: str | None = field(
        default=None, metadata={"help": "Where to store models and datasets downloaded from the Hub."}
    )
    model_revision: str = field(default="main", metadata={"help": "Branch, tag or commit of the model on the Hub."})
    token: str | None = field(default=None, metadata={"help": "Hub token for private models and datasets."})


@dataclass
class DataTrainingArguments:
    """Which videos to train and evaluate on, and how clips are sampled and augmented."""

    dataset_name: str | None = field(default=None, metadata={"help": "A dataset on the Hub (needs a connection)."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "The Hub dataset's configuration."})
    train_dir: str | None = field(
        default=None, metadata={"help": "Training videos in the videofolder layout: <train_dir>/<label>/<video>."}
    )
    validation_dir: str | None = field(
        default=None, metadata={"help": "Validation videos in the videofolder layout, as --train_dir."}
    )
    train_file: str | None = field(
        default=None,
        metadata={
            "help": (
                "Training list: a .csv or .json/.jsonl file with a video path and a label per row, or a "
                "Kinetics-style list (any other extension) with `relative/path.mp4 label_index` per line."
            )
        },
    )
    validation_file: str | None = field(default=None, metadata={"help": "Validation list, as --train_file."})
    video_root: str | None = field(
        default=None,
        metadata={"help": "Where relative video paths of the list files start (default: the list file's folder)."},
    )
    video_column_name: str = field(default="video", metadata={"help": "Column holding the videos."})
    label_column_name: str = field(default="label", metadata={"help": "Column holding the labels."})
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Keep only this many training videos (a random subset)."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Keep only this many validation videos (a random subset)."}
    )
    frame_sampling: str = field(
        default="dense",
        metadata={
            "help": (
                "How the clip's frames are picked: `dense` (frames --frame_stride apart; random start in training, "
                "centred at evaluation; the paper), `uniform` (spread over the whole video) or `segment` (TSN: one "
                "frame per equal segment, random within it in training)."
            ),
            "choices": list(FRAME_SAMPLING_STRATEGIES),
        },
    )
    frame_stride: int | None = field(
        default=None,
        metadata={"help": "Distance between sampled frames (dense sampling). Defaults to the checkpoint's, or 16."},
    )
    num_temporal_views: int = field(
        default=1, metadata={"help": "Evaluation: clips spread evenly over each video; softmax averaged over views."}
    )
    num_spatial_views: int = field(
        default=1, metadata={"help": "Evaluation: crops spread along each frame's long side (1: centre crop)."}
    )
    min_crop_scale: float = field(
        default=0.08, metadata={"help": "Training RandomResizedCrop: smallest fraction of the frame area (0.08-1)."}
    )
    horizontal_flip: bool = field(
        default=False,
        metadata={
            "help": (
                "Training: flip clips horizontally half of the time. Only for labels that do not depend on left and "
                "right (Kinetics, yes; Something-Something or the synthetic-motion dataset, no)."
            )
        },
    )
    rand_augment: bool = field(
        default=False, metadata={"help": "Training: RandAugment with 4 ops at magnitude 7 of 10 (the paper's recipe)."}
    )
    max_skipped_fraction: float = field(
        default=0.05,
        metadata={
            "help": (
                "Training skips videos that cannot be decoded, with a warning naming each; the run stops once more "
                "than this fraction of the training videos has been skipped."
            )
        },
    )
    synthetic_data_dir: str | None = field(
        default=None,
        metadata={"help": f"Cache folder of the generated synthetic-motion dataset (default: {default_cache_dir()})."},
    )
    synthetic_train_videos_per_label: int = field(
        default=SyntheticMotionConfig.train_videos_per_label,
        metadata={"help": "Synthetic-motion dataset: training videos per label."},
    )
    synthetic_validation_videos_per_label: int = field(
        default=SyntheticMotionConfig.validation_videos_per_label,
        metadata={"help": "Synthetic-motion dataset: validation videos per label."},
    )

    def __post_init__(self):
        if self.train_dir is not None and self.train_file is not None:
            raise ValueError("Give the training videos as --train_dir or as --train_file, not both.")
        if self.validation_dir is not None and self.validation_file is not None:
            raise ValueError("Give the validation videos as --validation_dir or as --validation_file, not both.")
        if self.num_temporal_views < 1 or self.num_spatial_views < 1:
            raise ValueError("--num_temporal_views and --num_spatial_views must be at least 1.")
        if not 0.0 < self.min_crop_scale <= 1.0:
            raise ValueError(f"--min_crop_scale must be in (0, 1], got {self.min_crop_scale}.")
        if not 0.0 <= self.max_skipped_fraction <= 1.0:
            raise ValueError(f"--max_skipped_fraction must be in [0, 1], got {self.max_skipped_fraction}.")


def parse_arguments(args: list[str] | None = None):
    """
    Parses the three argument dataclasses from the command line (or from a single JSON file), applying the embedded
    defaults when neither data nor model is chosen.

    Returns:
        `tuple`: `ModelArguments`, `DataTrainingArguments`, `TrainingArguments`, and the set of argument names that
        were given explicitly.
    """
    args = sys.argv[1:] if args is None else list(args)
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, TrainingArguments))
    from_json = len(args) == 1 and args[0].endswith(".json")
    if from_json:
        values = json.loads(Path(args[0]).read_text())
        given = set(values)
    else:
        # argparse fills in a default only where the namespace has no value yet, so whatever still holds the
        # sentinel afterwards was not on the command line.
        not_given = object()
        names = [f.name for dtype in parser.dataclass_types for f in dataclasses.fields(dtype) if f.init]
        namespace, _ = parser.parse_known_args(args, namespace=argparse.Namespace(**dict.fromkeys(names, not_given)))
        given = {name for name in names if getattr(namespace, name) is not not_given}

    embedded = not given & {*DATA_SOURCE_ARGUMENTS, *MODEL_SOURCE_ARGUMENTS}
    if from_json:
        return *parser.parse_dict({**SYNTHETIC_DEFAULTS, **values} if embedded else values), given
    if embedded:
        parser.set_defaults(**SYNTHETIC_DEFAULTS)
    return *parser.parse_args_into_dataclasses(args), given


def check_hub_access(training_args: TrainingArguments):
    """Fails before any work is done when `--push_to_hub` cannot succeed: offline, or no valid token."""
    import huggingface_hub

    if huggingface_hub.constants.HF_HUB_OFFLINE:
        raise ValueError(
            "--push_to_hub needs the Hugging Face Hub, but offline mode is on (HF_HUB_OFFLINE=1). Train without "
            "--push_to_hub and upload the output folder later with `hf upload`."
        )
    try:
        huggingface_hub.whoami(token=training_args.hub_token)
    except Exception as error:  # noqa: BLE001: any failure here means the push at the end would fail too
        raise ValueError(
            f"--push_to_hub: cannot use the Hugging Face Hub ({type(error).__name__}: {error}). Log in with "
            "`hf auth login` or pass --hub_token, check the connection, or drop --push_to_hub."
        ) from error


# ----------------------------------------------------------------------------------------------------------------
# Data: loading the video lists
# ----------------------------------------------------------------------------------------------------------------


def check_video_folder(path: str, argument: str):
    """A clear error, naming the argument, when a videofolder-layout folder is missing or holds no labelled videos."""
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{argument} {path!r}: no such folder.")
    videos = [p for p in folder.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file()]
    if not videos:
        raise ValueError(
            f"{argument} {path!r} holds no video files ({', '.join(VIDEO_EXTENSIONS)}). The videofolder layout is "
            f"{path}/<label>/<video>.mp4."
        )
    if any(video.parent == folder for video in videos):
        raise ValueError(
            f"{argument} {path!r} has videos directly inside it; the videofolder layout puts each video in a folder "
            f"named after its label: {path}/<label>/<video>.mp4."
        )


def read_video_list(path: str, video_root: str | None, video_column: str, label_column: str) -> Dataset:
    """
    Reads a Kinetics-style list, one `relative/path.mp4 label_index` per line (blank lines and `#` comments skipped),
    into a `Dataset` with absolute video paths and integer labels.
    """
    root = video_root if video_root is not None else os.path.dirname(os.path.abspath(path))
    videos, labels = [], []
    with open(path, encoding="utf-8") as lines:
        for line_number, line in enumerate(lines, start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.rsplit(maxsplit=1)  # the path may contain spaces, the label index does not
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                raise ValueError(f"{path}, line {line_number}: expected `<video path> <label index>`, got {line!r}.")
            videos.append(os.path.join(root, parts[0]))
            labels.append(int(parts[1]))
    if not videos:
        raise ValueError(f"{path} lists no videos.")
    return Dataset.from_dict({video_column: videos, label_column: labels})


def load_video_file(path: str, argument: str, data_args: DataTrainingArguments, cache_dir: str | None) -> Dataset:
    """Loads a CSV, JSON lines or Kinetics-style list of videos; relative paths start from --video_root."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{argument} {path!r}: no such file.")
    extension = Path(path).suffix.lower()
    if extension not in (".csv", ".json", ".jsonl"):
        return read_video_list(path, data_args.video_root, data_args.video_column_name, data_args.label_column_name)
    builder = "csv" if extension == ".csv" else "json"
    dataset = load_dataset(builder, data_files={"data": path}, cache_dir=cache_dir)["data"]
    if data_args.video_column_name not in dataset.column_names:
        raise ValueError(
            f"{argument} {path!r} has no column {data_args.video_column_name!r} (--video_column_name); its columns "
            f"are {dataset.column_names}."
        )
    root = data_args.video_root if data_args.video_root is not None else os.path.dirname(os.path.abspath(path))
    return dataset.map(
        lambda row: {data_args.video_column_name: os.path.join(root, row[data_args.video_column_name])},
        desc=f"Resolving video paths of {path}",
    )


def load_video_datasets(data_args: DataTrainingArguments, model_args: ModelArguments) -> tuple[DatasetDict, str]:
    """
    Loads the `train` and/or `validation` splits, each with a video column (a path, or `{"path", "bytes"}`) and a
    label column.

    Returns:
        `tuple[DatasetDict, str]`: the splits, and a name for the dataset (for the model card).
    """
    if data_args.dataset_name is not None:
        dataset = load_dataset(
            data_args.dataset_name,
            data_args.dataset_config_name,
            cache_dir=model_args.cache_dir,
            token=model_args.token,
        )
        if "validation" not in dataset and "test" in dataset:
            logger.info(f"{data_args.dataset_name} has no validation split: evaluating on its test split.")
            dataset["validation"] = dataset["test"]
        dataset = DatasetDict({split: dataset[split] for split in ("train", "validation") if split in dataset})
        dataset_name = data_args.dataset_name
    else:
        synthetic = not any(getattr(data_args, name) is not None for name in DATA_SOURCE_ARGUMENTS)
        if synthetic:
            synthetic_dir = generate_synthetic_motion_dataset(
                data_args.synthetic_data_dir,
                train_videos_per_label=data_args.synthetic_train_videos_per_label,
                validation_videos_per_label=data_args.synthetic_validation_videos_per_label,
            )
            logger.info(f"Synthetic-motion dataset: {synthetic_dir}")
            data_args.train_dir = str(synthetic_dir / "train")
            data_args.validation_dir = str(synthetic_dir / "validation")
        splits = {}
        folders = {"train": data_args.train_dir, "validation": data_args.validation_dir}
        for split, folder in folders.items():
            if folder is not None:
                check_video_folder(folder, f"--{split}_dir")
        data_files = {split: os.path.join(folder, "**") for split, folder in folders.items() if folder is not None}
        if data_files:
            # drop_labels=False: the parent folder is the label even when the two folders sit at different depths
            # (the builder's own guess would then drop the labels).
            splits.update(
                load_dataset("videofolder", data_files=data_files, drop_labels=False, cache_dir=model_args.cache_dir)
            )
        for split, path in {"train": data_args.train_file, "validation": data_args.validation_file}.items():
            if path is not None:
                splits[split] = load_video_file(path, f"--{split}_file", data_args, model_args.cache_dir)
        dataset = DatasetDict(splits)
        if synthetic:
            dataset_name = f"synthetic-motion, version {synthetic_dir.name} (generated by evl_hf.synthetic_data)"
        else:
            sources = [data_args.train_dir, data_args.train_file, data_args.validation_dir, data_args.validation_file]
            dataset_name = ", ".join(f"`{source}`" for source in sources if source)

    for split in dataset:
        for argument, column in [
            ("--video_column_name", data_args.video_column_name),
            ("--label_column_name", data_args.label_column_name),
        ]:
            if column not in dataset[split].column_names:
                raise ValueError(
                    f"{argument} {column!r} is not a column of the {split} split; its columns are "
                    f"{dataset[split].column_names}."
                )
        # Rows keep the path (or bytes) and the workers decode just the sampled frames themselves, so that a broken
        # file can be named and skipped.
        if isinstance(dataset[split].features[data_args.video_column_name], Video):
            dataset[split] = dataset[split].cast_column(data_args.video_column_name, Video(decode=False))
    return dataset, dataset_name


def encode_labels(
    dataset: DatasetDict, label_column: str, checkpoint_labels: list[str] | None
) -> tuple[DatasetDict, list[str]]:
    """
    Adds an integer `labels` column and returns the label names in index order.

    Labels may be a `ClassLabel`, strings, or integer indices (Kinetics lists). Every validation label must occur in
    the training split. When an EVL checkpoint's labels (`checkpoint_labels`) cover the dataset's, its order is kept
    so that its classifier still applies.
    """
    reference_split = "train" if "train" in dataset else "validation"
    features = {split: dataset[split].features[label_column] for split in dataset}
    values = {split: dataset[split][label_column] for split in dataset}

    if isinstance(features[reference_split], ClassLabel):
        names = list(features[reference_split].names)
        # Each split's own ClassLabel: splits loaded separately may number their labels differently.
        values = {split: features[split].int2str(split_values) for split, split_values in values.items()}
    elif all(isinstance(value, (int, np.integer)) for split_values in values.values() for value in split_values):
        if any(value < 0 for split_values in values.values() for value in split_values):
            raise ValueError(f"Label indices in column {label_column!r} must not be negative.")
        num_labels = max(max(split_values) for split_values in values.values()) + 1
        if checkpoint_labels is not None and num_labels <= len(checkpoint_labels):
            names = list(checkpoint_labels)
        else:
            names = [str(index) for index in range(num_labels)]
        values = {split: [names[value] for value in split_values] for split, split_values in values.items()}
    else:
        values = {split: [str(value) for value in split_values] for split, split_values in values.items()}
        names = sorted(set(values[reference_split]))

    if "train" in dataset and "validation" in dataset:
        unseen = sorted(set(values["validation"]) - set(values["train"]))
        if unseen:
            raise ValueError(
                f"The validation split has labels the training split never has: {unseen}. The classifier cannot learn "
                "them; remove those videos or add training videos for them."
            )
    if checkpoint_labels is not None and set(names) <= set(checkpoint_labels):
        names = list(checkpoint_labels)
    index = {name: position for position, name in enumerate(names)}
    for split in dataset:
        unknown = sorted(set(values[split]) - set(index))
        if unknown:
            raise ValueError(f"The {split} split has labels the model does not know: {unknown}.")
        if "labels" in dataset[split].column_names:
            dataset[split] = dataset[split].remove_columns("labels")
        dataset[split] = dataset[split].add_column("labels", [index[value] for value in values[split]])
    return dataset, names


# ----------------------------------------------------------------------------------------------------------------
# Data: decoding and augmenting clips (runs in the DataLoader workers)
# ----------------------------------------------------------------------------------------------------------------


def build_train_transform(video_processor: EVLVideoProcessor, data_args: DataTrainingArguments) -> v2.Compose:
    """
    Training augmentation of a clip given as a `tv_tensors.Video` (uint8 `(T, 3, H, W)`). torchvision draws the
    random parameters once per call, so every frame of a clip gets the same crop, flip and RandAugment ops: the
    motion between frames is left intact.
    """
    crop = (video_processor.crop_size["height"], video_processor.crop_size["width"])
    transforms = [v2.RandomResizedCrop(crop, scale=(data_args.min_crop_scale, 1.0), ratio=(3 / 4, 4 / 3))]
    if data_args.horizontal_flip:
        transforms.append(v2.RandomHorizontalFlip())
    if data_args.rand_augment:
        # timm's "rand-m7-n4" of the paper: magnitude 7 on a 0-10 scale, 4 ops per clip.
        transforms.append(v2.RandAugment(num_ops=4, magnitude=7, num_magnitude_bins=11))
    transforms += [
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(video_processor.image_mean), std=list(video_processor.image_std)),
    ]
    return v2.Compose(transforms)


def spatial_crops(frames: torch.Tensor, crop_size: tuple[int, int], num_views: int) -> list[torch.Tensor]:
    """
    `num_views` crops of `frames` (`(..., H, W)`, already resized), spread evenly along the side with more room: the
    centre for one view, both ends and the centre for three (the paper's three-crop testing).
    """
    height, width = frames.shape[-2:]
    crop_height, crop_width = crop_size
    if num_views == 1:
        return [v2.functional.center_crop(frames, [crop_height, crop_width])]
    top, left = (height - crop_height) // 2, (width - crop_width) // 2
    crops = []
    for view in range(num_views):
        fraction = view / (num_views - 1)
        if height - crop_height > width - crop_width:
            top = round(fraction * (height - crop_height))
        else:
            left = round(fraction * (width - crop_width))
        crops.append(frames[..., top : top + crop_height, left : left + crop_width])
    return crops


class VideoClipDataset(torch.utils.data.Dataset):
    """
    Clips from a `datasets.Dataset` whose rows hold a video (a path, or `{"path", "bytes"}`) and an integer
    `labels`, decoded in the DataLoader workers: only the sampled frames are decoded, with torchcodec.

    Training (`train=True`): frames sampled at random, augmented with `transform`; the randomness of a clip depends
    only on `(seed, epoch, index)`, so a run resumed from a checkpoint sees exactly the clips an uninterrupted run
    would. A video that cannot be decoded is skipped with a warning naming it and replaced by another video; its name
    travels with the batch (`skipped_videos`) so that the trainer can count it.

    Evaluation: `num_temporal_views` x `num_spatial_views` fixed views per video, shape `(views, T, 3, H, W)` (or
    `(T, 3, H, W)` for a single view). A video that cannot be decoded is an error: skipping it would change what
    the accuracy means.
    """

    def __init__(
        self,
        dataset: Dataset,
        video_column: str,
        video_processor: EVLVideoProcessor,
        *,
        train: bool,
        transform: Callable | None = None,
        seed: int = 0,
        num_temporal_views: int = 1,
        num_spatial_views: int = 1,
    ):
        self.dataset = dataset
        self.video_column = video_column
        self.num_frames = video_processor.num_frames
        self.frame_sampling = video_processor.frame_sampling
        self.frame_stride = video_processor.frame_stride
        self.resize = v2.Resize(video_processor.size["shortest_edge"])
        self.crop_size = (video_processor.crop_size["height"], video_processor.crop_size["width"])
        self.normalize = v2.Compose(
            [
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(mean=list(video_processor.image_mean), std=list(video_processor.image_std)),
            ]
        )
        self.train = train
        self.transform = transform
        self.seed = seed
        self.epoch = 0
        self.num_temporal_views = num_temporal_views
        self.num_spatial_views = num_spatial_views

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int):
        """Called at the start of each training epoch, before the workers start, to draw new augmentations."""
        self.epoch = epoch

    def _name(self, index: int) -> str:
        """The row's video path, to name it in messages."""
        video = self.dataset[index][self.video_column]
        return str(video.get("path") or f"row {index}") if isinstance(video, dict) else str(video)

    def _source(self, index: int):
        """The row's video as `read_video_frames` takes it: a path, or a decoder over the bytes stored in the row."""
        video = self.dataset[index][self.video_column]
        if not isinstance(video, dict):
            return video
        if video.get("bytes") is None:
            return video["path"]
        from torchcodec.decoders import VideoDecoder

        try:
            return VideoDecoder(video["bytes"], seek_mode="exact")
        except (RuntimeError, ValueError) as error:
            raise VideoDecodingError(f"Cannot read video {self._name(index)}: {error}") from error

    def __getitem__(self, index: int) -> dict:
        return self._training_clip(index) if self.train else self._evaluation_clip(index)

    def _training_clip(self, index: int) -> dict:
        skipped = []
        candidate = index
        # A stream of its own for every (seed, epoch, index): independent of the worker, the process and the order.
        state = np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0]
        generator = torch.Generator().manual_seed(int(state))
        for _ in range(16):  # replacements tried before giving up: a run with that many failures is stopped anyway
            try:
                frames = read_video_frames(self._source(candidate), lambda n: self._frame_indices(n, random=generator))
            except (VideoDecodingError, OSError) as error:
                logger.warning(f"Skipping training video {self._name(candidate)}: {error}")
                skipped.append(self._name(candidate))
                candidate = int(torch.randint(len(self.dataset), (), generator=generator))
                continue
            # torchvision draws from torch's global generator: give it this clip's stream for the transform only.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(torch.randint(2**62, (), generator=generator)))
                pixel_values = self.transform(tv_tensors.Video(frames))
            return {
                "pixel_values": pixel_values.as_subclass(torch.Tensor),  # (T, 3, H, W)
                "labels": self.dataset[candidate]["labels"],
                "skipped_videos": skipped,
            }
        raise VideoDecodingError(f"16 videos in a row could not be decoded, the last ones: {skipped[-3:]}.")

    def _frame_indices(self, num_video_frames: int, **kwargs) -> list[int]:
        return sample_frame_indices(
            num_video_frames,
            self.num_frames,
            strategy=self.frame_sampling,
            frame_stride=self.frame_stride,
            **kwargs,
        )

    def _evaluation_clip(self, index: int) -> dict:
        def view_indices(num_video_frames: int) -> list[int]:
            views = self.num_temporal_views
            clips = [self._frame_indices(num_video_frames, num_clips=views, clip_index=view) for view in range(views)]
            return [index for clip in clips for index in clip]

        try:
            frames = read_video_frames(self._source(index), view_indices)  # (temporal_views * T, 3, H, W)
        except (VideoDecodingError, OSError) as error:
            raise VideoDecodingError(f"Validation video {self._name(index)} cannot be decoded: {error}") from error
        frames = self.resize(frames)
        views = [
            self.normalize(crop).view(self.num_temporal_views, self.num_frames, *crop.shape[1:])
            for crop in spatial_crops(frames, self.crop_size, self.num_spatial_views)
        ]
        pixel_values = torch.cat(views)  # (spatial_views * temporal_views, T, 3, H, W)
        if len(pixel_values) == 1:
            pixel_values = pixel_values[0]
        return {"pixel_values": pixel_values, "labels": self.dataset[index]["labels"]}


def collate_fn(examples: list[dict]) -> dict:
    """Stacks clips into `pixel_values` `(B, T, 3, H, W)` (or `(B, views, T, 3, H, W)`) and `labels` `(B,)`."""
    batch = {
        "pixel_values": torch.stack([example["pixel_values"] for example in examples]),
        "labels": torch.tensor([example["labels"] for example in examples]),
    }
    if "skipped_videos" in examples[0]:
        batch["skipped_videos"] = [name for example in examples for name in example["skipped_videos"]]
    return batch


# ----------------------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------------------


def load_checkpoint_config(model_args: ModelArguments) -> PreTrainedConfig | None:
    """The config of --model_name_or_path (`None` without one), to tell a CLIP from an EVL checkpoint."""
    if model_args.model_name_or_path is None:
        return None
    return AutoConfig.from_pretrained(
        model_args.model_name_or_path,
        cache_dir=model_args.cache_dir,
        revision=model_args.model_revision,
        token=model_args.token,
    )


def build_model(
    model_args: ModelArguments, checkpoint_config: PreTrainedConfig | None, given: set[str], label_names: list[str]
) -> tuple[EVLForVideoClassification, str | None]:
    """
    Builds the model: from an EVL checkpoint (training continues), around a CLIP checkpoint, or, without
    --model_name_or_path, around a small randomly initialised CLIP.

    Returns:
        `tuple`: the model and the name of the base model it was fine-tuned from (`None` for random weights).
    """
    id2label = dict(enumerate(label_names))
    label2id = {name: index for index, name in id2label.items()}
    evl_options = {name: getattr(model_args, name) for name in EVL_OPTIONS if getattr(model_args, name) is not None}
    hub_kwargs = {"cache_dir": model_args.cache_dir, "revision": model_args.model_revision, "token": model_args.token}

    if checkpoint_config is None:
        config = EVLConfig(
            vision_config=CLIPVisionConfig(**SYNTHETIC_BACKBONE), id2label=id2label, label2id=label2id, **evl_options
        )
        model = EVLForVideoClassification(config)
        base_model = None
    else:
        config = checkpoint_config
        if config.model_type == "evl":
            # Options that change the architecture must match the trained weights; the others may change.
            for name in ARCHITECTURE_OPTIONS:
                if name in given and evl_options[name] != getattr(config, name):
                    raise ValueError(
                        f"--{name} {evl_options[name]} differs from the EVL checkpoint's {getattr(config, name)}; "
                        "the trained weights need the architecture they were trained with."
                    )
            adjustable = ("num_frames", "decoder_mlp_dropout", "classifier_dropout")
            overrides = {name: evl_options[name] for name in adjustable if name in evl_options}
            model = EVLForVideoClassification.from_pretrained(
                model_args.model_name_or_path,
                id2label=id2label,
                label2id=label2id,
                ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
                **overrides,
                **hub_kwargs,
            )
            base_model = model_args.model_name_or_path
        elif config.model_type in ("clip", "clip_vision_model"):
            model = EVLForVideoClassification.from_clip_pretrained(
                model_args.model_name_or_path, id2label=id2label, label2id=label2id, **evl_options, **hub_kwargs
            )
            base_model = model_args.model_name_or_path
        else:
            raise ValueError(
                f"--model_name_or_path {model_args.model_name_or_path!r} is a {config.model_type!r} model; expected a "
                "CLIP checkpoint (CLIPModel or CLIPVisionModel) or an EVL checkpoint."
            )
    # Loading makes every parameter trainable again; the Trainer's optimizer only takes those with requires_grad.
    model.freeze_backbone() if model_args.freeze_backbone else model.unfreeze_backbone()
    return model, base_model


def build_video_processor(
    model: EVLForVideoClassification,
    model_args: ModelArguments,
    data_args: DataTrainingArguments,
    checkpoint_config: PreTrainedConfig | None,
) -> EVLVideoProcessor:
    """The processor saved with the model: the checkpoint's (if any) with the crop size of the backbone's images."""
    video_processor = None
    if checkpoint_config is not None and checkpoint_config.model_type == "evl":
        try:
            video_processor = EVLVideoProcessor.from_pretrained(
                model_args.model_name_or_path,
                cache_dir=model_args.cache_dir,
                revision=model_args.model_revision,
                token=model_args.token,
            )
        except OSError:
            video_processor = None
    if video_processor is None:
        video_processor = EVLVideoProcessor()
    image_size = model.config.vision_config.image_size
    video_processor.size = {"shortest_edge": image_size}
    video_processor.crop_size = {"height": image_size, "width": image_size}
    video_processor.num_frames = model.config.num_frames
    video_processor.frame_sampling = data_args.frame_sampling
    if data_args.frame_stride is not None:
        video_processor.frame_stride = data_args.frame_stride
    return video_processor


# ----------------------------------------------------------------------------------------------------------------
# Trainer
# ----------------------------------------------------------------------------------------------------------------


class VideoClassificationTrainer(Trainer):
    """
    The Trainer with three additions for video:

    - evaluation clips with several views (`pixel_values` of shape `(B, views, T, 3, H, W)`) are scored by averaging
      the softmax over the views; the logits it reports are the log of that average;
    - training videos that could not be decoded (named in the batch's `skipped_videos`) are counted over all
      processes, and the run stops once more than `max_skipped_fraction` of the training set has been skipped;
    - its model card is EVL's (see [`write_model_card`]).
    """

    def __init__(self, *args, max_skipped_fraction: float = 0.05, model_card_info: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_skipped_fraction = max_skipped_fraction
        self.model_card_info = model_card_info or {}
        self.skipped_videos: set[str] = set()  # over all processes
        self._new_skipped: list[str] = []  # on this process, not yet shared

    def training_step(self, model, inputs, num_items_in_batch=None):
        self._count_skipped(inputs.pop("skipped_videos", []))
        return super().training_step(model, inputs, num_items_in_batch)

    def _count_skipped(self, names: list[str]):
        self._new_skipped.extend(names)
        # Every process takes part in this exchange at every step, so all of them reach the same decision together
        # and none is left waiting for another that stopped.
        num_new = torch.tensor(len(self._new_skipped), device=self.accelerator.device)
        if self.accelerator.reduce(num_new, reduction="sum").item() == 0:
            return
        self.skipped_videos.update(gather_object(self._new_skipped))
        self._new_skipped = []
        fraction = len(self.skipped_videos) / len(self.train_dataset)
        if fraction > self.max_skipped_fraction:
            raise RuntimeError(
                f"{len(self.skipped_videos)} of the {len(self.train_dataset)} training videos ({fraction:.1%}) could "
                f"not be decoded, more than --max_skipped_fraction {self.max_skipped_fraction}. First ones: "
                f"{sorted(self.skipped_videos)[:5]}. Check the files, or raise --max_skipped_fraction."
            )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        pixel_values = inputs["pixel_values"]
        if pixel_values.ndim == 5:  # (B, T, 3, H, W): one view per clip
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        batch_size, num_views = pixel_values.shape[:2]
        logits = model(pixel_values=pixel_values.flatten(0, 1)).logits  # (B * views, num_labels)
        # (B, views, num_labels) -> (B, num_labels): the paper's multi-view score, an average of probabilities
        log_probs = logits.view(batch_size, num_views, -1).softmax(dim=-1).mean(dim=1).log()
        loss = F.nll_loss(log_probs, inputs["labels"]) if "labels" in inputs else None
        outputs = ImageClassifierOutput(loss=loss, logits=log_probs)
        return (loss, outputs) if return_outputs else loss

    def create_model_card(self, **kwargs):
        if self.is_world_process_zero():
            model_id = getattr(self, "hub_model_id", None) if self.args.push_to_hub else None
            write_model_card(self.args.output_dir, model_id=model_id, **self.model_card_info)


class EpochCallback(TrainerCallback):
    """Tells the training dataset which epoch starts, before its workers are created, so each epoch draws new
    augmentations (accelerate forwards `set_epoch` to the dataset only in some configurations)."""

    def __init__(self, dataset: VideoClipDataset):
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.dataset.set_epoch(int(state.epoch or 0))  # an integer at an epoch's start, or within it when resuming


def save_confusion_matrix(predictions: np.ndarray, references: np.ndarray, label_names: list[str], output_dir: str):
    """Writes `confusion_matrix.json` (rows: true label, columns: predicted) and its picture `confusion_matrix.png`."""
    num_labels = len(label_names)
    matrix = np.zeros((num_labels, num_labels), dtype=np.int64)
    np.add.at(matrix, (references, predictions), 1)
    with open(os.path.join(output_dir, "confusion_matrix.json"), "w") as file:
        json.dump({"labels": label_names, "matrix": matrix.tolist()}, file, indent=1)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: confusion_matrix.png is not drawn (pip install matplotlib).")
        return
    side = min(4 + 0.4 * num_labels, 40)
    figure, axes = plt.subplots(figsize=(side, side))
    image = axes.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    if num_labels <= 50:
        axes.set_xticks(range(num_labels), label_names, rotation=90)
        axes.set_yticks(range(num_labels), label_names)
    if num_labels <= 20:
        for (row, column), count in np.ndenumerate(matrix):
            color = "white" if count > matrix.max() / 2 else "black"
            axes.text(column, row, str(count), ha="center", va="center", color=color)
    axes.set_xlabel("predicted label")
    axes.set_ylabel("true label")
    axes.set_title(f"Confusion matrix ({len(references)} validation videos)")
    figure.tight_layout()
    figure.savefig(os.path.join(output_dir, "confusion_matrix.png"), dpi=100)
    plt.close(figure)


def write_model_card(
    output_dir: str,
    *,
    base_model: str | None = None,
    base_model_description: str = "",
    dataset_name: str = "",
    hub_dataset: str | None = None,
    model_description: str = "",
    evaluation_description: str = "",
    training_summary: dict | None = None,
    model_id: str | None = None,
):
    """
    Writes README.md: the Hub metadata (`pipeline_tag: video-classification`, the base model, the dataset), a table
    of the evaluation metrics read from `eval_results.json`, and how the model was trained.
    """
    from huggingface_hub import ModelCard, ModelCardData

    results_path = Path(output_dir) / "eval_results.json"
    metrics = json.loads(results_path.read_text()) if results_path.is_file() else {}
    shown = {"eval_accuracy": "top-1 accuracy", "eval_top5_accuracy": "top-5 accuracy", "eval_loss": "loss"}
    rows = [f"| {title} (`{name}`) | {metrics[name]:.4f} |" for name, title in shown.items() if name in metrics]
    table = "\n".join(["| Metric | Value |", "| --- | --- |", *rows]) if rows else "No evaluation was run."
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="video-classification",
        # Only Hub ids are valid metadata; a local folder is named in the text instead.
        base_model=base_model if base_model and not os.path.isdir(base_model) else None,
        datasets=[hub_dataset] if hub_dataset else None,
        tags=["video-classification", "evl", "clip"],
    )
    summary = "\n".join(f"- {name}: {value}" for name, value in (training_summary or {}).items())
    content = f"""---
{card_data.to_yaml()}
---

# {Path(output_dir).resolve().name}

EVL video classifier ("Frozen CLIP Models are Efficient Video Learners", Lin et al., ECCV 2022): a frozen CLIP image
encoder looks at every frame, and a small transformer decoder with temporal modules reads its features across frames.

- Base model: {base_model_description}
- Dataset: {dataset_name}
- Model: {model_description}

## Evaluation

{evaluation_description}

{table}

## Training

{summary}

## Usage

```python
import evl_hf  # registers EVL with the Auto classes
from transformers import pipeline

classifier = pipeline("video-classification", model="{model_id or output_dir}")
classifier("video.mp4")
```
"""
    ModelCard(content).save(os.path.join(output_dir, "README.md"))


def describe_run(
    model: EVLForVideoClassification,
    base_model: str | None,
    dataset_name: str,
    video_processor: EVLVideoProcessor,
    data_args: DataTrainingArguments,
    training_args: TrainingArguments,
    eval_dataset: VideoClipDataset | None,
) -> dict:
    """What the model card says about the model, the data and the training ([`write_model_card`]'s arguments)."""
    config = model.config
    backbone = ", ".join(f"{key}={value}" for key, value in SYNTHETIC_BACKBONE.items())
    switches = {
        "temporal convolution": config.use_temporal_conv,
        "temporal position embedding": config.use_temporal_pos_embed,
        "temporal cross attention": config.use_temporal_cross_attention,
    }
    evaluation = ""
    if eval_dataset is not None:
        views = data_args.num_temporal_views * data_args.num_spatial_views
        evaluation = (
            f"{len(eval_dataset)} validation videos, {data_args.num_temporal_views} temporal x "
            f"{data_args.num_spatial_views} spatial view(s) per video"
            + (", softmax averaged over the views." if views > 1 else ".")
        )
    if training_args.max_steps > 0:
        length = f"{training_args.max_steps} steps"
    else:
        length = f"{training_args.num_train_epochs} epochs"
    return {
        "base_model": base_model,
        "base_model_description": (
            f"`{base_model}`" if base_model else f"a random CLIP vision model, `CLIPVisionConfig({backbone})`"
        ),
        "dataset_name": dataset_name,
        "hub_dataset": data_args.dataset_name,
        "model_description": (
            f"{config.num_frames} frames of {config.vision_config.image_size} px, {config.decoder_num_layers} decoder "
            "layers; " + ", ".join(f"{name} {'on' if on else 'off'}" for name, on in switches.items())
        ),
        "evaluation_description": evaluation,
        "training_summary": {
            "length": length,
            "batch size per device": training_args.per_device_train_batch_size,
            "learning rate": training_args.learning_rate,
            "schedule": SchedulerType(training_args.lr_scheduler_type).value,
            "weight decay": training_args.weight_decay,
            "frame sampling": f"{video_processor.frame_sampling}, stride {video_processor.frame_stride}",
            "seed": training_args.seed,
        },
    }


def main(args: list[str] | None = None):
    model_args, data_args, training_args, given = parse_arguments(args)
    if training_args.push_to_hub:
        check_hub_access(training_args)

    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    log_level = training_args.get_process_log_level()
    logger.setLevel(log_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.enable_default_handler()
    transformers.utils.logging.enable_explicit_format()
    logger.warning(
        f"Process rank: {training_args.process_index}, device: {training_args.device}, "
        f"world size: {training_args.world_size}"
    )
    if "dataloader_pin_memory" not in given and not torch.cuda.is_available():
        training_args.dataloader_pin_memory = False  # pinned memory only helps copies to a GPU
    if training_args.dataloader_persistent_workers:
        logger.warning("--dataloader_persistent_workers would repeat the first epoch's augmentations; turning it off.")
        training_args.dataloader_persistent_workers = False

    # ---- Data ----
    checkpoint_config = load_checkpoint_config(model_args)
    checkpoint_labels = None
    if checkpoint_config is not None and checkpoint_config.model_type == "evl":
        checkpoint_labels = [checkpoint_config.id2label[index] for index in range(checkpoint_config.num_labels)]
    with training_args.main_process_first(desc="loading the videos"):
        dataset, dataset_name = load_video_datasets(data_args, model_args)
        dataset, label_names = encode_labels(dataset, data_args.label_column_name, checkpoint_labels)
    # Without --do_train / --do_eval, do whatever the given splits allow.
    for flag, split in [("do_train", "train"), ("do_eval", "validation")]:
        if flag not in given:
            setattr(training_args, flag, split in dataset)
        if getattr(training_args, flag) and split not in dataset:
            raise ValueError(f"--{flag} needs a {split} split: pass --{split}_dir or --{split}_file.")
    if not training_args.do_train and not training_args.do_eval:
        raise ValueError("Nothing to do: give training and/or validation videos.")
    for split, limit in [("train", data_args.max_train_samples), ("validation", data_args.max_eval_samples)]:
        if split in dataset and limit is not None:
            subset = range(min(limit, len(dataset[split])))
            dataset[split] = dataset[split].shuffle(seed=training_args.seed).select(subset)
    logger.info(f"{len(label_names)} labels: {', '.join(label_names[:20])}{', ...' if len(label_names) > 20 else ''}")

    # ---- Model and processors ----
    set_seed(training_args.seed)  # the decoder's (and a random backbone's) initialisation
    model, base_model = build_model(model_args, checkpoint_config, given, label_names)
    if base_model is None and given & set(DATA_SOURCE_ARGUMENTS):
        logger.warning(
            "No --model_name_or_path: training a small randomly initialised CLIP backbone. For real videos start from "
            "CLIP weights, e.g. --model_name_or_path openai/clip-vit-base-patch16."
        )
    video_processor = build_video_processor(model, model_args, data_args, checkpoint_config)
    image_processor = EVLImageProcessor(
        size=video_processor.size,
        crop_size=video_processor.crop_size,
        image_mean=video_processor.image_mean,
        image_std=video_processor.image_std,
    )
    num_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info(
        f"EVL: {model.config.num_frames} frames of {model.config.vision_config.image_size} px, sampling "
        f"{video_processor.frame_sampling} (stride {video_processor.frame_stride}); {num_trainable:,} trainable of "
        f"{model.num_parameters():,} parameters"
    )

    train_dataset = eval_dataset = None
    if training_args.do_train:
        train_dataset = VideoClipDataset(
            dataset["train"],
            data_args.video_column_name,
            video_processor,
            train=True,
            transform=build_train_transform(video_processor, data_args),
            seed=training_args.seed,
        )
    if training_args.do_eval:
        eval_dataset = VideoClipDataset(
            dataset["validation"],
            data_args.video_column_name,
            video_processor,
            train=False,
            num_temporal_views=data_args.num_temporal_views,
            num_spatial_views=data_args.num_spatial_views,
        )

    # ---- Metrics ----
    # Loaded by path: the module ships with evl_hf, so this works offline.
    with training_args.main_process_first(desc="loading the metric"):
        metric = evaluate.load(evl_hf.video_accuracy.__file__, keep_in_memory=True)

    def compute_metrics(eval_prediction):
        return metric.compute(predictions=eval_prediction.predictions, references=eval_prediction.label_ids)

    # ---- Trainer ----
    # The video column holds paths, not model inputs: keep it for the dataset's own decoding.
    training_args.remove_unused_columns = False
    trainer = VideoClassificationTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=video_processor,
        data_collator=collate_fn,
        compute_metrics=compute_metrics,
        max_skipped_fraction=data_args.max_skipped_fraction,
        model_card_info=describe_run(
            model, base_model, dataset_name, video_processor, data_args, training_args, eval_dataset
        ),
    )

    if training_args.do_train:
        checkpoint = training_args.resume_from_checkpoint
        if isinstance(checkpoint, str) and checkpoint.lower() in ("true", "last"):
            checkpoint = True  # the last checkpoint in --output_dir
        trainer.add_callback(EpochCallback(train_dataset))
        train_result = trainer.train(resume_from_checkpoint=checkpoint)
        metrics = train_result.metrics
        metrics["train_skipped_videos"] = len(trainer.skipped_videos)
        if trainer.skipped_videos:
            logger.warning(
                f"{len(trainer.skipped_videos)} training videos could not be decoded and were skipped: "
                f"{sorted(trainer.skipped_videos)}"
            )
        trainer.save_model()
        trainer.log_metrics("train", metrics)
        trainer.save_metrics("train", metrics)
        trainer.save_state()

    if training_args.do_eval:
        # One pass gives both the metrics and the predictions for the confusion matrix; across processes the
        # predictions are gathered with the padding duplicates dropped, so every validation video counts once.
        prediction = trainer.predict(eval_dataset, metric_key_prefix="eval")
        metrics = prediction.metrics
        trainer.log(metrics)
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
        if trainer.is_world_process_zero():
            save_confusion_matrix(
                prediction.predictions.argmax(axis=-1), prediction.label_ids, label_names, training_args.output_dir
            )

    if trainer.is_world_process_zero():
        image_processor.save_pretrained(training_args.output_dir)
    if training_args.push_to_hub:
        trainer.push_to_hub(commit_message="End of training")
    else:
        trainer.create_model_card()


if __name__ == "__main__":
    main()
