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

With no data or model argument it trains a small randomly initialised EVL on a generated synthetic-motion dataset
(an object moving toward one of four edges), a few minutes on a laptop CPU:

    accelerate launch examples/run_video_classification.py

On your own videos (folders, CSV / JSON lines or Kinetics-style lists, a Hub dataset) from CLIP weights, see
docs/training.md. All arguments can also come from a JSON file: `examples/run_video_classification.py args.json`.
"""

import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import evaluate
import numpy as np
import torch
import torch.nn.functional as F
from datasets import ClassLabel, Dataset, DatasetDict, Video, load_dataset

import transformers
from accelerate.utils import gather_object
from transformers import AutoConfig, CLIPVisionConfig, HfArgumentParser, Trainer, TrainerCallback, TrainingArguments
from transformers.modeling_outputs import ImageClassifierOutput

from evl_hf import EVLConfig, EVLForVideoClassification, EVLImageProcessor, EVLVideoProcessor
from evl_hf.video_processing_evl import FRAME_SAMPLING_STRATEGIES, VideoDecodingError


logger = logging.getLogger(__name__)

EXAMPLES_DIR = Path(__file__).resolve().parent
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".avi", ".mov", ".mpeg", ".webm", ".m4v")
DATA_SOURCES = ("dataset_name", "train_dir", "validation_dir", "train_file", "validation_file")
# EVLConfig options that change the architecture: continuing from an EVL checkpoint, they must match its weights.
ARCHITECTURE_OPTIONS = ("decoder_num_layers", "decoder_num_heads", "use_temporal_conv", "use_temporal_pos_embed",
                        "use_temporal_cross_attention")  # fmt: skip
EVL_OPTIONS = (*ARCHITECTURE_OPTIONS, "num_frames", "decoder_mlp_dropout", "classifier_dropout")

# The embedded default (no data and no model argument): a 2-layer, 128-wide ViT on 64x64 frames in 8x8 patches with
# random weights, trained on the synthetic-motion dataset with the settings below (arguments given still win).
SYNTHETIC_BACKBONE = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                          image_size=64, patch_size=8)  # fmt: skip
SYNTHETIC_DEFAULTS = {
    "output_dir": "outputs/evl-synthetic-motion", "num_frames": 8, "frame_stride": 3, "min_crop_scale": 0.5,
    "decoder_num_layers": 2, "decoder_mlp_dropout": 0.0, "classifier_dropout": 0.0, "do_train": True,
    "do_eval": True, "max_steps": 900, "per_device_train_batch_size": 16, "per_device_eval_batch_size": 16,
    "learning_rate": 1e-3, "weight_decay": 0.05, "lr_scheduler_type": "cosine", "warmup_steps": 0,
    "logging_steps": 50, "save_steps": 300, "save_total_limit": 1, "dataloader_num_workers": 1, "seed": 42,
}  # fmt: skip


@dataclass
class ModelArguments:
    """Which model to fine-tune, and the EVL options of a model built from CLIP weights."""

    model_name_or_path: str | None = field(default=None, metadata={"help": (
        "A Hub id or local folder of a CLIP checkpoint (a new EVL is built around its vision tower) or of an EVL "
        "checkpoint (training continues from it). Without it, a small randomly initialised CLIP vision model.")})
    num_frames: int | None = field(default=None, metadata={"help": (
        "Frames per clip (T). Defaults to the EVL checkpoint's, otherwise 8. Continuing from an EVL checkpoint with "
        "another T interpolates its temporal position embedding.")})
    decoder_num_layers: int | None = field(default=None, metadata={"help": "Decoder layers (M). Defaults to 4."})
    decoder_num_heads: int | None = field(default=None, metadata={"help": "Decoder heads. Defaults to the backbone's."})
    decoder_mlp_dropout: float | None = field(default=None, metadata={"help": "Decoder MLP dropout (default 0.5)."})
    classifier_dropout: float | None = field(default=None, metadata={"help": "Dropout before the head (default 0.5)."})
    use_temporal_conv: bool | None = field(default=None, metadata={"help": "Temporal convolution (default True)."})
    use_temporal_pos_embed: bool | None = field(default=None, metadata={"help": "Temporal position embedding."})
    use_temporal_cross_attention: bool | None = field(default=None, metadata={"help": "Temporal cross attention."})
    freeze_backbone: bool = field(default=True, metadata={"help": "Keep the CLIP encoder frozen (the paper)."})
    backbone_dtype: str = field(default="float32", metadata={
        "help": "dtype of the CLIP encoder; the decoder and head stay float32. The saved model is float32.",
        "choices": ["float32", "bfloat16", "float16"]})
    ignore_mismatched_sizes: bool = field(default=False, metadata={
        "help": "Replace the classifier of an EVL checkpoint whose labels differ from the dataset's."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where Hub models and datasets are stored."})
    model_revision: str = field(default="main", metadata={"help": "Branch, tag or commit of the model on the Hub."})
    token: str | None = field(default=None, metadata={"help": "Hub token for private models and datasets."})


@dataclass
class DataTrainingArguments:
    """Which videos to train and evaluate on, and how clips are sampled and augmented."""

    dataset_name: str | None = field(default=None, metadata={"help": "A dataset on the Hub (or a local folder)."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "The dataset's configuration."})
    train_dir: str | None = field(default=None, metadata={"help": "Videos in the layout <train_dir>/<label>/<video>."})
    validation_dir: str | None = field(default=None, metadata={"help": "Validation videos, as --train_dir."})
    train_file: str | None = field(default=None, metadata={"help": (
        "A .csv or .json/.jsonl file with a video path and a label per row, or a Kinetics-style list (any other "
        "extension) with `relative/path.mp4 label_index` per line.")})
    validation_file: str | None = field(default=None, metadata={"help": "Validation list, as --train_file."})
    video_root: str | None = field(default=None, metadata={"help": "Where relative paths of list files start "
                                                                   "(default: the list file's folder)."})
    label_names_file: str | None = field(default=None, metadata={"help": (
        "Names of the label indices of a Kinetics-style list, one per line (line i names index i). Without it the "
        "names come from an EVL checkpoint with enough labels, otherwise they are the indices `0`..`N-1`.")})
    video_column_name: str = field(default="video", metadata={"help": "Column holding the videos."})
    label_column_name: str = field(default="label", metadata={"help": "Column holding the labels."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep this many training videos."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep this many validation videos."})
    frame_sampling: str = field(default="dense", metadata={"help": (
        "`dense` (frames --frame_stride apart; the paper), `uniform` (spread over the video) or `segment` (TSN)."),
        "choices": list(FRAME_SAMPLING_STRATEGIES)})
    frame_stride: int | None = field(default=None, metadata={"help": "Dense sampling stride (default: the "
                                                                      "checkpoint's, or 16)."})
    num_temporal_views: int = field(default=1, metadata={"help": "Evaluation clips per video (softmax averaged)."})
    num_spatial_views: int = field(default=1, metadata={"help": "Evaluation crops along the long side (1: centre)."})
    min_crop_scale: float = field(default=0.08, metadata={"help": "RandomResizedCrop's smallest area fraction."})
    horizontal_flip: bool = field(default=False, metadata={"help": (
        "Flip training clips half of the time; only for labels that do not depend on left and right.")})
    rand_augment: bool = field(default=False, metadata={"help": "RandAugment m7 n4 on training clips (the paper)."})
    max_skipped_fraction: float = field(default=0.05, metadata={"help": (
        "Undecodable training videos are skipped with a warning; the run stops past this fraction of them.")})
    synthetic_data_dir: str | None = field(default=None, metadata={"help": "Cache of the synthetic-motion dataset."})
    synthetic_train_videos_per_label: int = field(default=300, metadata={"help": "Synthetic training clips/label."})
    synthetic_validation_videos_per_label: int = field(default=50, metadata={"help": "Synthetic validation clips."})

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


def is_embedded_default(model_args: ModelArguments, data_args: DataTrainingArguments) -> bool:
    """No model and no data chosen: the synthetic-motion run."""
    return model_args.model_name_or_path is None and all(getattr(data_args, name) is None for name in DATA_SOURCES)


def parse_arguments(args: list[str] | None = None):
    """The three argument dataclasses from the command line or a JSON file, with the embedded default's settings
    as defaults when neither data nor model is chosen."""
    args = sys.argv[1:] if args is None else list(args)
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, TrainingArguments))
    if len(args) == 1 and args[0].endswith(".json"):
        values = json.loads(Path(args[0]).read_text())
        parsed = parser.parse_dict(values)
        return parser.parse_dict({**SYNTHETIC_DEFAULTS, **values}) if is_embedded_default(*parsed[:2]) else parsed
    parsed = parser.parse_args_into_dataclasses(args)
    if not is_embedded_default(*parsed[:2]):
        return parsed
    parser.set_defaults(**SYNTHETIC_DEFAULTS)
    return parser.parse_args_into_dataclasses(args)


def check_hub_access(training_args: TrainingArguments):
    """Fails before any work is done when `--push_to_hub` cannot succeed: offline, or no valid token."""
    import huggingface_hub

    if huggingface_hub.constants.HF_HUB_OFFLINE:
        raise ValueError("--push_to_hub needs the Hub, but offline mode is on (HF_HUB_OFFLINE=1). Train without "
                         "--push_to_hub and upload the output folder later with `hf upload`.")
    try:
        huggingface_hub.whoami(token=training_args.hub_token)
    except Exception as error:  # noqa: BLE001: any failure here means the push at the end would fail too
        raise ValueError(f"--push_to_hub: cannot use the Hugging Face Hub ({type(error).__name__}: {error}). Log in "
                         "with `hf auth login` or pass --hub_token, or drop --push_to_hub.") from error


# ---- Data ----------------------------------------------------------------------------------------------------------


def check_video_folder(path: str, argument: str):
    """A clear error, naming the argument, when a videofolder-layout folder is missing or holds no labelled videos."""
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{argument} {path!r}: no such folder.")
    videos = [p for p in folder.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file()]
    if not videos:
        raise ValueError(f"{argument} {path!r} holds no video files ({', '.join(VIDEO_EXTENSIONS)}). The videofolder "
                         f"layout is {path}/<label>/<video>.mp4.")
    if any(video.parent == folder for video in videos):
        raise ValueError(f"{argument} {path!r} has videos directly inside it; the videofolder layout puts each video "
                         f"in a folder named after its label: {path}/<label>/<video>.mp4.")


def read_video_list(path: str, video_root: str | None, video_column: str, label_column: str) -> Dataset:
    """A Kinetics-style list, `relative/path.mp4 label_index` per line (blank lines and `#` comments skipped), as a
    `Dataset` of absolute video paths and integer labels."""
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
    """A CSV, JSON lines or Kinetics-style list of videos; relative paths start from --video_root."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{argument} {path!r}: no such file.")
    video_column = data_args.video_column_name
    if Path(path).suffix.lower() not in (".csv", ".json", ".jsonl"):
        return read_video_list(path, data_args.video_root, video_column, data_args.label_column_name)
    builder = "csv" if path.lower().endswith(".csv") else "json"
    dataset = load_dataset(builder, data_files={"data": path}, cache_dir=cache_dir)["data"]
    if video_column not in dataset.column_names:
        raise ValueError(f"{argument} {path!r} has no column {video_column!r} (--video_column_name); its columns are "
                         f"{dataset.column_names}.")
    root = data_args.video_root if data_args.video_root is not None else os.path.dirname(os.path.abspath(path))
    return dataset.map(lambda row: {video_column: os.path.join(root, row[video_column])}, desc=f"Resolving {path}")


def load_video_datasets(data_args: DataTrainingArguments, cache_dir: str | None, token: str | None) -> DatasetDict:
    """The `train` and/or `validation` splits, each with a video column (a path, or `{"path", "bytes"}`) and a label
    column. Without any data argument, the synthetic-motion dataset (generated once, then cached)."""
    if data_args.dataset_name is not None:
        dataset = load_dataset(data_args.dataset_name, data_args.dataset_config_name, cache_dir=cache_dir, token=token)
        if "validation" not in dataset and "test" in dataset:
            logger.info(f"{data_args.dataset_name} has no validation split: evaluating on its test split.")
            dataset["validation"] = dataset["test"]
        dataset = DatasetDict({split: dataset[split] for split in ("train", "validation") if split in dataset})
    else:
        if all(getattr(data_args, name) is None for name in DATA_SOURCES):
            from synthetic_data import generate_synthetic_motion_dataset  # examples/synthetic_data.py

            folder = generate_synthetic_motion_dataset(
                data_args.synthetic_data_dir,
                train_videos_per_label=data_args.synthetic_train_videos_per_label,
                validation_videos_per_label=data_args.synthetic_validation_videos_per_label,
            )
            logger.info(f"Synthetic-motion dataset: {folder}")
            data_args.train_dir, data_args.validation_dir = str(folder / "train"), str(folder / "validation")
        folders = {"train": data_args.train_dir, "validation": data_args.validation_dir}
        folders = {split: folder for split, folder in folders.items() if folder is not None}
        for split, folder in folders.items():
            check_video_folder(folder, f"--{split}_dir")
        dataset = DatasetDict()
        if folders:
            # drop_labels=False: the parent folder is the label even when the two folders sit at different depths.
            data_files = {split: os.path.join(folder, "**") for split, folder in folders.items()}
            dataset.update(load_dataset("videofolder", data_files=data_files, drop_labels=False, cache_dir=cache_dir))
        for split, path in {"train": data_args.train_file, "validation": data_args.validation_file}.items():
            if path is not None:
                dataset[split] = load_video_file(path, f"--{split}_file", data_args, cache_dir)

    for split in dataset:
        for argument in ("video_column_name", "label_column_name"):
            column = getattr(data_args, argument)
            if column not in dataset[split].column_names:
                raise ValueError(f"--{argument} {column!r} is not a column of the {split} split; its columns are "
                                 f"{dataset[split].column_names}.")
        # Rows keep the path (or bytes): the workers decode the sampled frames themselves and can name a broken file.
        if isinstance(dataset[split].features[data_args.video_column_name], Video):
            dataset[split] = dataset[split].cast_column(data_args.video_column_name, Video(decode=False))
    return dataset


def encode_labels(dataset: DatasetDict, label_column: str, known_names: list[str] | None) -> tuple[DatasetDict, list]:
    """
    Adds an integer `labels` column and returns the label names in index order. Labels may be a `ClassLabel`,
    strings, or integer indices (Kinetics lists), which take their names from `known_names` (a label-names file or
    an EVL checkpoint's labels) when it has enough of them. When an EVL checkpoint's labels cover the dataset's, their
    order is kept so that its classifier still applies. Every validation label must occur in the training split.
    """
    reference = "train" if "train" in dataset else "validation"
    values = {split: dataset[split][label_column] for split in dataset}
    if isinstance(dataset[reference].features[label_column], ClassLabel):
        # Each split's own ClassLabel: splits loaded separately may number their labels differently.
        values = {split: dataset[split].features[label_column].int2str(v) for split, v in values.items()}
    elif all(isinstance(value, (int, np.integer)) for split_values in values.values() for value in split_values):
        if any(value < 0 for split_values in values.values() for value in split_values):
            raise ValueError(f"Label indices in column {label_column!r} must not be negative.")
        num_labels = max(max(split_values) for split_values in values.values()) + 1
        names = known_names if known_names and num_labels <= len(known_names) else list(map(str, range(num_labels)))
        values = {split: [names[value] for value in split_values] for split, split_values in values.items()}
    values = {split: [str(value) for value in split_values] for split, split_values in values.items()}
    names = sorted(set(values[reference]))
    if "train" in dataset and "validation" in dataset:
        unseen = sorted(set(values["validation"]) - set(values["train"]))
        if unseen:
            raise ValueError(f"The validation split has labels the training split never has: {unseen}. The "
                             "classifier cannot learn them; remove those videos or add training videos for them.")
    if known_names and set(names) <= set(known_names):
        names = list(known_names)
    index = {name: position for position, name in enumerate(names)}
    for split in dataset:
        if "labels" in dataset[split].column_names:
            dataset[split] = dataset[split].remove_columns("labels")
        dataset[split] = dataset[split].add_column("labels", [index[value] for value in values[split]])
    return dataset, names


# ---- Transforms: the video processor makes every clip ----------------------------------------------------------------


class VideoClipDataset(torch.utils.data.Dataset):
    """
    Clips of the videos (a path, or `{"path", "bytes"}`) of a `datasets.Dataset` with integer `labels`, made by the
    video processor (called with `processor_kwargs`) in the DataLoader workers.

    Training: frames and augmentation drawn from `(seed, epoch, index)` only, so a resumed run sees the clips an
    uninterrupted one would; an undecodable video is skipped with a warning, replaced, and named in `skipped_videos`.
    Evaluation: an undecodable video is an error, since skipping it would change what the accuracy means.
    """

    def __init__(self, dataset: Dataset, video_column: str, video_processor: EVLVideoProcessor, *, train: bool,
                 seed: int = 0, **processor_kwargs):  # fmt: skip
        self.dataset, self.video_column, self.video_processor = dataset, video_column, video_processor
        self.train, self.seed, self.epoch, self.processor_kwargs = train, seed, 0, processor_kwargs

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int):
        """Called at the start of each training epoch, before the workers start, to draw new augmentations."""
        self.epoch = epoch

    def _clip(self, index: int, **kwargs) -> torch.Tensor:
        video = self.dataset[index][self.video_column]
        if isinstance(video, dict) and video.get("bytes") is not None:
            from torchcodec.decoders import VideoDecoder

            try:
                video = VideoDecoder(video["bytes"], seek_mode="exact")
            except (RuntimeError, ValueError) as error:
                raise VideoDecodingError(f"Cannot read video {self._name(index)}: {error}") from error
        elif isinstance(video, dict):
            video = video["path"]
        kwargs = {**self.processor_kwargs, **kwargs}
        return self.video_processor(video, return_tensors="pt", **kwargs)["pixel_values"][0]

    def _name(self, index: int) -> str:
        video = self.dataset[index][self.video_column]
        return str(video.get("path") or f"row {index}") if isinstance(video, dict) else str(video)

    def __getitem__(self, index: int) -> dict:
        if not self.train:
            try:
                pixel_values = self._clip(index)  # (T, 3, H, W), or (views, T, 3, H, W)
            except (VideoDecodingError, OSError) as error:
                raise VideoDecodingError(f"Validation video {self._name(index)} cannot be decoded: {error}") from error
            return {"pixel_values": pixel_values, "labels": self.dataset[index]["labels"]}
        # A stream of its own for every (seed, epoch, index): independent of the worker, the process and the order.
        state = np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0]
        generator = torch.Generator().manual_seed(int(state))
        skipped, candidate = [], index
        for _ in range(16):  # replacements tried before giving up: a run with that many failures is stopped anyway
            try:
                seed = int(torch.randint(2**62, (), generator=generator))
                pixel_values = self._clip(candidate, do_augment=True, seed=seed)
            except (VideoDecodingError, OSError) as error:
                logger.warning(f"Skipping training video {self._name(candidate)}: {error}")
                skipped.append(self._name(candidate))
                candidate = int(torch.randint(len(self.dataset), (), generator=generator))
                continue
            labels = self.dataset[candidate]["labels"]
            return {"pixel_values": pixel_values, "labels": labels, "skipped_videos": skipped}
        raise VideoDecodingError(f"16 videos in a row could not be decoded, the last ones: {skipped[-3:]}.")


def collate_fn(examples: list[dict]) -> dict:
    """Stacks clips into `pixel_values` `(B, T, 3, H, W)` (or `(B, views, T, 3, H, W)`) and `labels` `(B,)`."""
    batch = {
        "pixel_values": torch.stack([example["pixel_values"] for example in examples]),
        "labels": torch.tensor([example["labels"] for example in examples]),
    }
    if "skipped_videos" in examples[0]:
        batch["skipped_videos"] = [name for example in examples for name in example["skipped_videos"]]
    return batch


# ---- Model ---------------------------------------------------------------------------------------------------------


def build_model(model_args: ModelArguments, checkpoint_config, label_names: list[str]) -> EVLForVideoClassification:
    """From an EVL checkpoint (training continues), around a CLIP checkpoint, or, without --model_name_or_path,
    around a small randomly initialised CLIP. The backbone is in --backbone_dtype, the decoder and head in float32."""
    labels = {"id2label": dict(enumerate(label_names)), "label2id": {name: i for i, name in enumerate(label_names)}}
    options = {name: getattr(model_args, name) for name in EVL_OPTIONS if getattr(model_args, name) is not None}
    dtype = getattr(torch, model_args.backbone_dtype)
    hub = {"cache_dir": model_args.cache_dir, "revision": model_args.model_revision, "token": model_args.token}
    if checkpoint_config is None:
        model = EVLForVideoClassification(EVLConfig(vision_config=CLIPVisionConfig(**SYNTHETIC_BACKBONE), **labels,
                                                    **options))  # fmt: skip
        model.base_model.vision_model.to(dtype)
    elif checkpoint_config.model_type == "evl":
        for name in ARCHITECTURE_OPTIONS:
            if name in options and options[name] != getattr(checkpoint_config, name):
                raise ValueError(f"--{name} {options[name]} differs from the EVL checkpoint's "
                                 f"{getattr(checkpoint_config, name)}; its weights need the architecture they were "
                                 "trained with.")  # fmt: skip
        overrides = {name: options[name] for name in EVL_OPTIONS[len(ARCHITECTURE_OPTIONS):] if name in options}
        model = EVLForVideoClassification.from_pretrained(
            model_args.model_name_or_path, ignore_mismatched_sizes=model_args.ignore_mismatched_sizes, dtype=dtype,
            **labels, **overrides, **hub)  # fmt: skip
    elif checkpoint_config.model_type in ("clip", "clip_vision_model"):
        model = EVLForVideoClassification.from_clip_pretrained(
            model_args.model_name_or_path, dtype=dtype, **labels, **options, **hub
        )
    else:
        raise ValueError(f"--model_name_or_path {model_args.model_name_or_path!r} is a {checkpoint_config.model_type!r}"
                         " model; expected a CLIP checkpoint (CLIPModel or CLIPVisionModel) or an EVL checkpoint.")
    # Loading makes every parameter trainable again; the Trainer's optimizer only takes those with requires_grad.
    model.freeze_backbone() if model_args.freeze_backbone else model.unfreeze_backbone()
    return model


def build_video_processor(model, model_args: ModelArguments, data_args: DataTrainingArguments, checkpoint_config):
    """The processor saved with the model: the EVL checkpoint's settings (if any) with the backbone's image size, the
    model's frame count and the sampling arguments."""
    settings = {}
    if checkpoint_config is not None and checkpoint_config.model_type == "evl":
        try:
            settings = EVLVideoProcessor.get_video_processor_dict(
                model_args.model_name_or_path, cache_dir=model_args.cache_dir, revision=model_args.model_revision,
                token=model_args.token)[0]  # fmt: skip
        except OSError:
            settings = {}
    image_size = model.config.vision_config.image_size
    settings.update(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
                    num_frames=model.config.num_frames, frame_sampling=data_args.frame_sampling)  # fmt: skip
    if data_args.frame_stride is not None:
        settings["frame_stride"] = data_args.frame_stride
    settings.pop("video_processor_type", None)
    return EVLVideoProcessor(**settings)


# ---- Metric --------------------------------------------------------------------------------------------------------


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
        logger.warning("matplotlib is not installed: confusion_matrix.png is not drawn (pip install 'evl-hf[train]').")
        return
    side = min(4 + 0.4 * num_labels, 40)
    figure, axes = plt.subplots(figsize=(side, side))
    figure.colorbar(axes.imshow(matrix, cmap="Blues"), ax=axes, fraction=0.046, pad=0.04)
    if num_labels <= 50:
        axes.set_xticks(range(num_labels), label_names, rotation=90)
        axes.set_yticks(range(num_labels), label_names)
    for (row, column), count in np.ndenumerate(matrix if num_labels <= 20 else []):
        axes.text(column, row, str(count), ha="center", va="center", color="grey")
    axes.set(xlabel="predicted label", ylabel="true label", title=f"Confusion matrix ({len(references)} videos)")
    figure.tight_layout()
    figure.savefig(os.path.join(output_dir, "confusion_matrix.png"), dpi=100)
    plt.close(figure)


# ---- Trainer -------------------------------------------------------------------------------------------------------


class VideoClassificationTrainer(Trainer):
    """
    The Trainer with three additions for video:

    - several views per evaluation clip (`pixel_values` `(B, views, T, 3, H, W)`) are scored by averaging the softmax
      over the views; the logits it reports are the log of that average;
    - undecodable training videos (the batch's `skipped_videos`) are counted over all processes at each logging step
      (every step on one process), and the run stops once more than `max_skipped_fraction` of them were skipped;
    - its model card (transformers' own) also carries the pipeline tag, the metrics and how to load the model.
    """

    def __init__(self, *args, max_skipped_fraction: float = 0.05, model_card_text: str = "", **kwargs):
        super().__init__(*args, **kwargs)
        self.max_skipped_fraction, self.model_card_text = max_skipped_fraction, model_card_text
        self.skipped_videos: set[str] = set()  # over all processes
        self._new_skipped: list[str] = []  # on this process, not yet shared

    def training_step(self, model, inputs, num_items_in_batch=None):
        self._new_skipped.extend(inputs.pop("skipped_videos", []))
        # Every process shares at the same steps, so all of them reach the same decision together.
        if self.args.world_size == 1 or (self.state.global_step + 1) % self.args.logging_steps == 0:
            self.share_skipped_videos()
        return super().training_step(model, inputs, num_items_in_batch)

    def share_skipped_videos(self):
        """Counts the videos skipped on every process so far; stops the run past `max_skipped_fraction`."""
        self.skipped_videos.update(gather_object(self._new_skipped) if self.args.world_size > 1 else self._new_skipped)
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
        super().create_model_card(**kwargs)
        if not self.is_world_process_zero():
            return
        from huggingface_hub import ModelCard

        path = os.path.join(self.args.output_dir, "README.md")
        card = ModelCard.load(path)
        card.data.pipeline_tag, card.data.library_name = "video-classification", "transformers"
        results = Path(self.args.output_dir, "eval_results.json")
        metrics = json.loads(results.read_text()) if results.is_file() else {}
        rows = [f"| `{name}` | {value:.4f} |" for name, value in metrics.items() if isinstance(value, float)]
        table = "\n".join(["| metric | value |", "| --- | --- |", *rows]) if rows else "No evaluation was run."
        model_id = self.hub_model_id if self.args.push_to_hub and self.hub_model_id else self.args.output_dir
        card.text += f"""
## EVL

{self.model_card_text}

## Evaluation metrics

{table}

## How to use

With the `evl_hf` package installed (`pip install .` in its source folder), importing it registers EVL with the Auto
classes and the pipeline:

```python
import evl_hf
from transformers import pipeline

classifier = pipeline("video-classification", model="{model_id}")  # device=0 for the first GPU
classifier("video.mp4")
```

Without the package: the folder carries the model's code, which `trust_remote_code=True` runs (read it first):

```python
from transformers import AutoModelForVideoClassification, AutoVideoProcessor

model = AutoModelForVideoClassification.from_pretrained("{model_id}", trust_remote_code=True)
processor = AutoVideoProcessor.from_pretrained("{model_id}", trust_remote_code=True)
logits = model(**processor("video.mp4", return_tensors="pt")).logits
```
"""
        card.save(path)


class EpochCallback(TrainerCallback):
    """Tells the training dataset which epoch starts, before its workers are created, so each epoch draws new
    augmentations (accelerate forwards `set_epoch` to the dataset only in some configurations)."""

    def __init__(self, dataset: VideoClipDataset):
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.dataset.set_epoch(int(state.epoch or 0))  # an integer at an epoch's start, or within it when resuming


def main(args: list[str] | None = None):
    model_args, data_args, training_args = parse_arguments(args)
    if training_args.push_to_hub:
        check_hub_access(training_args)
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%m/%d/%Y %H:%M:%S",
                        handlers=[logging.StreamHandler(sys.stdout)])  # fmt: skip
    log_level = training_args.get_process_log_level()
    logger.setLevel(log_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.enable_default_handler()
    transformers.utils.logging.enable_explicit_format()
    logger.warning(f"Process rank: {training_args.process_index}, device: {training_args.device}, "
                   f"world size: {training_args.world_size}")  # fmt: skip
    # Pinned memory only helps copies to a GPU; persistent workers would repeat the first epoch's augmentations.
    training_args.dataloader_pin_memory = training_args.dataloader_pin_memory and torch.cuda.is_available()
    training_args.dataloader_persistent_workers = False
    # The video column holds paths, not model inputs: keep it for the dataset's own decoding.
    training_args.remove_unused_columns = False

    # ---- Data ----
    checkpoint_config = None
    if model_args.model_name_or_path is not None:
        checkpoint_config = AutoConfig.from_pretrained(model_args.model_name_or_path, cache_dir=model_args.cache_dir,
                                                       revision=model_args.model_revision, token=model_args.token)
    known_names = None
    if data_args.label_names_file is not None:
        known_names = [line.strip() for line in Path(data_args.label_names_file).read_text().splitlines() if line.strip()]
    elif checkpoint_config is not None and checkpoint_config.model_type == "evl":
        known_names = [checkpoint_config.id2label[index] for index in range(checkpoint_config.num_labels)]
    with training_args.main_process_first(desc="loading the videos"):
        dataset = load_video_datasets(data_args, model_args.cache_dir, model_args.token)
        dataset, label_names = encode_labels(dataset, data_args.label_column_name, known_names)
    if not training_args.do_train and not training_args.do_eval:  # neither asked for: do what the splits allow
        training_args.do_train, training_args.do_eval = "train" in dataset, "validation" in dataset
    for flag, split in [("do_train", "train"), ("do_eval", "validation")]:
        if getattr(training_args, flag) and split not in dataset:
            raise ValueError(f"--{flag} needs a {split} split: pass --{split}_dir or --{split}_file.")
    for split, limit in [("train", data_args.max_train_samples), ("validation", data_args.max_eval_samples)]:
        if split in dataset and limit is not None:
            dataset[split] = dataset[split].shuffle(seed=training_args.seed).select(range(min(limit, len(dataset[split]))))
    logger.info(f"{len(label_names)} labels: {', '.join(label_names[:20])}{', ...' if len(label_names) > 20 else ''}")

    # ---- Transforms and model ----
    transformers.set_seed(training_args.seed)  # the decoder's (and a random backbone's) initialisation
    model = build_model(model_args, checkpoint_config, label_names)
    if model_args.model_name_or_path is None and not is_embedded_default(model_args, data_args):
        logger.warning("No --model_name_or_path: training a small randomly initialised CLIP backbone. For real videos "
                       "start from CLIP weights, e.g. --model_name_or_path openai/clip-vit-base-patch16.")
    video_processor = build_video_processor(model, model_args, data_args, checkpoint_config)
    num_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info(f"EVL: {model.config.num_frames} frames of {model.config.vision_config.image_size} px, sampling "
                f"{video_processor.frame_sampling} (stride {video_processor.frame_stride}), backbone in "
                f"{model_args.backbone_dtype}; {num_trainable:,} trainable of {model.num_parameters():,} parameters")
    train_dataset = eval_dataset = None
    if training_args.do_train:
        train_dataset = VideoClipDataset(
            dataset["train"], data_args.video_column_name, video_processor, train=True, seed=training_args.seed,
            min_crop_scale=data_args.min_crop_scale, horizontal_flip=data_args.horizontal_flip,
            rand_augment=data_args.rand_augment)  # fmt: skip
    if training_args.do_eval:
        eval_dataset = VideoClipDataset(dataset["validation"], data_args.video_column_name, video_processor,
                                        train=False, num_clips=data_args.num_temporal_views,
                                        num_crops=data_args.num_spatial_views)  # fmt: skip

    # ---- Metric: top-1 and top-5 accuracy, loaded by path so that it works offline ----
    with training_args.main_process_first(desc="loading the metric"):
        metric = evaluate.load(str(EXAMPLES_DIR / "video_accuracy.py"), keep_in_memory=True)

    def compute_metrics(prediction):
        return metric.compute(predictions=prediction.predictions, references=prediction.label_ids)

    # ---- Trainer ----
    config = model.config
    switches = {"temporal convolution": config.use_temporal_conv, "temporal position embedding":
                config.use_temporal_pos_embed, "temporal cross attention": config.use_temporal_cross_attention}
    base = model_args.model_name_or_path
    card_text = "\n".join([
        "A frozen CLIP image encoder looks at every frame; a small decoder with temporal modules reads its features "
        "across frames (\"Frozen CLIP Models are Efficient Video Learners\", Lin et al., ECCV 2022).",
        "",
        f"- Base model: {f'`{base}`' if base else f'a random CLIP vision model, `CLIPVisionConfig({SYNTHETIC_BACKBONE})`'}",
        f"- Data: {data_args.dataset_name or ', '.join(str(getattr(data_args, n)) for n in DATA_SOURCES[1:] if getattr(data_args, n))}",
        f"- {config.num_frames} frames of {config.vision_config.image_size} px, {config.decoder_num_layers} decoder "
        "layers; " + ", ".join(f"{name} {'on' if on else 'off'}" for name, on in switches.items()),
        f"- Frame sampling: {video_processor.frame_sampling}, stride {video_processor.frame_stride}; evaluation "
        f"{data_args.num_temporal_views} temporal x {data_args.num_spatial_views} spatial view(s), softmax averaged",
        f"- Backbone trained in {model_args.backbone_dtype}, saved in float32; decoder and head float32",
    ])  # fmt: skip
    trainer = VideoClassificationTrainer(
        model=model, args=training_args, train_dataset=train_dataset, eval_dataset=eval_dataset,
        processing_class=video_processor, data_collator=collate_fn, compute_metrics=compute_metrics,
        max_skipped_fraction=data_args.max_skipped_fraction, model_card_text=card_text)  # fmt: skip
    card_kwargs = {"model_name": Path(training_args.output_dir).resolve().name, "tags": ["evl", "clip", "video"],
                   "finetuned_from": base if base and not os.path.isdir(base) else None,
                   "dataset": data_args.dataset_name}  # fmt: skip

    if training_args.do_train:
        checkpoint = training_args.resume_from_checkpoint
        if isinstance(checkpoint, str) and checkpoint.lower() in ("true", "last"):
            checkpoint = True  # the last checkpoint in --output_dir
        trainer.add_callback(EpochCallback(train_dataset))
        metrics = trainer.train(resume_from_checkpoint=checkpoint).metrics
        trainer.share_skipped_videos()
        metrics["train_skipped_videos"] = len(trainer.skipped_videos)
        if trainer.skipped_videos:
            logger.warning(f"{len(trainer.skipped_videos)} training videos could not be decoded and were skipped: "
                           f"{sorted(trainer.skipped_videos)}")  # fmt: skip
        # Saved in float32 whatever --backbone_dtype was, so that the model loads and runs anywhere.
        backbone = model.base_model.vision_model
        backbone_dtype = backbone.dtype
        backbone.float()
        trainer.save_model()
        backbone.to(backbone_dtype)
        trainer.log_metrics("train", metrics)
        trainer.save_metrics("train", metrics)
        trainer.save_state()

    if training_args.do_eval:
        # One pass gives the metrics and the predictions for the confusion matrix; across processes the padding
        # duplicates are dropped, so every validation video counts once.
        prediction = trainer.predict(eval_dataset, metric_key_prefix="eval")
        trainer.log(prediction.metrics)
        trainer.log_metrics("eval", prediction.metrics)
        trainer.save_metrics("eval", prediction.metrics)
        if trainer.is_world_process_zero():
            save_confusion_matrix(prediction.predictions.argmax(axis=-1), prediction.label_ids, label_names,
                                  training_args.output_dir)  # fmt: skip

    if trainer.is_world_process_zero():  # for older video models' interface: clips given as lists of frames
        EVLImageProcessor(size=video_processor.size, crop_size=video_processor.crop_size).save_pretrained(
            training_args.output_dir)  # fmt: skip
    if training_args.push_to_hub:
        trainer.push_to_hub(commit_message="End of training", **card_kwargs)
    else:
        trainer.create_model_card(**card_kwargs)


if __name__ == "__main__":
    main()
