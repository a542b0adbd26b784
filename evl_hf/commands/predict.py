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
import re
import sys

from ..video_utils import VIDEO_EXTENSIONS, VIDEO_LIST_EXTENSIONS, read_video_list, resolve_video_path, walk_videos
from . import UsageError
from .utils import add_model_arguments, load_model_and_processor


def find_videos(inputs: list[str]) -> list[str]:
    """
    The videos named by `inputs`, in order and without repeats: video files as given, folders searched recursively
    for files with a video extension, and lists (`.txt`, `.csv`, `.json`, `.jsonl`, read by
    [`~evl_hf.video_utils.read_video_list`], relative paths from the list's folder). Entries of a list are kept even
    when they do not exist: the run records them as errors.

    Raises:
        `UsageError`: an input does not exist, or a list cannot be read.
    """
    videos = []
    for item in inputs:
        if os.path.isdir(item):
            videos += walk_videos(item)
        elif os.path.isfile(item) and item.lower().endswith(VIDEO_LIST_EXTENSIONS):
            try:
                rows = read_video_list(item).rows
            except (ValueError, UnicodeDecodeError) as error:
                raise UsageError(f"INPUT {item!r}: {error}") from None
            root = os.path.dirname(os.path.abspath(item))
            videos += [resolve_video_path(str(row["video"]), root) for row in rows]
        elif os.path.exists(item):
            videos.append(item)
        else:
            raise UsageError(
                f"INPUT {item!r} does not exist; pass video files, folders or lists of videos "
                f"({', '.join(VIDEO_LIST_EXTENSIONS)})."
            )
    return list(dict.fromkeys(videos))


def read_records(path: str, *, truncate: bool = False) -> tuple[list[str] | None, list[tuple[str, bool, object]]]:
    """
    The records of an output or part file: its CSV header (`None` for JSON lines or an empty file) and, per record,
    `(video, whether it is an error, the JSON line or CSV row as written)`. A last line cut short by a stopped run is
    left out, and with `truncate` cut off the file.
    """
    is_csv = path.lower().endswith(".csv")
    with open(path, "rb") as file:
        data = file.read()
    complete = data[: data.rfind(b"\n") + 1]
    if truncate and len(complete) < len(data):  # a record torn by a kill: its video is predicted again
        with open(path, "r+b") as file:
            file.truncate(len(complete))
    text = complete.decode("utf-8")
    if is_csv:
        rows = [row for row in csv.reader(io.StringIO(text, newline="")) if row]
        header, rows = (rows[0], rows[1:]) if rows else (None, [])
        if header is not None and "video" not in header:
            raise UsageError(f"--output {path!r} is a CSV file without a `video` column; choose another.")
        video = header.index("video") if header else 0
        error = header.index("error") if header and "error" in header else len(header or [])
        return header, [(row[video], len(row) > error and bool(row[error]), row) for row in rows]
    records = []
    for number, line in enumerate(text.splitlines(keepends=True), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            records.append((record["video"], "error" in record, line))
        except (ValueError, KeyError, TypeError):
            raise UsageError(
                f"--output {path!r}: line {number} is not a record of evl-hf predict; choose another file."
            ) from None
    return None, records


def write_records(path: str, header: list[str] | None, records: list) -> None:
    """Writes records as [`read_records`] returns them (the line or row as written), atomically."""
    partial = f"{path}.partial"
    with open(partial, "w", encoding="utf-8", newline="") as file:
        if path.lower().endswith(".csv"):
            csv.writer(file).writerows([header, *records] if header else records)
        else:
            file.writelines(records)
    os.replace(partial, path)


def part_file(output: str, rank: int) -> str:
    """Where process `rank` of a distributed run writes its records, next to `output`."""
    return f"{output}.part-{rank:05d}"


def part_files(output: str) -> list[str]:
    """The part files next to `output`, of any earlier distributed run, in rank order."""
    folder, name = os.path.split(os.path.abspath(output))
    pattern = re.compile(re.escape(name) + r"\.part-(\d+)$")
    found = [(int(match.group(1)), entry) for entry in os.listdir(folder) if (match := pattern.match(entry))]
    return [os.path.join(folder, entry) for _, entry in sorted(found)]


def merge_part_files(output: str, order: list[str] | None = None) -> None:
    """
    Folds the part files of a distributed run into `output`: one record per video (the first found: `output`'s own,
    then the parts' in rank order), sorted by `order` (the run's videos; others keep their place at the end) when it
    is given. `output` is replaced atomically, then the parts are removed, so a run stopped here loses nothing.
    """
    parts = part_files(output)
    if not parts:
        return
    header, records = read_records(output) if os.path.exists(output) else (None, [])
    for part in parts:
        part_header, part_records = read_records(part)
        header, records = header or part_header, records + part_records
    unique = {}
    for video, _, record in records:
        unique.setdefault(video, record)
    videos = list(unique)
    if order is not None:
        position = {video: index for index, video in enumerate(order)}
        videos.sort(key=lambda video: position.get(video, len(order)))
    write_records(output, header, [unique[video] for video in videos])
    for part in parts:
        os.remove(part)


class ResultsFile:
    """
    The output file: JSON lines, or CSV when its name ends in `.csv` (columns `video`, `label_1`, `score_1`, ...,
    `error`). Opening it reads the videos it already holds; a last line cut short by a stopped run is removed.
    """

    def __init__(self, path: str, top_k: int, retry_failed: bool = False, multi_label: bool = False):
        self.path, self.top_k, self.multi_label = path, top_k, multi_label
        self.is_csv = path.lower().endswith(".csv")
        self.done = {}  # video -> whether its record is an error
        if os.path.exists(path):
            self._read(retry_failed)
        self.file = open(path, "a", newline="")
        self.writer = csv.writer(self.file) if self.is_csv else None
        if self.is_csv and self.file.tell() == 0:
            self.writer.writerow(self._csv_header(top_k, multi_label))
            self.file.flush()

    @staticmethod
    def _csv_header(top_k: int, multi_label: bool) -> list[str]:
        ranked = [f"{name}_{i}" for i in range(1, top_k + 1) for name in ("label", "score")]
        return ["video", *ranked, *(["above_threshold"] if multi_label else []), "error"]

    def _read(self, retry_failed: bool):
        header, records = read_records(self.path, truncate=True)
        kept = []
        for video, failed, record in records:
            if failed and retry_failed:
                self.done.pop(video, None)
            else:
                self.done[video] = failed
                kept.append(record)
        if len(kept) < len(records):  # error records dropped: rewrite the file without them
            write_records(self.path, header, kept)

    def write(self, record: dict):
        if self.is_csv:
            pairs = list(zip(record.get("labels", []), record.get("scores", [])))
            cells = [value for label, score in pairs for value in (label, score)]
            cells += [""] * (2 * self.top_k - len(cells))
            if self.multi_label:
                cells.append(";".join(record.get("above_threshold", [])))
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
        self.top_k, self.is_csv, self.multi_label, self.done = top_k, False, False, {}
        self.file, self.writer = sys.stdout, None

    def close(self):
        self.file.flush()


class EmbeddingShards:
    """
    Each video's pooled vector (`pooler_output`: the query token after the last decoder layer) in Parquet shards in a
    folder, with a `video` and an `embedding` column; `datasets.load_dataset("parquet", data_files="FOLDER/*.parquet")`
    loads them. A shard is written under a temporary name and renamed when complete, every `flush_every` videos and
    at the end, so a stopped run loses at most the videos since the last shard, which a resumed run computes again.
    Process `rank` of a distributed run writes shards of its own.
    """

    def __init__(self, folder: str, rank: int = 0, flush_every: int = 1024):
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise UsageError("--embeddings writes Parquet with pyarrow: pip install 'evl-hf[train]'.") from None
        if os.path.exists(folder) and not os.path.isdir(folder):
            raise UsageError(f"--embeddings {folder!r} is a file; give a folder (it is created if missing).")
        os.makedirs(folder, exist_ok=True)
        self.folder, self.rank, self.flush_every = folder, rank, flush_every
        self.done = embedded_videos(folder)
        mine = [name for name in os.listdir(folder) if re.fullmatch(rf"embeddings-r{rank:05d}-\d+\.parquet", name)]
        self.next_shard = 1 + max((int(name[-13:-8]) for name in mine), default=-1)
        self.pending = []

    def add(self, video: str, embedding: list[float]):
        self.pending.append((video, embedding))
        self.done.add(video)
        if len(self.pending) >= self.flush_every:
            self.flush()

    def flush(self):
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self.pending:
            return
        videos, embeddings = zip(*self.pending)
        table = pa.table({"video": list(videos), "embedding": pa.array(embeddings, type=pa.list_(pa.float32()))})
        path = os.path.join(self.folder, f"embeddings-r{self.rank:05d}-{self.next_shard:05d}.parquet")
        pq.write_table(table, f"{path}.partial")
        os.replace(f"{path}.partial", path)
        self.next_shard, self.pending = self.next_shard + 1, []

    close = flush


def embedded_videos(folder: str) -> set[str]:
    """The videos whose embeddings the Parquet shards in `folder` hold."""
    import pyarrow.parquet as pq

    shards = (
        [name for name in sorted(os.listdir(folder)) if name.endswith(".parquet")] if os.path.isdir(folder) else []
    )
    tables = [pq.read_table(os.path.join(folder, name), columns=["video"]) for name in shards]
    return {video for table in tables for video in table["video"].to_pylist()}


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
            inputs = self.video_processor(
                video, num_frames=self.num_frames, do_sample_frames=True, return_tensors="pt"
            )
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
            "Classify video files, folders (searched recursively) and lists of videos (.txt, .csv, .json, .jsonl). "
            "Writes one record per video, as JSON lines or CSV (by the extension of --output) or to standard output: "
            '{"video", "labels", "scores"} (scores as the video-classification pipeline gives them: softmax, or '
            'sigmoid for a multi-label model), or {"video", "error"} for a video that cannot be read. Run the same '
            "command again to resume: videos already in --output are skipped (with --retry_failed, those that "
            "failed are tried again). Exit status: 0 when every video was "
            "predicted, 1 when some failed, 2 for usage errors."
        ),
    )
    add_model_arguments(parser)
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="Video files, folders, or lists of videos.")
    parser.add_argument("--output", help="JSON lines file (.csv for CSV) to write and resume (default: stdout).")
    parser.add_argument(
        "--retry_failed",
        action="store_true",
        help="Resuming: remove the error records from --output and try those videos again (default: keep them).",
    )
    parser.add_argument("--top_k", type=int, default=5, help="Labels per video (default: 5).")
    parser.add_argument(
        "--threshold",
        type=float,
        default=0.5,
        help="Multi-label models: every label scoring above it is listed in `above_threshold` (default: 0.5).",
    )
    parser.add_argument(
        "--embeddings",
        metavar="FOLDER",
        help="Also write each video's pooled vector (pooler_output) as Parquet shards into this folder; resumable.",
    )
    parser.add_argument("--batch_size", type=int, default=8, help="Clips per forward pass (default: 8).")
    parser.add_argument(
        "--num_workers",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="Decoding worker processes; 0 decodes in the main process (default: min(4, CPUs)).",
    )
    parser.set_defaults(run=run, parser=parser)


def _process_state(device: str):
    """Accelerate's view of the processes of this run (one unless launched by `torchrun` or `accelerate launch`)."""
    import torch

    try:
        from accelerate import PartialState
    except ImportError:
        if torch.distributed.is_torchelastic_launched():
            raise UsageError("a distributed run needs Accelerate: pip install 'evl-hf[train]'.") from None
        return None
    return PartialState(cpu=device == "cpu")


def _check_same_inputs(args: argparse.Namespace, videos: list[str]):
    """Every process of a distributed run must be given the same model, inputs and output."""
    import hashlib

    import torch.distributed as dist

    asked = json.dumps([args.model, os.path.abspath(args.output), args.top_k, videos])
    digests = [None] * dist.get_world_size()
    dist.all_gather_object(digests, hashlib.sha256(asked.encode()).hexdigest())
    if len(set(digests)) > 1:
        raise UsageError(
            "the processes of this distributed run were given different --model, INPUT, --output or --top_k (or "
            "see different files in the input folders); launch every process with the same command."
        )


def run(args: argparse.Namespace) -> int:
    for option in ("top_k", "batch_size"):
        if getattr(args, option) < 1:
            raise UsageError(f"--{option} must be at least 1, got {getattr(args, option)}.")
    if args.num_workers < 0:
        raise UsageError(f"--num_workers must be 0 or more, got {args.num_workers}.")
    if args.output and not os.path.isdir(os.path.dirname(os.path.abspath(args.output))):
        raise UsageError(f"--output {args.output!r}: its folder does not exist; create it first.")
    if args.retry_failed and not args.output:
        raise UsageError("--retry_failed resumes an --output file; give one.")
    if not 0 < args.threshold < 1:
        raise UsageError(f"--threshold must be between 0 and 1 (exclusive), got {args.threshold}.")
    videos = find_videos(args.inputs)
    if not videos:
        raise UsageError(
            f"no videos found in {args.inputs}: folders are searched for {', '.join(VIDEO_EXTENSIONS)} files."
        )
    # Under torchrun or accelerate launch, each process classifies its share of the videos on its own device and
    # writes its own part file; the first process merges the parts into --output at the end.
    state = _process_state(args.device)
    rank, world_size = (state.process_index, state.num_processes) if state is not None else (0, 1)
    device = args.device
    if world_size > 1:
        if not args.output:
            raise UsageError("a distributed run needs --output: each process writes its own part of it.")
        _check_same_inputs(args, videos)
        if device.startswith("cuda"):
            device = str(state.device)  # cuda:LOCAL_RANK
    model, processor = load_model_and_processor(args.model, device, args.dtype, args.compile, args.batch_size)

    import torch
    import torch.distributed as dist
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from ..inference import default_function_to_apply, postprocess_logits, top_k_labels

    multi_label = default_function_to_apply(model.config) == "sigmoid"

    if args.output and rank == 0:
        merge_part_files(args.output)  # what a stopped distributed run left, so that it counts as done
    if not args.output:
        results, done = _StdoutResults(args.top_k), {}
    elif world_size == 1:
        # opening it drops a torn line, and the error records of videos to retry
        results = ResultsFile(args.output, args.top_k, args.retry_failed, multi_label=multi_label)
        done = dict(results.done)  # what it held before this run
    else:
        if rank == 0:
            ResultsFile(args.output, args.top_k, args.retry_failed, multi_label=multi_label).close()
        dist.barrier()  # every process reads --output once the first one has tidied it
        done = {video: failed for video, failed, _ in read_records(args.output)[1]}
        results = ResultsFile(part_file(args.output, rank), args.top_k, multi_label=multi_label)
    embeddings = EmbeddingShards(args.embeddings, rank) if args.embeddings else None
    # a video is done once it has its record, and its embedding when asked for (an error record needs none)
    done = {
        video: failed for video, failed in done.items() if failed or embeddings is None or video in embeddings.done
    }
    todo = [video for video in videos if video not in done]  # a resumed run skips what is recorded
    skipped = len(videos) - len(todo)
    if skipped and rank == 0:
        print(
            f"evl-hf predict: {skipped} of {len(videos)} videos already in {args.output}; skipping them",
            file=sys.stderr,
        )
    if world_size > 1:
        with state.split_between_processes(todo) as share:
            todo = list(share)
    device = next(model.parameters()).device
    loader = DataLoader(
        VideoClips(todo, processor, model.config.num_frames),
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        collate_fn=_keep_as_list,
        pin_memory=device.type == "cuda",
    )
    failed = []
    bar_name = f"process {rank} of {world_size}" if world_size > 1 else None
    try:
        with (
            torch.inference_mode(),
            tqdm(
                total=len(todo), unit="video", file=sys.stderr, dynamic_ncols=True, desc=bar_name, position=rank
            ) as bar,
        ):
            for items in loader:
                clips = [item for item in items if "error" not in item]
                if clips:
                    pixel_values = torch.stack([item["pixel_values"] for item in clips]).to(device)
                    if embeddings is None:
                        logits = model(pixel_values=pixel_values).logits
                    else:  # the same logits, by way of the pooled vector
                        pooled = model.evl(pixel_values=pixel_values).pooler_output
                        logits = model.compute_logits(pooled)
                        for item, vector in zip(clips, pooled.float().cpu().tolist()):
                            embeddings.add(item["video"], vector)
                    scores = postprocess_logits(logits, model.config)
                    for item, best, row in zip(clips, top_k_labels(scores, model.config, args.top_k), scores.tolist()):
                        item.update(best)
                        if multi_label:
                            item["above_threshold"] = [
                                model.config.id2label[i] for i, score in enumerate(row) if score > args.threshold
                            ]
                for item in items:
                    if "error" in item:
                        failed.append(item)
                        results.write({"video": item["video"], "error": item["error"]})
                    elif item["video"] not in results.done:  # recomputed only for its missing embedding
                        results.write(
                            {key: item[key] for key in ("video", "labels", "scores", "above_threshold") if key in item}
                        )
                bar.update(len(items))
    finally:
        results.close()
        if embeddings is not None:
            embeddings.close()

    num_todo = len(todo)
    if world_size > 1:
        shares = [None] * world_size
        dist.all_gather_object(shares, (num_todo, failed))
        num_todo, failed = sum(share[0] for share in shares), [item for share in shares for item in share[1]]
        if rank == 0:
            merge_part_files(args.output, order=videos)
        dist.barrier()
    earlier_failures = [video for video in videos if done.get(video)]
    if rank == 0:
        predicted = num_todo - len(failed)
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
