"""The data path and the training script: decoding a clip (`data_path`), waiting for data in training (`data_wait`),
shards (`streaming`), and the embedded default end to end (`training`: `accelerate launch ...
examples/run_video_classification.py`, what `make train` runs, with the script's arguments after `--`, e.g.
`-- --synthetic_multi_label` for the multi-label default, metric `eval_map`; wall and CPU time, final metrics)."""

import contextlib
import importlib
import io
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F
from torchcodec.decoders import VideoDecoder
from transformers import Trainer, TrainerCallback

from evl_hf import EVLVideoProcessor
from evl_hf.commands.prepare_videos import find_ffmpeg, prepare_one
from evl_hf.frame_archives import FRAME_ARCHIVE_EXTENSION, check_frame_step
from evl_hf.video_utils import read_video_frames, read_video_metadata, sample_frame_indices

from .harness import (
    EXAMPLES,
    ROOT,
    alternate,
    load_script,
    log,
    median,
    options,
    ratio,
    video_dir,
    video_processor,
    videos,
    write,
)


EVALUATION_METHODS = ("pyav_reference_eval", "torchcodec_sampled", "processor_from_path")
LUMA = torch.tensor([0.299, 0.587, 0.114])[:, None, None]  # BT.601: brightness apart from the colour planes


def data_path_arguments(parser):
    options(
        parser,
        repeats=5,
        num_videos=(4, "videos per size"),
        seconds=10.0,
        sizes=("340x256,640x360", "WxH,..."),
        num_frames=8,
        frame_stride=16,
        clips_per_video=(3, "random training clips per video"),
        short_side=(320, "prepare-videos --short_side"),
        crf=(18, "prepare-videos --crf"),
        keyframe_intervals=("4,8", "prepare-videos --keyframe_interval values"),
        frames_short_side=(256, "prepare-videos --format frames --short_side"),
        frame_step=(4, "prepare-videos --format frames --frame_step (it must divide --frame_stride)"),
        jpeg_quality=(90, "prepare-videos --format frames --quality"),
        gflop_per_clip=(332.1, "FLOPs of one EVL B/16 training clip (cpu_models.json: train_flops / batch)"),
        gpu_tflops=(494.7, "half an H100 SXM's dense bf16 peak"),
        video_dir=None,
    )


def pyav_frames(path) -> list:
    """Every frame of the video decoded by PyAV on one thread, in presentation order (the reference's loaders)."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_count = 1
        return sorted(container.decode(stream), key=lambda frame: frame.pts)


def training_sampler(video: int, clip: int, args):
    """A random-start training clip, seeded by video and clip, so that every method decodes the same frames."""
    random = torch.Generator().manual_seed(1000 * video + clip)
    return lambda total: sample_frame_indices(total, args.num_frames, frame_stride=args.frame_stride, random=random)


# Training augmentation (crop, flip, RandAugment): all of it in float32 in the worker, or uint8 clips (cropped) for the
# device, whose half (flip, RandAugment, normalisation) is not the CPU's and not timed; both collated.
AUGMENTATIONS = {"augment_float32": False, "augment_uint8": True}


def training_clips(method: str, paths, processor, args):
    """`--clips_per_video` training clips of every video, file path to `pixel_values`; with augmentation the collated
    batch of a video's clips, and `_decode_only` the stacked uint8 frames (for a device that crops them too)."""
    augmentation = next((name for name in AUGMENTATIONS if method.endswith(name)), None)
    for video, path in enumerate(paths):
        batch = []
        for clip in range(args.clips_per_video):
            sampler = training_sampler(video, clip, args)
            if method == "pyav_whole_video":  # decode all, convert the sampled ones
                decoded = pyav_frames(path)
                frames = torch.from_numpy(
                    np.stack([decoded[i].to_ndarray(format="rgb24") for i in sampler(len(decoded))])
                ).permute(0, 3, 1, 2)
            else:
                frames = read_video_frames(path, sampler)
            if method.endswith("_decode_only"):
                batch.append(frames)
            elif augmentation is not None:
                options = dict(do_augment=True, horizontal_flip=True, rand_augment=True, seed=1000 * video + clip)
                kwargs = {**options, "device_transforms": AUGMENTATIONS[augmentation]}
                batch.append(processor(videos=[frames], return_tensors="pt", **kwargs)["pixel_values"][0])
            else:
                processor(videos=[frames], return_tensors="pt")
        if batch:
            torch.stack(batch)


def views(num_frames_in_video: int, num_views: int, args) -> list:
    return [
        sample_frame_indices(
            num_frames_in_video,
            args.num_frames,
            strategy="dense",
            frame_stride=args.frame_stride,
            num_clips=num_views,
            clip_index=view,
        )
        for view in range(num_views)
    ]


def evaluation_views(method: str, path, processor, num_views: int, args) -> torch.Tensor:
    """`(num_views, T, 3, 224, 224)` test views of one video."""
    if method == "pyav_reference_eval":
        # the reference's order of work: decode, convert, normalise and resize every frame, then cut the clips
        decoded = pyav_frames(path)
        video = torch.from_numpy(np.stack([frame.to_ndarray(format="rgb24") for frame in decoded]))  # (N, H, W, 3)
        video = (video.float() / 255 - torch.tensor(processor.image_mean)) / torch.tensor(processor.image_std)
        video = video.permute(3, 0, 1, 2)  # (3, N, H, W): interpolate resizes a batch of N-channel planes
        height, width = video.shape[-2:]
        short = processor.size["shortest_edge"]
        size = (short, width * short // height) if height <= width else (height * short // width, short)
        video = F.interpolate(video, size=size, mode="bilinear", align_corners=False)
        crop = processor.crop_size["height"]
        top, left = (size[0] - crop) // 2, (size[1] - crop) // 2
        video = video[:, :, top : top + crop, left : left + crop]
        return torch.stack([video[:, clip] for clip in views(len(decoded), num_views, args)]).transpose(1, 2)
    if method == "torchcodec_sampled":  # every view's frames in one call, preprocessed as one batch
        frames = read_video_frames(path, lambda total: [i for clip in views(total, num_views, args) for i in clip])
        return processor(videos=list(frames.split(args.num_frames)), return_tensors="pt")["pixel_values"]
    return torch.cat(
        [
            processor(
                videos=str(path),
                num_frames=args.num_frames,
                frame_stride=args.frame_stride,
                num_clips=num_views,
                clip_index=view,
                return_tensors="pt",
            )["pixel_values"]
            for view in range(num_views)
        ]
    )


def prepared_agreement(originals, prepared, processor, args) -> dict:
    """Prepared frames against the originals resized alike (the first training clip, moved back onto the
    `--frame_step` grid that a frame archive stores), in RGB, luma and at the model input: mean absolute differences
    in 0-1 units, successive frames of a clip for scale, and the PSNR (dB) of each clip's mean squared error; means
    over the videos."""
    found = {f"mean_abs_diff_{k}": [] for k in ("frames", "frames_luma", "model_input", "between_clip_frames")}
    found.update(psnr_db_rgb=[], psnr_db_luma=[])
    for video, pair in enumerate(zip(originals, prepared)):
        on_grid = lambda n: [i - i % args.frame_step for i in training_sampler(video, 0, args)(n)]
        clips = [read_video_frames(path, on_grid) for path in pair]
        original, ours = (clip.float() / 255 for clip in clips)
        resized = F.interpolate(original, size=ours.shape[-2:], mode="bilinear", antialias=True, align_corners=False)
        error, luma = ours - resized, ((ours - resized) * LUMA).sum(1)
        found["mean_abs_diff_frames"].append(error.abs().mean().item())
        found["mean_abs_diff_frames_luma"].append(luma.abs().mean().item())
        found["mean_abs_diff_between_clip_frames"].append((resized[1:] - resized[:-1]).abs().mean().item())
        inputs = [processor(videos=[clip], do_normalize=False, return_tensors="pt")["pixel_values"] for clip in clips]
        found["mean_abs_diff_model_input"].append((inputs[0] - inputs[1]).abs().mean().item())
        found["psnr_db_rgb"].append(-10 * error.square().mean().log10().item())  # peak 1 in 0-1 units: 255 in 0-255
        found["psnr_db_luma"].append(-10 * luma.square().mean().log10().item())
    return {key: statistics.mean(values) for key, values in found.items()}


def data_path(args):
    if args.quick:
        args.num_videos, args.seconds, args.sizes, args.repeats = 2, 4.0, "128x96", 1
        args.short_side = args.frames_short_side = 64
    check_frame_step(args.frame_step, args.frame_stride, name="--frame_step")
    torch.set_num_threads(1)
    processor, folder = EVLVideoProcessor(), video_dir(args.video_dir)
    intervals = [int(k) for k in args.keyframe_intervals.split(",")]
    copies, steps, files, preparation, storage = [f"g{k}" for k in intervals], {}, {}, {}, {}
    prepared = {
        c: {"short_side": args.short_side, "keyframe_interval": k, "crf": args.crf} for c, k in zip(copies, intervals)
    }
    prepared["frames"] = dict(
        format="frames", short_side=args.frames_short_side, frame_step=args.frame_step, quality=args.jpeg_quality
    )
    for size in args.sizes.split(","):
        width, height = map(int, size.split("x"))
        files[size] = {"original": videos(folder, args.num_videos, args.seconds, height, width)}
        for copy, settings in prepared.items():
            out = folder / f"prepared_{size}_{'_'.join(map(str, settings.values()))}"
            shutil.rmtree(out, ignore_errors=True)  # timed from scratch
            suffix, start = FRAME_ARCHIVE_EXTENSION if copy == "frames" else ".mp4", time.perf_counter()
            done = [
                prepare_one(find_ffmpeg(), p, out / p.with_suffix(suffix).name, settings)
                for p in files[size]["original"]
            ]
            assert all(r["status"] == "prepared" for r in done), done
            before, after = sum(r["input_bytes"] for r in done), sum(r["output_bytes"] for r in done)
            seconds = len(done) * args.seconds
            preparation[f"{size}_{copy}"] = {
                "seconds_per_video": (time.perf_counter() - start) / len(done),
                "bytes_before": before,
                "bytes_after": after,
                "size_ratio": after / before,
                "prepared_size": "{0.width}x{0.height}".format(read_video_metadata(done[0]["output"])),
                "video_seconds": seconds,
                "gb_per_hour_before": before / seconds * 3600 / 1e9,
                "gb_per_hour_after": after / seconds * 3600 / 1e9,
            }
            files[size][copy] = [Path(r["output"]) for r in done]
        routes = [("pyav_whole_video", "original"), ("torchcodec_sampled", "original")]
        routes += [(f"torchcodec_prepared_{c}", c) for c in copies] + [("frame_archive_sampled", "frames")]
        routes += [(f"{m}_{a}", c) for m, c in routes[1:] for a in AUGMENTATIONS]
        routes += [
            (f"torchcodec_prepared_{copies[0]}_decode_only", copies[0]),
            ("frame_archive_sampled_decode_only", "frames"),
        ]
        for method, copy in routes:
            steps[size, method] = (lambda m, p: lambda: training_clips(m, p, processor, args))(
                method, files[size][copy]
            )
            storage[method] = copy
    evaluation_size = next(iter(files))
    for num_views in (1, 3):
        for method in EVALUATION_METHODS:
            steps[f"views_{num_views}", method] = (
                lambda m, v: (
                    lambda: [evaluation_views(m, p, processor, v, args) for p in files[evaluation_size]["original"]]
                )
            )(method, num_views)
    load_before = [round(x, 2) for x in os.getloadavg()]
    named = {f"{a}/{b}": step for (a, b), step in steps.items()}
    wall, _ = alternate(named, args.repeats, threads=1, label="data path")
    gpu_clips_per_s = args.gpu_tflops * 1e3 / args.gflop_per_clip
    training, evaluation, ratios = {}, {}, {}
    for size, paths in files.items():
        clips, methods = len(paths["original"]) * args.clips_per_video, {}
        for method in [m for s, m in steps if s == size]:
            runs = wall[f"{size}/{method}"]
            methods[method] = {
                "videos": storage[method],
                "clips_per_s": clips / median(runs),
                "seconds_per_clip": median(runs) / clips,
                "clips_per_s_runs": [clips / s for s in runs],
                "cores_per_gpu": gpu_clips_per_s * median(runs) / clips,
            }
        meta = VideoDecoder(str(paths[copies[0]][0])).metadata
        training[size] = {"prepared_size": [meta.width, meta.height], "methods": methods}
        for copy in prepared:
            preparation[f"{size}_{copy}"]["agreement"] = prepared_agreement(
                paths["original"], paths[copy], processor, args
            )
        for copy in copies:
            for baseline in ("torchcodec_sampled", "pyav_whole_video"):
                ratios[f"training_{size}_prepared_{copy}_over_{baseline}"] = ratio(
                    methods[f"torchcodec_prepared_{copy}"]["clips_per_s"], methods[baseline]["clips_per_s"]
                )
    for num_views in (1, 3):
        methods = {}
        for method in EVALUATION_METHODS:
            runs = wall[f"views_{num_views}/{method}"]
            per_s = args.num_videos / median(runs)
            methods[method] = {
                "videos_per_s": per_s,
                "clips_per_s": per_s * num_views,
                "seconds_per_video": median(runs) / args.num_videos,
            }
        first = files[evaluation_size]["original"][0]
        ours, theirs = (evaluation_views(m, first, processor, num_views, args) for m in EVALUATION_METHODS[1::-1])
        evaluation[f"views_{num_views}"] = {
            "methods": methods,
            "agreement": {
                "mean_abs_diff": (ours - theirs).abs().mean().item(),
                "mean_abs_diff_between_clip_frames": (theirs[:, 1:] - theirs[:, :-1]).abs().mean().item(),
            },
        }
        ratios[f"evaluation_{num_views}_view{'s' * (num_views > 1)}_torchcodec_over_pyav"] = ratio(
            methods["torchcodec_sampled"]["videos_per_s"], methods["pyav_reference_eval"]["videos_per_s"]
        )
    agreement = {key: prep.pop("agreement") for key, prep in preparation.items()}
    return write(
        "data_path",
        {
            "videos": training,
            "preparation": preparation,
            "prepared_agreement": agreement,
            "evaluation": evaluation,
            "ratios": ratios,
        },
        args,
        videos=f"{args.seconds:g} s, 30 fps, H.264 (libx264 defaults: keyframe interval 250, crf 23), "
        "yuv420p, evl_hf.testing_utils.encode_video (a bright square moving over noise)",
        threads=1,
        prepare_videos={"short_side": args.short_side, "keyframe_intervals": intervals, "crf": args.crf},
        frame_archives=prepared["frames"],
        gpu_clips_per_s=gpu_clips_per_s,
        loadavg_before=load_before,
        loadavg_after=[round(x, 2) for x in os.getloadavg()],
    )


def data_wait_arguments(parser):
    options(
        parser,
        max_steps=150,
        num_workers=("2,1,0", "--dataloader_num_workers values, one run each"),
        warmup_steps=(5, "steps of an untimed run first"),
        augment_on_device=("False", "--augment_on_device values (False,True: each worker count with both)"),
        synthetic_data_dir=None,
    )


class DataWaitTimer(TrainerCallback):
    """Every `next()` the training loop makes on the train DataLoader (`Trainer.get_batch_samples`), one list per
    epoch, against the loop's wall time (`on_train_begin` to `on_train_end`)."""

    def __init__(self):
        self.waits = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.start, self.batch_size = time.perf_counter(), args.train_batch_size

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.waits.append([])  # no reference to the DataLoader's iterator: it must shut its workers down with the run

    def on_train_end(self, args, state, control, **kwargs):
        self.end, self.steps = time.perf_counter(), state.global_step

    def timed(self, iterator):
        while True:
            start = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                return
            finally:
                self.waits[-1].append(time.perf_counter() - start)
            yield batch

    @contextlib.contextmanager
    def patch(self):
        """For the block's duration, `Trainer.train` adds this callback and `get_batch_samples` times each batch."""
        train, get_batch_samples = Trainer.train, Trainer.get_batch_samples

        def timed_train(trainer, *args, **kwargs):
            trainer.add_callback(self)
            return train(trainer, *args, **kwargs)

        with (
            mock.patch.object(Trainer, "train", timed_train),
            mock.patch.object(
                Trainer, "get_batch_samples", lambda t, it, n, d: get_batch_samples(t, self.timed(it), n, d)
            ),
        ):
            yield

    def summary(self) -> dict:
        loop, wait = self.end - self.start, sum(map(sum, self.waits))
        first = sum(epoch[0] for epoch in self.waits if epoch)
        return {
            "steps": self.steps,
            "epochs_started": len(self.waits),
            "train_loop_s": loop,
            "data_wait_s": wait,
            "data_wait_fraction": wait / loop,
            "first_batch_of_epoch_wait_s": first,
            "data_wait_fraction_after_first_batches": (wait - first) / (loop - first),
            "max_wait_after_first_batches_s": max((w for e in self.waits for w in e[1:]), default=0.0),
            "seconds_per_step": loop / self.steps,
            "seconds_per_step_not_waiting": (loop - wait) / self.steps,
            "batch_size": self.batch_size,
            "clips_per_s": self.steps * self.batch_size / loop,
        }


def data_wait(args):
    script, synthetic = load_script(), load_script("synthetic_data")
    folder = args.synthetic_data_dir or synthetic.default_cache_dir().parent / "benchmark_synthetic_motion"
    extra = ["--synthetic_data_dir", str(folder)]
    if args.quick:
        args.max_steps, args.warmup_steps, args.num_workers = 6, 0, "1,0"
        extra += [
            "--synthetic_train_videos_per_label",
            "4",
            "--synthetic_validation_videos_per_label",
            "1",
            "--per_device_train_batch_size",
            "4",
        ]

    def measure(workers: int, steps: int, on_device: str = "False") -> dict:
        timer = DataWaitTimer()
        with tempfile.TemporaryDirectory() as scratch, timer.patch(), contextlib.redirect_stdout(sys.stderr):
            load = round(os.getloadavg()[0], 2)
            script.main(
                [
                    "--max_steps",
                    str(steps),
                    "--dataloader_num_workers",
                    str(workers),
                    "--do_eval",
                    "False",
                    "--save_strategy",
                    "no",
                    "--disable_tqdm",
                    "True",
                    "--report_to",
                    "none",
                    "--output_dir",
                    f"{scratch}/out",
                    "--cache_dir",
                    f"{scratch}/cache",
                    "--augment_on_device",
                    on_device,
                    *extra,
                ]
            )
        return {**timer.summary(), "loadavg_1min_before": load}

    if args.warmup_steps:
        measure(0, args.warmup_steps)  # one-time costs (first use of torch's kernels) fall in no timed run
    runs = {
        f"workers_{n}" + ("_augment_on_device" if on_device == "True" else ""): measure(
            int(n), args.max_steps, on_device
        )
        for on_device in args.augment_on_device.split(",")
        for n in args.num_workers.split(",")
    }
    return write(
        "data_wait",
        {"runs": runs},
        args,
        script_args=extra,
        torch_threads=torch.get_num_threads(),
        synthetic_motion={"version": synthetic.SyntheticMotionConfig().version},
    )


def streaming_arguments(parser):
    options(
        parser,
        videos=64,
        seconds=4.0,
        size="320x240",
        batch_size=4,
        shards=8,
        shuffle_buffer_size=16,
        workers=("1,2", "DataLoader worker counts"),
        rounds=3,
        video_dir=None,
    )


def streaming(args):
    """Clips/s streamed from shards against map-style, the training script's own classes; the first batch untimed."""
    if args.quick:
        args.videos, args.seconds, args.size, args.rounds, args.shards, args.workers = 8, 2.0, "128x96", 1, 2, "1"
    script, datasets = load_script(), importlib.import_module("datasets")
    from streaming import StreamingClipDataset, load_streaming_datasets  # examples/streaming.py, next to the script
    from torchdata.stateful_dataloader import StatefulDataLoader

    width, height = map(int, args.size.split("x"))
    folder = video_dir(args.video_dir)
    paths = videos(folder, args.videos, args.seconds, height, width)
    shards = folder / f"shards_{args.videos}_{args.size}_{args.shards}"
    shards.mkdir(parents=True, exist_ok=True)
    archives = [tarfile.open(shards / f"train-{i:05d}.tar", "w") for i in range(args.shards)]
    for number, path in enumerate(paths):  # dealt out over the shards, labelled in turn
        archives[number % args.shards].add(path, arcname=f"{path.stem}.mp4")
        label = json.dumps({"label": "abcd"[number % 4]}).encode()
        info = tarfile.TarInfo(f"{path.stem}.json")
        info.size = len(label)
        archives[number % args.shards].addfile(info, io.BytesIO(label))
    for archive in archives:
        archive.close()
    processor = video_processor("vit-b16", frame_stride=8)
    rows = datasets.Dataset.from_dict({"video": [str(p) for p in paths], "labels": [n % 4 for n in range(len(paths))]})
    map_style = script.VideoClipDataset(rows, "video", processor, train=True, seed=0)
    data_args = SimpleNamespace(
        dataset_name=None,
        train_file=str(shards / "train-*.tar"),
        validation_file=None,
        label_column_name="label",
        video_column_name="video",
    )
    streams, _ = load_streaming_datasets(data_args, None, None, None, script.encode_labels)
    streamed = StreamingClipDataset(
        script.VideoClipDataset(streams["train"], "video", processor, train=True, seed=0),
        shuffle_buffer_size=args.shuffle_buffer_size,
    )

    def clips_per_s(kind, workers):
        common = dict(
            batch_size=args.batch_size,
            collate_fn=script.collate_fn,
            num_workers=workers,
            generator=torch.Generator().manual_seed(0),
        )
        loader = (
            torch.utils.data.DataLoader(map_style, shuffle=True, **common)
            if kind == "map-style"
            else StatefulDataLoader(streamed, **common)
        )
        iterator = iter(loader)
        next(iterator)
        start, clips = time.perf_counter(), sum(len(batch["labels"]) for batch in iterator)
        return clips / (time.perf_counter() - start)

    results = {}
    for workers in map(int, args.workers.split(",")):
        runs = {"map-style": [], "streamed": []}
        for index in range(args.rounds):  # the order alternates
            for kind in ("map-style", "streamed")[:: 1 if index % 2 == 0 else -1]:
                runs[kind].append(clips_per_s(kind, workers))
            log(f"{workers} workers, round {index}: " + ", ".join(f"{k} {v[-1]:.2f} clips/s" for k, v in runs.items()))
        entry = {kind: {"clips_per_s": median(r), "runs": r} for kind, r in runs.items()}
        entry["streamed_over_map_style"] = ratio(entry["streamed"]["clips_per_s"], entry["map-style"]["clips_per_s"])
        entry["round_ratios"] = [s / m for s, m in zip(runs["streamed"], runs["map-style"])]
        results[f"{workers}_workers"] = entry
    return write(
        "streaming",
        {"results": results},
        args,
        clip="8 frames, stride 8, RandomResizedCrop to 224",
        video=f"{args.size}, {args.seconds:g} s, 30 fps, H.264 (libx264 defaults)",
    )


def training_arguments(parser):
    options(
        parser,
        frame_archives=(
            False,
            "train the embedded default from frame archives of its synthetic videos (`evl-hf prepare-videos --format "
            "frames`, native size), its settings given explicitly with --train_dir/--validation_dir",
        ),
        frame_step=(3, "--frame_archives: keep every this many frames; it must divide the default's frame stride, 3"),
        quality=(90, "--frame_archives: JPEG quality (prepare-videos' default)"),
        augment_on_device=(
            None,
            "the script's --augment_on_device (default: True with --frame_archives, else the script's own)",
            ("True", "False"),
        ),
    )
    parser.add_argument("script_args", nargs="*", help="after `--`: arguments for run_video_classification.py")


def training(args):
    script_args = list(args.script_args)
    if args.quick:  # the code path in seconds: a few steps on a small synthetic dataset
        script_args = [
            "--max_steps",
            "4",
            "--per_device_train_batch_size",
            "4",
            "--per_device_eval_batch_size",
            "4",
            "--synthetic_train_videos_per_label",
            "2",
            "--synthetic_validation_videos_per_label",
            "1",
            "--dataloader_num_workers",
            "0",
            "--save_strategy",
            "no",
            "--logging_steps",
            "2",
            *script_args,
        ]
    if args.frame_archives:  # a data source turns the default's settings off: given first, so that given ones win
        example, args.augment_on_device = load_script(), args.augment_on_device or "True"
        given = {k: v for k, v in example.SYNTHETIC_DEFAULTS.items() if k != "output_dir"}
        script_args = [word for flag, value in given.items() for word in (f"--{flag}", str(value))] + script_args
    if args.augment_on_device is not None:
        script_args = ["--augment_on_device", args.augment_on_device, *script_args]
    with tempfile.TemporaryDirectory(prefix="evl_training_") as scratch:
        defaults = {
            "--output_dir": f"{scratch}/output",
            **({"--synthetic_data_dir": f"{scratch}/data"} if args.quick else {}),
        }
        script_args += [word for flag, value in defaults.items() if flag not in script_args for word in (flag, value)]
        data = {"source": "videos", "augment_on_device": args.augment_on_device}  # None: the script's default
        if args.frame_archives:  # the default's synthetic videos, made as the script makes them, as frame archives
            _, data_args, _ = example.parse_arguments(script_args)
            synthetic = load_script("synthetic_data")
            videos = synthetic.generate_synthetic_motion_dataset(
                data_args.synthetic_data_dir,
                train_videos_per_label=data_args.synthetic_train_videos_per_label,
                validation_videos_per_label=data_args.synthetic_validation_videos_per_label,
            )
            evl_hf, side = Path(sys.executable).with_name("evl-hf"), synthetic.SyntheticMotionConfig().frame_size
            settings = f"--format frames --frame_step {args.frame_step} --short_side {side} --quality {args.quality}"
            settings += " --num_workers 1" * args.quick  # no pool of processes to start for a dozen videos
            start = time.perf_counter()
            for split in ("train", "validation"):  # at the videos' own size: nothing is resized
                prepare = [str(evl_hf) if evl_hf.exists() else "evl-hf", "prepare-videos", str(videos / split)]
                prepare += [f"{scratch}/frames/{split}", *settings.split()]
                if subprocess.run(prepare, stdout=sys.stderr).returncode:
                    raise SystemExit(f"error: `{' '.join(prepare)}` failed (its log is above)")
                script_args += [f"--{split}_dir", f"{scratch}/frames/{split}"]
            data |= {
                "source": "frame_archives",
                "frame_step": args.frame_step,
                "short_side": side,
                "quality": args.quality,
                "prepare_s": time.perf_counter() - start,
                "video_bytes": sum(path.stat().st_size for path in videos.rglob("*.mp4")),
                "archive_bytes": sum(path.stat().st_size for path in Path(scratch, "frames").rglob("*.evlf")),
            }
        accelerate = Path(sys.executable).with_name("accelerate")
        command = [
            str(accelerate) if accelerate.exists() else "accelerate",
            "launch",
            "--num_processes",
            "1",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            str(script := EXAMPLES / "run_video_classification.py"),
            *script_args,
        ]
        before, load = resource.getrusage(resource.RUSAGE_CHILDREN), round(os.getloadavg()[0], 2)
        start = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, stdout=sys.stderr)  # its log on stderr: stdout holds the result
        wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode:
            raise SystemExit(f"error: the training run failed with exit status {done.returncode} (its log is above)")
        folder = Path(script_args[script_args.index("--output_dir") + 1])
        found = next((folder / n for n in ("all_results.json", "eval_results.json") if (folder / n).is_file()), None)
        if found is None:
            raise SystemExit(f"error: {folder} has no all_results.json or eval_results.json: was --do_eval False?")
        metrics = json.loads(found.read_text())
        # the temporary folders mean nothing on another machine
        script_args = [word.replace(scratch, "<tmp>") for word in script_args]
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    launched = " ".join(
        [*command[1 : command.index(str(script))], str(script.relative_to(ROOT))]
    )  # what ran, portably
    return write(
        "training",
        {"wall_s": wall, "cpu_s": cpu, "data": data, "metrics_file": found.name, "metrics": metrics},
        args,
        "training_frame_archives" if args.frame_archives else None,
        command=launched,
        script_args=script_args,
        loadavg_1min_before=load,
    )


SUITES = {
    "data_path": (
        "decoding a clip: the reference's PyAV path, torchcodec, prepared videos; training and evaluation",
        data_path_arguments,
        data_path,
    ),
    "data_wait": (
        "share of the embedded-default training loop spent waiting for data, by DataLoader workers",
        data_wait_arguments,
        data_wait,
    ),
    "streaming": (
        "training clips/s streamed from WebDataset shards against map-style",
        streaming_arguments,
        streaming,
    ),
    "training": (
        "the training script's embedded default via accelerate launch (or from frame archives): time, eval metrics",
        training_arguments,
        training,
    ),
}
