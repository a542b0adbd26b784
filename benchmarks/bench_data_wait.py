"""How much of the embedded-default training run the training loop spends waiting for data, by DataLoader workers.

Runs `examples/run_video_classification.py` as it is, with no data or model argument (its embedded default: the
generated synthetic-motion dataset, 64x64 clips of 8 frames, a small random CLIP backbone, batch 16), for
`--max_steps` steps (150 by default, of the run's 900: its epochs all look alike), once per `--num-workers` value,
in this process. Two public `Trainer` methods are wrapped for the run; nothing in the script changes:
- `Trainer.get_batch_samples`, through which the loop takes its batches: every `next()` on the train DataLoader's
  iterator is timed. That is the time the loop is blocked on data: worker start-up (the script turns persistent
  workers off, so workers start again every epoch), batches the workers have not finished, and with 0 workers the
  whole decoding and augmentation;
- `Trainer.train`, to add a callback that times the loop itself, from `on_train_begin` to `on_train_end`.
The share of waiting is the first over the second. It is also given without the first batch of each epoch, where
the workers start and nothing can overlap yet. An untimed run of `--warmup-steps` comes first, so that one-time
costs (torch's first use of its kernels) fall in none of the timed runs.

Besides `--max_steps` and `--dataloader_num_workers`, the script is given `--do_eval False
--save_strategy no` (evaluation and checkpoints are not part of the training loop), `--disable_tqdm True
--report_to none`, a temporary `--output_dir` and `--cache_dir`, and `--synthetic_data_dir` (the same dataset,
generated into a folder of the benchmark's own). Its log goes to stderr, so that stdout holds only the results.

    python benchmarks/bench_data_wait.py --output docs/benchmark_results
    python benchmarks/bench_data_wait.py --num-workers 2 --max_steps 900     # the whole embedded run
    python benchmarks/bench_data_wait.py --tiny        # seconds; what the tests run
"""

import argparse
import contextlib
import importlib.util
import os
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from unittest import mock

import torch
from transformers import Trainer, TrainerCallback

from benchmark_utils import emit, log, machine_info, markdown_table, target, targets_table


SCRIPT = Path(__file__).resolve().parent.parent / "examples" / "run_video_classification.py"
sys.path.insert(0, str(SCRIPT.parent))  # the synthetic-motion generator sits next to the script
from synthetic_data import SyntheticMotionConfig, default_cache_dir  # noqa: E402


def load_training_script():
    """The training script as a module, imported from its file (`examples/` is not a package)."""
    spec = importlib.util.spec_from_file_location("run_video_classification", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class DataWaitTimer(TrainerCallback):
    """
    Times the training loop, from `on_train_begin` to `on_train_end`, and every batch it waits for.

    `waits` holds one list per epoch (per iterator over the train DataLoader) of the seconds each `next()` took.
    """

    def __init__(self):
        self.waits: list[list[float]] = []
        self._iterator = None
        self.loop_start = self.loop_end = None
        self.steps = self.batch_size = self.train_videos = 0

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        self.batch_size = args.train_batch_size
        self.train_videos = len(train_dataloader.dataset)
        self.loop_start = time.perf_counter()

    def on_train_end(self, args, state, control, **kwargs):
        self.loop_end = time.perf_counter()
        self.steps = state.global_step

    def timed(self, iterator):
        """Yields from `iterator`, timing each `next()`; a new iterator (a new epoch) starts a new list of waits."""
        if iterator is not self._iterator:
            self._iterator = iterator
            self.waits.append([])
        waits = self.waits[-1]
        while True:
            start = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                return
            finally:
                waits.append(time.perf_counter() - start)
            yield batch

    @contextlib.contextmanager
    def patch(self):
        """Wraps `Trainer.train` (to add this callback) and `Trainer.get_batch_samples` for the block's duration."""
        train, get_batch_samples = Trainer.train, Trainer.get_batch_samples

        def timed_train(trainer, *args, **kwargs):
            trainer.add_callback(self)
            return train(trainer, *args, **kwargs)

        def timed_get_batch_samples(trainer, epoch_iterator, num_batches, device):
            return get_batch_samples(trainer, self.timed(epoch_iterator), num_batches, device)

        with (
            mock.patch.object(Trainer, "train", timed_train),
            mock.patch.object(Trainer, "get_batch_samples", timed_get_batch_samples),
        ):
            yield

    def summary(self) -> dict:
        loop = self.loop_end - self.loop_start
        wait = sum(sum(epoch) for epoch in self.waits)
        first = sum(epoch[0] for epoch in self.waits if epoch)
        return {
            "steps": self.steps,
            "epochs_started": len(self.waits),
            "batches_per_epoch": [len(epoch) for epoch in self.waits],
            "train_loop_s": loop,
            "data_wait_s": wait,
            "data_wait_fraction": wait / loop,
            "first_batch_of_epoch_wait_s": first,
            "data_wait_fraction_after_first_batches": (wait - first) / (loop - first),
            "max_wait_after_first_batches_s": max((w for epoch in self.waits for w in epoch[1:]), default=0.0),
            "seconds_per_step": loop / self.steps,
            "seconds_per_step_not_waiting": (loop - wait) / self.steps,
            "batch_size": self.batch_size,
            "train_videos": self.train_videos,
            "clips_per_s": self.steps * self.batch_size / loop,
        }


def measure(script, num_workers: int, max_steps: int, args) -> dict:
    """One run of the training script with `num_workers` DataLoader workers; the timer's summary."""
    timer = DataWaitTimer()
    with tempfile.TemporaryDirectory(prefix="evl_data_wait_") as scratch:
        script_args = [
            "--max_steps", str(max_steps),
            "--dataloader_num_workers", str(num_workers),
            "--do_eval", "False",
            "--save_strategy", "no",
            "--disable_tqdm", "True",
            "--report_to", "none",
            "--output_dir", os.path.join(scratch, "output"),
            "--cache_dir", os.path.join(scratch, "cache"),
            *args.script_args,
        ]  # fmt: skip
        log(f"{num_workers} workers: run_video_classification.py {' '.join(script_args)}")
        load_before = os.getloadavg()[0]
        with timer.patch(), contextlib.redirect_stdout(sys.stderr):
            script.main(script_args)
    summary = timer.summary()
    summary["loadavg_1min_before"] = round(load_before, 2)
    summary["loadavg_1min_after"] = round(os.getloadavg()[0], 2)
    log(
        f"{num_workers} workers: {summary['steps']} steps in {summary['train_loop_s']:.1f} s, "
        f"{100 * summary['data_wait_fraction']:.1f}% waiting for data"
    )
    return summary


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max_steps", type=int, default=150, help="training steps per run")
    parser.add_argument(
        "--num-workers", default="2,1,0", help="comma-separated `--dataloader_num_workers` values, one run each"
    )
    parser.add_argument(
        "--warmup-steps",
        type=int,
        default=5,
        help="steps of an untimed run first, so that one-time costs (first use of torch's kernels) fall in no run",
    )
    parser.add_argument(
        "--synthetic-data-dir",
        type=Path,
        default=None,
        help="cache folder of the synthetic-motion dataset; default $EVL_HF_CACHE/benchmark_synthetic_motion",
    )
    parser.add_argument("--tiny", action="store_true", help="16 training videos, batch 4, 6 steps: a run in seconds")
    parser.add_argument("--output", help="folder to write data_wait.json and data_wait.md into")
    args = parser.parse_args(argv)
    args.num_workers = [int(n) for n in args.num_workers.split(",")]
    if len(set(args.num_workers)) != len(args.num_workers):
        parser.error(f"--num-workers lists a value twice: {args.num_workers}")
    # A folder of the benchmark's own: the dataset is the script's default one, out of reach of whoever clears or
    # regenerates the shared cache during a run.
    args.synthetic_data_dir = args.synthetic_data_dir or default_cache_dir().parent / "benchmark_synthetic_motion"
    args.script_args = ["--synthetic_data_dir", str(args.synthetic_data_dir)]
    if args.tiny:
        args.max_steps, args.warmup_steps = 6, 2
        args.script_args += [
            "--synthetic_train_videos_per_label", "4",
            "--synthetic_validation_videos_per_label", "1",
            "--per_device_train_batch_size", "4",
        ]  # fmt: skip
    return args


def main(argv=None):
    args = parse_args(argv)
    script = load_training_script()
    if args.warmup_steps > 0:
        log("warm-up run, not timed")
        measure(script, 0, args.warmup_steps, args)
    runs = {f"workers_{n}": measure(script, n, args.max_steps, args) for n in args.num_workers}

    targets = {}
    if "workers_2" in runs:
        targets["data_wait_fraction_2_workers"] = target(runs["workers_2"]["data_wait_fraction"], at_most=0.1)
    result = {
        "benchmark": "data_wait",
        "settings": {
            "tiny": args.tiny,
            "command": "examples/run_video_classification.py (embedded default: synthetic-motion dataset)",
            "script_args": [
                f"--max_steps {args.max_steps}",
                "--dataloader_num_workers <num_workers>",
                "--do_eval False --save_strategy no --disable_tqdm True --report_to none",
                *args.script_args,
            ],
            "max_steps": args.max_steps,
            "warmup_steps": args.warmup_steps,
            "num_workers": args.num_workers,
            # The generator's defaults, which the embedded run uses unless --tiny shrinks the dataset.
            "synthetic_motion": {"version": SyntheticMotionConfig().version, **asdict(SyntheticMotionConfig())},
            "torch_threads": torch.get_num_threads(),
        },
        "machine": machine_info(),
        "runs": runs,
        "targets": targets,
    }
    rows = [
        [
            name.split("_")[1],
            run["steps"],
            run["epochs_started"],
            run["train_loop_s"],
            run["data_wait_s"],
            100 * run["data_wait_fraction"],
            run["first_batch_of_epoch_wait_s"],
            100 * run["data_wait_fraction_after_first_batches"],
            run["seconds_per_step"],
            run["seconds_per_step_not_waiting"],
            run["clips_per_s"],
            run["loadavg_1min_before"],
        ]
        for name, run in runs.items()
    ]
    steps, batch_size = next(iter(runs.values()))["steps"], next(iter(runs.values()))["batch_size"]
    markdown = "\n".join(
        [
            f"Embedded-default training run of `examples/run_video_classification.py`, {steps} steps of batch "
            f"{batch_size}, {torch.get_num_threads()} torch threads in the training process",
            "",
            markdown_table(
                [
                    "workers",
                    "steps",
                    "epochs",
                    "train loop (s)",
                    "waiting for data (s)",
                    "waiting (%)",
                    "of which first batch of each epoch (s)",
                    "waiting after the first batches (%)",
                    "s/step",
                    "s/step not waiting",
                    "clips/s",
                    "load avg before",
                ],
                rows,
            ),
            "",
            targets_table(targets),
        ]
    )
    emit("data_wait", result, markdown, args.output)


if __name__ == "__main__":
    main()
