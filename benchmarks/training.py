"""The training script's embedded default, end to end: wall time, CPU time, final metrics (`training`).

Runs `accelerate launch --num_processes 1 ... examples/run_video_classification.py ARGS` as a subprocess (what
`make train` runs), with extra script arguments after `--` (e.g. `-- --synthetic_multi_label True` for the
multi-label default, whose metric is `eval_map`), and records its wall-clock and CPU time (children included) and
the metrics of the output folder's all_results.json (eval_results.json as a fallback).
"""

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .harness import EXAMPLES, ROOT, log, write


def add_arguments(parser):
    parser.add_argument("--name", default="training_single_label", help="written to <output>/<name>.json")
    parser.add_argument("--output-dir", default=None, help="the script's --output_dir (default: a temporary folder)")
    parser.add_argument("script_args", nargs="*", help="after `--`: arguments for run_video_classification.py")


def run(args):
    script_args = list(args.script_args)
    if args.quick:  # the code path in seconds: a few steps on a small synthetic dataset
        script_args = ["--max_steps", "4", "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4",
                       "--synthetic_train_videos_per_label", "2", "--synthetic_validation_videos_per_label", "1",
                       "--dataloader_num_workers", "0", "--save_strategy", "no", "--logging_steps", "2",
                       *script_args]  # fmt: skip
    scratch = tempfile.mkdtemp(prefix="evl_training_")
    output_dir = args.output_dir or os.path.join(scratch, "output")
    if "--output_dir" not in script_args:
        script_args += ["--output_dir", output_dir]
    else:
        output_dir = script_args[script_args.index("--output_dir") + 1]
    if args.quick and "--synthetic_data_dir" not in script_args:
        script_args += ["--synthetic_data_dir", os.path.join(scratch, "synthetic")]
    accelerate = Path(sys.executable).with_name("accelerate")
    command = [str(accelerate) if accelerate.exists() else "accelerate", "launch", "--num_processes", "1",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               str(EXAMPLES / "run_video_classification.py"), *script_args]  # fmt: skip
    log(" ".join(command))
    before, load = resource.getrusage(resource.RUSAGE_CHILDREN), round(os.getloadavg()[0], 2)
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, stdout=sys.stderr, stderr=sys.stderr)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        raise SystemExit(f"error: the training run failed with exit status {done.returncode} (its log is above)")
    folder = Path(output_dir)
    found = next((folder / name for name in ("all_results.json", "eval_results.json") if (folder / name).is_file()),
                 None)  # fmt: skip
    if found is None:
        raise SystemExit(f"error: {folder} has no all_results.json or eval_results.json: was evaluation turned off?")
    metrics = json.loads(found.read_text())
    shutil.rmtree(scratch, ignore_errors=True)
    # the script's arguments without the temporary folders, which mean nothing on another machine
    recorded = [a if not a.startswith(scratch) else "<tmp>" for a in script_args]
    return write(args.name, {
        "settings": {"quick": args.quick, "command": "accelerate launch --num_processes 1 --num_machines 1 "
                     "--mixed_precision no --dynamo_backend no examples/run_video_classification.py",
                     "script_args": recorded, "loadavg_1min_before": load},
        "wall_s": wall,
        "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        "metrics_file": found.name,
        "metrics": metrics}, args.output)  # fmt: skip


SUITES = {"training": ("the training script's embedded default via accelerate launch: time and final eval metrics",
                       add_arguments, run)}  # fmt: skip
