"""`evl-hf prepare-dataset` on miniature copies of Kinetics, Something-Something v2, UCF101 and HMDB51 in their
official formats (tests/official_datasets.py): the lists it writes, what it leaves out, its errors, and training and
`evl-hf predict` reading its output as it is."""

import csv
import json
import logging
import os
import sys
from pathlib import Path

import pytest

from evl_hf import EVLConfig
from evl_hf.commands import main
from evl_hf.commands.prepare_dataset import REPORT_NAME


sys.path.insert(0, str(Path(__file__).parents[1]))
from official_datasets import WRITERS  # noqa: E402
from training_utils import train_tiny  # noqa: E402


def prepare(name, dataset, output, *args) -> int:
    return main(
        [
            "prepare-dataset",
            name,
            "--annotations",
            str(dataset.annotations),
            "--videos",
            str(dataset.videos),
            "--output",
            str(output),
            "--num_workers",
            "1",
            *args,
        ]
    )


def read_rows(path: Path) -> list[tuple[str, str]]:
    with open(path, newline="", encoding="utf-8") as file:
        return [(row["video"], row["label"]) for row in csv.DictReader(file)]


@pytest.fixture(scope="module", params=list(WRITERS))
def prepared(request, tmp_path_factory):
    """`(name, miniature dataset, output folder, exit status)` of prepare-dataset run on each dataset."""
    name = request.param
    root = tmp_path_factory.mktemp(name)
    dataset = WRITERS[name](root / "download")
    status = prepare(name, dataset, root / "lists")
    return name, dataset, root / "lists", status


def test_lists_hold_the_found_videos_with_their_label_names(prepared):
    name, dataset, output, status = prepared
    assert status == 1  # videos were left out
    for split, expected in dataset.expected.items():
        rows = read_rows(output / f"{split}.csv")
        # paths relative to the output folder, as the training script and predict resolve them
        resolved = [
            (os.path.relpath(os.path.normpath(output / video), dataset.videos), label) for video, label in rows
        ]
        assert sorted(resolved) == sorted(expected), split
    assert (output / "label_names.txt").read_text().splitlines() == dataset.label_names


def test_missing_and_unreadable_videos_are_reported_by_split(prepared, capsys):
    name, dataset, output, _ = prepared
    report = [json.loads(line) for line in (output / REPORT_NAME).read_text().splitlines()]
    assert {(item["split"], Path(item["video"]).relative_to(dataset.videos).as_posix()) for item in report} == {
        ("train", dataset.missing),
        ("train", dataset.broken),
    }
    reasons = {Path(item["video"]).relative_to(dataset.videos).as_posix(): item["reason"] for item in report}
    assert reasons[dataset.missing] == "missing" and "Cannot read video" in reasons[dataset.broken]


def test_summary_counts_missing_and_unreadable_videos(tmp_path, capsys):
    dataset = WRITERS["hmdb51"](tmp_path / "download")
    assert prepare("hmdb51", dataset, tmp_path / "lists") == 1
    out, err = capsys.readouterr()
    assert "hmdb51: 3 classes; train: 7 of 9 videos (1 missing, 1 unreadable); validation: 3 of 3 videos" in out
    assert "note: the annotations name 3 classes; hmdb51 has 51" in err
    assert "2 video(s) left out of the lists" in err and dataset.broken.split("/")[1] in err


def test_worker_processes_give_the_same_lists(tmp_path):
    dataset = WRITERS["ucf101"](tmp_path / "download")
    assert prepare("ucf101", dataset, tmp_path / "one") == 1
    assert prepare("ucf101", dataset, tmp_path / "two", "--num_workers", "2") == 1
    for name in ("train.csv", "validation.csv", "label_names.txt", REPORT_NAME):
        assert (tmp_path / "one" / name).read_text() == (tmp_path / "two" / name).read_text()


def test_split_option_picks_the_official_split(tmp_path):
    dataset = WRITERS["hmdb51"](tmp_path / "download")
    assert prepare("hmdb51", dataset, tmp_path / "lists", "--split", "2") == 1
    validation = read_rows(tmp_path / "lists" / "validation.csv")
    assert sorted(Path(video).name for video, _ in validation) == [
        f"{name}_video_2.avi" for name in sorted(dataset.label_names) if f"{name}/{name}_video_2.avi" != dataset.broken
    ]


def test_a_wrong_video_folder_is_an_error_and_writes_nothing(tmp_path, capsys):
    dataset = WRITERS["ssv2"](tmp_path / "download")
    wrong = dataset._replace(videos=dataset.annotations)
    with pytest.raises(SystemExit) as error:
        prepare("ssv2", wrong, tmp_path / "lists")
    assert error.value.code == 2
    err = capsys.readouterr().err
    assert "found only 0 of 9 train, 0 of 3 validation videos" in err and "{id}.webm" in err
    assert not (tmp_path / "lists").exists()


def test_annotations_of_another_dataset_are_an_error(tmp_path, capsys):
    dataset = WRITERS["ucf101"](tmp_path / "download")
    with pytest.raises(SystemExit) as error:
        prepare("kinetics400", dataset, tmp_path / "lists")
    assert error.value.code == 2
    assert "train.csv: no such file; --annotations must be the Kinetics folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        prepare("kinetics400", dataset, tmp_path / "lists", "--split", "2")
    assert "kinetics400 has one official train/validation split" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # refused while parsing, before any video is looked at
        prepare("ucf101", dataset, tmp_path / "lists", "--num_workers", "0")
    assert "argument --num_workers: must be at least 1, got 0" in capsys.readouterr().err


def test_predict_reads_the_validation_list(prepared, model_folder, tmp_path):
    name, dataset, output, _ = prepared
    results = tmp_path / "predictions.jsonl"
    assert (
        main(["predict", "--model", str(model_folder), str(output / "validation.csv"), "--output", str(results)]) == 0
    )
    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert sorted(os.path.normpath(record["video"]) for record in records) == sorted(
        str(dataset.videos / video) for video, _ in dataset.expected["validation"]
    )
    assert all("error" not in record for record in records)


@pytest.mark.parametrize("name", list(WRITERS))
def test_training_runs_ten_steps_on_the_prepared_lists(name, tiny_clip, tmp_path, caplog):
    dataset = WRITERS[name](tmp_path / "download")
    lists = tmp_path / "lists"
    prepare(name, dataset, lists)
    flip = "--horizontal_flip True" if name == "ssv2" else ""
    data = (
        f"--train_file {lists / 'train.csv'} --validation_file {lists / 'validation.csv'} "
        f"--label_names_file {lists / 'label_names.txt'}"
    )
    with caplog.at_level(logging.WARNING):
        output = train_tiny(tiny_clip, data, tmp_path / "out", tmp_path / "cache", f"--max_steps 10 {flip}")
    state = json.loads((output / "trainer_state.json").read_text())
    assert state["global_step"] == 10
    config = EVLConfig.from_pretrained(output)
    assert [config.id2label[index] for index in range(config.num_labels)] == dataset.label_names
    # every validation video of the list was scored, under the official label names
    confusion = json.loads((output / "confusion_matrix.json").read_text())
    assert confusion["labels"] == dataset.label_names
    assert sum(map(sum, confusion["matrix"])) == len(dataset.expected["validation"])
    warned = [record.message for record in caplog.records if "--horizontal_flip with labels" in record.message]
    assert bool(warned) == (name == "ssv2")
