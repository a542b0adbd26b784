"""Shared by the command tests: the tiny model and videos of `evl_hf.testing_utils` (the fixtures are in
tests/conftest.py), and `evl-hf demo` served in a subprocess."""

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

from evl_hf.testing_utils import LABELS, encode_video, save_tiny_model  # noqa: F401


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
