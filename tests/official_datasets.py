"""
Miniature copies of Kinetics, Something-Something v2, UCF101 and HMDB51 in their official file formats, as the usual
downloads lay them out: a few short videos per class, one video listed but missing and one that does not open.

Each `write_*` function writes `root/annotations` and `root/videos` and returns them with what `evl-hf
prepare-dataset` should make of them: the label names in the official order, and the `(video, label)` rows of each
split it should keep (video paths relative to the video folder).
"""

import json
from pathlib import Path
from typing import NamedTuple

from evl_hf.testing_utils import encode_video


NUM_FRAMES = 10  # enough for 4 frames 2 apart


class MiniatureDataset(NamedTuple):
    annotations: Path
    videos: Path
    label_names: list[str]
    expected: dict[str, list[tuple[str, str]]]  # split -> (video relative to `videos`, label) kept
    missing: str  # listed in the training split, absent
    broken: str  # listed in the training split, not a video


def write_videos(videos: Path, paths: list[str], broken: str, codec: str = "libx264") -> None:
    """Encodes every path of `paths` under `videos` (a few frames each, seeded by position), but `broken`, which gets
    bytes that are no video."""
    for seed, relative in enumerate(paths):
        path = videos / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if relative == broken:
            path.write_bytes(b"this is not a video, only named like one\n" * 8)
        else:
            encode_video(path, NUM_FRAMES, height=32, width=40, seed=seed, codec=codec)


def split_rows(rows: list[tuple[str, str, str]], skip: tuple[str, ...]) -> dict[str, list[tuple[str, str]]]:
    """`(split, video, label)` rows as `{split: [(video, label), ...]}`, leaving out the videos of `skip`."""
    expected = {"train": [], "validation": []}
    for split, video, label in rows:
        if video not in skip:
            expected[split].append((video, label))
    return expected


def write_kinetics(root: Path) -> MiniatureDataset:
    """Kinetics: `train.csv`/`val.csv` (val.csv with the extra `is_cc` column of Kinetics-400's first release and a
    quoted label), clips in `train/` directly and in `val/<label>/` subfolders, one as `.mkv`."""
    annotations, videos = root / "annotations", root / "videos"
    annotations.mkdir(parents=True)
    labels = ["zumba", "abseiling", "passing American football (in game)"]  # listed unsorted on purpose
    rows, lines = [], {"train": [], "val": []}
    for number, label in enumerate(labels):
        for clip in range(4):
            split = "val" if clip == 3 else "train"
            youtube_id, start = f"-yt{number}{clip}_A", 10 * clip + number
            name = f"{youtube_id}_{start:06d}_{start + 10:06d}"
            folder = f"val/{label}" if split == "val" else "train"
            extension = ".mkv" if (number, clip) == (1, 1) else ".mp4"
            rows.append(("validation" if split == "val" else "train", f"{folder}/{name}{extension}", label))
            quoted = f'"{label}"' if " " in label else label
            lines[split].append(f"{quoted},{youtube_id},{start},{start + 10},{split}")
    (annotations / "train.csv").write_text("label,youtube_id,time_start,time_end,split\n" + "\n".join(lines["train"]))
    (annotations / "val.csv").write_text(
        "label,youtube_id,time_start,time_end,split,is_cc\n" + "".join(f"{line},0\n" for line in lines["val"])
    )
    missing, broken = rows[0][1], rows[6][1]
    write_videos(videos, [video for _, video, _ in rows if video != missing], broken)
    return MiniatureDataset(annotations, videos, sorted(labels), split_rows(rows, (missing, broken)), missing, broken)


# Templates of Something-Something v2 (in labels.json's index order), two of them naming left and right.
SSV2_TEMPLATES = [
    "Pushing [something] from right to left",
    "Moving [something] up",
    "Pushing [something] from left to right",
]


def write_ssv2(root: Path) -> MiniatureDataset:
    """Something-Something v2: `labels.json` with string indices listed out of order, `train.json` and
    `validation.json` with bracketed templates and placeholders, VP9 `{id}.webm` videos."""
    annotations, videos = root / "annotations", root / "videos"
    annotations.mkdir(parents=True)
    names = [template.replace("[", "").replace("]", "") for template in SSV2_TEMPLATES]
    labels = {name: str(index) for index, name in reversed(list(enumerate(names)))}
    (annotations / "labels.json").write_text(json.dumps(labels, indent=1))
    entries, rows = {"train": [], "validation": []}, []
    for number, template in enumerate(SSV2_TEMPLATES):
        for clip in range(4):
            split = "validation" if clip == 3 else "train"
            video_id = str(1000 + 10 * number + clip)
            entries[split].append(
                {
                    "id": video_id,
                    "label": template.replace("[something]", "a cup"),
                    "template": template,
                    "placeholders": ["a cup"],
                }
            )
            rows.append((split, f"{video_id}.webm", names[number]))
    for split, split_entries in entries.items():
        (annotations / f"{split}.json").write_text(json.dumps(split_entries))
    missing, broken = rows[1][1], rows[4][1]
    write_videos(videos, [video for _, video, _ in rows if video != missing], broken, codec="libvpx-vp9")
    return MiniatureDataset(annotations, videos, names, split_rows(rows, (missing, broken)), missing, broken)


# classInd.txt's order, which is not the sorted one: the official order is the file's.
UCF101_CLASSES = ["Basketball", "ApplyEyeMakeup", "HandstandPushups"]


def write_ucf101(root: Path) -> MiniatureDataset:
    """UCF101's `ucfTrainTestlist`: `classInd.txt`, `trainlist0N.txt` (1-based indices) and `testlist0N.txt` (paths
    only) for splits 1 and 2, with CRLF line ends; videos `Class/v_Class_gXX_cYY.avi`. Split 1 tests group 1 of each
    class, split 2 group 2. Returns the expectations of split 1."""
    annotations, videos = root / "annotations" / "ucfTrainTestlist", root / "videos"
    annotations.mkdir(parents=True)
    (annotations / "classInd.txt").write_bytes(
        "".join(f"{index} {name}\r\n" for index, name in enumerate(UCF101_CLASSES, start=1)).encode()
    )
    paths = {
        (name, group): f"{name}/v_{name.replace('Handstand', 'HandStand')}_g{group:02d}_c01.avi"
        for name in UCF101_CLASSES
        for group in (1, 2, 3, 4)
    }
    for split in (1, 2):
        train = [f"{path} {UCF101_CLASSES.index(name) + 1}" for (name, group), path in paths.items() if group != split]
        test = [path for (name, group), path in paths.items() if group == split]
        (annotations / f"trainlist{split:02d}.txt").write_bytes("\r\n".join(train).encode() + b"\r\n")
        (annotations / f"testlist{split:02d}.txt").write_bytes("\r\n".join(test).encode() + b"\r\n")
    rows = [("validation" if group == 1 else "train", path, name) for (name, group), path in paths.items()]
    missing, broken = paths["Basketball", 2], paths["ApplyEyeMakeup", 3]
    write_videos(videos, [path for path in paths.values() if path != missing], broken)
    return MiniatureDataset(annotations, videos, UCF101_CLASSES, split_rows(rows, (missing, broken)), missing, broken)


HMDB51_CLASSES = ["sit", "brush_hair", "cartwheel"]  # the official order is the sorted one


def write_hmdb51(root: Path) -> MiniatureDataset:
    """HMDB51's `testTrainMulti_7030_splits`: `<class>_test_split<N>.txt` for N = 1, 2, 3, lines `video.avi CODE `
    (trailing space; 1 train, 2 test, 0 unused); videos `<class>/video.avi`. Split N tests video N and leaves video 4
    unused (code 0). Returns the expectations of split 1."""
    annotations, videos = root / "annotations" / "testTrainMulti_7030_splits", root / "videos"
    annotations.mkdir(parents=True)
    paths = {(name, clip): f"{name}/{name}_video_{clip}.avi" for name in HMDB51_CLASSES for clip in range(5)}
    for name in HMDB51_CLASSES:
        for split in (1, 2, 3):
            codes = {clip: "0" if clip == 4 else "2" if clip == split else "1" for clip in range(5)}
            lines = "".join(f"{paths[name, clip].split('/')[1]} {code} \n" for clip, code in codes.items())
            (annotations / f"{name}_test_split{split}.txt").write_text(lines)
    rows = [("validation" if clip == 1 else "train", path, name) for (name, clip), path in paths.items() if clip != 4]
    missing, broken = paths["sit", 0], paths["cartwheel", 2]
    write_videos(videos, [path for path in paths.values() if path != missing], broken)
    return MiniatureDataset(
        annotations, videos, sorted(HMDB51_CLASSES), split_rows(rows, (missing, broken)), missing, broken
    )


WRITERS = {"kinetics400": write_kinetics, "ssv2": write_ssv2, "ucf101": write_ucf101, "hmdb51": write_hmdb51}
