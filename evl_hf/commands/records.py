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
A resumable store of one record per video, as `evl-hf predict` writes it: JSON lines or CSV, appended and flushed
one record at a time, read back to skip the videos already done. A distributed run writes one part file per process
next to the output and folds them into it at the end. Pooled vectors go to Parquet shards beside it.

A stopped run loses at most the record being written: a record the disk has no room for is cut off again, reading
drops a last line cut short by a kill, and every rewrite of a whole file is atomic ([`~evl_hf.commands.utils.atomic_write`]).
"""

import contextlib
import csv
import io
import json
import os
import re
import sys

from . import UsageError
from .utils import atomic_write


def read_records(path: str, *, truncate: bool = False) -> tuple[list[str] | None, list[tuple[str, bool, object]]]:
    """
    The records of an output or part file: its CSV header (`None` for JSON lines or an empty file) and, per record,
    `(video, whether it is an error, the JSON line or CSV row as written)`. A last line cut short by a stopped run is
    left out, and with `truncate` cut off the file.

    Raises:
        `UsageError`: the file is not one `evl-hf predict` writes (a CSV file without a `video` column, a JSON line
            that is not a record).
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
    with atomic_write(path) as temporary, open(temporary, "w", encoding="utf-8", newline="") as file:
        if path.lower().endswith(".csv"):
            csv.writer(file).writerows([header, *records] if header else records)
        else:
            file.writelines(records)


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


def process_state(device: str):
    """Accelerate's view of the processes of this run (one unless launched by `torchrun` or `accelerate launch`)."""
    import torch

    try:
        from accelerate import PartialState
    except ImportError:
        if torch.distributed.is_torchelastic_launched():
            raise UsageError("a distributed run needs Accelerate: pip install 'evl-hf[train]'.") from None
        return None
    return PartialState(cpu=device == "cpu")


def check_same_in_every_process(asked, what: str) -> None:
    """
    Stops a distributed run whose processes were given different `asked` (any JSON value: the arguments and the
    videos each process sees); `what` names the arguments in the message.

    Raises:
        `UsageError`: the processes disagree.
    """
    import hashlib

    import torch.distributed as dist

    digests = [None] * dist.get_world_size()
    dist.all_gather_object(digests, hashlib.sha256(json.dumps(asked).encode()).hexdigest())
    if len(set(digests)) > 1:
        raise UsageError(
            f"the processes of this distributed run were given different {what} (or see different files); launch "
            "every process with the same command."
        )


class ResultsFile:
    """
    Where the records go: a file of JSON lines, or CSV when its name ends in `.csv` (columns `video`, `label_1`,
    `score_1`, ..., `above_threshold` for a multi-label model, `error`), or standard output (`path=None`, JSON lines,
    nothing to resume).

    Opening a file reads the videos it already holds into `done` (video -> whether its record is an error) and removes
    a last line cut short by a stopped run; with `retry_failed` its error records are removed, so that those videos
    are tried again.
    """

    def __init__(self, path: str | None, top_k: int, *, retry_failed: bool = False, multi_label: bool = False):
        self.path, self.top_k, self.multi_label = path, top_k, multi_label
        self.is_csv = path is not None and path.lower().endswith(".csv")
        self.done = {}
        if path is None:
            self.file, self.writer = sys.stdout, None
            return
        if os.path.exists(path):
            self._read(retry_failed)
        self.file = open(path, "ab", buffering=0)  # unbuffered: `_append` knows what reached the file
        if self.is_csv and self.file.tell() == 0:
            self._append(self._csv_line(self.csv_header(top_k, multi_label)))

    @staticmethod
    def csv_header(top_k: int, multi_label: bool) -> list[str]:
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
        """Appends `record` (`{"video", "labels", "scores", ["above_threshold"]}` or `{"video", "error"}`) and
        flushes it."""
        if self.is_csv:
            pairs = list(zip(record.get("labels", []), record.get("scores", [])))
            cells = [value for label, score in pairs for value in (label, score)]
            cells += [""] * (2 * self.top_k - len(cells))
            if self.multi_label:
                cells.append(";".join(record.get("above_threshold", [])))
            self._append(self._csv_line([record["video"], *cells, record.get("error", "")]))
        else:
            self._append(json.dumps(record) + "\n")
        self.done[record["video"]] = "error" in record

    @staticmethod
    def _csv_line(row: list) -> str:
        line = io.StringIO()
        csv.writer(line).writerow(row)
        return line.getvalue()

    def _append(self, text: str):
        """Appends whole records or nothing: when the disk takes only part of them (it is full), the file is cut back
        to where it was before the error goes on, so that no torn record is left for a reader."""
        if self.path is None:
            self.file.write(text)
            self.file.flush()
            return
        data, start = memoryview(text.encode("utf-8")), self.file.tell()
        try:
            while data:
                data = data[self.file.write(data) :]
        except OSError:
            with contextlib.suppress(OSError):  # a shorter file needs no space; failing that, a rerun cuts it
                self.file.truncate(start)
            raise

    def close(self):
        if self.file is sys.stdout:
            self.file.flush()
        else:
            self.file.close()


def open_results(
    output: str | None,
    top_k: int,
    *,
    retry_failed: bool = False,
    multi_label: bool = False,
    rank: int = 0,
    world_size: int = 1,
    barrier=None,
) -> tuple[ResultsFile, dict[str, bool]]:
    """
    The [`ResultsFile`] this process writes and what `output` held before the run (video -> whether its record is an
    error). Process `rank` of a distributed run of `world_size` writes its own [`part_file`]; the first process
    first folds the parts a stopped run left into `output` and tidies it, and every process reads it after
    `barrier()` (a callable that waits for all of them).
    """
    if output is None:
        return ResultsFile(None, top_k, multi_label=multi_label), {}
    if rank == 0:
        merge_part_files(output)  # what a stopped distributed run left, so that it counts as done
    if world_size == 1:
        # opening it drops a torn line, and the error records of videos to retry
        results = ResultsFile(output, top_k, retry_failed=retry_failed, multi_label=multi_label)
        return results, dict(results.done)
    if rank == 0:
        ResultsFile(output, top_k, retry_failed=retry_failed, multi_label=multi_label).close()
    barrier()  # every process reads `output` once the first one has tidied it
    done = {video: failed for video, failed, _ in read_records(output)[1]}
    return ResultsFile(part_file(output, rank), top_k, multi_label=multi_label), done


class EmbeddingShards:
    """
    Each video's pooled vector (`pooler_output`: the query token after the last decoder layer) in Parquet shards in a
    folder, with a `video` and an `embedding` column; `datasets.load_dataset("parquet", data_files="FOLDER/*.parquet")`
    loads them. A shard is written atomically, every `flush_every` videos and at the end, so a stopped run loses at
    most the videos since the last shard, which a resumed run computes again. Process `rank` of a distributed run
    writes shards of its own.
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
        with atomic_write(path) as temporary:
            pq.write_table(table, temporary)
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
