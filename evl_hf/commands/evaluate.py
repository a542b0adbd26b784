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
`evl-hf evaluate`: a labelled list of videos scored with the paper's test protocol, and the accuracy it gives.

Each video is scored by [`~evl_hf.inference.multi_view_scores`] (its views' probabilities averaged) and its scores
are kept, one record per video, in `OUTPUT/scores.jsonl`, the resumable store `evl-hf predict` writes: a stopped run
run again scores only the videos it lacks, and the metrics are computed from the stored scores, so a resumed run
reports the numbers of an uninterrupted one. Under `torchrun` or `accelerate launch` each process scores its share;
the first merges the records and writes the reports.
"""

import argparse
import contextlib
import json
import os
import re
import sys

from ..utils_io import output_lock
from . import UsageError
from .records import check_same_in_every_process, merge_part_files, open_results, process_state, read_records
from .utils import add_model_arguments, atomic_write, load_model_and_processor


SCORES_FILE = "scores.jsonl"


def views(text: str) -> tuple[int, int]:
    """An argparse `type` for test views written `TEMPORALxSPATIAL` (`3x1`: 3 clips of 1 centre crop each)."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if match is None or int(match.group(1)) < 1 or int(match.group(2)) < 1:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not TEMPORALxSPATIAL with both at least 1 (e.g. 1x1, 3x1 or 1x3)."
        )
    return int(match.group(1)), int(match.group(2))


def register(subparsers):
    parser = subparsers.add_parser(
        "evaluate",
        help="Accuracy on a labelled list of videos, with the paper's test views; resumable.",
        description=(
            "Scores every video of LIST (.csv, .json, .jsonl or .txt with labels, as prepare-dataset writes them; "
            "labels as names or indices of the model's labels) with several views each, their probabilities "
            "averaged, and writes to --output: results.json (top1, top5 and mean_class_accuracy, or map and f1 "
            "for a multi-label model, with the counts of videos scored and skipped), per_class_accuracy.csv, "
            "confusion_matrix.json and, with matplotlib, confusion_matrix.png. Each video's scores are kept in "
            f"{SCORES_FILE}: run the same command again to resume. Videos that cannot be read are counted, left out "
            "of the metrics and listed. Exit status: 0 when every video was scored, 1 when some could not be, 2 for "
            "usage errors."
        ),
    )
    add_model_arguments(parser)
    parser.add_argument("list", metavar="LIST", help="The labelled list of videos; relative paths from its folder.")
    parser.add_argument("--output", required=True, help="Folder for the scores and the reports (created if missing).")
    parser.add_argument(
        "--views",
        type=views,
        help="TEMPORALxSPATIAL views per video, e.g. 1x1, 3x1, 1x3 (default: the video processor's num_clips x "
        "num_crops when they ask for several views, else the paper's: 3x1 for 8 frames or fewer, 1x3 beyond).",
    )
    parser.add_argument(
        "--label_column_name",
        default="label",
        help="The column (CSV) or field (JSON) of LIST with the labels; a JSON list of labels is a multi-label "
        "entry (default: label).",
    )
    parser.add_argument(
        "--retry_failed",
        action="store_true",
        help="Resuming: score again the videos that could not be read before (default: keep them as skipped).",
    )
    parser.set_defaults(run=run, parser=parser)


def read_labelled_list(
    path: str, label2id: dict, label_column: str = "label"
) -> tuple[list[str], dict[str, list[int]]]:
    """
    The videos of the list at `path` (resolved from its folder, without repeats) and each one's label indices.
    A label (in `label_column`) is a name of `label2id` or an index (`.txt` lists, or digits); a list of labels is a
    multi-label entry.

    Raises:
        `UsageError`: the list cannot be read, or names a label the model does not have.
    """
    from ..video_utils import read_video_list, resolve_video_path

    if not os.path.isfile(path):
        raise UsageError(f"LIST {path!r} does not exist; give a .csv, .json, .jsonl or .txt list of labelled videos.")
    try:
        rows = read_video_list(path, label_column=label_column, require_labels=True).rows
    except (ValueError, UnicodeDecodeError) as error:
        raise UsageError(f"LIST {path!r}: {error}") from None
    num_labels = len(label2id)

    def index(label) -> int:
        if isinstance(label, str) and label in label2id:
            return label2id[label]
        if isinstance(label, int) or (isinstance(label, str) and label.strip().isdigit()):
            if 0 <= int(label) < num_labels:
                return int(label)
        raise UsageError(
            f"LIST {path!r}: the label {label!r} is not one of the model's {num_labels} labels (names of its "
            f"label2id, or indices 0 to {num_labels - 1}); evaluate with the model trained on these labels."
        )

    root = os.path.dirname(os.path.abspath(path))
    labels = {}
    for row in rows:
        video = resolve_video_path(str(row["video"]), root)
        given = row[label_column] if isinstance(row[label_column], list) else [row[label_column]]
        labels.setdefault(video, [index(label) for label in given])
    return list(labels), labels


def run(args: argparse.Namespace) -> int:
    if os.path.exists(args.output) and not os.path.isdir(args.output):
        raise UsageError(f"--output {args.output!r} is a file; give a folder (it is created if missing).")
    state = process_state(args.device)
    rank, world_size = (state.process_index, state.num_processes) if state is not None else (0, 1)
    device = args.device
    if world_size > 1 and device.startswith("cuda"):
        device = str(state.device)  # cuda:LOCAL_RANK
    # One run per --output folder, locked by the first process before anything is loaded or written; the others
    # write their parts only after the barrier in `open_results`, which it reaches with the lock held.
    with output_lock(args.output, "--output", folder=True) if rank == 0 else contextlib.nullcontext():
        return evaluate(args, state, rank, world_size, device)


def evaluate(args: argparse.Namespace, state, rank: int, world_size: int, device: str) -> int:
    """Scores LIST into `args.output` (this process's share of it in a distributed run); the exit status."""
    model, processor = load_model_and_processor(args.model, device, args.dtype, args.compile)
    config = model.config

    import torch.distributed as dist

    from ..inference import default_function_to_apply, paper_test_views

    multi_label = default_function_to_apply(config) == "sigmoid"
    videos, labels = read_labelled_list(args.list, config.label2id, args.label_column_name)
    if any(len(indices) > 1 for indices in labels.values()) and not multi_label:
        raise UsageError(
            f"LIST {args.list!r} gives several labels to some videos, and {args.model!r} is a single-label model; "
            "evaluate a multi-label model on it, or give one label per video."
        )
    if multi_label:
        _import_sklearn()  # before the scoring, not after it
    if args.views is None:
        own = (processor.num_clips, processor.num_crops)
        args.views = own if own != (1, 1) else paper_test_views(config.num_frames)
    if world_size > 1:
        asked = [args.model, os.path.abspath(args.output), args.views, labels]
        check_same_in_every_process(asked, "--model, LIST, --output or --views")
    os.makedirs(args.output, exist_ok=True)
    scores_path = os.path.join(args.output, SCORES_FILE)
    barrier = dist.barrier if world_size > 1 else None
    results, done = open_results(
        scores_path, 0, retry_failed=args.retry_failed, rank=rank, world_size=world_size, barrier=barrier
    )
    todo = [video for video in videos if video not in done]
    if len(todo) < len(videos) and rank == 0:
        print(
            f"evl-hf evaluate: {len(videos) - len(todo)} of {len(videos)} videos already in {scores_path}; "
            "skipping them",
            file=sys.stderr,
        )
    if world_size > 1:
        with state.split_between_processes(todo) as share:
            todo = list(share)
    try:
        score_videos(model, processor, todo, labels, results, args.views, rank, world_size)
    finally:
        results.close()
    if world_size > 1:
        dist.barrier()
        if rank == 0:
            merge_part_files(scores_path, order=videos)
        dist.barrier()
    if rank != 0:  # the whole run's exit status, as the first process returns it
        failed = {video for video, error, _ in read_records(scores_path)[1] if error}
        return 1 if failed.intersection(videos) else 0
    return write_reports(args, videos, labels, config, scores_path, multi_label)


def score_videos(model, processor, videos, labels, results, views, rank: int, world_size: int):
    """Scores `videos` one by one with `views` (`(num_clips, num_crops)`) and writes a record each to `results`:
    `{"video", "label", "scores"}`, or `{"video", "error"}` for one that cannot be read."""
    from tqdm.auto import tqdm

    from ..inference import multi_view_scores

    num_clips, num_crops = views
    bar_name = f"process {rank} of {world_size}" if world_size > 1 else None
    for video in tqdm(videos, unit="video", file=sys.stderr, dynamic_ncols=True, desc=bar_name, position=rank):
        try:
            # the clip length and sampling the video-classification pipeline uses, for each view
            scores = multi_view_scores(
                model,
                processor,
                video,
                num_clips=num_clips,
                num_crops=num_crops,
                num_frames=model.config.num_frames,
                do_sample_frames=True,
            )
        except Exception as error:  # any failure is this video's, not the run's
            message = " ".join(str(error).split()) or "no message"
            results.write({"video": video, "error": f"{type(error).__name__}: {message}"})
            continue
        results.write({"video": video, "label": labels[video], "scores": scores[0].tolist()})


def _import_sklearn():
    try:
        import sklearn.metrics
    except ImportError:
        raise UsageError(
            "the metrics of a multi-label model (mAP, F1) are computed with scikit-learn: pip install 'evl-hf[train]'."
        ) from None
    return sklearn.metrics


def write_reports(args, videos, labels, config, scores_path: str, multi_label: bool) -> int:
    """Computes the metrics from the stored scores of `videos`, writes the report files and prints the summary.
    Returns the exit status: 1 when some videos could not be scored."""
    import numpy as np
    import torch
    import transformers

    from .. import __version__
    from ..inference import MULTI_LABEL_THRESHOLD, labels_above_threshold

    records = {video: json.loads(line) for video, _, line in read_records(scores_path)[1]}
    failed = [records[video] for video in videos if "error" in records[video]]
    scored = [video for video in videos if "error" not in records[video]]
    names = [config.id2label[i] for i in range(config.num_labels)]
    summary = {
        "model": args.model,
        "list": args.list,
        "views": f"{args.views[0]}x{args.views[1]}",
        "num_videos": len(videos),
        "num_scored": len(scored),
        "num_skipped": len(failed),
        "skipped": {record["video"]: record["error"] for record in failed},
        "versions": {"evl_hf": __version__, "torch": torch.__version__, "transformers": transformers.__version__},
    }
    if not scored:
        _write_json(os.path.join(args.output, "results.json"), summary)
        report(args, summary)
        return 1
    scores = np.array([records[video]["scores"] for video in scored], dtype=np.float32)
    if multi_label:
        metrics = _import_sklearn()
        targets = np.zeros_like(scores, dtype=np.int64)
        for row, video in enumerate(scored):
            targets[row, labels[video]] = 1
        predicted = labels_above_threshold(torch.from_numpy(scores), MULTI_LABEL_THRESHOLD).numpy().astype(np.int64)
        summary["map"] = float(metrics.average_precision_score(targets, scores, average="macro"))
        summary["f1"] = float(metrics.f1_score(targets, predicted, average="macro", zero_division=0))
        summary["threshold"] = MULTI_LABEL_THRESHOLD
        per_class = {
            "average_precision": metrics.average_precision_score(targets, scores, average=None),
            "f1": metrics.f1_score(targets, predicted, average=None, zero_division=0),
        }
        counts = targets.sum(axis=0)
        # per label [[true negatives, false positives], [false negatives, true positives]]
        matrix = metrics.multilabel_confusion_matrix(targets, predicted).tolist()
    else:
        truth = np.array([labels[video][0] for video in scored])
        ranked = np.argsort(-scores, axis=1, kind="stable")
        predictions = ranked[:, 0]
        summary["top1"] = float((predictions == truth).mean())
        summary["top5"] = float((ranked[:, :5] == truth[:, None]).any(axis=1).mean())
        matrix = np.zeros((config.num_labels, config.num_labels), dtype=np.int64)
        np.add.at(matrix, (truth, predictions), 1)
        counts = matrix.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            accuracy = np.diag(matrix) / counts
        # the mean over the classes that have videos in the list
        summary["mean_class_accuracy"] = float(accuracy[counts > 0].mean())
        per_class = {"accuracy": accuracy}
        matrix = matrix.tolist()
    _write_per_class(os.path.join(args.output, "per_class_accuracy.csv"), names, counts, per_class)
    _write_json(os.path.join(args.output, "confusion_matrix.json"), {"labels": names, "matrix": matrix})
    summary["confusion_matrix_png"] = None if multi_label else _plot_confusion_matrix(args.output, names, matrix)
    _write_json(os.path.join(args.output, "results.json"), summary)
    report(args, summary)
    return 1 if failed else 0


def _write_json(path: str, value):
    with atomic_write(path) as temporary, open(temporary, "w", encoding="utf-8") as file:
        json.dump(value, file, indent=1)
        file.write("\n")


def _write_per_class(path: str, names: list[str], counts, per_class: dict):
    """One row per label: its index, name, number of videos (positives for a multi-label model) and its metrics;
    empty where the label has no videos."""
    import csv

    import numpy as np

    with atomic_write(path) as temporary, open(temporary, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["index", "label", "videos", *per_class])
        for i, name in enumerate(names):
            values = ["" if np.isnan(column[i]) else f"{column[i]:.6f}" for column in per_class.values()]
            writer.writerow([i, name, int(counts[i]), *values])


def _plot_confusion_matrix(folder: str, names: list[str], matrix: list[list[int]]) -> str | None:
    """Draws the confusion matrix to `folder/confusion_matrix.png`; returns its path, or `None` without matplotlib."""
    try:
        from matplotlib.figure import Figure  # without pyplot: no display, no global state
    except ImportError:
        return None
    size = min(4 + 0.4 * len(names), 40)
    figure = Figure(figsize=(size, size), layout="tight")
    axes = figure.subplots()
    figure.colorbar(axes.imshow(matrix, cmap="Blues"), ax=axes, fraction=0.046, pad=0.04)
    if len(names) <= 50:  # beyond, the names would overlap
        axes.set_xticks(range(len(names)), names, rotation=90)
        axes.set_yticks(range(len(names)), names)
    axes.set(xlabel="predicted label", ylabel="true label")
    path = os.path.join(folder, "confusion_matrix.png")
    with atomic_write(path) as temporary:
        figure.savefig(temporary, dpi=100, format="png")
    return path


def report(args, summary: dict):
    """The run's summary on standard error, with the first videos that could not be scored."""
    metrics = [key for key in ("top1", "top5", "mean_class_accuracy", "map", "f1") if key in summary]
    print(
        f"evl-hf evaluate: {summary['num_videos']} videos, {summary['num_scored']} scored with {summary['views']} "
        f"views, {summary['num_skipped']} skipped (could not be read)"
        + "".join(f"; {key} {summary[key]:.4f}" for key in metrics),
        file=sys.stderr,
    )
    for video, error in list(summary["skipped"].items())[:20]:
        print(f"  skipped {video}: {error}", file=sys.stderr)
    if summary["num_skipped"] > 20:
        print(f"  ... and {summary['num_skipped'] - 20} more (see results.json)", file=sys.stderr)
    if "mean_class_accuracy" in summary and summary.get("confusion_matrix_png") is None:
        print("  confusion_matrix.png not drawn: it needs matplotlib (pip install 'evl-hf[plot]')", file=sys.stderr)
    print(f"  reports in {args.output}", file=sys.stderr)
