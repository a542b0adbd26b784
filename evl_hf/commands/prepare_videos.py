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
`evl-hf prepare-videos`: re-encodes a video dataset once so that sampling a training clip decodes little.

A training clip is a few frames sampled from somewhere inside the video, and a decoder can only start at a keyframe:
with libx264's default (a keyframe every 250 frames) most of a 10 s video is decoded to read 8 frames of it. The
prepared copy has a keyframe every `--keyframe_interval` frames and its short side scaled down to `--short_side`, so a
clip costs a few small frames of decoding each. Frame rate and frame count stay those of the input, so frame indices,
and the clips a sampler picks, mean the same in both copies.

Each output is written under a temporary name, decoded in full and checked to have as many frames as its input, and
only then renamed into place: a finished output is one that exists under its final name, which a later run keeps.

With `--format webdataset` the prepared videos go into tar shards of `--shard_size` samples, `<key>.mp4` with
`<key>.json` (`{"label": ...}`), which `run_video_classification.py --streaming` reads. A shard is written under a
temporary name and renamed once complete; a later run keeps the shards that exist and makes the others.

With `--format frames` each video becomes a frame archive (`evl_hf.frame_archives`): every `--frame_step`-th frame as
a baseline JPEG, short side `--short_side` (256 by default), quality `--quality`; one `.evlf` file per video, or, with
`--shard_size`, WebDataset shards of `<key>.evlf` and `<key>.json`. Archives are read wherever videos are.
"""

import csv
import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

from ..frame_archives import FRAME_ARCHIVE_EXTENSION
from ..utils_io import DISK_FULL_ERRNOS, output_lock
from ..video_utils import VIDEO_EXTENSIONS, read_video_list, walk_videos
from . import UsageError
from .utils import atomic_write, int_at_least, int_between, positive_int, report_failures


REPORT_NAME = "prepare_report.jsonl"
SETTINGS_NAME = "prepare_settings.json"
WORK_DIR = ".webdataset-work"  # inside OUTPUT_DIR: videos prepared for shards not written yet


def register(subparsers):
    parser = subparsers.add_parser(
        "prepare-videos",
        help="Re-encode a video dataset for fast clip sampling (small frames, frequent keyframes).",
        description=(
            "Re-encodes every video of INPUT with FFmpeg to H.264 (libx264, yuv420p), its short side scaled down to "
            "--short_side (never up), a keyframe every --keyframe_interval frames, the same frame rate and frame "
            "count, no audio. INPUT is a videofolder tree (its layout is kept under OUTPUT_DIR, extensions become "
            ".mp4) or a .txt/.csv video list (a new list with the new paths is written into OUTPUT_DIR under the "
            "same name). Finished outputs are kept when the command is run again; videos that cannot be read are "
            f"listed in OUTPUT_DIR/{REPORT_NAME} (for a list: OUTPUT_DIR/<list name>.{REPORT_NAME}) and skipped. "
            "With --format webdataset the prepared videos go into tar shards of --shard_size videos with their "
            "labels instead, for training with --streaming; shards that exist are kept. With --format frames every "
            f"video becomes a frame archive ({FRAME_ARCHIVE_EXTENSION}: every --frame_step-th frame as a JPEG), in "
            "shards when --shard_size is given. Exit status 1 when videos were skipped."
        ),
    )
    parser.add_argument("input", metavar="INPUT", help="A videofolder tree, or a .txt (Kinetics) or .csv video list.")
    parser.add_argument("output_dir", metavar="OUTPUT_DIR", help="Where the prepared videos (and list) are written.")
    parser.add_argument(
        "--short_side",
        type=int_at_least(2, " (320 is the usual choice)"),
        default=None,
        help="Scale frames so that their short side is this many pixels; smaller videos keep their size (default: "
        "320, for 224-pixel crops after the paper's short-side resize; 256 for --format frames).",
    )
    parser.add_argument(
        "--keyframe_interval",
        type=int_at_least(1, " (4 is the default)"),
        default=4,
        help="Frames from one keyframe to the next (default: 4).",
    )
    parser.add_argument(
        "--crf",
        type=int_between(0, 51, " (libx264's range; 18 is the default, lower keeps more detail)"),
        default=18,
        help="libx264 constant rate factor, 0-51: lower is larger and closer to the input (default: 18).",
    )
    parser.add_argument(
        "--frame_step",
        type=int_at_least(1, " (4 is the default)"),
        default=4,
        help="--format frames: keep every this many source frames, from the first (default: 4). It must divide the "
        "frame stride of the model that reads them (4 divides EVL's 16).",
    )
    parser.add_argument(
        "--quality",
        type=int_between(1, 100, " (JPEG quality; 90 is the default)"),
        default=90,
        help="--format frames: JPEG quality, 1-100 (default: 90).",
    )
    parser.add_argument(
        "--num_workers",
        type=positive_int,
        default=os.cpu_count() or 1,
        help="Videos encoded at the same time, one FFmpeg thread each (default: the number of CPU cores).",
    )
    parser.add_argument(
        "--video_root",
        default=None,
        help="For a list: where its relative paths start (default: the list file's folder, as in training).",
    )
    parser.add_argument(
        "--video_column_name",
        default="video",
        help="For a .csv list: the column with the video paths (default: video).",
    )
    parser.add_argument(
        "--format",
        choices=("files", "webdataset", "frames"),
        default="files",
        help="files: one .mp4 per video (and a new list); webdataset: tar shards of <key>.mp4 and <key>.json "
        "({label_column_name: label}) named <INPUT name>-000000.tar, ..., for training with --streaming; frames: "
        f"one frame archive ({FRAME_ARCHIVE_EXTENSION}) per video (and a new list), or shards of them with "
        "--shard_size (default: files).",
    )
    parser.add_argument(
        "--shard_size",
        type=int_at_least(1, " (1000 is the default)"),
        default=None,
        help="--format webdataset: videos per shard (default: 1000); --format frames: write shards of this many "
        "archives rather than one file per video.",
    )
    parser.add_argument(
        "--label_column_name",
        default="label",
        help="--format webdataset: the label column of a .csv list, and the field of the .json members (default: "
        "label). A tree's labels are its folder names, a .txt list's its label indices.",
    )
    parser.set_defaults(run=run, parser=parser)


def find_ffmpeg() -> str:
    """Path of an `ffmpeg` binary with the libx264 encoder, or a `UsageError` that says how to get one."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise UsageError(
            "the ffmpeg program is not on PATH. Install it (`apt-get install ffmpeg`, `make install` does it, or "
            "`conda install -c conda-forge ffmpeg`) and run the command again."
        )
    encoders = subprocess.run([ffmpeg, "-hide_banner", "-encoders"], capture_output=True, text=True).stdout
    if "libx264" not in encoders:
        raise UsageError(f"{ffmpeg} has no libx264 encoder; install an FFmpeg build with it (Debian's ffmpeg has it).")
    return ffmpeg


def find_tree_videos(input_dir: Path, output_dir: Path, suffix: str = ".mp4") -> list[tuple[Path, Path]]:
    """`(input path, output path relative to OUTPUT_DIR)` of every video under `input_dir`, in sorted order; outputs
    end in `suffix`."""
    # An OUTPUT_DIR inside INPUT holds outputs, not inputs: a second run must not prepare them again.
    paths = [Path(path) for path in walk_videos(input_dir, skip=output_dir)]
    return [(path, path.relative_to(input_dir).with_suffix(suffix)) for path in paths]


def relative_output(video: str, root: Path, suffix: str = ".mp4") -> Path:
    """Where a listed video goes under OUTPUT_DIR: its path below the list's root (absolute paths elsewhere keep
    their full path below OUTPUT_DIR)."""
    path = Path(os.path.normpath(root / video))
    relative = Path(os.path.relpath(path, root))
    if relative.parts and relative.parts[0] == os.pardir:
        relative = Path(*path.parts[1:])
    return relative.with_suffix(suffix)


def list_jobs(list_path: Path, root: Path, video_column: str, suffix: str = ".mp4"):
    """
    The videos of a `.txt` (one `path label_index` per line) or `.csv` video list, read with
    [`~evl_hf.video_utils.read_video_list`], and where each goes.

    Returns:
        `tuple[list[dict], list[str] | None, list[tuple[Path, Path]]]`: the rows (a `.txt` row has the video column
        and `label`), the CSV header (None for `.txt`), and `(input path, output path relative to OUTPUT_DIR)` per
        row.
    """
    is_csv = list_path.suffix.lower() == ".csv"
    try:
        # a .txt list is written back as `path label`: every line needs its label
        rows, columns = read_video_list(list_path, video_column=video_column, require_labels=not is_csv)
    except (ValueError, UnicodeDecodeError) as error:
        raise UsageError(str(error)) from None
    jobs = [(root / row[video_column], relative_output(row[video_column], root, suffix)) for row in rows]
    return rows, columns if is_csv else None, jobs


def write_list(list_path: Path, rows: list[dict], header, video_column: str) -> None:
    """Writes the list atomically (a temporary file renamed), so that a killed run never leaves half a list."""
    with atomic_write(list_path) as partial, open(partial, "w", encoding="utf-8", newline="") as file:
        if header is not None:
            writer = csv.DictWriter(file, fieldnames=header)
            writer.writeheader()
            writer.writerows(rows)
        else:
            file.writelines(f"{row[video_column]} {row['label']}\n" for row in rows)


def scaled_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """Output `(width, height)`: the short side brought down to `short_side` (never up), both sides even.

    H.264 in yuv420p stores colour at half resolution, so libx264 needs even sides: they are rounded down, never up,
    so an odd side loses one pixel.
    """
    scale = min(1.0, short_side / min(width, height))
    return max(2, int(width * scale) // 2 * 2), max(2, int(height * scale) // 2 * 2)


def encode_command(ffmpeg: str, source: Path, target: Path, size: tuple[int, int], settings: dict) -> list[str]:
    gop = str(settings["keyframe_interval"])
    return [
        ffmpeg,
        "-nostdin",
        "-hide_banner",
        "-loglevel",
        "error",
        "-y",
        "-threads",
        "1",
        "-i",
        str(source),
        "-map",
        "0:v:0",
        "-an",
        "-sn",
        "-dn",
        # One thread for the filter and the encoder too: the parallelism is over files.
        "-filter_threads",
        "1",
        "-vf",
        f"scale={size[0]}:{size[1]}:flags=bilinear",
        # Every decoded frame is encoded once with its timestamp: no frame dropped or duplicated to fit a rate.
        "-fps_mode",
        "passthrough",
        "-c:v",
        "libx264",
        "-crf",
        str(settings["crf"]),
        "-pix_fmt",
        "yuv420p",
        "-threads",
        "1",
        # Cheaper frames to decode: no CABAC, deblocking or weighted prediction (x264's fastdecode tuning), and no
        # B-frames, so that a frame needs only the frames from the keyframe before it up to itself.
        "-tune",
        "fastdecode",
        "-bf",
        "0",
        # A keyframe exactly every `gop` frames: no scene-cut keyframes in between, closed GOPs (x264's default).
        "-g",
        gop,
        "-keyint_min",
        gop,
        "-sc_threshold",
        "0",
        "-movflags",
        "+faststart",
        "-f",
        "mp4",
        str(target),
    ]


def count_decoded_frames(path: Path) -> int:
    """Decodes every frame of `path` (in chunks, to bound memory) and returns how many there were."""
    from torchcodec.decoders import VideoDecoder

    decoder = VideoDecoder(str(path), seek_mode="exact", num_ffmpeg_threads=1)
    chunk = 32
    for start in range(0, len(decoder), chunk):
        decoder.get_frames_in_range(start, min(start + chunk, len(decoder)))
    return len(decoder)


def prepare_one(ffmpeg: str | None, source: Path, target: Path, settings: dict) -> dict:
    """
    Prepares one video with `settings` (`short_side`, `keyframe_interval`, `crf`; for frame archives `format`
    "frames", `short_side`, `frame_step`, `quality`); never raises for a bad input.

    Returns:
        `dict`: `input`, `output`, `status` ("prepared", "kept" or "failed"), `reason` when failed, and the input's
        and output's sizes in bytes.
    """
    result = {"input": str(source), "output": str(target), "input_bytes": None, "output_bytes": None}
    if target.exists():
        result.update(status="kept", output_bytes=target.stat().st_size)
        if source.exists():
            result["input_bytes"] = source.stat().st_size
        return result
    from ..video_utils import open_video

    try:
        try:
            decoder = open_video(source)
        except (OSError, ValueError) as error:
            raise ValueError(str(error)) from None
        metadata = decoder.metadata
        frames = len(decoder)
        size = scaled_size(metadata.width, metadata.height, settings["short_side"])
        result["input_bytes"] = source.stat().st_size
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(target) as partial:
            if settings.get("format") == "frames":
                write_archive(source, Path(partial), size, frames, settings)
                result["output_bytes"] = os.path.getsize(partial)
                result["status"] = "prepared"
                return result
            command = encode_command(ffmpeg, source, Path(partial), size, settings)
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                # the disk, not the video: the run stops, and a rerun prepares it (SIGXFSZ: past the file-size limit)
                full = [n for n in DISK_FULL_ERRNOS if os.strerror(n) in done.stderr]
                if full or done.returncode == -signal.SIGXFSZ:
                    number = full[0] if full else errno.EFBIG
                    raise OSError(number, os.strerror(number), str(target))
                last_lines = " | ".join(done.stderr.strip().splitlines()[-3:])
                raise ValueError(f"ffmpeg failed (exit status {done.returncode}): {last_lines}")
            try:
                output_frames = count_decoded_frames(partial)
            except (RuntimeError, ValueError) as error:
                raise ValueError(f"the re-encoded video does not decode: {error}") from None
            if output_frames != frames:
                raise ValueError(
                    f"the re-encoded video has {output_frames} frames, the input {frames} (the input is probably "
                    "corrupted part way through)"
                )
            result["output_bytes"] = os.path.getsize(partial)
        result["status"] = "prepared"
    except ValueError as error:
        result.update(status="failed", reason=str(error))
    return result


def write_archive(source: Path, partial: Path, size: tuple[int, int], frames: int, settings: dict) -> None:
    """Writes the frame archive of `source` to `partial` and checks that it reads back with the input's frames."""
    from ..frame_archives import write_frame_archive
    from ..video_utils import VideoDecodingError, open_video

    try:
        write_frame_archive(source, partial, frame_step=settings["frame_step"], size=size, quality=settings["quality"])
        archive = open_video(partial)
    except (RuntimeError, VideoDecodingError) as error:
        raise ValueError(f"the input does not decode to the end: {error}") from None
    if len(archive) != frames:
        raise ValueError(f"the archive has {len(archive)} frames, the input {frames}")


def _prepare_one_in_worker(job):
    return prepare_one(*job)


def check_settings(output_dir: Path, settings: dict) -> None:
    """Outputs made with other settings must not be mixed with new ones: refuse, or record the settings."""
    path = output_dir / SETTINGS_NAME
    if path.exists():
        previous = json.loads(path.read_text())
        if previous != settings:
            raise UsageError(
                f"{output_dir} holds videos prepared with {previous}, not {settings}. Use those settings to finish "
                "that run, or another OUTPUT_DIR."
            )
        return
    output_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings) + "\n")


def run(args) -> int:
    # One run per OUTPUT_DIR: two would prepare the same videos and write the same reports.
    with output_lock(args.output_dir, "OUTPUT_DIR", folder=True):
        return prepare(args)


def prepare(args) -> int:
    source = Path(args.input)
    output_dir = Path(args.output_dir).resolve()
    if not source.exists():
        raise UsageError(f"INPUT {args.input!r}: no such file or folder.")
    rows = header = None
    frames = args.format == "frames"
    suffix = FRAME_ARCHIVE_EXTENSION if frames else ".mp4"
    if source.is_dir():
        if source.resolve() == output_dir:
            raise UsageError("OUTPUT_DIR is INPUT: the prepared videos would replace the originals; pick another.")
        jobs = find_tree_videos(source, output_dir, suffix)
        if not jobs:
            raise UsageError(
                f"INPUT {args.input!r} holds no videos (looked for {', '.join(sorted(VIDEO_EXTENSIONS))})."
            )
    elif source.suffix.lower() in (".txt", ".csv"):
        root = Path(args.video_root) if args.video_root is not None else source.resolve().parent
        rows, header, jobs = list_jobs(source, root, args.video_column_name, suffix)
    else:
        raise UsageError(
            f"INPUT {args.input!r}: expected a videofolder tree, or a video list ending in .txt (`path label` per "
            "line) or .csv."
        )
    # Two inputs may not land on one output (`a.avi` and `a.mp4` in one folder); a video listed twice is done once.
    by_output = {}
    for path, relative in jobs:
        other = by_output.setdefault(relative, path)
        if os.path.abspath(other) != os.path.abspath(path):
            raise UsageError(
                f"{other} and {path} would both be written to {output_dir / relative}; rename one of them."
            )
    if frames:  # decoded by torchcodec and encoded by torchvision: no ffmpeg program
        ffmpeg = None
        settings = {
            "format": "frames",
            "short_side": args.short_side or 256,
            "frame_step": args.frame_step,
            "quality": args.quality,
        }
    else:
        ffmpeg = find_ffmpeg()
        settings = {"short_side": args.short_side or 320, "keyframe_interval": args.keyframe_interval, "crf": args.crf}
    if args.format == "webdataset" or (frames and args.shard_size is not None):
        settings.update(format=args.format, shard_size=args.shard_size or 1000)
        labels = job_labels(source, rows, jobs, args)
        check_settings(output_dir, settings)
        return write_shards(ffmpeg, source, output_dir, by_output, labels, settings, args)
    check_settings(output_dir, settings)

    work = [(ffmpeg, path, output_dir / relative, settings) for relative, path in by_output.items()]
    results = run_jobs(work, args.num_workers)

    failed = [r for r in results if r["status"] == "failed"]
    # One report per list, so that preparing train.txt and val.txt into one folder keeps both.
    report = output_dir / (REPORT_NAME if rows is None else f"{source.name}.{REPORT_NAME}")
    with open(report, "w", encoding="utf-8") as file:
        file.writelines(json.dumps({"input": r["input"], "reason": r["reason"]}) + "\n" for r in failed)
    if rows is not None:
        failed_inputs = {r["input"] for r in failed}
        kept_rows = []
        for row, (path, relative) in zip(rows, jobs):
            if str(path) not in failed_inputs:
                kept_rows.append({**row, args.video_column_name: relative.as_posix()})
        write_list(output_dir / source.name, kept_rows, header, args.video_column_name)

    counts = {status: sum(r["status"] == status for r in results) for status in ("prepared", "kept", "failed")}
    measured = [r for r in results if r["input_bytes"] and r["output_bytes"]]
    before, after = sum(r["input_bytes"] for r in measured), sum(r["output_bytes"] for r in measured)
    print(
        f"{counts['prepared']} prepared, {counts['kept']} kept from an earlier run, {counts['failed']} failed; "
        f"{before / 1e6:.1f} MB of inputs -> {after / 1e6:.1f} MB in {output_dir}"
        + (f" (list: {output_dir / source.name})" if rows is not None else "")
    )
    return report_failures(failed, report, "could not be prepared and were skipped", names=("input",))


def run_jobs(work: list[tuple], num_workers: int) -> list[dict]:
    """Runs `prepare_one` over `work` with a progress bar; in this process for one worker, else in a process pool."""
    from tqdm.auto import tqdm

    progress = tqdm(total=len(work), unit="video", desc="prepare-videos", file=sys.stderr)
    results = []
    try:
        if num_workers == 1 or len(work) == 1:
            for job in work:
                results.append(prepare_one(*job))
                progress.update()
        else:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor, as_completed

            # "spawn": the workers must not inherit the threads of a parent that has imported torch.
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=num_workers, mp_context=context) as pool:
                futures = [pool.submit(_prepare_one_in_worker, job) for job in work]
                try:
                    for future in as_completed(futures):
                        results.append(future.result())
                        progress.update()
                except BaseException:
                    pool.shutdown(cancel_futures=True)
                    raise
    finally:
        progress.close()
    return results


def job_labels(source: Path, rows, jobs, args) -> dict[Path, object]:
    """The label of each output: a tree's folder name (the videofolder layout), a .txt list's index, a .csv column."""
    labels = {}
    for number, (path, relative) in enumerate(jobs):
        if rows is None:
            if relative.parent == Path("."):
                raise UsageError(
                    f"{path} sits directly in INPUT, so it has no label: the videofolder layout is "
                    "INPUT/<label>/<video>."
                )
            labels[relative] = relative.parent.name
        elif args.label_column_name in rows[number]:
            labels[relative] = rows[number][args.label_column_name]  # a .txt list's index is an int already
        else:
            raise UsageError(f"{source}: no column {args.label_column_name!r} (--label_column_name) for the labels.")
    return labels


def sample_key(relative: Path) -> str:
    """A WebDataset key: the path without its extension, dots replaced (a key ends at the first dot of a name)."""
    return relative.with_suffix("").as_posix().replace(".", "_")


def write_shards(ffmpeg: str, source: Path, output_dir: Path, by_output: dict, labels: dict, settings: dict, args):
    """
    Prepares the videos of every shard not written yet (in `OUTPUT_DIR/.webdataset-work/`, where a killed run's
    finished videos are kept), then packs each shard under a temporary name and renames it.
    """
    items = list(by_output.items())  # (output relative to OUTPUT_DIR, input), in the input's order
    keys = [sample_key(relative) for relative, _ in items]
    if len(set(keys)) < len(keys):
        duplicate = next(key for key in keys if keys.count(key) > 1)
        raise UsageError(
            f"two videos would get the WebDataset key {duplicate!r} (dots become underscores): rename one."
        )
    size, work_dir = settings["shard_size"], output_dir / WORK_DIR
    shards = [
        (output_dir / f"{source.stem}-{number:06d}.tar", items[start : start + size])
        for number, start in enumerate(range(0, len(items), size))
    ]
    pending = [(path, members) for path, members in shards if not path.exists()]
    work = [(ffmpeg, path, work_dir / relative, settings) for _, members in pending for relative, path in members]
    results = {result["output"]: result for result in run_jobs(work, args.num_workers)}

    failed = [r for r in results.values() if r["status"] == "failed"]
    for path, members in pending:
        done = [
            (relative, work_dir / relative)
            for relative, _ in members
            if results[str(work_dir / relative)]["status"] != "failed"
        ]
        if not done:
            continue  # every video of it failed: no empty shard
        with atomic_write(path) as partial, tarfile.open(partial, "w") as archive:
            for relative, video in done:
                key = sample_key(relative)
                archive.add(video, arcname=f"{key}{relative.suffix}")
                label = json.dumps({args.label_column_name: labels[relative]}).encode()
                info = tarfile.TarInfo(f"{key}.json")
                info.size = len(label)
                archive.addfile(info, io.BytesIO(label))
        for _, video in done:
            video.unlink()
    shutil.rmtree(work_dir, ignore_errors=True)

    report = output_dir / f"{source.name}.{REPORT_NAME}"
    with open(report, "w", encoding="utf-8") as file:
        file.writelines(json.dumps({"input": r["input"], "reason": r["reason"]}) + "\n" for r in failed)
    written = [path for path, _ in pending if path.exists()]
    print(
        f"{len(written)} shard(s) written, {len(shards) - len(pending)} kept from an earlier run, {len(failed)} "
        f"video(s) failed; {len(shards)} shard(s) of up to {size} videos: {output_dir / source.stem}-*.tar"
    )
    return report_failures(failed, report, "could not be prepared and were left out", names=("input",))
