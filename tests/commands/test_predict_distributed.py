"""`evl-hf predict` under torchrun: two real CPU processes (gloo) share the videos, write part files, merge them into
one output equal to a single process's, and a run whose whole group is killed resumes with every video once."""

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
import torch
from datasets import load_dataset

from evl_hf.commands import main
from evl_hf.commands.records import part_files

from .conftest import encode_video


pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def many_videos(tmp_path_factory):
    """30 videos of 320x240 in two folders: decoding a clip takes long enough to stop a run in the middle."""
    folder = tmp_path_factory.mktemp("many")
    for index in range(30):
        (folder / f"part{index % 2}").mkdir(exist_ok=True)
        encode_video(folder / f"part{index % 2}" / f"{index:02d}.mp4", 90, height=240, width=320, seed=index)
    return folder


def torchrun(*arguments: str) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "evl_hf",
        "predict",
        *arguments,
    ]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    return subprocess.Popen(
        command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, text=True
    )


def count_part_records(output) -> int:
    count = 0
    for part in part_files(str(output)):
        try:
            count += len(open(part).read().splitlines())
        except FileNotFoundError:  # merged and removed meanwhile
            pass
    return count


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def single_process(model_folder, many_videos, tmp_path_factory):
    output = tmp_path_factory.mktemp("single") / "out.jsonl"
    assert (
        main(
            ["predict", "--model", str(model_folder), str(many_videos), "--output", str(output), "--num_workers", "0"]
        )
        == 0
    )
    return read(output)


def assert_equal_records(records, expected):
    assert [record["video"] for record in records] == [record["video"] for record in expected]  # once each, in order
    for record, reference in zip(records, expected):
        assert record["labels"] == reference["labels"], record["video"]
        torch.testing.assert_close(
            torch.tensor(record["scores"]), torch.tensor(reference["scores"]), atol=1e-5, rtol=0
        )


def test_two_processes_write_what_one_process_writes(model_folder, many_videos, single_process, tmp_path):
    output, embeddings = tmp_path / "out.jsonl", tmp_path / "embeddings"
    process = torchrun(
        "--model",
        str(model_folder),
        str(many_videos),
        "--output",
        str(output),
        "--num_workers",
        "1",
        "--embeddings",
        str(embeddings),
    )
    log, _ = process.communicate(timeout=300)
    assert process.returncode == 0, log
    assert_equal_records(read(output), single_process)
    assert part_files(str(output)) == []
    # each process wrote its own shards, and every video has one embedding
    rows = load_dataset("parquet", data_files=str(embeddings / "*.parquet"), split="train")
    assert sorted(rows["video"]) == sorted(record["video"] for record in single_process)
    assert {name.name.split("-")[1] for name in embeddings.glob("*.parquet")} == {"r00000", "r00001"}


def test_a_group_killed_mid_run_resumes_with_every_video_once(model_folder, many_videos, single_process, tmp_path):
    output = tmp_path / "out.jsonl"
    arguments = (
        "--model",
        str(model_folder),
        str(many_videos),
        "--output",
        str(output),
        "--num_workers",
        "0",
        "--batch_size",
        "1",
    )
    process = torchrun(*arguments)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None and count_part_records(output) < 4:
        time.sleep(0.02)
    # torchrun starts each worker in a session of its own: the launcher and every worker are killed
    for member in [*psutil.Process(process.pid).children(recursive=True), psutil.Process(process.pid)]:
        member.send_signal(signal.SIGKILL)
    log, _ = process.communicate(timeout=60)
    parts = part_files(str(output))
    assert len(parts) == 2, f"the run ended before it was killed, nothing to resume:\n{log}"
    recorded = count_part_records(output)
    assert 4 <= recorded < len(single_process)

    process = torchrun(*arguments)
    log, _ = process.communicate(timeout=300)
    assert process.returncode == 0, log
    assert f"{recorded} of {len(single_process)} videos already in" in log
    assert_equal_records(read(output), single_process)


def test_processes_given_different_inputs_are_refused(model_folder, many_videos, tmp_path):
    # as when a folder changes under a run: each process is given another folder
    script = tmp_path / "launch.py"
    script.write_text(
        "import os, sys\nfrom evl_hf.commands import main\n"
        f"sys.exit(main(['predict', '--model', {str(model_folder)!r}, "
        f"os.path.join({str(many_videos)!r}, 'part' + os.environ['RANK']), '--output', {str(tmp_path / 'o.jsonl')!r}]))\n"
    )
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script)]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert result.returncode != 0
    assert "were given different" in result.stdout + result.stderr
    assert not (tmp_path / "o.jsonl").exists()
