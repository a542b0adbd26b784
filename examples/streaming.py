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
Training from a stream of videos, for run_video_classification.py's `--streaming`: WebDataset shards (tar files whose
samples are `<key>.mp4` with `<key>.json`, `{"label": name}`, or `<key>.cls`, a label index) or a Hub dataset, read
by 🤗 datasets as an `IterableDataset` and never stored whole.

- [`load_streaming_datasets`]: the shards a path or glob names, checked (a video and a label in every sample, one
  label field in all shards), as streams with an integer `labels` column, and the label names;
- [`StreamingClipDataset`]: clips of a stream, each process reading its own shards (`split_dataset_by_node`) and each
  DataLoader worker its own part of them, through a shuffle buffer;
- [`StreamingTrainerMixin`]: trains from a torchdata `StatefulDataLoader` ([`StreamingDataLoader`]) and saves its
  state with every checkpoint, so that a resumed run takes the samples an uninterrupted one would have taken.

Resuming is exact because every worker's stream is a function of the seed, the epoch and the shards only: a resumed
worker reads its stream again from the epoch's start, without decoding, up to the row it had reached, so its shuffle
buffer holds what it held (`IterableDataset.load_state_dict` alone restores the position in the shards, but empties
the buffer). The dataloader's state says which worker's batch comes next.
"""

import glob
import json
import logging
import os
import tarfile

import numpy as np
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Video, load_dataset
from datasets.distributed import split_dataset_by_node
from datasets.packaged_modules.webdataset.webdataset import VIDEO_EXTENSIONS as DATASETS_VIDEO_EXTENSIONS
from datasets.packaged_modules.webdataset.webdataset import base_plus_ext
from torchdata.stateful_dataloader import StatefulDataLoader
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from evl_hf.frame_archives import FRAME_ARCHIVE_EXTENSION


logger = logging.getLogger(__name__)

# The members read as videos: what datasets decodes as video, and frame archives (which it gives as bytes).
ARCHIVE_MEMBER = FRAME_ARCHIVE_EXTENSION.lstrip(".")
VIDEO_EXTENSIONS = (*DATASETS_VIDEO_EXTENSIONS, ARCHIVE_MEMBER)
LABEL_FIELDS = ("json", "cls")  # the label members of a WebDataset sample: {"label": ...} or an index
STATE_NAME = "streaming_state_{}.pt"  # in each checkpoint, per process


def resolve_shards(pattern: str, argument: str) -> list[str]:
    """The tar files that a path or glob names, sorted; URLs (`hf://`, `s3://`, `https://`) are passed on as given."""
    if "://" in pattern:
        return [pattern]
    paths = sorted(path for path in glob.glob(os.path.expanduser(pattern), recursive=True) if os.path.isfile(path))
    if not paths:
        raise FileNotFoundError(
            f"{argument} {pattern!r} matches no file. Give a .tar shard or a glob of shards, such "
            "as 'shards/train-*.tar' (in quotes, so that the shell leaves it to the script)."
        )
    return paths


def inspect_shards(paths: list[str], label_column: str, argument: str) -> tuple[str, list]:
    """
    Reads the member names of local shards (seeking past the videos) and their label members; checks that every
    sample has a video datasets reads (`.mp4`, `.mkv`, ...) and a label, and that all shards label their samples with
    the same field, since datasets takes the columns of the first shard and would give the others `None`.

    Returns:
        `tuple[str, list]`: the label field (`"json"` or `"cls"`) and the label of every sample.
    """
    fields, labels = {}, []  # label field -> first shard using it
    for path in paths:
        try:
            archive = tarfile.open(path)
        except (tarfile.TarError, OSError) as error:
            raise ValueError(f"{argument}: {path} is not a readable tar archive ({error}).") from None
        samples = {}
        with archive:
            for member in archive:
                key, field = base_plus_ext(member.name) if member.isfile() else (None, None)
                if key is None:
                    continue
                sample = samples.setdefault(key, {"videos": [], "label": None, "field": None})
                if field.rsplit(".", 1)[-1].lower() in VIDEO_EXTENSIONS:
                    sample["videos"].append(field)
                elif field in LABEL_FIELDS:
                    data = archive.extractfile(member).read()
                    try:
                        value = json.loads(data)[label_column] if field == "json" else int(data)
                    except (ValueError, KeyError, TypeError):
                        continue  # a .json without the label field is no label
                    sample.update(label=value, field=field)
        if not samples:
            raise ValueError(f"{argument}: {path} holds no WebDataset samples (`<key>.<extension>` files).")
        for key, sample in samples.items():
            where = f"{argument}: sample {key!r} of {path}"
            if not sample["videos"]:
                raise ValueError(
                    f"{where} has no video member ({', '.join('.' + e for e in VIDEO_EXTENSIONS)}, the "
                    "extensions datasets reads as video)."
                )
            if sample["field"] is None:
                raise ValueError(
                    f"{where} has no label: expected {key}.json holding a {label_column!r} field "
                    f"(--label_column_name) or {key}.cls holding a label index."
                )
            first = fields.setdefault(sample["field"], path)
            if len(fields) > 1:
                other = next(field for field in fields if field != sample["field"])
                raise ValueError(
                    f"{argument}: mixed label fields: {fields[other]} labels its samples with "
                    f".{other}, {first} with .{sample['field']}. datasets reads the columns of the first "
                    "shard only; write every shard the same way (`evl-hf prepare-videos --format "
                    "webdataset` writes .json)."
                )
            labels.append(sample["label"])
    return next(iter(fields)), labels


class LabelIndex:
    """A row's label as its index in the label names (a picklable function, for the DataLoader workers)."""

    def __init__(self, field: str | None, label_column: str, index: dict):
        self.field, self.label_column, self.index = field, label_column, index

    def __call__(self, row: dict) -> dict:
        value = row.get(self.field) if self.field else row.get(self.label_column)
        if self.field == "json" and value is not None:
            value = value.get(self.label_column)
        name = f"sample {row.get('__key__')!r} of {row.get('__url__')}" if "__key__" in row else "a row"
        if value is None:
            raise ValueError(
                f"{name} has no label (no .{self.field or self.label_column} with a "
                f"{self.label_column!r} field). Shards with different label fields cannot be mixed."
            )
        if value not in self.index:
            raise ValueError(f"{name}: label {value!r} is not one of the {len(self.index)} labels of the run.")
        return {"labels": self.index[value]}


def load_streaming_datasets(
    data_args, known_names: list[str] | None, cache_dir: str | None, token: str | None, encode_labels
):
    """
    The `train` and/or `validation` streams (`datasets.IterableDataset`, the video column as `Video(decode=False)`,
    plus `labels`) of `--train_file`/`--validation_file` shards or of `--dataset_name`, and the label names.

    Local shards are inspected first, which gives their labels; `encode_labels` (the script's) turns those into names
    as it does for loaded datasets. A Hub dataset names its labels through a `ClassLabel` column, --label_names_file
    or the EVL checkpoint.
    """
    label_column, streams, values, fields = data_args.label_column_name, {}, {}, {}
    if data_args.dataset_name is not None:
        streams = dict(
            load_dataset(
                data_args.dataset_name, data_args.dataset_config_name, streaming=True, cache_dir=cache_dir, token=token
            )
        )
        if "validation" not in streams and "test" in streams:
            streams["validation"] = streams["test"]
        streams = {split: streams[split] for split in ("train", "validation") if split in streams}
    for split in ("train", "validation"):
        if (pattern := getattr(data_args, f"{split}_file")) is not None:
            paths = resolve_shards(pattern, f"--{split}_file")
            if all("://" not in path for path in paths):
                fields[split], values[split] = inspect_shards(paths, label_column, f"--{split}_file")
            streams[split] = load_dataset(
                "webdataset", data_files={split: paths}, split=split, streaming=True, cache_dir=cache_dir
            )
    if not streams:
        raise ValueError(
            "--streaming reads WebDataset shards (--train_file/--validation_file 'shards/train-*.tar') or "
            "--dataset_name; none was given."
        )

    index = names = None
    if values:  # the labels of local shards, named as a loaded dataset's would be
        labelled = DatasetDict(
            {split: Dataset.from_dict({"label": split_values}) for split, split_values in values.items()}
        )
        labelled, names = encode_labels(labelled, "label", known_names)
        index = {value: i for split in labelled for value, i in zip(values[split], labelled[split]["labels"])}
    for split, stream in streams.items():
        features = stream.features or {}
        # datasets gives a frame archive member as bytes, read as a video's are
        video_columns = [
            name for name, feature in features.items() if isinstance(feature, Video) or name == ARCHIVE_MEMBER
        ]
        if data_args.video_column_name in video_columns:
            video_columns = [data_args.video_column_name]
        if not video_columns:
            raise ValueError(
                f"The {split} stream has no video column (its columns: {list(features)}). WebDataset "
                f"samples need a video member ({', '.join('.' + e for e in VIDEO_EXTENSIONS)})."
            )
        field = fields.get(split) or next((name for name in LABEL_FIELDS if name in features), None)
        if label_column in features and "__key__" not in features:
            field = None  # a table's label column, as in a loaded dataset
        elif field is None:
            raise ValueError(
                f"The {split} stream has no label: expected a {label_column!r} column, or .json/.cls "
                f"members in its shards (its columns: {list(features)})."
            )
        if split not in values:  # a stream whose labels were not read beforehand
            feature = features.get(label_column)
            if isinstance(feature, ClassLabel):
                names = names or list(feature.names)
                index = index or dict(enumerate(range(len(names))))
            elif known_names is not None:
                names = names or list(known_names)
                index = index or {**{name: i for i, name in enumerate(names)}, **dict(enumerate(range(len(names))))}
            else:
                raise ValueError(
                    f"The labels of the {split} stream are not known before it is read: give "
                    "--label_names_file (one name a line, line i naming index i), or start from an EVL "
                    "checkpoint whose labels it uses."
                )
        stream = stream.cast_column(video_columns[0], Video(decode=False))  # bytes: the workers decode sampled frames
        if video_columns[0] != data_args.video_column_name:  # `mp4`, ...: the extension of the shards' members
            stream = stream.rename_column(video_columns[0], data_args.video_column_name)
        streams[split] = stream.map(LabelIndex(field, label_column, index))
    return streams, names


class StreamingClipDataset(torch.utils.data.IterableDataset):
    """
    Clips of a stream, made by the video processor in the DataLoader workers through `clips` (a `VideoClipDataset`
    over the stream, which knows the processor and its arguments).

    In training, process `rank` of `world_size` reads its own shards (`split_dataset_by_node`), each DataLoader worker
    a part of those (datasets splits them), through a shuffle buffer of `shuffle_buffer_size` rows that, with the
    order of the shards, changes every epoch (`set_epoch`). The random choices of a clip depend on the seed, the
    epoch, the process, the worker and the clip's position in the worker's stream. A video that cannot be decoded is
    skipped (named in `skipped_videos`) and the next one takes its place (the last one, at the end of the stream). At
    evaluation process 0 reads the whole stream (the Trainer hands each process its part of every batch) and a broken
    video is an error.
    """

    def __init__(self, clips, *, rank: int = 0, world_size: int = 1, shuffle_buffer_size: int = 0):
        self.clips, self.rank = clips, rank
        self.rows = clips.dataset
        if clips.train:
            if world_size > 1 and self.rows.num_shards % world_size:
                # With fewer or unevenly many shards datasets would give every process every sample to skip most.
                raise ValueError(
                    f"{self.rows.num_shards} training shards cannot be split evenly over {world_size} "
                    "processes: write a multiple of the number of processes (evl-hf prepare-videos "
                    "--format webdataset --shard_size N sets how many)."
                )
            self.rows = split_dataset_by_node(self.rows, rank=rank, world_size=world_size)
            if shuffle_buffer_size:
                self.rows = self.rows.shuffle(seed=clips.seed, buffer_size=shuffle_buffer_size)
        self._start = self._taken = 0

    @property
    def epoch(self) -> int:
        # datasets keeps a stream's epoch in shared memory: workers that live across epochs (persistent workers) read
        # the epoch the main process set, where an attribute of their copy of the dataset would stay at its first.
        return self.rows.epoch

    def set_epoch(self, epoch: int):
        """In the main process, before the DataLoader's workers start the epoch (the Trainer's `on_epoch_begin`)."""
        self._start = 0
        # datasets sets the shared epoch by a read-modify-write (`+= epoch - current`): workers setting it at once
        # could each add the step and leave it 2 epochs on, so it is set here, once, and the workers only read it.
        self.rows.set_epoch(epoch)

    # What torchdata's StatefulDataLoader records in each worker after each batch, and gives a resumed worker back.
    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "rows": self._taken}

    def load_state_dict(self, state: dict):
        # In the worker, which the main process starts after it has set the state's epoch (`set_epoch`).
        if state["epoch"] != self.epoch:
            raise RuntimeError(
                f"The stream is at epoch {self.epoch}, the state to resume at {state['epoch']}: call `set_epoch` "
                "in the main process before the DataLoader starts its workers."
            )
        self._start = state["rows"]

    def _name(self, row: dict) -> str:
        return f"{row['__url__']}:{row['__key__']}" if "__key__" in row else self.clips._name(row, self._taken)

    def __iter__(self):
        if not self.clips.train and self.rank != 0:
            # Accelerate dispatches evaluation batches from process 0; the others create their loader but never read
            # it, and its workers, left decoding into a full queue, would keep the process from exiting.
            return
        worker = torch.utils.data.get_worker_info()
        worker_id = worker.id if worker is not None else 0
        start, self._start, self._taken = self._start, 0, 0
        skipped, last = [], None
        for row in self.rows:
            self._taken += 1
            if self._taken <= start:  # read again, not decoded: up to where the resumed run stopped
                continue
            if not self.clips.train:
                try:
                    clip = self.clips._clip(row, self._taken)  # pixel_values (and augmentation)
                except (ValueError, OSError) as error:
                    raise ValueError(f"Validation video {self._name(row)} cannot be decoded: {error}") from error
                yield {**clip, "labels": row["labels"]}
                continue
            state = np.random.SeedSequence([self.clips.seed, self.epoch, self.rank, worker_id, self._taken])
            seed = int(state.generate_state(1, dtype=np.uint64)[0] >> 2)
            try:
                clip = self.clips._clip(row, self._taken, do_augment=True, seed=seed)
            except (ValueError, OSError) as error:  # VideoDecodingError is a ValueError
                skipped.append(self._name(row))
                logger.warning(f"Skipping training video {skipped[-1]}: {error}")
                continue
            last = {**clip, "labels": row["labels"]}
            yield {**last, "skipped_videos": skipped}
            skipped = []
        if skipped and last is not None:  # broken videos at the end, named with the last clip, which takes their place
            yield {**last, "skipped_videos": skipped}


class StreamingEpochCallback(TrainerCallback):
    """Starts the next epoch of the stream when the Trainer starts a new one, which it does when the stream ends."""

    def __init__(self, dataset: StreamingClipDataset):
        self.dataset, self.started = dataset, False

    def on_epoch_begin(self, args, state, control, **kwargs):
        if self.started:
            self.dataset.set_epoch(self.dataset.epoch + 1)
        self.started = True


class StreamingDataLoader(StatefulDataLoader):
    """
    The `StatefulDataLoader` of a [`StreamingClipDataset`], whose first pass after `load_state_dict` goes on into the
    stream's next epoch when the state was saved after the last batch of an epoch.

    A checkpoint saved there does not know that the epoch is over: the uninterrupted run learns it only from its next
    batch, and then starts the next epoch. Resumed, the loader would give an empty pass, which the Trainer takes for a
    stream that has run dry, and it would stop training there.
    """

    _resumed = False

    def load_state_dict(self, state_dict: dict):
        super().load_state_dict(state_dict)
        self._resumed = True

    def __iter__(self):
        if not self._resumed:
            return super().__iter__()
        self._resumed = False
        return self._resumed_pass(super().__iter__())

    def _resumed_pass(self, iterator):
        empty = True
        for batch in iterator:
            empty = False
            yield batch
        if empty:
            self.dataset.set_epoch(self.dataset.epoch + 1)
            yield from super().__iter__()


class StreamingTrainerMixin:
    """
    Mix into a `Trainer` subclass, after `AtomicCheckpointsMixin` (so that the state is written into the checkpoint
    before it is moved into place): a [`StreamingClipDataset`] trains from a torchdata `StatefulDataLoader`, whose
    state, with the stream's epoch, is saved in every checkpoint (`streaming_state_<rank>.pt`) and loaded on resuming.
    Give the Trainer `ignore_data_skip=True`: the loader resumes where it was, and the Trainer must not skip batches
    again.
    """

    _resume_from = _train_loader = None

    def train(self, resume_from_checkpoint=None, **kwargs):
        self._resume_from = resume_from_checkpoint if isinstance(resume_from_checkpoint, str) else None
        try:
            return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)
        finally:
            # The loader keeps its iterator (for its state), and so its workers, which ignore SIGTERM (preemption.py):
            # left to the interpreter's exit, which ends them with SIGTERM and waits, they would never end.
            iterator = getattr(self._train_loader, "_iterator", None)
            if hasattr(iterator, "_shutdown_workers"):  # the iterator of a loader with workers
                iterator._shutdown_workers()

    def get_train_dataloader(self):
        if not isinstance(self.train_dataset, StreamingClipDataset):
            return super().get_train_dataloader()
        # Not through `accelerator.prepare`: for an IterableDataset, Accelerate lets process 0 read and decode every
        # batch for all (`dispatch_batches`), or every process read every shard (`IterableDatasetShard`), while each
        # process here has its own shards. The Trainer moves the batches to the device itself.
        workers = self.args.dataloader_num_workers
        self._train_loader = StreamingDataLoader(
            self.train_dataset,
            batch_size=self._train_batch_size,
            collate_fn=self.data_collator,
            num_workers=workers,
            persistent_workers=workers > 0 and self.args.dataloader_persistent_workers,
            pin_memory=self.args.dataloader_pin_memory,
            prefetch_factor=self.args.dataloader_prefetch_factor,
            # its own generator: creating the workers then leaves the global RNG (dropout's) as a resumed run finds it
            generator=torch.Generator().manual_seed(self.args.seed),
        )
        if self._resume_from is not None:
            path = os.path.join(self._resume_from, STATE_NAME.format(self.args.process_index))
            if not os.path.isfile(path):
                raise FileNotFoundError(
                    f"{self._resume_from} has no {os.path.basename(path)}: it was not saved by a "
                    f"--streaming run with {self.args.world_size} process(es), which resuming "
                    "from it needs."
                )
            state = torch.load(path, weights_only=True)  # plain containers, numbers and tensors: no code runs on load
            self.train_dataset.set_epoch(state["epoch"])
            self._train_loader.load_state_dict(state["dataloader"])
        return self._train_loader

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self._train_loader is not None:
            folder = os.path.join(self._get_output_dir(trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            state = {"epoch": self.train_dataset.epoch, "dataloader": self._train_loader.state_dict()}
            torch.save(state, os.path.join(folder, STATE_NAME.format(self.args.process_index)))
