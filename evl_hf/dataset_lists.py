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
The official annotation files of the standard video classification datasets, read into lists of videos with their
label names, as `evl-hf prepare-dataset` writes them for training and evaluation:

- Kinetics-400/600/700: `train.csv` and `val.csv` (`label,youtube_id,time_start,time_end,split`), clips
  `{split}/{youtube_id}_{time_start:06d}_{time_end:06d}.<any video extension>`; labels are the sorted class names.
- Something-Something v2: `labels.json` (`{"template": "index"}`), `train.json` and `validation.json` (objects with
  `id` and `template`, whose `[something]` loses its brackets to match `labels.json`); videos `{id}.webm`.
- UCF101: the `ucfTrainTestlist` folder, `classInd.txt` (`1 ApplyEyeMakeup`, 1-based) and, for split N,
  `trainlist0N.txt` (`Class/video.avi 1`, 1-based) and `testlist0N.txt` (the label is the folder); videos
  `Class/video.avi`.
- HMDB51: the folder of `<class>_test_split<N>.txt` files, `video.avi 1|2|0` a line (train, test, unused); videos
  `<class>/video.avi`; labels are the sorted class names.

`validation` is the split the papers report: Kinetics' val, SSv2's validation, the test list of UCF101 and HMDB51.
"""

import csv
import json
import os
import re
from pathlib import Path
from typing import NamedTuple

from .video_utils import walk_videos


# The number of classes of each dataset: a different count means other files than the name says (or a subset).
DATASET_NUM_LABELS = {
    "kinetics400": 400,
    "kinetics600": 600,
    "kinetics700": 700,
    "ssv2": 174,
    "ucf101": 101,
    "hmdb51": 51,
}
# The datasets with three official train/test splits.
DATASETS_WITH_SPLITS = ("ucf101", "hmdb51")
KINETICS_COLUMNS = ("label", "youtube_id", "time_start", "time_end", "split")


class DatasetLists(NamedTuple):
    """
    A dataset's videos and labels.

    Attributes:
        splits (`dict[str, list[dict]]`):
            `train` and `validation`, each a list of `{"video": path, "label": name}`, the path relative to the
            dataset's video folder (`/`-separated).
        label_names (`list[str]`):
            The label names in the dataset's official order: index `i` is the class official checkpoints and papers
            number `i`.
    """

    splits: dict[str, list[dict]]
    label_names: list[str]


def _read_text(path: Path, what: str) -> str:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; {what}.")
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a text file; {what}.") from None


# ---- Kinetics -------------------------------------------------------------------------------------------------------


def _clip_stem(youtube_id: str, time_start: str, time_end: str) -> str:
    """The clip's file name without extension, as the common download scripts write it: `abc_000010_000020`."""
    return f"{youtube_id}_{int(float(time_start)):06d}_{int(float(time_end)):06d}"


def read_kinetics(annotations: "str | os.PathLike", videos: "str | os.PathLike") -> DatasetLists:
    """
    Reads Kinetics-400, -600 or -700: `annotations/train.csv` and `annotations/val.csv` (or `validate.csv`), with the
    clips found under `videos/train/` and `videos/val/` (`videos/validate/` with `validate.csv`), directly or in any
    subfolder (one per class, say), by their name `{youtube_id}_{time_start:06d}_{time_end:06d}` and any video
    extension. A clip not found is listed as `.mp4`, for
    the check of the videos to report.

    Raises:
        `FileNotFoundError`: a CSV file is missing.
        `ValueError`: a CSV file lacks the Kinetics columns or has a malformed row; the message names file and line.
    """
    annotations, videos = Path(annotations), Path(videos)
    splits = {}
    # DeepMind's archives name the validation list validate.csv; the common download scripts name it val.csv.
    validation = (
        "validate" if not (annotations / "val.csv").exists() and (annotations / "validate.csv").exists() else "val"
    )
    for split, name in (("train", "train"), ("validation", validation)):
        path = annotations / f"{name}.csv"
        text = _read_text(path, "--annotations must be the Kinetics folder with train.csv and val.csv")
        reader = csv.DictReader(text.splitlines())
        if missing := [column for column in KINETICS_COLUMNS if column not in (reader.fieldnames or [])]:
            raise ValueError(
                f"{path} is not a Kinetics annotation file: it has no {', '.join(missing)} column(s) (its first "
                f"line is {','.join(reader.fieldnames or [])!r}; expected {','.join(KINETICS_COLUMNS)})."
            )
        # The clips as the download left them: any extension, any subfolder of the split's folder.
        found = {}
        for video in walk_videos(videos / name):
            found.setdefault(Path(video).name.split(".")[0], Path(video).relative_to(videos).as_posix())
        rows = []
        for number, row in enumerate(reader, start=2):
            label = (row["label"] or "").strip()
            try:
                stem = _clip_stem(row["youtube_id"].strip(), row["time_start"], row["time_end"])
            except (AttributeError, TypeError, ValueError):
                raise ValueError(
                    f"{path}, line {number}: expected a youtube_id and whole seconds in time_start and time_end, "
                    f"got {row!r}."
                ) from None
            if not label:
                raise ValueError(f"{path}, line {number}: no label (a test list has none; use {name}.csv).")
            rows.append({"video": found.get(stem, f"{name}/{stem}.mp4"), "label": label})
        if not rows:
            raise ValueError(f"{path} lists no clips.")
        splits[split] = rows
    label_names = sorted({row["label"] for rows in splits.values() for row in rows})
    return DatasetLists(splits, label_names)


# ---- Something-Something v2 -----------------------------------------------------------------------------------------


def _load_json(path: Path, what: str):
    try:
        return json.loads(_read_text(path, what))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not JSON ({error}); {what}.") from None


def read_ssv2(annotations: "str | os.PathLike") -> DatasetLists:
    """
    Reads Something-Something v2 from the folder of `labels.json`, `train.json` and `validation.json`. An entry's
    label is its template with the brackets of `[something]` removed, which is how `labels.json` names the classes;
    its video is `{id}.webm`.

    Raises:
        `FileNotFoundError`: a file is missing.
        `ValueError`: a file is not what its name says (`labels.json` not a map of templates to the indices 0..N-1,
            an entry without `id` or `template`, a template `labels.json` does not name).
    """
    annotations = Path(annotations)
    what = "--annotations must be the Something-Something v2 folder with labels.json, train.json and validation.json"
    path = annotations / "labels.json"
    labels = _load_json(path, what)
    indices = {}
    if isinstance(labels, dict):
        for template, index in labels.items():
            if isinstance(index, int) or (isinstance(index, str) and index.isdigit()):
                indices[template] = int(index)
    if not indices or len(indices) != len(labels) or sorted(indices.values()) != list(range(len(indices))):
        raise ValueError(
            f'{path} is not the Something-Something v2 label map: expected {{"template": "index", ...}} with the '
            f"indices 0 to N-1, each once."
        )
    label_names = sorted(indices, key=indices.get)
    splits = {}
    for split in ("train", "validation"):
        path = annotations / f"{split}.json"
        entries = _load_json(path, what)
        if not isinstance(entries, list) or not entries:
            raise ValueError(f"{path} is not a Something-Something v2 list: expected a JSON array of videos.")
        rows = []
        for number, entry in enumerate(entries, start=1):
            if not isinstance(entry, dict) or "id" not in entry:
                raise ValueError(f'{path}, entry {number}: expected an object with "id", got {entry!r}.')
            if "template" not in entry:
                raise ValueError(
                    f'{path}, entry {number}: no "template", so no label (test.json has none: the labelled lists '
                    "are train.json and validation.json)."
                )
            label = entry["template"].replace("[", "").replace("]", "")
            if label not in indices:
                raise ValueError(
                    f"{path}, entry {number}: the template {entry['template']!r} is not in labels.json (as "
                    f"{label!r}); are the files from the same release?"
                )
            rows.append({"video": f"{entry['id']}.webm", "label": label})
        splits[split] = rows
    return DatasetLists(splits, label_names)


# ---- UCF101 ---------------------------------------------------------------------------------------------------------


def _lines(text: str) -> list[tuple[int, str]]:
    """`(line number, stripped line)` of the non-blank lines; CRLF line ends and trailing spaces go."""
    return [(number, line.strip()) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]


def read_ucf101(annotations: "str | os.PathLike", split: int = 1) -> DatasetLists:
    """
    Reads UCF101 split `split` (1, 2 or 3) from the `ucfTrainTestlist` folder: `classInd.txt` numbers the classes
    from 1, `trainlist0N.txt` gives each video's 1-based class index (checked against its folder), `testlist0N.txt`
    gives only the video, whose folder is its class.

    Raises:
        `FileNotFoundError`: a file is missing.
        `ValueError`: a file is malformed, or an index disagrees with the video's class folder (a 0-based list).
    """
    annotations = Path(annotations)
    what = "--annotations must be UCF101's ucfTrainTestlist folder (classInd.txt, trainlist01.txt, testlist01.txt)"
    path = annotations / "classInd.txt"
    label_names = []
    for number, line in _lines(_read_text(path, what)):
        parts = line.split()
        if len(parts) != 2 or parts[0] != str(len(label_names) + 1):
            raise ValueError(
                f"{path}, line {number}: expected `{len(label_names) + 1} ClassName` (classes numbered from 1 in "
                f"order), got {line!r}."
            )
        label_names.append(parts[1])
    if not label_names:
        raise ValueError(f"{path} names no classes.")
    index_of = {name: index for index, name in enumerate(label_names, start=1)}
    splits = {}
    for split_name, list_name in (("train", "trainlist"), ("validation", "testlist")):
        path = annotations / f"{list_name}{split:02d}.txt"
        rows = []
        for number, line in _lines(_read_text(path, what)):
            video, *index = line.split()
            folder = video.split("/")[0] if "/" in video else None
            if folder not in index_of or len(index) > 1:
                raise ValueError(
                    f"{path}, line {number}: expected `Class/video.avi`{' 1' if list_name == 'trainlist' else ''} "
                    f"with a class of classInd.txt, got {line!r}."
                )
            if index and index[0] != str(index_of[folder]):
                raise ValueError(
                    f"{path}, line {number}: class index {index[0]} of {video} is not that of its folder {folder} "
                    f"({index_of[folder]} in classInd.txt). The official lists count from 1."
                )
            rows.append({"video": video, "label": folder})
        if not rows:
            raise ValueError(f"{path} lists no videos.")
        splits[split_name] = rows
    return DatasetLists(splits, label_names)


# ---- HMDB51 ---------------------------------------------------------------------------------------------------------


HMDB51_SPLIT_FILE = re.compile(r"(.+)_test_split([123])\.txt")
HMDB51_SPLIT_CODES = {"1": "train", "2": "validation", "0": None}  # 0: used in neither


def read_hmdb51(annotations: "str | os.PathLike", split: int = 1) -> DatasetLists:
    """
    Reads HMDB51 split `split` (1, 2 or 3) from the folder of `<class>_test_split<N>.txt` files: each line is
    `video.avi 1` (train), `2` (test) or `0` (unused); the video is `<class>/video.avi`.

    Raises:
        `FileNotFoundError`: the folder has no split files.
        `ValueError`: a split file is malformed, or a class has files of other splits but not of `split`.
    """
    annotations = Path(annotations)
    if not annotations.is_dir():
        raise FileNotFoundError(f"{annotations}: no such folder; --annotations must be HMDB51's split files folder.")
    files = {}
    for path in annotations.iterdir():
        if match := HMDB51_SPLIT_FILE.fullmatch(path.name):
            files.setdefault(match[1], {})[int(match[2])] = path
    if not files:
        raise FileNotFoundError(
            f"{annotations} holds no HMDB51 split files (<class>_test_split<N>.txt, as in "
            "testTrainMulti_7030_splits); --annotations must be that folder."
        )
    if lacking := sorted(name for name, paths in files.items() if split not in paths):
        raise FileNotFoundError(
            f"{annotations}: no {lacking[0]}_test_split{split}.txt ({len(lacking)} classes lack it)."
        )
    label_names = sorted(files)
    splits = {"train": [], "validation": []}
    for label in label_names:
        path = files[label][split]
        for number, line in _lines(_read_text(path, "an HMDB51 split file")):
            parts = line.split()
            if len(parts) != 2 or parts[1] not in HMDB51_SPLIT_CODES:
                raise ValueError(
                    f"{path}, line {number}: expected `video.avi 1|2|0` (train, test, unused), got {line!r}."
                )
            if (split_name := HMDB51_SPLIT_CODES[parts[1]]) is not None:
                splits[split_name].append({"video": f"{label}/{parts[0]}", "label": label})
    for split_name, rows in splits.items():
        if not rows:
            raise ValueError(f"{annotations}: split {split} puts no video in {split_name} (code 1 train, 2 test).")
    return DatasetLists(splits, label_names)


def read_dataset(
    name: str, annotations: "str | os.PathLike", videos: "str | os.PathLike", split: int | None = None
) -> DatasetLists:
    """
    The lists of dataset `name` (a key of [`DATASET_NUM_LABELS`]) from its official annotation files, with split
    `split` (1, 2 or 3, default 1) for the datasets of [`DATASETS_WITH_SPLITS`]; see the `read_*` functions.
    """
    if name not in DATASET_NUM_LABELS:
        raise ValueError(f"Unknown dataset {name!r}; known: {', '.join(DATASET_NUM_LABELS)}.")
    if name in DATASETS_WITH_SPLITS:
        split = 1 if split is None else split
        if split not in (1, 2, 3):
            raise ValueError(f"{name} has the official splits 1, 2 and 3, not {split}.")
        return (read_ucf101 if name == "ucf101" else read_hmdb51)(annotations, split)
    if split is not None:
        raise ValueError(f"{name} has one official train/validation split: leave out the split.")
    return read_kinetics(annotations, videos) if name.startswith("kinetics") else read_ssv2(annotations)


def video_problem(path: "str | os.PathLike") -> str | None:
    """Why the video at `path` cannot be used (`"missing"`, or the reason it does not open), or None when it opens."""
    from .video_utils import open_video

    try:
        open_video(path)
    except FileNotFoundError:
        return "missing"
    except (OSError, ValueError) as error:
        return str(error)
    return None


__all__ = [
    "DATASETS_WITH_SPLITS",
    "DATASET_NUM_LABELS",
    "DatasetLists",
    "read_dataset",
    "read_hmdb51",
    "read_kinetics",
    "read_ssv2",
    "read_ucf101",
    "video_problem",
]
