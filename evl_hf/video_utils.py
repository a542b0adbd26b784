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
"""Finding videos: the video file extensions, folders searched for them, and lists of videos (Kinetics-style `.txt`,
CSV, JSON lines), as training, `evl-hf predict` and `evl-hf prepare-videos` read them."""

import csv
import json
import os
from pathlib import Path
from typing import NamedTuple


# The containers FFmpeg reads that video datasets use: what folders are searched for.
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
)
# Files read as lists of videos rather than as videos.
VIDEO_LIST_EXTENSIONS = (".txt", ".csv", ".json", ".jsonl")


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
    "VIDEO_EXTENSIONS",
    "VIDEO_LIST_EXTENSIONS",
    "VideoList",
    "is_video_file",
    "read_video_list",
    "resolve_video_path",
    "walk_videos",
]
