"""The training script, imported as a module for the tests that run it in process, and the tiny data they train on."""

import importlib.util
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "run_video_classification.py"
sys.path.insert(0, str(SCRIPT.parent))  # the synthetic-motion generator and the preemption helpers sit next to it
from synthetic_data import SyntheticMotionConfig  # noqa: E402


_spec = importlib.util.spec_from_file_location("run_video_classification", SCRIPT)
run_video_classification = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(run_video_classification)

# 8 training and 8 validation clips of 10 frames, 32x32
TINY_VIDEOS = SyntheticMotionConfig(
    train_videos_per_label=2, validation_videos_per_label=2, num_frames=10, frame_size=32, min_object_size=6,
    max_object_size=10,
)  # fmt: skip
