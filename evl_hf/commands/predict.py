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
`evl-hf predict`: classify many videos, one record per video, resumable.

Videos are decoded and preprocessed by the model's video processor in DataLoader worker processes while the model
classifies the previous batch; a batch holds clips from several videos. A video that cannot be read gets an error
record and the run goes on. Records are appended and flushed one by one, so a run that is stopped loses at most the
batch in flight, and running the same command again skips every video already in the output file.
"""

import argparse
import csv
import io
import json
import os
import sys

from . import UsageError
from .utils import VIDEO_EXTENSIONS, add_model_arguments, load_model_and_processor, walk_videos


# Inputs read as lists of videos rather than as videos.
LIST_EXTENSIONS = (".txt", ".csv")


def _read_list(path: str) -> list[str]:
    """Video paths from a `.txt` file (one per line, or `path label_index` as in the Kinetics lists that training and
    prepare-videos read; blank lines and `#` comments skipped) or a `.csv` file (the `video` or `path` column, else
    the first column). Relative paths are relative to the list's folder."""
    folder = os.path.dirname(os.path.abspath(path))
    with open(path, newline="") as file:
        if path.lower().endswith(".csv"):
            rows = [row for row in csv.reader(file) if row and any(cell.strip() for cell in row)]
            header = [cell.strip().lower() for cell in rows[0]] if rows else []
            column = next((header.index(name) for name in ("video", "path") if name in header), None)
            entries = [row[column or 0].strip() for row in (rows[1:] if column is not None else rows)]
        else:
            entries = [line.strip() for line in file]
            entries = [entry for entry in entries if entry and not entry.startswith("#")]
            # a trailing label index is dropped; the path itself may contain spaces
            parts = [entry.rsplit(maxsplit=1) for entry in entries]
            entries = [p[0] if len(p) == 2 and p[1].lstrip("-").isdigit() else e for e, p in zip(entries, parts)]
    return [entry if os.path.isabs(entry) else os.path.normpath(os.path.join(folder, entry)) for entry in entries]


def find_videos(inputs: list[str]) -> list[str]:
    """
    The videos named by `inputs`, in order and without repeats: video files as given, folders searched recursively
    for files with a video extension, and `.txt`/`.csv` lists read with `_read_list`. Entries of a list are kept
    even when they do not exist: the run records them as errors.

    Raises:
        `UsageError`: an input does not exist.
    """
    videos = []
    for item in inputs:
        if os.path.isdir(item):
            videos += walk_videos(item)
        elif os.path.isfile(item) and item.lower().endswith(LIST_EXTENSIONS):
            videos += _read_list(item)
        elif os.path.exists(item):
            videos.append(item)
        else:
            raise UsageError(f"INPUT {item!r} does not exist; pass video files, folders or .txt/.csv lists of videos.")
    return list(dict.fromkeys(videos))


class ResultsFile:
    """
    The output file: JSON lines, or CSV when its name ends in `.csv` (columns `video`, `label_1`, `score_1`, ...,
    `error`). Opening it reads the videos it already holds; a last line cut short by a stopped run is removed.
    """

    def __init__(self, path: str, top_k: int, retry_failed: bool = False):
        self.path, self.top_k = path, top_k
        self.is_csv = path.lower().endswith(".csv")
        self.done = {}  # video -> whether its record is an error
        if os.path.exists(path):
            self._read(retry_failed)
        self.file = open(path, "a", newline="")
        self.writer = csv.writer(self.file) if self.is_csv else None
        if self.is_csv and self.file.tell() == 0:
            self.writer.writerow(self._csv_header(top_k))
            self.file.flush()

    @staticmethod
    def _csv_header(top_k: int) -> list[str]:
        return ["video"] + [f"{name}_{i}" for i in range(1, top_k + 1) for name in ("label", "score")] + ["error"]

    def _read(self, retry_failed: bool):
        with open(self.path, "rb") as file:
            data = file.read()
        complete = data[: data.rfind(b"\n") + 1]
        if len(complete) < len(data):  # a record torn by a kill: drop it, its video is predicted again
            with open(self.path, "r+b") as file:
                file.truncate(len(complete))
        text = complete.decode("utf-8")
        if self.is_csv:
            rows = [row for row in csv.reader(io.StringIO(text, newline="")) if row]
            header, rows = (rows[0], rows[1:]) if rows else (None, [])
            if header is not None and "video" not in header:
                raise UsageError(f"--output {self.path!r} is a CSV file without a `video` column; choose another.")
            video = header.index("video") if header else 0
            error = header.index("error") if header and "error" in header else len(header or [])
            records = [(row[video], len(row) > error and bool(row[error]), row) for row in rows]
        else:
            records = []
            for number, line in enumerate(text.splitlines(keepends=True), start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    records.append((record["video"], "error" in record, line))
                except (ValueError, KeyError, TypeError):
                    raise UsageError(f"--output {self.path!r}: line {number} is not a record of evl-hf predict; "
                                     "choose another file.") from None  # fmt: skip
        kept = []
        for video, failed, record in records:
            if failed and retry_failed:
                self.done.pop(video, None)
            else:
                self.done[video] = failed
                kept.append(record)
        if len(kept) < len(records):  # error records dropped: rewrite the file without them, atomically
            partial = f"{self.path}.partial"
            with open(partial, "w", encoding="utf-8", newline="") as file:
                if self.is_csv:
                    csv.writer(file).writerows([header, *kept])
                else:
                    file.writelines(kept)
            os.replace(partial, self.path)

    def write(self, record: dict):
        if self.is_csv:
            pairs = list(zip(record.get("labels", []), record.get("scores", [])))
            cells = [value for label, score in pairs for value in (label, score)]
            cells += [""] * (2 * self.top_k - len(cells))
            self.writer.writerow([record["video"], *cells, record.get("error", "")])
        else:
            self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        self.done[record["video"]] = "error" in record

    def close(self):
        self.file.close()


class _StdoutResults(ResultsFile):
    """Records on standard output, as JSON lines; nothing to resume."""

    def __init__(self, top_k: int):
        self.top_k, self.is_csv, self.done = top_k, False, {}
        self.file, self.writer = sys.stdout, None

    def close(self):
        self.file.flush()


class VideoClips:
    """
    A map-style dataset of videos: item `i` is the processor's clip of video `i` (what the video-classification
    pipeline would give the model) or the error that reading it raised.
    """

    def __init__(self, videos: list[str], video_processor, num_frames: int):
        self.videos, self.video_processor, self.num_frames = videos, video_processor, num_frames

    def __len__(self):
        return len(self.videos)

    def __getitem__(self, index: int) -> dict:
        video = self.videos[index]
        try:
            # the arguments the video-classification pipeline passes, so that the clips are the same
            inputs = self.video_processor(video, num_frames=self.num_frames, do_sample_frames=True, return_tensors="pt")
            return {"video": video, "pixel_values": inputs["pixel_values"][0]}
        except Exception as error:  # any failure is this video's, not the run's
            message = " ".join(str(error).split()) or "no message"
            return {"video": video, "error": f"{type(error).__name__}: {message}"}


def _keep_as_list(items: list[dict]) -> list[dict]:
    return items


def register(subparsers):
    parser = subparsers.add_parser(
        "predict",
        help="Classify many videos (files, folders, lists), resumable.",
        description=(
            "Classify video files, folders (searched recursively) and .txt/.csv lists of videos. Writes one record "
            "per video, as JSON lines or CSV (by the extension of --output) or to standard output: "
            '{"video", "labels", "scores"}, or {"video", "error"} for a video that cannot be read. Run the same '
            "command again to resume: videos already in --output are skipped (with --retry_failed, those that "
            "failed are tried again). Exit status: 0 when every video was "
            "predicted, 1 when some failed, 2 for usage errors."
        ),
    )
    add_model_arguments(parser)
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="Video files, folders, or .txt/.csv lists.")
    parser.add_argument("--output", help="JSON lines file (.csv for CSV) to write and resume (default: stdout).")
    parser.add_argument(
        "--retry_failed",
        action="store_true",
        help="Resuming: remove the error records from --output and try those videos again (default: keep them).",
    )
    parser.add_argument("--top_k", type=int, default=5, help="Labels per video (default: 5).")
    parser.add_argument("--batch_size", type=int, default=8, help="Clips per forward pass (default: 8).")
    parser.add_argument(
        "--num_workers",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="Decoding worker processes; 0 decodes in the main process (default: min(4, CPUs)).",
    )
    parser.set_defaults(run=run, parser=parser)


def run(args: argparse.Namespace) -> int:
    for option in ("top_k", "batch_size"):
        if getattr(args, option) < 1:
            raise UsageError(f"--{option} must be at least 1, got {getattr(args, option)}.")
    if args.num_workers < 0:
        raise UsageError(f"--num_workers must be 0 or more, got {args.num_workers}.")
    if args.output and not os.path.isdir(os.path.dirname(os.path.abspath(args.output))):
        raise UsageError(f"--output {args.output!r}: its folder does not exist; create it first.")
    videos = find_videos(args.inputs)
    if not videos:
        raise UsageError(
            f"no videos found in {args.inputs}: folders are searched for {', '.join(VIDEO_EXTENSIONS)} files."
        )
    model, processor = load_model_and_processor(args.model, args.device, args.dtype, args.compile, args.batch_size)

    import torch
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    if args.retry_failed and not args.output:
        raise UsageError("--retry_failed resumes an --output file; give one.")
    results = ResultsFile(args.output, args.top_k, args.retry_failed) if args.output else _StdoutResults(args.top_k)
    todo = [video for video in videos if video not in results.done]  # a resumed run skips what is recorded
    skipped = len(videos) - len(todo)
    if skipped:
        print(f"evl-hf predict: {skipped} of {len(videos)} videos already in {args.output}; skipping them",
              file=sys.stderr)  # fmt: skip
    labels = model.config.id2label
    top_k = min(args.top_k, model.config.num_labels)
    device = next(model.parameters()).device
    loader = DataLoader(
        VideoClips(todo, processor, model.config.num_frames),
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        collate_fn=_keep_as_list,
        pin_memory=device.type == "cuda",
    )
    failed = []
    try:
        with torch.inference_mode(), tqdm(total=len(todo), unit="video", file=sys.stderr, dynamic_ncols=True) as bar:
            for items in loader:
                clips = [item for item in items if "error" not in item]
                if clips:
                    pixel_values = torch.stack([item["pixel_values"] for item in clips]).to(device)
                    probabilities = model(pixel_values=pixel_values).logits.float().softmax(-1)
                    scores, indices = probabilities.topk(top_k, dim=-1)
                    for item, item_scores, item_indices in zip(clips, scores.tolist(), indices.tolist()):
                        item["labels"] = [labels[i] for i in item_indices]
                        item["scores"] = item_scores
                for item in items:
                    if "error" in item:
                        failed.append(item)
                        results.write({"video": item["video"], "error": item["error"]})
                    else:
                        results.write({"video": item["video"], "labels": item["labels"], "scores": item["scores"]})
                bar.update(len(items))
    finally:
        results.close()

    todo_set = set(todo)
    earlier_failures = [video for video in videos if video not in todo_set and results.done.get(video)]
    predicted = len(todo) - len(failed)
    print(
        f"evl-hf predict: {len(videos)} videos: {predicted} predicted now, {skipped} already done, "
        f"{len(failed)} failed now" + (f", {len(earlier_failures)} failed earlier" if earlier_failures else ""),
        file=sys.stderr,
    )
    for item in failed[:20]:
        print(f"  {item['video']}: {item['error']}", file=sys.stderr)
    if len(failed) > 20:
        print(f"  ... and {len(failed) - 20} more (see the error records)", file=sys.stderr)
    return 1 if failed or earlier_failures else 0
