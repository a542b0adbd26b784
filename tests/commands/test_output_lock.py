"""One writer per output: a second `evl-hf predict` on the same `--output`, or `prepare-videos` on the same
OUTPUT_DIR, stops at once naming the run that holds it; a run killed with SIGKILL leaves a lock file that blocks
nothing, and the rerun finishes the work once.

The first run is paused (SIGSTOP) while it holds the lock, so that it is still running whatever the second one's
start-up takes on a busy machine; a stopped process keeps its lock as a running one does."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from .conftest import encode_video


ENVIRONMENT = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}


def evl_hf(*arguments) -> list[str]:
    return [sys.executable, "-m", "evl_hf", *map(str, arguments)]


def start_and_pause_once(command: list[str], ready) -> subprocess.Popen:
    """Starts `command` in a process group of its own and stops the group (SIGSTOP) once `ready()` is true."""
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENVIRONMENT, start_new_session=True
    )
    deadline = time.monotonic() + 240
    while not ready():
        assert process.poll() is None, f"the first run ended (status {process.returncode}) before it was paused"
        assert time.monotonic() < deadline, "the first run never got ready"
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGSTOP)
    return process


def assert_refused(second: subprocess.CompletedProcess, first: subprocess.Popen, argument: str, output):
    assert second.returncode == 1, second.stderr[-3000:]
    last_line = second.stderr.strip().splitlines()[-1]
    assert f"{argument} {output} is in use by process {first.pid} on {socket.gethostname()}" in last_line
    assert f"Wait for that run to end or stop it, or pass another {argument}." in last_line
    assert "Traceback" not in second.stderr


def kill_group(process: subprocess.Popen):
    os.killpg(process.pid, signal.SIGKILL)  # a stopped process dies of SIGKILL too; its lock goes with it
    process.wait(timeout=60)


@pytest.fixture(scope="module")
def many_videos(tmp_path_factory):
    """40 paths (links to two short videos)."""
    folder = tmp_path_factory.mktemp("many")
    videos = [encode_video(folder / f"source{i}.mp4", 12, seed=i) for i in range(2)]
    (folder / "links").mkdir()
    for i in range(40):
        os.symlink(videos[i % 2], folder / "links" / f"v{i:02d}.mp4")
    return folder / "links"


def test_a_second_predict_on_one_output_stops_at_once_and_a_killed_runs_lock_blocks_nothing(
    model_folder, many_videos, tmp_path
):
    output = tmp_path / "out.jsonl"
    command = evl_hf("predict", "--model", model_folder, many_videos, "--output", output, "--num_workers", "0")
    first = start_and_pause_once(
        [*command, "--batch_size", "1"], lambda: output.exists() and output.read_text().count("\n") >= 2
    )
    written = output.read_text()

    second = subprocess.run(command, capture_output=True, text=True, env=ENVIRONMENT, timeout=300)

    assert_refused(second, first, "--output", output)
    assert output.read_text() == written  # nothing doubled
    kill_group(first)
    assert (tmp_path / "out.jsonl.lock").exists()  # left by the killed run, naming a dead process

    resumed = subprocess.run(command, capture_output=True, text=True, env=ENVIRONMENT, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    videos = [json.loads(line)["video"] for line in output.read_text().splitlines()]
    assert sorted(videos) == sorted(str(many_videos / f"v{i:02d}.mp4") for i in range(40))  # each once
    assert not (tmp_path / "out.jsonl.lock").exists()


def test_a_second_prepare_videos_on_one_output_dir_stops_at_once_and_a_killed_runs_lock_blocks_nothing(tmp_path):
    tree = tmp_path / "tree"
    (tree / "label").mkdir(parents=True)
    for i in range(12):
        encode_video(tree / "label" / f"{i:02d}.mp4", 30, height=120, width=160, seed=i)
    output_dir = tmp_path / "prepared"
    command = evl_hf("prepare-videos", tree, output_dir, "--num_workers", "1")
    first = start_and_pause_once(command, lambda: any(output_dir.glob("label/*.mp4")))

    second = subprocess.run(command, capture_output=True, text=True, env=ENVIRONMENT, timeout=300)

    assert_refused(second, first, "OUTPUT_DIR", output_dir)
    kill_group(first)  # FFmpeg too
    assert (output_dir / "_run.lock").exists()

    resumed = subprocess.run(command, capture_output=True, text=True, env=ENVIRONMENT, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert sorted(path.name for path in (output_dir / "label").iterdir()) == [f"{i:02d}.mp4" for i in range(12)]
    prepared, kept = map(int, re.match(r"(\d+) prepared, (\d+) kept from an earlier run", resumed.stdout).groups())
    assert kept >= 1 and prepared + kept == 12
    assert not (output_dir / "_run.lock").exists()


@pytest.mark.slow  # torchrun and two workers importing torch: 30-90 s on a busy 2-core machine
def test_a_distributed_predict_on_a_locked_output_stops_before_any_process_writes(model_folder, many_videos, tmp_path):
    output = tmp_path / "out.jsonl"
    command = evl_hf("predict", "--model", model_folder, many_videos, "--output", output, "--num_workers", "0")
    first = start_and_pause_once(
        [*command, "--batch_size", "1"], lambda: output.exists() and output.read_text().count("\n") >= 2
    )
    written = output.read_text()
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]

    second = subprocess.run([*launcher, *command[1:]], capture_output=True, text=True, env=ENVIRONMENT, timeout=300)

    assert second.returncode != 0
    assert f"--output {output} is in use by process {first.pid}" in second.stdout + second.stderr
    assert output.read_text() == written and not list(tmp_path.glob("out.jsonl.part-*"))
    kill_group(first)


def test_a_second_evaluate_on_one_output_folder_stops_at_once(model_folder, many_videos, tmp_path):
    labels = json.loads((model_folder / "config.json").read_text())["id2label"]
    listing = tmp_path / "list.csv"
    rows = [f"{many_videos / f'v{i:02d}.mp4'},{labels[str(i % len(labels))]}" for i in range(40)]
    listing.write_text("video,label\n" + "\n".join(rows) + "\n")
    output = tmp_path / "evaluation"
    command = evl_hf("evaluate", "--model", model_folder, listing, "--output", output, "--views", "1x1")
    scores = output / "scores.jsonl"
    first = start_and_pause_once(command, lambda: scores.exists() and scores.read_text().count("\n") >= 2)
    written = scores.read_text()

    second = subprocess.run(command, capture_output=True, text=True, env=ENVIRONMENT, timeout=300)

    assert_refused(second, first, "--output", output)
    assert scores.read_text() == written  # nothing doubled
    kill_group(first)

    resumed = subprocess.run(command, capture_output=True, text=True, env=ENVIRONMENT, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((output / "results.json").read_text())["num_scored"] == 40
