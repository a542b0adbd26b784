"""The training script, imported as a module for the tests that run it in process, the tiny data they train on, and
the real processes the tests that send signals start."""

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "run_video_classification.py"
sys.path.insert(0, str(SCRIPT.parent))  # the synthetic-motion generator and the preemption helpers sit next to it
from synthetic_data import SyntheticMotionConfig  # noqa: E402


_spec = importlib.util.spec_from_file_location("run_video_classification", SCRIPT)
run_video_classification = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(run_video_classification)


def train_tiny(tiny_clip: str, data: str, output_dir: Path, cache_dir: Path, args: str = "") -> Path:
    """Runs the script in this process on `data` (its data arguments) with small settings; returns the output folder."""
    run_video_classification.main(
        f"""
        --model_name_or_path {tiny_clip} {data} --output_dir {output_dir} --cache_dir {cache_dir}
        --num_frames 4 --frame_stride 2 --decoder_num_layers 2 --max_steps 2 --learning_rate 1e-3
        --per_device_train_batch_size 2 --per_device_eval_batch_size 2 --logging_steps 1 --save_strategy no
        --dataloader_num_workers 0 --disable_tqdm True --report_to none {args}
        """.split()
    )
    return output_dir


# 8 training and 8 validation clips of 10 frames, 32x32
TINY_VIDEOS = SyntheticMotionConfig(
    train_videos_per_label=2,
    validation_videos_per_label=2,
    num_frames=10,
    frame_size=32,
    min_object_size=6,
    max_object_size=10,
)


# ---- Real processes and signals ---------------------------------------------------------------------------------


ENVIRONMENT = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


STARTED = []  # the processes `start` started, ended by `end_started_processes` whatever the test's outcome


def start(command: list[str], log: Path) -> subprocess.Popen:
    """Starts `command` in its own process group (as a batch scheduler does), its output going to `log`."""
    with open(log, "w") as file:
        STARTED.append(
            subprocess.Popen(
                command, stdout=file, stderr=subprocess.STDOUT, env=ENVIRONMENT, cwd=ROOT, start_new_session=True
            )
        )
    return STARTED[-1]


def descendants(pid: int) -> list[int]:
    try:  # the children of each of its threads
        children = [
            int(child)
            for task in Path(f"/proc/{pid}/task").iterdir()
            for child in (task / "children").read_text().split()
        ]
    except OSError:  # it has ended
        return []
    return children + [grandchild for child in children for grandchild in descendants(child)]


def wait_for(condition, process: subprocess.Popen, timeout: float = 300, interval: float = 0.05) -> bool:
    """Polls `condition()` until it holds (True) or the process ends first (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if process.poll() is not None:
            return bool(condition())
        time.sleep(interval)
    process.kill()
    raise TimeoutError("the training process made no progress in time")


def logged_steps(log: Path) -> int:
    """How many training losses the Trainer has printed (with --disable_tqdm True, one per logged step)."""
    return log.read_text(errors="replace").count("'loss'")
