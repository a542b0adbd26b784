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
"""The training script's own videos as `datasets.Dataset`s: a videofolder-layout folder checked before datasets reads
it, and the lists of videos (Kinetics-style `.txt`, CSV, JSON lines) with their paths resolved."""

import os
from pathlib import Path

from datasets import ClassLabel, Dataset, DatasetDict, Features, Value, load_dataset
from datasets.packaged_modules.videofolder.videofolder import VIDEO_EXTENSIONS as VIDEOFOLDER_EXTENSIONS

from evl_hf.frame_archives import FRAME_ARCHIVE_EXTENSION
from evl_hf.video_utils import VIDEO_EXTENSIONS, read_video_list, resolve_video_path, walk_videos


# The video extensions of evl_hf that datasets' videofolder builder also loads (it has no .webm, .m4v, ...), and frame
# archives, which folders of them are read here for.
FOLDER_VIDEO_EXTENSIONS = (
    *(extension for extension in VIDEO_EXTENSIONS if extension in VIDEOFOLDER_EXTENSIONS),
    FRAME_ARCHIVE_EXTENSION,
)


def check_video_folder(path: str, argument: str):
    """`path`, or a clear error naming the argument when this videofolder-layout folder holds no labelled videos."""
    if not (folder := Path(path)).is_dir():
        raise FileNotFoundError(f"{argument} {path!r}: no such folder.")
    videos = [p for p in folder.rglob("*") if p.suffix.lower() in FOLDER_VIDEO_EXTENSIONS and p.is_file()]
    if not videos:
        raise ValueError(
            f"{argument} {path!r} holds no video files ({', '.join(FOLDER_VIDEO_EXTENSIONS)}). The "
            f"videofolder layout is {path}/<label>/<video>.mp4."
        )
    if any(video.parent == folder for video in videos):
        raise ValueError(
            f"{argument} {path!r} has videos directly inside it; the videofolder layout puts each video "
            f"in a folder named after its label: {path}/<label>/<video>.mp4."
        )
    return path


def load_video_folders(folders: dict[str, str], cache_dir: str | None) -> DatasetDict:
    """
    The splits of videofolder-layout folders (`{split: folder}`), `video` and `label` columns: datasets' videofolder
    builder reads folders of videos, and folders of frame archives (`evl-hf prepare-videos --format frames`), which
    it does not know, become datasets of their paths labelled by their folder's name, as videofolder labels (the
    sorted names of all splits' label folders).
    """
    archives = {
        split: folder for split, folder in folders.items() if any(Path(folder).rglob(f"*{FRAME_ARCHIVE_EXTENSION}"))
    }
    videos = {split: folder for split, folder in folders.items() if split not in archives}
    # drop_labels=False: the parent folder is the label even when the two folders sit at different depths.
    data_files = {split: os.path.join(folder, "**") for split, folder in videos.items()}
    dataset = (
        load_dataset("videofolder", data_files=data_files, drop_labels=False, cache_dir=cache_dir)
        if videos
        else DatasetDict()
    )
    paths = {split: walk_videos(folder) for split, folder in archives.items()}
    names = sorted({Path(path).parent.name for split_paths in paths.values() for path in split_paths})
    features = Features({"video": Value("string"), "label": ClassLabel(names=names)})
    for split, split_paths in paths.items():
        labels = [names.index(Path(path).parent.name) for path in split_paths]
        dataset[split] = Dataset.from_dict({"video": split_paths, "label": labels}, features=features)
    return dataset


def load_video_list(path: str, video_root: str | None, video_column: str, label_column: str) -> Dataset:
    """
    A Kinetics-style list, `relative/path.mp4 label_index` per line (`#` comments), read with
    [`~evl_hf.video_utils.read_video_list`], as a dataset of resolved paths (from `video_root`, or else the list's
    folder) and integer labels.
    """
    root = video_root or os.path.dirname(os.path.abspath(path))
    rows = read_video_list(path, video_column=video_column, label_column=label_column, require_labels=True).rows
    return Dataset.from_dict(
        {
            video_column: [resolve_video_path(row[video_column], root) for row in rows],
            label_column: [row[label_column] for row in rows],
        }
    )


def load_video_file(path: str, argument: str, data_args, cache_dir: str | None) -> Dataset:
    """A CSV, JSON lines or Kinetics-style list of videos; relative paths start from --video_root."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{argument} {path!r}: no such file.")
    column, root = data_args.video_column_name, data_args.video_root or os.path.dirname(os.path.abspath(path))
    if Path(path).suffix.lower() not in (".csv", ".json", ".jsonl"):
        return load_video_list(path, root, column, data_args.label_column_name)
    # The list parser checks label lists (multi-label) and splits a CSV's joined ones; a CSV of single labels is left
    # to datasets, which reads label indices as integers.
    label_column = data_args.label_column_name
    rows = read_video_list(
        path, video_column=column, label_column=label_column, label_separator=data_args.label_separator
    )
    if path.lower().endswith(".csv") and not any(isinstance(row.get(label_column), list) for row in rows.rows):
        dataset = load_dataset("csv", data_files=path, cache_dir=cache_dir)["train"]
    else:
        dataset = Dataset.from_list(rows.rows)
    if column not in dataset.column_names:  # named by the check of every split's columns
        return dataset
    return dataset.map(lambda row: {column: os.path.join(root, row[column])}, desc=f"Resolving {path}")
