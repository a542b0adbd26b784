"""`evl-hf evaluate` on a briefly trained tiny model: its top-1 is `evl-hf predict`'s scored against the labels, its
scores are `multi_view_scores`', a run killed with SIGKILL resumes to the same numbers, two processes give one's, and
missing or broken videos are counted and named."""

import csv
import importlib.util
import json
import shutil
import signal
import sys
import time

import psutil
import pytest
import torch
from training_utils import start, train_tiny

from evl_hf import EVLForVideoClassification, EVLVideoProcessor
from evl_hf.commands import main
from evl_hf.inference import multi_view_scores
from evl_hf.testing_utils import encode_video


@pytest.fixture(scope="module")
def trained(tiny_clip, videos, tmp_path_factory):
    """The tiny model trained for 2 steps on the synthetic-motion videos (4 frames, 2 apart, 4 labels)."""
    folder = tmp_path_factory.mktemp("evaluate")
    return train_tiny(tiny_clip, f"--train_dir {videos / 'train'}", folder / "model", folder / "cache")


@pytest.fixture(scope="module")
def video_list(videos, tmp_path_factory):
    """A CSV list of the validation videos by label name, with a missing and a broken video among them."""
    folder = tmp_path_factory.mktemp("list")
    rows = [(str(path), path.parent.name) for path in sorted((videos / "validation").glob("*/*.mp4"))]
    (folder / "broken.mp4").write_bytes(b"not a video at all")
    rows += [(str(folder / "missing.mp4"), rows[0][1]), (str(folder / "broken.mp4"), rows[1][1])]
    with open(folder / "validation.csv", "w", newline="") as file:
        csv.writer(file).writerows([("video", "label"), *rows])
    return folder / "validation.csv"


def evaluate(model, video_list, output, *arguments) -> int:
    return main(["evaluate", "--model", str(model), str(video_list), "--output", str(output), *arguments])


def read_scores(output) -> dict:
    records = [json.loads(line) for line in (output / "scores.jsonl").read_text().splitlines()]
    return {record["video"]: record for record in records}


def test_one_view_top1_is_predicts_top1_against_the_labels(trained, video_list, tmp_path, capsys):
    assert evaluate(trained, video_list, tmp_path / "eval", "--views", "1x1") == 1  # 2 videos skipped
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert main(["predict", "--model", str(trained), str(video_list), "--output", str(tmp_path / "p.jsonl")]) == 1
    predicted = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    with open(video_list) as file:
        truth = {row["video"]: row["label"] for row in csv.DictReader(file)}
    correct = [record["labels"][0] == truth[record["video"]] for record in predicted if "error" not in record]
    assert len(correct) == 8
    assert results["top1"] == pytest.approx(sum(correct) / len(correct))
    assert results["views"] == "1x1" and results["num_scored"] == 8 and results["num_skipped"] == 2
    assert 0 <= results["mean_class_accuracy"] <= 1 and results["top1"] <= results["top5"] == 1  # 4 labels
    assert set(results["versions"]) == {"evl_hf", "torch", "transformers"}
    # the missing and the broken video are named, in the results and on standard error
    skipped = sorted(results["skipped"])
    assert [video.rsplit("/", 1)[1] for video in skipped] == ["broken.mp4", "missing.mp4"]
    error = capsys.readouterr().err
    assert "2 skipped" in error and all(video in error for video in skipped)
    with open(tmp_path / "eval" / "per_class_accuracy.csv") as file:
        rows = list(csv.DictReader(file))
    assert [row["videos"] for row in rows] == ["2"] * 4
    accuracies = [float(row["accuracy"]) for row in rows]
    assert results["mean_class_accuracy"] == pytest.approx(sum(accuracies) / 4)
    assert (tmp_path / "eval" / "confusion_matrix.png").exists() == bool(importlib.util.find_spec("matplotlib"))
    matrix = json.loads((tmp_path / "eval" / "confusion_matrix.json").read_text())
    assert sum(map(sum, matrix["matrix"])) == 8
    assert sum(matrix["matrix"][i][i] for i in range(4)) == sum(correct)


def test_the_paper_views_scores_are_multi_view_scores(trained, video_list, tmp_path):
    assert evaluate(trained, video_list, tmp_path) == 1
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["views"] == "3x1"  # the paper's views for 4 frames
    model = EVLForVideoClassification.from_pretrained(trained).eval()
    processor = EVLVideoProcessor.from_pretrained(trained)
    records = read_scores(tmp_path)
    videos = [video for video, record in records.items() if "error" not in record]
    expected = multi_view_scores(model, processor, videos, num_clips=3, num_crops=1, do_sample_frames=True)
    scores = torch.tensor([records[video]["scores"] for video in videos])
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=0)


def test_a_label_the_model_does_not_have_is_named(trained, tmp_path, capsys):
    (tmp_path / "list.csv").write_text("video,label\na.mp4,jumping\n")
    with pytest.raises(SystemExit) as stopped:
        evaluate(trained, tmp_path / "list.csv", tmp_path / "eval")
    assert stopped.value.code == 2
    assert "'jumping' is not one of the model's 4 labels" in capsys.readouterr().err


@pytest.mark.parametrize("views", ["3", "0x1", "ax2"])
def test_bad_views_are_refused_when_parsed(views, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["evaluate", "--model", "m", "list.csv", "--output", "out", "--views", views])
    assert stopped.value.code == 2 and "TEMPORALxSPATIAL" in capsys.readouterr().err


@pytest.fixture(scope="module")
def many(videos, trained, tmp_path_factory):
    """80 videos (copies of the validation videos), and what one uninterrupted process reports on them."""
    folder = tmp_path_factory.mktemp("many")
    rows = []
    for copy in range(10):
        for path in sorted((videos / "validation").glob("*/*.mp4")):
            target = folder / f"{copy}-{path.name}"
            shutil.copy(path, target)
            rows.append((target.name, path.parent.name))
    with open(folder / "list.csv", "w", newline="") as file:
        csv.writer(file).writerows([("video", "label"), *rows])
    output = folder / "single"
    assert evaluate(trained, folder / "list.csv", output) == 0
    return folder / "list.csv", output


def assert_same_evaluation(output, reference):
    results, expected = (json.loads((folder / "results.json").read_text()) for folder in (output, reference))
    for key in ("top1", "top5", "mean_class_accuracy", "num_scored", "num_skipped"):
        assert results[key] == expected[key], key
    records, expected_records = read_scores(output), read_scores(reference)
    assert list(records) == list(expected_records)  # each video once
    for video, record in records.items():
        torch.testing.assert_close(
            torch.tensor(record["scores"]), torch.tensor(expected_records[video]["scores"]), atol=1e-6, rtol=0
        )


def test_a_run_killed_with_sigkill_resumes_to_the_same_results(trained, many, tmp_path):
    video_list, reference = many
    command = [sys.executable, "-m", "evl_hf", "evaluate", "--model", str(trained), str(video_list)]
    command += ["--output", str(tmp_path / "eval")]
    process = start(command, tmp_path / "log")
    scores = tmp_path / "eval" / "scores.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if scores.exists() and scores.read_text().count("\n") >= 3:
            break
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, (tmp_path / "log").read_text()
    assert 3 <= scores.read_text().count("\n") < 80
    assert not (tmp_path / "eval" / "results.json").exists()
    assert evaluate(trained, video_list, tmp_path / "eval") == 0
    assert_same_evaluation(tmp_path / "eval", reference)


def test_two_processes_give_the_results_of_one(trained, many, tmp_path):
    video_list, reference = many
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m"]
    command += ["evl_hf", "evaluate", "--model", str(trained), str(video_list), "--output", str(tmp_path / "eval")]
    process = start(command, tmp_path / "log")
    try:
        process.wait(timeout=300)
    finally:
        if process.poll() is None:
            for member in [*psutil.Process(process.pid).children(recursive=True), psutil.Process(process.pid)]:
                member.send_signal(signal.SIGKILL)
    log = (tmp_path / "log").read_text()
    assert process.returncode == 0 and "process 1 of 2" in log, log
    assert not list((tmp_path / "eval").glob("scores.jsonl.part-*"))
    assert_same_evaluation(tmp_path / "eval", reference)


def test_a_multi_label_model_reports_map_and_f1(tiny_clip, tmp_path):
    from sklearn.metrics import average_precision_score

    labels = [["run", "jump"], ["jump"], ["swim", "run"], ["run"], ["swim"], ["jump", "swim"]]
    lines = []
    for index, names in enumerate(labels):
        encode_video(tmp_path / f"{index}.mp4", 10, height=32, width=32, seed=index)
        lines.append(json.dumps({"video": f"{index}.mp4", "labels": names}))
    (tmp_path / "list.jsonl").write_text("\n".join(lines) + "\n")
    data = f"--train_file {tmp_path / 'list.jsonl'} --video_root {tmp_path}"
    model = train_tiny(tiny_clip, data, tmp_path / "model", tmp_path / "cache", "--label_column_name labels")
    output = tmp_path / "eval"
    arguments = ["--label_column_name", "labels", "--views", "1x1"]
    assert evaluate(model, tmp_path / "list.jsonl", output, *arguments) == 0
    results = json.loads((output / "results.json").read_text())
    assert "top1" not in results and results["threshold"] == 0.5
    config = EVLForVideoClassification.from_pretrained(model).config
    records = read_scores(output)
    scores = torch.tensor([records[str(tmp_path / f"{i}.mp4")]["scores"] for i in range(len(labels))])
    targets = torch.zeros_like(scores, dtype=torch.long)
    for row, names in enumerate(labels):
        targets[row, [config.label2id[name] for name in names]] = 1
    assert results["map"] == pytest.approx(average_precision_score(targets.numpy(), scores.numpy(), average="macro"))
    assert 0 <= results["f1"] <= 1
    with open(output / "per_class_accuracy.csv") as file:
        rows = list(csv.DictReader(file))
    assert [int(row["videos"]) for row in rows] == targets.sum(dim=0).tolist()
    assert {"average_precision", "f1"} <= set(rows[0])
