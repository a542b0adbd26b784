"""Training clips per second streamed from WebDataset shards (`--streaming`) against the same videos loaded map-style.

Both loaders are built from run_video_classification.py's own classes, as the script builds them: map-style, a
`VideoClipDataset` over the video paths in a random order (the Trainer's sampler); streamed, the same videos packed
into tar shards (`<key>.mp4` with `<key>.json`), read by `load_streaming_datasets` and a `StreamingClipDataset`
through torchdata's `StatefulDataLoader`. Each makes 8-frame training clips at 224 px (random crop) with the EVL
video processor in 1 or 2 DataLoader workers. The first batch (workers starting, the shuffle buffer filling) is not
timed; clips/s is over the rest of one epoch. Rounds alternate between the two, and the median is reported, so that
a ratio survives a busy machine.

    python benchmarks/bench_streaming.py --output docs/benchmark_results
    python benchmarks/bench_streaming.py --tiny        # seconds; what the tests run
"""

import argparse
import importlib.util
import io
import json
import sys
import tarfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from datasets import Dataset

from bench_data_path import generate_videos
from benchmark_utils import default_video_dir, emit, log, machine_info, markdown_table, median, ratio


SCRIPT = Path(__file__).resolve().parent.parent / "examples" / "run_video_classification.py"
LABELS = ("a", "b", "c", "d")


def load_training_script():
    """The training script as a module (it puts examples/ on the path for its own imports)."""
    sys.path.insert(0, str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("run_video_classification", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_shards(paths: list[Path], folder: Path, num_shards: int) -> str:
    """The videos dealt out over `num_shards` tar shards, labelled in turn; returns the shards' glob."""
    folder.mkdir(parents=True, exist_ok=True)
    archives = [tarfile.open(folder / f"train-{shard:05d}.tar", "w") for shard in range(num_shards)]
    for number, path in enumerate(paths):
        archive = archives[number % num_shards]
        archive.add(path, arcname=f"{path.stem}.mp4")
        label = json.dumps({"label": LABELS[number % len(LABELS)]}).encode()
        info = tarfile.TarInfo(f"{path.stem}.json")
        info.size = len(label)
        archive.addfile(info, io.BytesIO(label))
    for archive in archives:
        archive.close()
    return str(folder / "train-*.tar")


def clips_per_second(loader, batch_size: int) -> float:
    iterator = iter(loader)
    next(iterator)  # workers starting, the buffer filling: not what a long run sees
    start, clips = time.perf_counter(), 0
    for batch in iterator:
        clips += len(batch["labels"])
    return clips / (time.perf_counter() - start) if clips else float("nan")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--shuffle-buffer-size", type=int, default=16)
    parser.add_argument("--workers", default="1,2", help="comma-separated DataLoader worker counts")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tiny", action="store_true", help="12 small videos, 1 round")
    parser.add_argument("--video-dir", default=None, help="where the videos are generated (default: the cache)")
    parser.add_argument("--output", help="folder to write streaming.json and .md into")
    args = parser.parse_args(argv)
    if args.tiny:
        args.videos, args.seconds, args.height, args.width, args.rounds, args.shards = 12, 2.0, 96, 128, 1, 4
    workers = [int(count) for count in args.workers.split(",")]

    script = load_training_script()
    from streaming import StreamingClipDataset, load_streaming_datasets
    from torchdata.stateful_dataloader import StatefulDataLoader

    from evl_hf import EVLVideoProcessor

    folder = Path(args.video_dir or default_video_dir())
    paths = generate_videos(folder, args.videos, args.seconds, 30, args.height, args.width)
    pattern = write_shards(paths, folder / f"shards_{args.videos}_{args.width}x{args.height}", args.shards)
    processor = EVLVideoProcessor(num_frames=8, frame_stride=8, size={"shortest_edge": 224},
                                  crop_size={"height": 224, "width": 224})  # fmt: skip
    rows = Dataset.from_dict({"video": [str(path) for path in paths],
                              "labels": [number % len(LABELS) for number in range(len(paths))]})  # fmt: skip
    map_style = script.VideoClipDataset(rows, "video", processor, train=True, seed=0)
    data_args = SimpleNamespace(dataset_name=None, train_file=pattern, validation_file=None, label_column_name="label",
                                video_column_name="video")  # fmt: skip
    streams, _ = load_streaming_datasets(data_args, None, None, None, script.encode_labels)
    streamed = StreamingClipDataset(script.VideoClipDataset(streams["train"], "video", processor, train=True, seed=0),
                                    shuffle_buffer_size=args.shuffle_buffer_size)  # fmt: skip

    def loader(kind: str, num_workers: int):
        common = dict(batch_size=args.batch_size, collate_fn=script.collate_fn, num_workers=num_workers,
                      generator=torch.Generator().manual_seed(0))  # fmt: skip
        if kind == "map-style":
            return torch.utils.data.DataLoader(map_style, shuffle=True, **common)
        return StatefulDataLoader(streamed, **common)

    runs = {(kind, count): [] for count in workers for kind in ("map-style", "streamed")}
    for round_number in range(args.rounds):
        for count in workers:
            for kind in ("map-style", "streamed") if round_number % 2 == 0 else ("streamed", "map-style"):
                runs[kind, count].append(clips_per_second(loader(kind, count), args.batch_size))
                log(f"round {round_number}, {count} worker(s), {kind}: {runs[kind, count][-1]:.2f} clips/s")

    results = {f"{count}_workers": {kind: {"clips_per_s": median(runs[kind, count]), "runs": runs[kind, count]}
                                    for kind in ("map-style", "streamed")} for count in workers}  # fmt: skip
    for count in workers:
        entry = results[f"{count}_workers"]
        entry["streamed_over_map_style"] = ratio(entry["streamed"]["clips_per_s"], entry["map-style"]["clips_per_s"])
    result = {
        "benchmark": "streaming",
        "settings": {"videos": args.videos, "video": f"{args.width}x{args.height}, {args.seconds:g} s, 30 fps, H.264 "
                     "(libx264 defaults)", "clip": "8 frames, stride 8, RandomResizedCrop to 224",
                     "batch_size": args.batch_size, "shards": args.shards,
                     "shuffle_buffer_size": args.shuffle_buffer_size, "rounds": args.rounds},  # fmt: skip
        "machine": machine_info(),
        "results": results,
    }
    rows = [[count, results[f"{count}_workers"]["map-style"]["clips_per_s"],
             results[f"{count}_workers"]["streamed"]["clips_per_s"],
             results[f"{count}_workers"]["streamed_over_map_style"]] for count in workers]  # fmt: skip
    s = result["settings"]
    title = (f"{s['videos']} videos of {s['video']}; {s['clip']}; batches of {s['batch_size']}; {s['shards']} shards, "
             f"shuffle buffer {s['shuffle_buffer_size']}; median of {s['rounds']} alternating round(s)")
    table = markdown_table(["DataLoader workers", "map-style (clips/s)", "streamed (clips/s)", "streamed / map-style"],
                           rows)  # fmt: skip
    emit("streaming", result, f"{title}\n\n{table}", args.output)


if __name__ == "__main__":
    main()
