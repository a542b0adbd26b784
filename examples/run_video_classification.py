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
With no data or model argument, `accelerate launch examples/run_video_classification.py` trains a small random EVL on
a generated synthetic-motion dataset in minutes on a CPU. Own videos (folders, CSV / JSON lines or Kinetics-style
lists, a Hub dataset, WebDataset shards streamed with `--streaming`), multi-label training (label lists; the generated
`--synthetic_multi_label` dataset), and arguments from a JSON file (`run_video_classification.py args.json`):
docs/training.md.
"""

import contextlib
import functools
import json
import logging
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import evaluate
import huggingface_hub
import numpy as np
import torch
import transformers
from accelerate.utils import gather_object
from datasets import Dataset, DatasetDict, Video, load_dataset
from labels import encode_labels, encode_multi_labels, is_multi_label
from preemption import (
    AtomicCheckpointsMixin,
    FinishedRunMixin,
    PreemptionCallback,
    process_group_destroyed_at_exit,
    resume_checkpoint,
)
from reports import multi_label_metrics, save_average_precision, save_confusion_matrix, write_model_card
from streaming import StreamingClipDataset, StreamingEpochCallback, StreamingTrainerMixin, load_streaming_datasets
from transformers import AutoConfig, CLIPVisionConfig, HfArgumentParser, Trainer, TrainerCallback, TrainingArguments
from transformers.modeling_outputs import ImageClassifierOutput
from video_files import check_video_folder, load_video_file, load_video_folders

from evl_hf import EVLConfig, EVLForVideoClassification, EVLImageProcessor, EVLVideoProcessor
from evl_hf.frame_archives import FrameArchive, decode_clip_jpegs, read_clip_jpegs
from evl_hf.inference import MULTI_LABEL_THRESHOLD, average_view_scores, default_function_to_apply
from evl_hf.quantization import DTYPES, QUANTIZED_DTYPES, quantize_backbone
from evl_hf.utils_io import exit_on_full_disk, output_lock
from evl_hf.video_transforms import stack_clips
from evl_hf.video_utils import FRAME_SAMPLING_STRATEGIES, VideoDecodingError, open_video


logger = logging.getLogger(__name__)

EXAMPLES_DIR = Path(__file__).resolve().parent
DATA_SOURCES = ("dataset_name", "train_dir", "validation_dir", "train_file", "validation_file")
# EVLConfig options that change the architecture: continuing from an EVL checkpoint, they must match its weights.
ARCHITECTURE_OPTIONS = (
    "decoder_num_layers",
    "decoder_num_heads",
    "use_temporal_conv",
    "use_temporal_pos_embed",
    "use_temporal_cross_attention",
)
EVL_OPTIONS = (*ARCHITECTURE_OPTIONS, "num_frames", "decoder_mlp_dropout", "classifier_dropout")

# The embedded default (no data and no model argument): a random 2-layer, 128-wide ViT on 64x64 frames in 8x8 patches,
# trained on the synthetic-motion dataset with the settings of synthetic_motion_args.json (arguments given still win).
SYNTHETIC_BACKBONE = dict(
    hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4, image_size=64, patch_size=8
)
SYNTHETIC_DEFAULTS = json.loads((EXAMPLES_DIR / "synthetic_motion_args.json").read_text())
# --synthetic_multi_label: the same, but for these settings, on the multi-label variant of the dataset
MULTI_LABEL_DEFAULTS = SYNTHETIC_DEFAULTS | json.loads((EXAMPLES_DIR / "synthetic_multi_label_args.json").read_text())
# TrainingArguments defaults of this script, for every run. Persistent DataLoader workers are started once, not forked
# again at every epoch from a parent whose other threads (pyarrow's, gloo's, tqdm's) may hold a lock the child then
# waits for forever; they also save the start of every epoch's workers (docs/training.md).
TRAINING_DEFAULTS = {"dataloader_persistent_workers": True}


def arg(default, help: str, **metadata):  # a dataclass field with its `--help` text
    return field(default=default, metadata={"help": help, **metadata})


@dataclass
class ModelArguments:
    """Which model to fine-tune, and the EVL options of a model built from CLIP weights."""

    model_name_or_path: str | None = arg(None, "Hub id or folder of a CLIP or EVL checkpoint (or a random CLIP).")
    num_frames: int | None = arg(None, "Frames per clip (T): the EVL checkpoint's, otherwise 8.")
    decoder_num_layers: int | None = arg(None, "Decoder layers (M), reading the last M encoder layers. Default 4.")
    decoder_num_heads: int | None = arg(None, "Decoder attention heads. Defaults to the backbone's.")
    decoder_mlp_dropout: float | None = arg(None, "Dropout in the decoder MLPs. Default 0.5 (the paper's).")
    classifier_dropout: float | None = arg(None, "Dropout before the classifier. Default 0.5 (the paper's).")
    use_temporal_conv: bool | None = arg(None, "Temporal depthwise convolution (default True).")
    use_temporal_pos_embed: bool | None = arg(None, "Temporal position embedding (default True).")
    use_temporal_cross_attention: bool | None = arg(None, "Temporal cross attention (default True).")
    freeze_backbone: bool = arg(True, "Keep the CLIP encoder frozen (the paper); False fine-tunes it too.")
    backbone_dtype: str = arg(
        "float32",
        "CLIP encoder dtype in training (saved float32); int8 needs torchao and a frozen backbone.",
        choices=list(DTYPES),
    )
    ignore_mismatched_sizes: bool = arg(False, "Replace an EVL checkpoint's classifier whose labels differ.")
    cache_dir: str | None = arg(None, "Where models and datasets from the Hub are stored.")
    model_revision: str = arg("main", "Branch, tag or commit of the model on the Hub.")
    token: str | None = arg(None, "Hub token for private models and datasets.")


@dataclass
class DataTrainingArguments:
    """Which videos to train and evaluate on, and how clips are sampled and augmented."""

    dataset_name: str | None = arg(None, "A dataset on the Hub (needs a connection) or a local dataset folder.")
    dataset_config_name: str | None = arg(None, "The dataset's configuration.")
    train_dir: str | None = arg(None, "Training videos in the videofolder layout: <train_dir>/<label>/<video>.")
    validation_dir: str | None = arg(None, "Validation videos in the videofolder layout, as --train_dir.")
    train_file: str | None = arg(None, "A .csv/.json/.jsonl (video, label) list, or `path.mp4 label_index` lines.")
    validation_file: str | None = arg(None, "Validation list, as --train_file.")
    video_root: str | None = arg(None, "Where relative paths of list files start (default: the list's folder).")
    label_names_file: str | None = arg(
        None, "Label names, line i naming index i (of a .txt list), or the label set of multi-label training."
    )
    video_column_name: str = arg("video", "Column holding the videos.")
    label_column_name: str = arg("label", "Column holding the labels (a list of labels each: multi-label training).")
    label_separator: str = arg(";", "Multi-label CSV: the character joining a video's labels (`run;jump`).")
    threshold: float = arg(
        MULTI_LABEL_THRESHOLD, "Multi-label: a label is predicted when its probability is above this (for F1)."
    )
    max_train_samples: int | None = arg(None, "Keep only this many training videos (a random subset).")
    max_eval_samples: int | None = arg(None, "Keep only this many validation videos (a random subset).")
    frame_sampling: str = arg(
        "dense",
        "Frames --frame_stride apart, or spread over the video (uniform, segment).",
        choices=list(FRAME_SAMPLING_STRATEGIES),
    )
    frame_stride: int | None = arg(None, "Distance between dense-sampled frames: the checkpoint's, or 16.")
    num_temporal_views: int = arg(1, "Evaluation: clips spread over each video; probabilities averaged over views.")
    num_spatial_views: int = arg(1, "Evaluation: crops spread along each frame's long side (1: centre crop).")
    min_crop_scale: float = arg(0.08, "Training RandomResizedCrop: smallest fraction of the frame area (0.08-1).")
    horizontal_flip: bool = arg(False, "Training: flip half of the clips (if labels ignore left and right).")
    rand_augment: bool = arg(False, "Training: RandAugment, 4 ops at magnitude 7 of 10 (the paper's recipe).")
    augment_on_device: bool | None = arg(
        None,
        "DataLoader workers hand over uint8 clips (training ones cropped); the flip, RandAugment and normalisation run "
        "in batches on the model's device. False: all in the workers, float32. Default: on a GPU, not on the CPU.",
    )
    decode_device: str | None = arg(
        None,
        "Frame archives: the workers hand over training clips' JPEGs, decoded in batches on the model's GPU (cuda: "
        "nvJPEG; auto: when training on a GPU from archives; cpu: in the training process, to check the path). "
        "Default: the workers decode.",
        choices=["auto", "cuda", "cpu"],
    )
    max_skipped_fraction: float = arg(0.05, "Training skips undecodable videos, and stops past this fraction.")
    streaming: bool = arg(
        False,
        "Stream the videos from WebDataset shards (--train_file/--validation_file as .tar "
        "paths or globs) or --dataset_name instead of loading them; needs --max_steps.",
    )
    shuffle_buffer_size: int = arg(
        256,
        "--streaming: rows each DataLoader worker shuffles in memory (0: only the "
        "order of the shards, which changes every epoch, is shuffled).",
    )
    synthetic_data_dir: str | None = arg(None, "Cache folder of the synthetic-motion dataset.")
    synthetic_train_videos_per_label: int = arg(300, "Synthetic-motion dataset: training videos per label.")
    synthetic_validation_videos_per_label: int = arg(50, "Synthetic-motion dataset: validation videos per label.")
    synthetic_multi_label: bool = arg(
        False,
        "Without data: the synthetic dataset's multi-label variant, one or two "
        "objects a clip, labelled with the set of their directions.",
    )

    def __post_init__(self):
        for split in ("train", "validation"):
            if getattr(self, f"{split}_dir") is not None and getattr(self, f"{split}_file") is not None:
                raise ValueError(f"Give the {split} videos as --{split}_dir or as --{split}_file, not both.")
        if self.num_temporal_views < 1 or self.num_spatial_views < 1:
            raise ValueError("--num_temporal_views and --num_spatial_views must be at least 1.")
        if self.streaming:
            if (
                self.train_dir
                or self.validation_dir
                or any(path and not path.lower().endswith(".tar") for path in (self.train_file, self.validation_file))
            ):
                raise ValueError(
                    "--streaming reads WebDataset shards: give --train_file/--validation_file as .tar "
                    "paths or globs ('shards/train-*.tar'), or --dataset_name. Make shards of a folder "
                    "or list with `evl-hf prepare-videos INPUT OUTPUT_DIR --format webdataset`."
                )
            if self.max_train_samples is not None or self.max_eval_samples is not None or self.shuffle_buffer_size < 0:
                raise ValueError(
                    "--max_train_samples/--max_eval_samples select from loaded datasets; with --streaming "
                    "--max_steps bounds training, and --shuffle_buffer_size must not be negative."
                )
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(
                f"--threshold {self.threshold}: a probability strictly between 0 and 1 is needed (0.5 "
                "predicts a label when it is more likely than not)."
            )
        if self.synthetic_multi_label and any(getattr(self, name) is not None for name in DATA_SOURCES):
            raise ValueError(
                "--synthetic_multi_label generates the training and validation data: leave out "
                f"--{' and --'.join(name for name in DATA_SOURCES if getattr(self, name) is not None)}."
            )
        if not (0.0 < self.min_crop_scale <= 1.0 and 0.0 <= self.max_skipped_fraction <= 1.0):
            raise ValueError(
                f"Need 0 < --min_crop_scale <= 1 and 0 <= --max_skipped_fraction <= 1, got "
                f"{self.min_crop_scale} and {self.max_skipped_fraction}."
            )


def is_embedded_default(model_args: ModelArguments, data_args: DataTrainingArguments) -> bool:
    return model_args.model_name_or_path is None and all(getattr(data_args, name) is None for name in DATA_SOURCES)


def parse_arguments(args: list[str] | None = None):
    """The argument dataclasses from the command line or a JSON file; the embedded default's without model or data."""
    args = sys.argv[1:] if args is None else list(args)
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, TrainingArguments))
    parser.set_defaults(**TRAINING_DEFAULTS)
    if len(args) == 1 and args[0].endswith(".json"):
        values = TRAINING_DEFAULTS | json.loads(Path(args[0]).read_text())
        parsed = parser.parse_dict(values)
        defaults = MULTI_LABEL_DEFAULTS if parsed[1].synthetic_multi_label else SYNTHETIC_DEFAULTS
        return parser.parse_dict({**defaults, **values}) if is_embedded_default(*parsed[:2]) else parsed
    parsed = parser.parse_args_into_dataclasses(args)
    if not is_embedded_default(*parsed[:2]):
        return parsed
    parser.set_defaults(**(MULTI_LABEL_DEFAULTS if parsed[1].synthetic_multi_label else SYNTHETIC_DEFAULTS))
    return parser.parse_args_into_dataclasses(args)


def check_hub_access():
    """Fails before any work when `--push_to_hub` cannot succeed because the Hub is switched off (a missing token
    fails when the Trainer creates the repository, also before training)."""
    if huggingface_hub.constants.HF_HUB_OFFLINE:
        raise ValueError(
            "--push_to_hub needs the Hub, but offline mode is on (HF_HUB_OFFLINE=1). Train without "
            "--push_to_hub and upload the output folder later with `hf upload`."
        )


# ---- Data -----------------------------------------------------------------------------------------------------------


def load_video_datasets(data_args: DataTrainingArguments, cache_dir: str | None, token: str | None) -> DatasetDict:
    """`train` and/or `validation` splits with video and label columns; without data, the synthetic-motion dataset."""
    if data_args.dataset_name is not None:
        dataset = load_dataset(data_args.dataset_name, data_args.dataset_config_name, cache_dir=cache_dir, token=token)
        if "validation" not in dataset and "test" in dataset:
            logger.info(f"{data_args.dataset_name} has no validation split: evaluating on its test split.")
            dataset["validation"] = dataset["test"]
        dataset = DatasetDict({split: dataset[split] for split in ("train", "validation") if split in dataset})
    else:
        if all(getattr(data_args, name) is None for name in DATA_SOURCES):
            import synthetic_data  # examples/synthetic_data.py

            generate = (
                synthetic_data.generate_synthetic_multi_label_dataset
                if data_args.synthetic_multi_label
                else synthetic_data.generate_synthetic_motion_dataset
            )
            folder = generate(
                data_args.synthetic_data_dir,
                train_videos_per_label=data_args.synthetic_train_videos_per_label,
                validation_videos_per_label=data_args.synthetic_validation_videos_per_label,
            )
            split_paths = {split: str(folder / split) for split in ("train", "validation")}
            for split, path in split_paths.items():  # label lists, or the videofolder layout
                setattr(
                    data_args,
                    *(
                        (f"{split}_file", f"{path}.jsonl")
                        if data_args.synthetic_multi_label
                        else (f"{split}_dir", path)
                    ),
                )
        folders = {split: getattr(data_args, f"{split}_dir") for split in ("train", "validation")}
        folders = {split: check_video_folder(folder, f"--{split}_dir") for split, folder in folders.items() if folder}
        dataset = DatasetDict()
        if folders:
            dataset.update(load_video_folders(folders, cache_dir))
        for split in ("train", "validation"):
            if (path := getattr(data_args, f"{split}_file")) is not None:
                dataset[split] = load_video_file(path, f"--{split}_file", data_args, cache_dir)

    for split in dataset:
        for argument in ("video_column_name", "label_column_name"):
            column = getattr(data_args, argument)
            if column not in dataset[split].column_names:
                raise ValueError(
                    f"--{argument} {column!r} is not a column of the {split} split; its columns are "
                    f"{dataset[split].column_names}."
                )
        # Rows keep the path (or bytes): the workers decode the sampled frames themselves and can name a broken file.
        if isinstance(dataset[split].features[data_args.video_column_name], Video):
            dataset[split] = dataset[split].cast_column(data_args.video_column_name, Video(decode=False))
    return dataset


# ---- Transforms: the video processor makes every clip ---------------------------------------------------------------


class VideoClipDataset(torch.utils.data.Dataset):
    """Clips of the videos (paths, or `{"path", "bytes"}`) of a `datasets.Dataset` with integer `labels`, made by the
    video processor with `processor_kwargs` in the DataLoader workers. Training draws frames and augmentation from
    `(seed, epoch, index)` only, so a resumed run sees the clips an uninterrupted one would, and skips an undecodable
    video with a warning (named in `skipped_videos`); at evaluation it is an error, as skipping would bias accuracy."""

    def __init__(
        self,
        dataset: Dataset,
        video_column: str,
        video_processor: EVLVideoProcessor,
        *,
        train: bool,
        seed: int = 0,
        jpegs: bool = False,
        **processor_kwargs,
    ):
        self.dataset, self.video_column, self.video_processor = dataset, video_column, video_processor
        self.train, self.seed, self.processor_kwargs = train, seed, processor_kwargs
        self.jpegs = jpegs  # frame archives' clips as JPEGs, decoded by the training step (--decode_device)
        # In shared memory: DataLoader workers that live across epochs (persistent workers) read the epoch the main
        # process sets, where an attribute of their copy of the dataset would stay at its first value.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int):  # in the main process, before the epoch's first batch: see EpochCallback
        self._epoch.fill_(epoch)

    def _name(self, row: dict, index: int) -> str:
        video = row[self.video_column]
        return str(video.get("path") or f"row {index}") if isinstance(video, dict) else str(video)

    def _clip(self, row: dict, index: int, **kwargs) -> dict:
        """`pixel_values` of a row's video, and with `device_transforms` in training its `augmentation` row."""
        video = row[self.video_column]
        if isinstance(video, dict):  # a `Video(decode=False)` row: the bytes stored in the dataset, or a path
            # stored bytes get the checks and diagnosis of a file
            video = open_video(video["bytes"], name=self._name(row, index)) if video.get("bytes") else video["path"]
        if self.jpegs:
            return {"clip": read_clip_jpegs(self.video_processor, video, **self.processor_kwargs, **kwargs)}
        clip = self.video_processor(video, return_tensors="pt", **self.processor_kwargs, **kwargs)
        return {name: values[0] for name, values in clip.items()}

    def __getitem__(self, index: int) -> dict:
        if not self.train:  # a row is read once: with stored bytes, reading it copies the video
            row = self.dataset[index]
            try:
                clip = self._clip(row, index)  # (T, 3, H, W), or (views, T, 3, H, W)
            except (VideoDecodingError, OSError) as error:
                name = self._name(row, index)
                raise VideoDecodingError(f"Validation video {name} cannot be decoded: {error}") from error
            return {**clip, "labels": row["labels"]}
        # A stream of its own for every (seed, epoch, index): independent of the worker, the process and the order.
        state = np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0]
        generator = torch.Generator().manual_seed(int(state))
        skipped, candidate = [], index
        for _ in range(16):  # replacements tried before giving up: a run with that many failures is stopped anyway
            row = self.dataset[candidate]
            try:
                seed = int(torch.randint(2**62, (), generator=generator))
                clip = self._clip(row, candidate, do_augment=True, seed=seed)
            except (VideoDecodingError, OSError) as error:
                skipped.append(self._name(row, candidate))
                logger.warning(f"Skipping training video {skipped[-1]}: {error}")
                candidate = int(torch.randint(len(self.dataset), (), generator=generator))
                continue
            return {**clip, "labels": row["labels"], "skipped_videos": skipped}
        raise VideoDecodingError(f"16 videos in a row could not be decoded, the last ones: {skipped[-3:]}.")


def collate_fn(examples: list[dict], crop_size: tuple[int, int] | None = None) -> dict:
    """Stacks clips into `pixel_values` `(B, T, 3, H, W)` (or `(B, views, T, 3, H, W)`; uint8 with
    `device_transforms`, and training clips' `augmentation` rows `(B, 13)`, cropped to `crop_size` here only if their
    sizes differ) and `labels` `(B,)`; a list of `clips` of JPEGs instead with --decode_device."""
    batch = {}
    if "augmentation" in examples[0]:  # uint8 training clips: the device crops them too where they stack uncropped
        batch["augmentation"] = rows = torch.stack([example["augmentation"] for example in examples])
        batch["pixel_values"] = stack_clips([example["pixel_values"] for example in examples], rows, crop_size)
    elif "pixel_values" in examples[0]:
        batch["pixel_values"] = torch.stack([example["pixel_values"] for example in examples])
    if "clip" in examples[0]:
        batch["clips"] = [example["clip"] for example in examples]
    batch["labels"] = torch.tensor([example["labels"] for example in examples])
    skipped = [name for example in examples for name in example.get("skipped_videos", [])]
    return {**batch, "skipped_videos": skipped} if "skipped_videos" in examples[0] else batch


# ---- Model ----------------------------------------------------------------------------------------------------------


def build_model(
    model_args: ModelArguments, checkpoint_config, label_names: list[str], multi_label: bool = False
) -> tuple[EVLForVideoClassification, dict[str, torch.Tensor] | None]:
    """From an EVL checkpoint (training continues), around a CLIP checkpoint, or, without --model_name_or_path,
    around a small randomly initialised CLIP. The backbone is in --backbone_dtype, the decoder and head in float32.
    `multi_label`: the config's problem_type is multi-label classification (sigmoids and a binary cross-entropy).
    Returns the model and, for a quantized backbone, the float32 backbone weights it was quantized from (else None)."""
    labels = {
        "id2label": dict(enumerate(label_names)),
        "label2id": {name: i for i, name in enumerate(label_names)},
        "problem_type": "multi_label_classification" if multi_label else None,
    }  # None: inferred by the loss
    options = {name: getattr(model_args, name) for name in EVL_OPTIONS if getattr(model_args, name) is not None}
    hub = {"cache_dir": model_args.cache_dir, "revision": model_args.model_revision, "token": model_args.token}
    (dtype, _), base = DTYPES[model_args.backbone_dtype], model_args.model_name_or_path  # float32 to be quantized
    if checkpoint_config is None:
        model = EVLForVideoClassification(
            EVLConfig(vision_config=CLIPVisionConfig(**SYNTHETIC_BACKBONE), **labels, **options)
        )
        model.base_model.vision_model.to(dtype)
    elif checkpoint_config.model_type == "evl":
        for name in ARCHITECTURE_OPTIONS:
            if name in options and options[name] != getattr(checkpoint_config, name):
                raise ValueError(
                    f"--{name} {options[name]} differs from the EVL checkpoint's "
                    f"{getattr(checkpoint_config, name)}: its weights need their architecture."
                )
        overrides = {name: options[name] for name in EVL_OPTIONS[len(ARCHITECTURE_OPTIONS) :] if name in options}
        model = EVLForVideoClassification.from_pretrained(
            base, dtype=dtype, ignore_mismatched_sizes=model_args.ignore_mismatched_sizes, **labels, **overrides, **hub
        )
    elif checkpoint_config.model_type in ("clip", "clip_vision_model"):
        model = EVLForVideoClassification.from_clip_pretrained(base, dtype=dtype, **labels, **options, **hub)
    else:
        raise ValueError(
            f"--model_name_or_path {base!r} is a {checkpoint_config.model_type!r} model; expected a CLIP "
            "checkpoint (CLIPModel or CLIPVisionModel) or an EVL checkpoint."
        )
    # Loading makes every parameter trainable again; the Trainer's optimizer only takes those with requires_grad.
    model.freeze_backbone() if model_args.freeze_backbone else model.unfreeze_backbone()
    if model_args.backbone_dtype in QUANTIZED_DTYPES:
        if not model_args.freeze_backbone:
            raise ValueError(
                f"--backbone_dtype {model_args.backbone_dtype} quantizes a frozen backbone: torchao's "
                "quantized weights get no gradient. Fine-tune the backbone in float32 or bfloat16, or "
                "keep --freeze_backbone True."
            )
        # The frozen backbone never changes: checkpoints are written with the float32 weights it is quantized from
        # (save_pretrained cannot write torchao tensors of a model quantized in memory), so they load anywhere.
        prefix = f"{model.base_model_prefix}.vision_model."
        float32_backbone = {
            prefix + name: tensor.clone() for name, tensor in model.base_model.vision_model.state_dict().items()
        }
        quantize_backbone(model, model_args.backbone_dtype)
        return model, float32_backbone
    return model, None


def build_video_processor(model, model_args: ModelArguments, data_args: DataTrainingArguments, checkpoint_config):
    """An EVL checkpoint's processor settings with the backbone's image size, T and the sampling arguments."""
    settings = {}
    if checkpoint_config is not None and checkpoint_config.model_type == "evl":
        with contextlib.suppress(OSError):  # a checkpoint saved without its processor
            settings = EVLVideoProcessor.get_video_processor_dict(
                model_args.model_name_or_path, token=model_args.token, cache_dir=model_args.cache_dir
            )[0]
    image_size = model.config.vision_config.image_size
    settings.update(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        num_frames=model.config.num_frames,
        frame_sampling=data_args.frame_sampling,
    )
    settings["frame_stride"] = data_args.frame_stride or settings.get("frame_stride", EVLVideoProcessor.frame_stride)
    return EVLVideoProcessor(**{key: value for key, value in settings.items() if key != "video_processor_type"})


def decode_device(data_args: DataTrainingArguments, device: torch.device, videos) -> torch.device | None:
    """Where --decode_device decodes training clips (None: in the workers): the training GPU, or the CPU, when the
    first training video is a frame archive (for `auto`, also only when training on a GPU)."""
    choice, augment_on_device = data_args.decode_device, data_args.augment_on_device
    if choice == "cuda" and device.type != "cuda":
        raise ValueError(f"--decode_device cuda decodes on the training GPU, but this run trains on {device}.")
    if choice in ("cuda", "cpu") and augment_on_device is False:
        raise ValueError("--decode_device hands the training step uint8 clips: drop --augment_on_device False.")
    auto_off = choice == "auto" and (device.type != "cuda" or augment_on_device is False)
    if choice is None or videos is None or auto_off:
        return None
    device = torch.device("cpu") if choice == "cpu" else device
    video = next(iter(videos))[data_args.video_column_name]
    video = (video.get("bytes") or video["path"]) if isinstance(video, dict) else video
    with contextlib.suppress(VideoDecodingError, OSError):  # the workers then say what is wrong with it
        if isinstance(open_video(video), FrameArchive):
            logger.info(f"Training clips: frame archives' JPEGs, decoded in batches on {device}")
            return device
    if choice == "auto":
        return None
    raise ValueError(
        f"--decode_device decodes frame archives, and the first training video, {video!r:.80}, is not one: prepare "
        "the videos with `evl-hf prepare-videos --format frames`, or leave --decode_device out."
    )


# ---- Trainer --------------------------------------------------------------------------------------------------------


class VideoClassificationTrainer(FinishedRunMixin, AtomicCheckpointsMixin, StreamingTrainerMixin, Trainer):
    """The Trainer, plus: complete-or-absent checkpoints, and no step past `max_steps` when a finished run is resumed
    (examples/preemption.py); streamed training data (examples/streaming.py); views of an evaluation clip
    (`pixel_values` `(B, views, T, 3, H, W)`) scored by mean probabilities; undecodable training videos counted over
    all processes at each logging step (each step on one process), stopping the run past `max_skipped_fraction`; the
    model card's extras; `float32_backbone`, the weights a quantized backbone was made from, saved in its place
    (`build_model` returns them)."""

    def __init__(
        self,
        *args,
        max_skipped_fraction: float = 0.05,
        model_card_text: str = "",
        float32_backbone: dict[str, torch.Tensor] | None = None,
        decode_device: torch.device | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.max_skipped_fraction, self.model_card_text = max_skipped_fraction, model_card_text
        self.decode_device = decode_device
        self.float32_backbone = float32_backbone
        self.skipped_videos, self._new_skipped = set(), []  # over all processes; on this one, not yet shared
        self.videos_read, self._new_read = 0, 0  # clips and skipped videos: a stream's size so far

    def get_train_dataloader(self):
        loader = super().get_train_dataloader()
        base = getattr(loader, "base_dataloader", loader)  # the DataLoader inside Accelerate's wrapper
        if base.generator is None:
            # Starting workers draws their seed from the loader's generator, by default the global one, which dropout
            # draws from too: started once (persistent workers) or every epoch, they would then leave it otherwise in
            # a run resumed at an epoch's start than in the run it continues.
            base.generator = torch.Generator().manual_seed(self.args.seed)
        return loader

    @contextlib.contextmanager
    def _workers_per_evaluation(self):
        # Only the training workers persist. Kept, evaluation's would sit idle through training, where a SIGTERM to
        # the process group (SLURM's) ends them, and a DataLoader whose worker died fails the run instead of letting
        # it save (examples/preemption.py makes only the training workers ignore it).
        persistent, self.args.dataloader_persistent_workers = self.args.dataloader_persistent_workers, False
        try:
            yield
        finally:
            self.args.dataloader_persistent_workers = persistent

    def get_eval_dataloader(self, eval_dataset=None):
        with self._workers_per_evaluation():
            return super().get_eval_dataloader(eval_dataset)

    def get_test_dataloader(self, test_dataset):
        with self._workers_per_evaluation():
            return super().get_test_dataloader(test_dataset)

    def _prepare_inputs(self, inputs: dict) -> dict:
        augmentation = inputs.pop("augmentation", None)  # read on the host: which clip gets which transform
        if "clips" in inputs:  # frame archives' JPEGs (--decode_device): decoded as one batch
            made = decode_clip_jpegs(inputs.pop("clips"), self.processing_class, self.decode_device, True)
            inputs["pixel_values"], augmentation = made["pixel_values"], made.get("augmentation")
            for name, error in made["skipped"].items():  # counted as the workers' skipped videos are
                logger.warning(f"Skipping training video {name}: {error}")
                self._new_skipped.append(name)
            inputs["labels"] = inputs["labels"][made["kept"]]
        inputs = super()._prepare_inputs(inputs)
        if inputs["pixel_values"].dtype == torch.uint8:  # uint8 from the workers: augmented and normalised here
            inputs["pixel_values"] = self.processing_class.augment_batch(inputs["pixel_values"], augmentation)
        return inputs

    def training_step(self, model, inputs, num_items_in_batch=None):
        skipped = inputs.pop("skipped_videos", [])
        self._new_skipped.extend(skipped)
        self._new_read += len(inputs["labels"]) + len(skipped)
        # All processes share at the same steps (a collective call), so they reach the same decision together.
        if self.args.world_size == 1 or (self.state.global_step + 1) % self.args.logging_steps == 0:
            self.share_skipped_videos()
        return super().training_step(model, inputs, num_items_in_batch)

    def share_skipped_videos(self, final: bool = False):
        """Counts the videos skipped on every process so far; stops the run past `max_skipped_fraction` (of the
        dataset, or of the videos read from a stream, judged from 100 on and at the end)."""
        shared = [(self._new_skipped, self._new_read)]
        for skipped, read in gather_object(shared) if self.args.world_size > 1 else shared:
            self.skipped_videos.update(skipped)
            self.videos_read += read
        self._new_skipped, self._new_read = [], 0
        streamed = isinstance(self.train_dataset, StreamingClipDataset)
        total = self.videos_read if streamed else len(self.train_dataset)
        if streamed and total < 100 and not final:
            return
        fraction = len(self.skipped_videos) / max(total, 1)
        if fraction > self.max_skipped_fraction:
            raise RuntimeError(
                f"{len(self.skipped_videos)} of {total} training videos "
                f"({fraction:.1%}) could not be decoded, more than --max_skipped_fraction. First ones: "
                f"{sorted(self.skipped_videos)[:5]}. Check the files, or raise --max_skipped_fraction."
            )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        pixel_values = inputs["pixel_values"]
        if pixel_values.ndim == 5:  # (B, T, 3, H, W): one view per clip
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        batch_size, num_views = pixel_values.shape[:2]
        logits = model(pixel_values=pixel_values.flatten(0, 1)).logits  # (B * views, num_labels)
        # (B, views, num_labels) -> (B, num_labels): the library's multi-view score, an average of probabilities (the
        # softmax, or a multi-label model's sigmoids), returned as the logits whose probabilities they are: their log
        # (softmax of log p is p), or their logit (clamped: confident views average to 1.0 in float32).
        unwrapped = self.accelerator.unwrap_model(model)
        probabilities = average_view_scores(logits.view(batch_size, num_views, -1), unwrapped.config)
        function = default_function_to_apply(unwrapped.config)
        if function == "softmax":
            scores = probabilities.log()
        elif function == "sigmoid":
            scores = probabilities.logit(eps=1e-6)
        else:  # a regression's outputs: their mean is the score
            scores = probabilities
        labels = inputs.get("labels")
        loss = None if labels is None else unwrapped.loss_function(labels, scores, unwrapped.config)
        return (loss, ImageClassifierOutput(loss=loss, logits=scores)) if return_outputs else loss

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None):
        if self.float32_backbone is not None:
            state_dict = {**(self.model.state_dict() if state_dict is None else state_dict), **self.float32_backbone}
        super()._save(output_dir, state_dict)

    def create_model_card(self, **kwargs):
        if self.is_world_process_zero():  # examples/reports.py
            write_model_card(
                self, self.model_card_text, self.hub_model_id if self.args.push_to_hub else None, **kwargs
            )


class EpochCallback(TrainerCallback):
    """Tells the training dataset each epoch before its workers start, so that each epoch draws new augmentations."""

    def __init__(self, dataset: VideoClipDataset):
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.dataset.set_epoch(int(state.epoch or 0))  # an integer at an epoch's start, or within it when resuming


def main(args: list[str] | None = None):
    """Parses the arguments and runs with --output_dir locked (by the main process) against a second run, ending with
    one line when its disk is full."""
    model_args, data_args, training_args = parse_arguments(args)
    if training_args.push_to_hub:
        check_hub_access()
    output_dir, rerun = training_args.output_dir, "--resume_from_checkpoint last resumes from the last checkpoint"
    with exit_on_full_disk(output_dir, "--output_dir", rerun), contextlib.ExitStack() as stack:
        if training_args.process_index == 0:
            os.makedirs(output_dir, exist_ok=True)
            stack.enter_context(output_lock(output_dir, "--output_dir"))
        train_and_evaluate(model_args, data_args, training_args)


def train_and_evaluate(model_args: ModelArguments, data_args: DataTrainingArguments, training_args: TrainingArguments):
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", stream=sys.stdout)
    logger.setLevel(log_level := training_args.get_process_log_level())
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    logger.warning(
        f"Process rank: {training_args.process_index}, device: {training_args.device}, world size: "
        f"{training_args.world_size}"
    )
    # Pinned memory only helps copies to a GPU; the video column holds paths, not model inputs, and must reach the
    # dataset.
    training_args.dataloader_pin_memory = training_args.dataloader_pin_memory and torch.cuda.is_available()
    training_args.remove_unused_columns = False
    # without workers there is nothing to keep (and the DataLoader refuses persistent_workers)
    training_args.dataloader_persistent_workers &= training_args.dataloader_num_workers > 0
    if data_args.streaming:
        if training_args.max_steps <= 0 and (training_args.do_train or not training_args.do_eval):
            raise ValueError(
                "--streaming needs --max_steps: a stream has no length, so --num_train_epochs cannot say "
                "how many steps to train."
            )
        if "epoch" in (training_args.eval_strategy, training_args.save_strategy, training_args.logging_strategy):
            raise ValueError(
                "With --streaming, evaluate, save and log by steps: an epoch is a pass over one process's "
                "shards, and processes end theirs at different steps."
            )
        training_args.ignore_data_skip = True  # the stateful dataloader resumes where it was: nothing to skip

    # ---- Data ----
    embedded = is_embedded_default(model_args, data_args)  # asked before the synthetic data fills in the folders
    checkpoint_config = known_names = None
    multi_label = False  # streamed datasets hold single labels
    if (base := model_args.model_name_or_path) is not None:
        checkpoint_config = AutoConfig.from_pretrained(
            base, cache_dir=model_args.cache_dir, revision=model_args.model_revision, token=model_args.token
        )
    if data_args.label_names_file is not None:
        names_text = Path(data_args.label_names_file).read_text(encoding="utf-8")
        known_names = [name.strip() for name in names_text.strip().splitlines()]  # line i names index i
    elif checkpoint_config is not None and checkpoint_config.model_type == "evl":
        known_names = [checkpoint_config.id2label[index] for index in range(checkpoint_config.num_labels)]
    with training_args.main_process_first(desc="loading the videos"):
        if data_args.streaming:  # WebDataset shards or a Hub dataset as streams with `labels`: examples/streaming.py
            dataset, label_names = load_streaming_datasets(
                data_args, known_names, model_args.cache_dir, model_args.token, encode_labels
            )
        else:
            dataset = load_video_datasets(data_args, model_args.cache_dir, model_args.token)
            multi_label = is_multi_label(dataset, data_args.label_column_name)  # lists of labels: examples/labels.py
            dataset, label_names = (
                encode_multi_labels(dataset, data_args.label_column_name, known_names, data_args.label_names_file)
                if multi_label
                else encode_labels(dataset, data_args.label_column_name, known_names)
            )
    sided = [name for name in label_names if re.search(r"\b(left|right)\b", str(name), re.IGNORECASE)]
    if data_args.horizontal_flip and sided:  # Something-Something v2's "Pushing something from left to right", say
        logger.warning(
            f"--horizontal_flip with labels that say left or right ({', '.join(sided[:3])}"
            f"{', ...' if len(sided) > 3 else ''}): a flipped clip shows the opposite of its label. Train without it "
            "(the paper's Something-Something v2 recipe has no flip)."
        )
    if not training_args.do_train and not training_args.do_eval:  # neither asked for: what the splits allow
        training_args.do_train, training_args.do_eval = "train" in dataset, "validation" in dataset
    for flag, split, limit in [
        ("do_train", "train", data_args.max_train_samples),
        ("do_eval", "validation", data_args.max_eval_samples),
    ]:
        if getattr(training_args, flag) and split not in dataset:
            raise ValueError(f"--{flag} needs a {split} split: pass --{split}_dir or --{split}_file.")
        if split in dataset and limit is not None:
            subset = dataset[split].shuffle(seed=training_args.seed)
            dataset[split] = subset.select(range(min(limit, len(subset))))

    # ---- Model and transforms ----
    transformers.set_seed(training_args.seed)  # the decoder's (and a random backbone's) initialisation
    model, float32_backbone = build_model(model_args, checkpoint_config, label_names, multi_label)
    if base is None and not embedded:
        logger.warning(
            "No --model_name_or_path: training a small randomly initialised CLIP backbone. For real videos "
            "start from CLIP weights, e.g. --model_name_or_path openai/clip-vit-base-patch16."
        )
    video_processor = build_video_processor(model, model_args, data_args, checkpoint_config)
    config, processor = model.config, video_processor
    description = [
        f"Base model: {f'`{base}`' if base else f'random, `CLIPVisionConfig(**{SYNTHETIC_BACKBONE})`'}; data: "
        + ", ".join(f"`{getattr(data_args, name)}`" for name in DATA_SOURCES if getattr(data_args, name)),
        f"{config.num_frames} frames of {config.vision_config.image_size} px, {config.decoder_num_layers} decoder "
        f"layers; temporal conv / position embedding / cross attention: {config.use_temporal_conv} / "
        f"{config.use_temporal_pos_embed} / {config.use_temporal_cross_attention}",
        f"Sampling {processor.frame_sampling}, stride {processor.frame_stride}; evaluation "
        f"{data_args.num_temporal_views} temporal x {data_args.num_spatial_views} spatial view(s), "
        + (
            f"multi-label: sigmoids averaged, F1 of the labels above --threshold {data_args.threshold}"
            if multi_label
            else "softmax averaged"
        ),
        f"Backbone trained in {model_args.backbone_dtype} and saved in float32; decoder and head in float32",
    ]
    labels = ", ".join(label_names[:10]) + (", ..." if len(label_names) > 10 else "")
    logger.info(
        f"EVL, {model.num_parameters(only_trainable=True):,} trainable parameters, labels {labels}: "
        + "; ".join(description)
    )
    train_dataset = eval_dataset = None
    # On the CPU the "device" is the training process: the transforms would leave the workers and block each step.
    on_device = data_args.augment_on_device
    on_device = training_args.device.type != "cpu" if on_device is None else on_device
    decode_on = decode_device(
        data_args, training_args.device, dataset.get("train") if training_args.do_train else None
    )
    on_device = on_device or decode_on is not None
    if training_args.do_train:
        train_dataset = VideoClipDataset(
            dataset["train"],
            data_args.video_column_name,
            video_processor,
            train=True,
            seed=training_args.seed,
            min_crop_scale=data_args.min_crop_scale,
            horizontal_flip=data_args.horizontal_flip,
            rand_augment=data_args.rand_augment,
            device_transforms=on_device,
            jpegs=decode_on is not None,
        )
    if training_args.do_eval:
        eval_dataset = VideoClipDataset(
            dataset["validation"],
            data_args.video_column_name,
            video_processor,
            train=False,
            num_clips=data_args.num_temporal_views,
            num_crops=data_args.num_spatial_views,
            device_transforms=on_device,
        )
    if data_args.streaming:
        train_dataset, eval_dataset = [
            StreamingClipDataset(
                clips,
                rank=training_args.process_index,
                world_size=training_args.world_size,
                shuffle_buffer_size=data_args.shuffle_buffer_size,
            )
            if clips is not None
            else None
            for clips in (train_dataset, eval_dataset)
        ]

    # ---- Metric: top-1 and top-5 accuracy from examples/video_accuracy.py, loaded by path so it works offline; for
    # multi-label models mAP, F1 and top-1 "any correct" from scikit-learn (examples/reports.py) ----
    with training_args.main_process_first(desc="loading the metric"):
        metric = evaluate.load(str(EXAMPLES_DIR / "video_accuracy.py"), keep_in_memory=True)

    def compute_metrics(prediction):
        if multi_label:
            return multi_label_metrics(prediction.predictions, prediction.label_ids, model.config, data_args.threshold)
        return metric.compute(predictions=prediction.predictions, references=prediction.label_ids)

    # ---- Trainer ----
    trainer = VideoClassificationTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=video_processor,
        # clips of different sizes are cropped in the worker: they would not stack otherwise
        data_collator=functools.partial(
            collate_fn, crop_size=(video_processor.crop_size["height"], video_processor.crop_size["width"])
        ),
        compute_metrics=compute_metrics,
        max_skipped_fraction=data_args.max_skipped_fraction,
        model_card_text="\n".join(f"- {line}" for line in description),
        float32_backbone=float32_backbone,
        decode_device=decode_on,
    )
    if training_args.do_train:
        checkpoint = resume_checkpoint(training_args.resume_from_checkpoint, training_args.output_dir)
        trainer.add_callback((StreamingEpochCallback if data_args.streaming else EpochCallback)(train_dataset))
        trainer.add_callback(preemption := PreemptionCallback())
        metrics = trainer.train(resume_from_checkpoint=checkpoint).metrics
        preemption.exit_if_stopped(training_args.output_dir)  # no final save or evaluation: the run is not finished
        trainer.share_skipped_videos(final=True)
        metrics["train_skipped_videos"] = len(trainer.skipped_videos)
        if trainer.skipped_videos:
            logger.warning(f"Undecodable videos skipped: {sorted(trainer.skipped_videos)}")
        half = model_args.backbone_dtype in ("bfloat16", "float16")  # a quantized one saves its float32 weights
        if half:
            model.base_model.vision_model.float()  # saved in float32 whatever --backbone_dtype was: it loads anywhere
        trainer.save_model()
        if half:
            model.base_model.vision_model.to(DTYPES[model_args.backbone_dtype][0])
        trainer.log_metrics("train", metrics)
        trainer.save_metrics("train", metrics)
        trainer.save_state()

    if training_args.do_eval:
        # One pass gives the metrics and the predictions for the confusion matrix (the per-label average precision
        # of a multi-label model); across processes the padding duplicates are dropped, so every video counts once.
        prediction = trainer.predict(eval_dataset, metric_key_prefix="eval")
        trainer.log(prediction.metrics)
        trainer.log_metrics("eval", prediction.metrics)
        trainer.save_metrics("eval", prediction.metrics)
        if trainer.is_world_process_zero() and multi_label:
            save_average_precision(prediction.predictions, prediction.label_ids, label_names, training_args.output_dir)
        elif trainer.is_world_process_zero():
            save_confusion_matrix(
                prediction.predictions.argmax(axis=-1), prediction.label_ids, label_names, training_args.output_dir
            )

    if trainer.is_world_process_zero():  # for the older interface of video models: clips as lists of frames
        EVLImageProcessor(size=video_processor.size, crop_size=video_processor.crop_size).save_pretrained(
            training_args.output_dir
        )
    card = {
        "model_name": Path(training_args.output_dir).resolve().name,
        "tags": ["evl", "clip", "video"],
        "finetuned_from": base if base and not os.path.isdir(base) else None,
        "dataset": data_args.dataset_name or "local",
    }
    if training_args.push_to_hub:
        trainer.push_to_hub(commit_message="End of training", **card)
    else:
        trainer.create_model_card(**card)


if __name__ == "__main__":
    with process_group_destroyed_at_exit():
        main()
