"""Fixtures shared by the whole suite: tiny saved models and generated videos (helpers in `evl_hf.testing_utils`)."""

import contextlib
import os
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from transformers import CLIPVisionModel

from evl_hf.testing_utils import save_tiny_model, tiny_vision_config


@pytest.fixture(scope="session")
def model_folder(tmp_path_factory):
    """A saved tiny EVL classifier with its video processor: 4 frames 4 apart, 32x32, the labels of `LABELS`."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny_evl"))


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> str:
    """A random CLIP vision checkpoint saved in a local folder: 32 px images, 8 px patches, width 32, 2 layers."""
    folder = tmp_path_factory.mktemp("tiny-clip")
    torch.manual_seed(0)
    CLIPVisionModel(tiny_vision_config()).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """The synthetic-motion dataset of `training_utils.TINY_VIDEOS`, in videofolder layout (`train/`, `validation/`)."""
    from synthetic_data import generate_synthetic_motion_dataset
    from training_utils import TINY_VIDEOS

    return generate_synthetic_motion_dataset(tmp_path_factory.mktemp("videos"), TINY_VIDEOS)


@pytest.fixture(autouse=True)
def end_started_processes():
    """After each test, SIGKILL what is left of the processes it started with `training_utils.start` (torchrun's
    workers have their own groups)."""
    from training_utils import STARTED, descendants

    yield
    while STARTED:
        process = STARTED.pop()
        if process.poll() is None:
            for pid in [process.pid, *descendants(process.pid)]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            process.wait()


@pytest.fixture
def small_disk(tmp_path):
    """A 1.1 MB tmpfs (`mount -o remount,size=...` resizes it), unmounted afterwards; skips the test where it cannot be
    mounted (it needs root)."""
    folder = tmp_path / "disk"
    folder.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1100k", "tmpfs", folder], capture_output=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.decode().strip()}")
    yield folder
    subprocess.run(["umount", "--lazy", folder], check=True)
