"""`evl-hf predict`: many videos, broken files, resuming, and equality with the video-classification pipeline."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from transformers import pipeline

from evl_hf.commands import main

from .conftest import LABELS, encode_video


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Three good videos of different lengths (one shorter than a clip), two of them in a nested folder."""
    folder = tmp_path_factory.mktemp("videos")
    (folder / "nested" / "deeper").mkdir(parents=True)
    return [
        encode_video(folder / "a.mp4", 40, seed=1),
        encode_video(folder / "nested" / "b.mp4", 9, seed=2),
        encode_video(folder / "nested" / "deeper" / "c.mp4", 25, seed=3),
    ]


def read_records(path):
    with open(path) as file:
        return [json.loads(line) for line in file]


def predict(model_folder, *arguments) -> int:
    return main(["predict", "--model", str(model_folder), "--num_workers", "0", *map(str, arguments)])


def test_records_equal_the_video_classification_pipeline(model_folder, videos, tmp_path):
    output = tmp_path / "out.jsonl"
    assert predict(model_folder, *videos, "--output", output, "--batch_size", "2", "--num_workers", "2") == 0
    records = {record["video"]: record for record in read_records(output)}
    assert list(records) == [str(video) for video in videos]
    classifier = pipeline("video-classification", model=str(model_folder))
    for video in videos:
        expected = classifier(str(video), top_k=5)
        assert records[str(video)]["labels"] == [p["label"] for p in expected]
        assert records[str(video)]["scores"] == pytest.approx([p["score"] for p in expected], abs=1e-5)


def test_a_folder_with_broken_files_gives_error_records_and_status_1(model_folder, videos, tmp_path, capsys):
    folder = tmp_path / "mixed"
    (folder / "sub").mkdir(parents=True)
    good = encode_video(folder / "sub" / "good.mp4", 20)
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "text.mp4").write_text("this is not a video\n")
    data = videos[0].read_bytes()
    (folder / "truncated.mp4").write_bytes(data[: len(data) // 3])
    (folder / "notes.md").write_text("not a video extension: ignored")
    output = tmp_path / "out.jsonl"

    assert predict(model_folder, folder, "--output", output, "--batch_size", "3") == 1

    records = {os.path.basename(r["video"]): r for r in read_records(output)}
    assert set(records) == {"good.mp4", "empty.mp4", "text.mp4", "truncated.mp4"}
    assert set(records["good.mp4"]) == {"video", "labels", "scores"} and records["good.mp4"]["video"] == str(good)
    assert (
        records["empty.mp4"]["error"].startswith("VideoDecodingError: ") and "empty" in records["empty.mp4"]["error"]
    )
    assert "text file" in records["text.mp4"]["error"]
    assert records["truncated.mp4"]["error"].startswith("VideoDecodingError: ")
    summary = capsys.readouterr().err
    assert "3 failed" in summary and "text.mp4" in summary and "empty.mp4" in summary


def test_txt_and_csv_lists_and_csv_output(model_folder, videos, tmp_path):
    txt = tmp_path / "list.txt"
    txt.write_text(f"# videos to classify\n{videos[0]}\n\n{os.path.relpath(videos[1], tmp_path)}\n")
    listed = tmp_path / "list.csv"
    listed.write_text(f"id,video\n1,{videos[2]}\n2,{videos[0]}\n")
    output = tmp_path / "out.csv"

    assert predict(model_folder, txt, listed, "--output", output, "--top_k", "2") == 0

    with open(output, newline="") as file:
        rows = list(csv.DictReader(file))
    assert [row["video"] for row in rows] == [str(videos[0]), str(videos[1]), str(videos[2])]  # no repeats
    assert list(rows[0]) == ["video", "label_1", "score_1", "label_2", "score_2", "error"]
    assert all(row["label_1"] in LABELS and float(row["score_1"]) >= float(row["score_2"]) for row in rows)


def test_a_kinetics_style_txt_list_gives_the_paths_without_their_labels(model_folder, videos, tmp_path):
    # `relative/path.mp4 label_index`, the lists training and prepare-videos read
    listed = tmp_path / "train.txt"
    listed.write_text(f"{os.path.relpath(videos[0], tmp_path)} 3\n{videos[2]} 0\n")
    output = tmp_path / "out.jsonl"
    assert predict(model_folder, listed, "--output", output) == 0
    assert [record["video"] for record in read_records(output)] == [str(videos[0]), str(videos[2])]


def test_without_output_records_go_to_stdout(model_folder, videos, capsys):
    assert predict(model_folder, videos[0]) == 0
    captured = capsys.readouterr()
    record = json.loads(captured.out)
    assert record["video"] == str(videos[0]) and len(record["labels"]) == 5
    assert "video" in captured.err  # the progress bar counts videos on stderr


def test_bfloat16_backbone_gives_records(model_folder, videos, tmp_path):
    output = tmp_path / "out.jsonl"
    assert predict(model_folder, videos[0], "--dtype", "bfloat16", "--output", output) == 0
    (record,) = read_records(output)
    assert set(record["labels"]) <= set(LABELS) and sum(record["scores"]) <= 1 + 1e-6


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["{empty}"], "no videos found"),
        (["{missing}"], "does not exist"),
    ],
)
def test_usage_errors_exit_2(model_folder, tmp_path, capsys, arguments, message):
    (tmp_path / "empty").mkdir()
    arguments = [a.format(empty=tmp_path / "empty", missing=tmp_path / "missing.mp4") for a in arguments]
    with pytest.raises(SystemExit) as exit_info:
        predict(model_folder, *arguments)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_bad_model_path_exits_2(videos, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        predict(tmp_path / "no_model", videos[0])
    assert exit_info.value.code == 2
    assert "no_model" in capsys.readouterr().err


def test_a_torn_last_line_is_dropped_and_its_video_predicted_again(model_folder, videos, tmp_path):
    output = tmp_path / "out.jsonl"
    assert predict(model_folder, videos[0], videos[1], "--output", output) == 0
    first, second = output.read_text().splitlines(keepends=True)
    output.write_text(first + second[: len(second) // 2])  # what a kill in the middle of a write leaves

    assert predict(model_folder, videos[0], videos[1], "--output", output) == 0

    assert output.read_text().startswith(first)
    assert [r["video"] for r in read_records(output)] == [str(videos[0]), str(videos[1])]


@pytest.mark.slow  # two interpreters importing torch and transformers: 10 s on a quiet 2-core CPU, 30-95 s on a busy one
def test_an_interrupted_run_resumes_without_recomputing(model_folder, videos, tmp_path):
    # many distinct paths (links to the three videos), so that the run is still going when it is stopped
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(60):
        os.symlink(videos[i % 3], folder / f"v{i:02d}.mp4")
    output = tmp_path / "out.jsonl"
    command = [
        sys.executable,
        "-m",
        "evl_hf",
        "predict",
        "--model",
        str(model_folder),
        str(folder),
        "--output",
        str(output),
        "--batch_size",
        "1",
        "--num_workers",
        "1",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if output.exists() and output.read_text().count("\n") >= 5:
            break
        time.sleep(0.01)
    assert process.poll() is None, "the run ended before it could be stopped: " + process.stderr.read().decode()[-500:]
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)
    process.stderr.close()
    before = output.read_text()
    done_before = [json.loads(line)["video"] for line in before.splitlines(keepends=True) if line.endswith("\n")]
    assert 5 <= len(done_before) < 60

    resumed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)

    assert resumed.returncode == 0, resumed.stderr[-2000:]
    records = read_records(output)
    videos_recorded = [record["video"] for record in records]
    assert sorted(videos_recorded) == sorted(str(folder / f"v{i:02d}.mp4") for i in range(60))  # each exactly once
    assert videos_recorded[: len(done_before)] == done_before  # the first run's records are kept as they were
    assert f"{len(done_before)} of 60 videos already in" in resumed.stderr
    assert f"{60 - len(done_before)} predicted now" in resumed.stderr


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_retry_failed_tries_the_failed_videos_again(model_folder, videos, tmp_path, suffix):
    broken = tmp_path / "later.mp4"
    broken.write_bytes(videos[0].read_bytes()[:500])  # still being copied, say
    output = tmp_path / f"out{suffix}"
    assert predict(model_folder, videos[1], broken, "--output", output) == 1

    def records():
        if suffix == ".csv":
            with open(output, newline="") as file:
                return {row["video"]: row for row in csv.DictReader(file)}
        return {record["video"]: record for record in read_records(output)}

    good = records()[str(videos[1])]
    assert records()[str(broken)]["error"]
    broken.write_bytes(videos[0].read_bytes())  # the copy finished
    assert predict(model_folder, videos[1], broken, "--output", output) == 1  # resuming keeps the error record
    assert records()[str(broken)]["error"]

    assert predict(model_folder, videos[1], broken, "--output", output, "--retry_failed") == 0
    after = records()
    assert list(after) == [str(videos[1]), str(broken)]  # the error record is gone, the good one kept as it was
    assert after[str(videos[1])] == good
    if suffix == ".csv":
        assert after[str(broken)]["error"] == "" and after[str(broken)]["label_1"] in LABELS
    else:
        assert "error" not in after[str(broken)] and set(after[str(broken)]["labels"]) <= set(LABELS)
    assert not list(tmp_path.glob("*.partial"))


def test_retry_failed_needs_an_output_file(model_folder, videos, capsys):
    with pytest.raises(SystemExit) as exit_info:
        predict(model_folder, videos[0], "--retry_failed")
    assert exit_info.value.code == 2
    assert "--retry_failed" in capsys.readouterr().err


@pytest.fixture(scope="module")
def multi_label_folder(tmp_path_factory):
    from evl_hf.testing_utils import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("multi"), problem_type="multi_label_classification", seed=3)


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_a_multi_label_model_lists_every_label_above_the_threshold(multi_label_folder, videos, tmp_path, threshold):
    output = tmp_path / "out.jsonl"
    assert predict(multi_label_folder, *videos, "--output", output, "--threshold", threshold, "--top_k", 2) == 0
    classifier = pipeline("video-classification", model=str(multi_label_folder))
    for record in read_records(output):
        scores = {row["label"]: row["score"] for row in classifier(record["video"], top_k=len(LABELS))}
        assert record["above_threshold"] == [label for label in LABELS if scores[label] > threshold]
        assert len(record["labels"]) == 2


def test_a_multi_label_csv_has_an_above_threshold_column(multi_label_folder, videos, tmp_path):
    output = tmp_path / "out.csv"
    assert predict(multi_label_folder, videos[0], "--output", output, "--threshold", 0.01) == 0
    with open(output, newline="") as file:
        (row,) = list(csv.DictReader(file))
    assert row["above_threshold"].split(";") == LABELS  # every sigmoid score is above 0.01


@pytest.mark.parametrize("threshold", ["0", "1", "1.5"])
def test_a_threshold_outside_0_1_is_a_usage_error(model_folder, videos, capsys, threshold):
    with pytest.raises(SystemExit) as exit_info:
        predict(model_folder, videos[0], "--threshold", threshold)
    assert exit_info.value.code == 2 and "argument --threshold: must be between 0 and 1" in capsys.readouterr().err


def test_embeddings_are_the_pooled_output_and_load_with_datasets(model_folder, videos, tmp_path):
    import torch
    from datasets import load_dataset

    from evl_hf import EVLModel, EVLVideoProcessor

    assert predict(model_folder, *videos, "--output", tmp_path / "out.jsonl", "--embeddings", tmp_path / "emb") == 0
    rows = load_dataset("parquet", data_files=str(tmp_path / "emb" / "*.parquet"), split="train")
    assert sorted(rows["video"]) == sorted(map(str, videos))
    model, processor = EVLModel.from_pretrained(model_folder).eval(), EVLVideoProcessor.from_pretrained(model_folder)
    for video, embedding in zip(rows["video"], rows["embedding"]):
        with torch.no_grad():
            expected = model(**processor(video, return_tensors="pt")).pooler_output[0]
        torch.testing.assert_close(torch.tensor(embedding), expected, atol=1e-5, rtol=0)


def test_embeddings_resume_with_every_video_once(model_folder, videos, tmp_path):
    from evl_hf.commands.records import embedded_videos

    output, folder = tmp_path / "out.jsonl", tmp_path / "emb"
    assert predict(model_folder, videos[0], "--output", output) == 0  # records, but no embeddings yet
    assert predict(model_folder, videos[0], videos[1], "--output", output, "--embeddings", folder) == 0
    assert predict(model_folder, *videos, "--output", output, "--embeddings", folder) == 0
    assert [record["video"] for record in read_records(output)] == list(map(str, videos))  # each record once
    import pyarrow.parquet as pq

    shards = sorted(folder.glob("*.parquet"))
    listed = [video for shard in shards for video in pq.read_table(shard)["video"].to_pylist()]
    assert sorted(listed) == sorted(map(str, videos)) and embedded_videos(str(folder)) == set(map(str, videos))
    assert len(shards) == 2  # the third run computed only the video it had not seen
