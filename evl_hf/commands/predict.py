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
batch in flight, and running the same command again skips every video already in the output file. A full disk
leaves no torn record, and a second run on the same output file stops at once (see [`evl_hf.commands.main`]).
"""

import argparse
import contextlib
import os
import sys

from ..inference import MULTI_LABEL_THRESHOLD
from ..utils_io import output_lock
from ..video_utils import VIDEO_EXTENSIONS, VIDEO_LIST_EXTENSIONS, read_video_list, resolve_video_path, walk_videos
from . import UsageError
from .records import EmbeddingShards, check_same_in_every_process, merge_part_files, open_results, process_state
from .utils import add_model_arguments, load_model_and_processor, non_negative_int, positive_int, probability


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
    parser.add_argument("--top_k", type=positive_int, default=5, help="Labels per video (default: 5).")
    parser.add_argument(
        "--threshold",
        type=probability,
        default=MULTI_LABEL_THRESHOLD,
        help="Multi-label models: every label scoring above it is listed in `above_threshold` (default: "
        f"{MULTI_LABEL_THRESHOLD}).",
    )
    parser.add_argument(
        "--embeddings",
        metavar="FOLDER",
        help="Also write each video's pooled vector (pooler_output) as Parquet shards into this folder; resumable.",
    )
    parser.add_argument("--batch_size", type=positive_int, default=8, help="Clips per forward pass (default: 8).")
    parser.add_argument(
        "--num_workers",
        type=non_negative_int,
        default=min(4, os.cpu_count() or 1),
        help="Decoding worker processes; 0 decodes in the main process (default: min(4, CPUs)).",
    )
    parser.set_defaults(run=run, parser=parser)


def run(args: argparse.Namespace) -> int:
    if args.output and not os.path.isdir(os.path.dirname(os.path.abspath(args.output))):
        raise UsageError(f"--output {args.output!r}: its folder does not exist; create it first.")
    if args.retry_failed and not args.output:
        raise UsageError("--retry_failed resumes an --output file; give one.")
    videos = find_videos(args.inputs)
    if not videos:
        raise UsageError(
            f"no videos found in {args.inputs}: folders are searched for {', '.join(VIDEO_EXTENSIONS)} files."
        )
    # Under torchrun or accelerate launch, each process classifies its share of the videos on its own device and
    # writes its own part file; the first process merges the parts into --output at the end.
    state = process_state(args.device)
    rank, world_size = (state.process_index, state.num_processes) if state is not None else (0, 1)
    device = args.device
    if world_size > 1:
        if not args.output:
            raise UsageError("a distributed run needs --output: each process writes its own part of it.")
        asked = [args.model, os.path.abspath(args.output), args.top_k, videos]
        check_same_in_every_process(asked, "--model, INPUT, --output or --top_k")
        if device.startswith("cuda"):
            device = str(state.device)  # cuda:LOCAL_RANK
    # One run per --output, locked by the first process before anything is written; the others write their parts
    # only after the barrier in `open_results`, which it reaches with the lock held.
    with output_lock(args.output, "--output") if args.output and rank == 0 else contextlib.nullcontext():
        return predict(args, videos, state, rank, world_size, device)


def predict(args: argparse.Namespace, videos: list[str], state, rank: int, world_size: int, device: str) -> int:
    """Classifies `videos` into `args.output` (this process's share of them in a distributed run); the exit status."""
    model, processor = load_model_and_processor(args.model, device, args.dtype, args.compile, args.batch_size)

    import torch.distributed as dist

    from ..inference import default_function_to_apply

    multi_label = default_function_to_apply(model.config) == "sigmoid"
    results, done = open_results(
        args.output,
        args.top_k,
        retry_failed=args.retry_failed,
        multi_label=multi_label,
        rank=rank,
        world_size=world_size,
        barrier=dist.barrier if world_size > 1 else None,
    )
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
    try:
        failed = classify(model, processor, todo, results, embeddings, args, rank, world_size)
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
        report(len(videos), num_todo - len(failed), skipped, failed, earlier_failures)
    return 1 if failed or earlier_failures else 0


def classify(model, processor, videos: list[str], results, embeddings, args, rank: int, world_size: int) -> list:
    """
    Classifies `videos` in batches decoded by DataLoader workers, writing a record per video to `results` (and its
    pooled vector to `embeddings`), with a progress bar. Returns the `{"video", "error"}` items of the videos that
    could not be read.
    """
    import torch
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from ..inference import default_function_to_apply, labels_above_threshold, postprocess_logits, top_k_labels

    config = model.config
    multi_label = default_function_to_apply(config) == "sigmoid"
    device = next(model.parameters()).device
    loader = DataLoader(
        VideoClips(videos, processor, config.num_frames),
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        collate_fn=_keep_as_list,
        pin_memory=device.type == "cuda",
    )
    failed = []
    bar_name = f"process {rank} of {world_size}" if world_size > 1 else None
    with (
        torch.inference_mode(),
        tqdm(
            total=len(videos), unit="video", file=sys.stderr, dynamic_ncols=True, desc=bar_name, position=rank
        ) as bar,
    ):
        for items in loader:
            clips = [item for item in items if "error" not in item]
            if clips:
                pixel_values = torch.stack([item["pixel_values"] for item in clips]).to(device)
                outputs = model(pixel_values=pixel_values)  # logits and the pooled vector from one forward
                logits = outputs.logits
                if embeddings is not None:
                    if outputs.pooler_output is None:  # a package exported when packages gave the logits alone
                        raise UsageError("--embeddings: the --aoti_package gives no pooled vector; export it again.")
                    for item, vector in zip(clips, outputs.pooler_output.float().cpu().tolist()):
                        embeddings.add(item["video"], vector)
                scores = postprocess_logits(logits, config)
                above = labels_above_threshold(scores, args.threshold).tolist() if multi_label else None
                for row, (item, best) in enumerate(zip(clips, top_k_labels(scores, config, args.top_k))):
                    item.update(best)
                    if multi_label:
                        item["above_threshold"] = [config.id2label[i] for i, kept in enumerate(above[row]) if kept]
            for item in items:
                if "error" in item:
                    failed.append(item)
                    results.write({"video": item["video"], "error": item["error"]})
                elif item["video"] not in results.done:  # recomputed only for its missing embedding
                    results.write(
                        {key: item[key] for key in ("video", "labels", "scores", "above_threshold") if key in item}
                    )
            bar.update(len(items))
    return failed


def report(num_videos: int, predicted: int, skipped: int, failed: list[dict], earlier_failures: list[str]):
    """The run's summary on standard error, with the first failures."""
    print(
        f"evl-hf predict: {num_videos} videos: {predicted} predicted now, {skipped} already done, "
        f"{len(failed)} failed now" + (f", {len(earlier_failures)} failed earlier" if earlier_failures else ""),
        file=sys.stderr,
    )
    for item in failed[:20]:
        print(f"  {item['video']}: {item['error']}", file=sys.stderr)
    if len(failed) > 20:
        print(f"  ... and {len(failed) - 20} more (see the error records)", file=sys.stderr)
