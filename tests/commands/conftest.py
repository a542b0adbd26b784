"""Shared by the command tests: a tiny saved EVL model, videos encoded with torchcodec, and `evl-hf demo` served in a
subprocess."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
import torch
from torchcodec.encoders import VideoEncoder
from transformers import CLIPVisionConfig

from evl_hf import EVLConfig, EVLForVideoClassification, EVLVideoProcessor


LABELS = ["left", "right", "up", "down", "still"]


def encode_video(path, num_frames, *, height=48, width=64, fps=15, seed=0):
    """Writes an H.264 video of a bright square moving over noise, so that every frame differs."""
    generator = torch.Generator().manual_seed(seed)
    frames = torch.randint(0, 64, (num_frames, 3, height, width), dtype=torch.uint8, generator=generator)
    for t in range(num_frames):
        left = t % (width - 16)
        frames[t, :, 16:32, left : left + 16] = 255
    VideoEncoder(frames, frame_rate=fps).to_file(str(path), codec="libx264", pixel_format="yuv420p")
    return path


def save_tiny_model(folder, *, num_frames=4, frame_stride=4, seed=0, **config_overrides):
    """A 2-layer CLIP with 32x32 images and a decoder whose zero-initialised parts are given values."""
    torch.manual_seed(seed)
    vision_config = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8
    )
    config = EVLConfig(
        vision_config=vision_config,
        num_frames=num_frames,
        decoder_num_layers=2,
        id2label=dict(enumerate(LABELS)),
        label2id={label: i for i, label in enumerate(LABELS)},
        **config_overrides,
    )
    model = EVLForVideoClassification(config)
    # The temporal tables, position embeddings and query start at zero: random values make them count.
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if any(part in name for part in ("temporal_cross_attention", "temporal_pos_embed", "query_token")):
                parameter.copy_(torch.randn(parameter.shape) * 0.5)
    model.save_pretrained(folder)
    EVLVideoProcessor(
        num_frames=num_frames,
        frame_stride=frame_stride,
        size={"shortest_edge": 32},
        crop_size={"height": 32, "width": 32},
    ).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def model_folder(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny_evl"))


# seconds: a busy 2-core machine takes a while to import torch, transformers and Gradio
DEMO_START_TIMEOUT = 180


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serve_demo(model, log_path, *args, env=None):
    """
    Runs `python -m evl_hf demo --model MODEL ARGS` on a free loopback port until the page answers, and stops it with
    Ctrl+C (SIGINT) on exit. Yields `{"url", "process", "log"}`; the server's output goes to `log_path`.
    """
    try:
        import gradio  # noqa: F401
    except ImportError:
        pytest.fail("Gradio is needed: pip install -e '.[dev]' (or '.[demo]').")
    port = free_port()
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "evl_hf", "demo", "--model", str(model), "--port", str(port), *map(str, args)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=None if env is None else {**os.environ, **env},
        )
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + DEMO_START_TIMEOUT
        while True:
            if process.poll() is not None:
                pytest.fail(f"evl-hf demo exited with status {process.returncode}:\n{log_path.read_text()}")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"evl-hf demo did not serve {url} within {DEMO_START_TIMEOUT} s:\n{log_path.read_text()}")
            time.sleep(0.5)
        yield {"url": url, "process": process, "log": log_path}
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
