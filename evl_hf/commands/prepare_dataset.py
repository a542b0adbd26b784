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
`evl-hf prepare-dataset`: the official annotation files of Kinetics, Something-Something v2, UCF101 or HMDB51 (read by
`evl_hf.dataset_lists`) written as the lists training and `evl-hf predict` read: `train.csv` and `validation.csv`
(`video,label`, the label by name, paths relative to the output folder) and `label_names.txt` in the official order.

Every listed video is checked to exist and open; those that do not are left out of the lists and reported by split
(a Kinetics download usually misses some). When most videos of every split are missing, `--videos` is the wrong
folder and nothing is written.
"""

import csv
import json
import os
import sys
from pathlib import Path

from . import UsageError
from .utils import atomic_write, positive_int, report_failures


REPORT_NAME = "prepare_dataset_report.jsonl"
# Below this fraction of videos found in every split, --videos is taken to be the wrong folder.
MIN_FOUND_FRACTION = 0.5
VIDEO_LAYOUTS = {
    "kinetics": "train/ and val/ holding the clips {youtube_id}_{time_start:06d}_{time_end:06d}.mp4",
    "ssv2": "the videos {id}.webm",
    "ucf101": "<Class>/<video>.avi, as UCF101.rar unpacks",
    "hmdb51": "<class>/<video>.avi, as the HMDB51 archives unpack",
}


def register(subparsers):
    from ..dataset_lists import DATASET_NUM_LABELS

    parser = subparsers.add_parser(
        "prepare-dataset",
        help="Write train/validation lists and label names from a standard dataset's official annotation files.",
        description=(
            "Reads the official annotation files of NAME and writes OUTPUT/train.csv and OUTPUT/validation.csv "
            "(columns video,label; the label by name; paths relative to OUTPUT) and OUTPUT/label_names.txt (one name "
            "a line, in the official order, so that indices match the official checkpoints), for "
            "`run_video_classification.py --train_file OUTPUT/train.csv --validation_file OUTPUT/validation.csv "
            "--label_names_file OUTPUT/label_names.txt` and `evl-hf predict`. validation is the split papers report "
            "(Kinetics val, SSv2 validation, the UCF101/HMDB51 test list). --annotations: Kinetics, the folder of "
            "train.csv and val.csv; ssv2, the folder of labels.json, train.json and validation.json; ucf101, the "
            "ucfTrainTestlist folder; hmdb51, the folder of <class>_test_split<N>.txt files. Videos that are missing "
            f"or do not open are left out and listed in OUTPUT/{REPORT_NAME}. Exit status 1 when some were left "
            "out (the lists are written all the same)."
        ),
    )
    parser.add_argument("name", metavar="NAME", choices=list(DATASET_NUM_LABELS), help=", ".join(DATASET_NUM_LABELS))
    parser.add_argument("--annotations", required=True, help="The official annotation files (see above).")
    parser.add_argument(
        "--videos",
        required=True,
        help="The video folder: Kinetics, train/ and val/ (clips in them or in subfolders, any video extension); "
        "ssv2, the {id}.webm videos; ucf101 and hmdb51, one folder of .avi videos per class.",
    )
    parser.add_argument("--output", required=True, help="Where the lists and label names are written.")
    parser.add_argument(
        "--split", type=int, choices=(1, 2, 3), default=None, help="ucf101 and hmdb51: the official split (default 1)."
    )
    parser.add_argument(
        "--num_workers",
        type=positive_int,
        default=os.cpu_count() or 1,
        help="Processes opening the videos to check them (default: the number of CPU cores).",
    )
    parser.set_defaults(run=run, parser=parser)


def dataset_layout(name: str) -> str:
    return VIDEO_LAYOUTS["kinetics" if name.startswith("kinetics") else name]


def check_videos(paths: list[str], num_workers: int) -> list[str | None]:
    """`video_problem` of every path, in order, with a progress bar; in worker processes for more than one worker."""
    from tqdm.auto import tqdm

    from ..dataset_lists import video_problem

    progress = tqdm(total=len(paths), unit="video", desc="prepare-dataset: opening videos", file=sys.stderr)
    try:
        if num_workers == 1 or len(paths) < 2:
            problems = []
            for path in paths:
                problems.append(video_problem(path))
                progress.update()
            return problems
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # "spawn": the workers must not inherit the threads of a parent that has imported torch.
        context = multiprocessing.get_context("spawn")
        chunk = max(1, min(64, len(paths) // (4 * num_workers)))
        with ProcessPoolExecutor(max_workers=num_workers, mp_context=context) as pool:
            problems = []
            for problem in pool.map(video_problem, paths, chunksize=chunk):
                problems.append(problem)
                progress.update()
            return problems
    finally:
        progress.close()


def write_csv(path: Path, rows: list[dict]) -> None:
    with atomic_write(path) as partial, open(partial, "w", encoding="utf-8", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=["video", "label"])
        writer.writeheader()
        writer.writerows(rows)


def run(args) -> int:
    from ..dataset_lists import DATASET_NUM_LABELS, DATASETS_WITH_SPLITS, read_dataset

    if args.split is not None and args.name not in DATASETS_WITH_SPLITS:
        raise UsageError(f"--split: {args.name} has one official train/validation split; leave --split out.")
    videos, output = Path(args.videos).resolve(), Path(args.output).resolve()
    if not videos.is_dir():
        raise UsageError(f"--videos {args.videos!r}: no such folder; it must hold {dataset_layout(args.name)}.")
    try:
        lists = read_dataset(args.name, args.annotations, videos, args.split)
    except (OSError, ValueError) as error:
        raise UsageError(str(error)) from None
    if len(lists.label_names) != DATASET_NUM_LABELS[args.name]:
        print(
            f"note: the annotations name {len(lists.label_names)} classes; {args.name} has "
            f"{DATASET_NUM_LABELS[args.name]}. Check that they are {args.name}'s files.",
            file=sys.stderr,
        )

    # Existence first, which is cheap: a wrong --videos folder is told before any video is opened.
    present = {split: [(videos / row["video"]).is_file() for row in rows] for split, rows in lists.splits.items()}
    if all(sum(found) < MIN_FOUND_FRACTION * len(found) for found in present.values()):
        examples = [videos / rows[0]["video"] for rows in lists.splits.values()]
        counts = ", ".join(f"{sum(found)} of {len(found)} {split}" for split, found in present.items())
        raise UsageError(
            f"--videos {args.videos!r}: found only {counts} videos (looked for {examples[0]}, {examples[1]}, ...). "
            f"For {args.name} it must be the folder with {dataset_layout(args.name)}."
        )
    checked = [
        (split, row)
        for split, rows in lists.splits.items()
        for row, found in zip(rows, present[split])
        if found  # missing ones need no opening
    ]
    problems = iter(check_videos([str(videos / row["video"]) for _, row in checked], args.num_workers))
    opened = {id(row): next(problems) for _, row in checked}

    output.mkdir(parents=True, exist_ok=True)
    left_out, summary = [], []
    for split, rows in lists.splits.items():
        kept = []
        for row in rows:
            problem = opened.get(id(row), "missing")
            if problem is None:
                relative = os.path.relpath(videos / row["video"], output)
                kept.append({"video": Path(relative).as_posix(), "label": row["label"]})
            else:
                left_out.append({"split": split, "video": str(videos / row["video"]), "reason": problem})
        missing = sum(item["split"] == split and item["reason"] == "missing" for item in left_out)
        broken = sum(item["split"] == split and item["reason"] != "missing" for item in left_out)
        path = output / f"{split}.csv"
        if kept:
            write_csv(path, kept)
            summary.append(f"{split}: {len(kept)} of {len(rows)} videos ({missing} missing, {broken} unreadable)")
        else:
            path.unlink(missing_ok=True)  # a list from an earlier run would not match this one
            summary.append(f"{split}: none of the {len(rows)} videos found, {path.name} not written")
    with atomic_write(output / "label_names.txt") as partial, open(partial, "w", encoding="utf-8") as file:
        file.writelines(f"{name}\n" for name in lists.label_names)
    report = output / REPORT_NAME
    with atomic_write(report) as partial, open(partial, "w", encoding="utf-8") as file:
        file.writelines(json.dumps(item) + "\n" for item in left_out)

    print(f"{args.name}: {len(lists.label_names)} classes; " + "; ".join(summary) + f". Written to {output}.")
    return report_failures(left_out, report, "left out of the lists", names=("split", "video"))
