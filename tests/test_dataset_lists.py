"""The readers of the official annotation files of Kinetics, Something-Something v2, UCF101 and HMDB51, on miniature
copies in those formats (tests/official_datasets.py), and their errors for files that are not what their name says."""

import json
import sys
from pathlib import Path

import pytest

from evl_hf.dataset_lists import read_dataset, read_hmdb51, read_kinetics, read_ssv2, read_ucf101, video_problem


sys.path.insert(0, str(Path(__file__).parent))
from official_datasets import write_hmdb51, write_kinetics, write_ssv2, write_ucf101  # noqa: E402


def pairs(rows: list[dict]) -> list[tuple[str, str]]:
    return [(row["video"], row["label"]) for row in rows]


def assert_lists(lists, dataset):
    assert lists.label_names == dataset.label_names
    for split, rows in lists.splits.items():
        kept = sorted(pair for pair in pairs(rows) if pair[0] not in (dataset.missing, dataset.broken))
        assert kept == sorted(dataset.expected[split]), split
    assert {dataset.missing, dataset.broken} <= {row["video"] for row in lists.splits["train"]}


def test_kinetics_labels_are_the_sorted_class_names_and_clips_are_found_with_any_extension(tmp_path):
    dataset = write_kinetics(tmp_path)
    lists = read_kinetics(dataset.annotations, dataset.videos)
    assert_lists(lists, dataset)
    assert lists.label_names == ["abseiling", "passing American football (in game)", "zumba"]
    assert any(row["video"].endswith(".mkv") for row in lists.splits["train"])
    assert all(row["video"].startswith("val/") for row in lists.splits["validation"])  # in class subfolders
    assert dataset.missing.endswith(".mp4")  # a clip not found is listed under the usual name


def test_ssv2_labels_are_templates_without_brackets_in_labels_json_order(tmp_path):
    dataset = write_ssv2(tmp_path)
    lists = read_ssv2(dataset.annotations)
    assert_lists(lists, dataset)
    assert lists.label_names == [
        "Pushing something from right to left",
        "Moving something up",
        "Pushing something from left to right",
    ]
    assert lists.splits["train"][0] == {"video": "1000.webm", "label": "Pushing something from right to left"}


def test_ucf101_indices_count_from_one_and_test_labels_come_from_the_folder(tmp_path):
    dataset = write_ucf101(tmp_path)
    lists = read_ucf101(dataset.annotations, split=1)
    assert_lists(lists, dataset)
    assert lists.label_names == ["Basketball", "ApplyEyeMakeup", "HandstandPushups"]  # classInd.txt's order
    # index 1 in trainlist01.txt is Basketball, the first class of classInd.txt
    first = (dataset.annotations / "trainlist01.txt").read_text().splitlines()[0]
    assert first.endswith(" 1") and lists.splits["train"][0]["label"] == "Basketball"


def test_ucf101_split_two_tests_other_videos(tmp_path):
    dataset = write_ucf101(tmp_path)
    validation = {row["video"] for row in read_ucf101(dataset.annotations, split=2).splits["validation"]}
    assert validation == {
        f"{name}/v_{name.replace('Handstand', 'HandStand')}_g02_c01.avi" for name in dataset.label_names
    }


def test_ucf101_zero_based_indices_are_refused(tmp_path):
    dataset = write_ucf101(tmp_path)
    path = dataset.annotations / "trainlist01.txt"
    lines = [line.rsplit(" ", 1) for line in path.read_text().splitlines()]
    path.write_text("".join(f"{video} {int(index) - 1}\n" for video, index in lines))
    with pytest.raises(ValueError, match=r"trainlist01.txt, line 1: class index 0 .* count from 1"):
        read_ucf101(dataset.annotations)


def test_hmdb51_split_codes_make_train_test_and_unused(tmp_path):
    dataset = write_hmdb51(tmp_path)
    lists = read_hmdb51(dataset.annotations, split=1)
    assert_lists(lists, dataset)
    videos = {row["video"] for rows in lists.splits.values() for row in rows}
    assert "sit/sit_video_4.avi" not in videos  # code 0: unused
    split3 = read_hmdb51(dataset.annotations, split=3).splits["validation"]
    assert sorted(pairs(split3)) == sorted((f"{name}/{name}_video_3.avi", name) for name in dataset.label_names)


def test_kinetics_refuses_a_csv_without_its_columns(tmp_path):
    dataset = write_kinetics(tmp_path)
    (dataset.annotations / "val.csv").write_text("video,label\nclip.mp4,zumba\n")
    with pytest.raises(ValueError, match=r"val.csv is not a Kinetics annotation file: it has no youtube_id"):
        read_kinetics(dataset.annotations, dataset.videos)


def test_kinetics_refuses_a_test_list_without_labels(tmp_path):
    dataset = write_kinetics(tmp_path)
    (dataset.annotations / "val.csv").write_text("label,youtube_id,time_start,time_end,split\n,abc,10,20,test\n")
    with pytest.raises(ValueError, match=r"val.csv, line 2: no label"):
        read_kinetics(dataset.annotations, dataset.videos)


def test_ssv2_refuses_the_test_list_as_validation_json(tmp_path):
    dataset = write_ssv2(tmp_path)
    (dataset.annotations / "validation.json").write_text(json.dumps([{"id": "5"}, {"id": "6"}]))
    with pytest.raises(ValueError, match=r'validation.json, entry 1: no "template".*test.json'):
        read_ssv2(dataset.annotations)


@pytest.mark.parametrize(
    "labels", [["a", "b"], {"Moving something up": "1"}, {"Moving something up": "zero"}], ids=["list", "gap", "word"]
)
def test_ssv2_refuses_a_labels_json_that_is_not_the_label_map(tmp_path, labels):
    dataset = write_ssv2(tmp_path)
    (dataset.annotations / "labels.json").write_text(json.dumps(labels))
    with pytest.raises(ValueError, match=r"labels.json is not the Something-Something v2 label map"):
        read_ssv2(dataset.annotations)


def test_ssv2_refuses_a_template_labels_json_does_not_name(tmp_path):
    dataset = write_ssv2(tmp_path)
    entries = json.loads((dataset.annotations / "train.json").read_text())
    entries[2]["template"] = "Dropping [something] into [something]"
    (dataset.annotations / "train.json").write_text(json.dumps(entries))
    with pytest.raises(ValueError, match=r"train.json, entry 3: the template 'Dropping \[something\]"):
        read_ssv2(dataset.annotations)


def test_hmdb51_refuses_a_folder_without_split_files_and_unknown_codes(tmp_path):
    dataset = write_hmdb51(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"holds no HMDB51 split files"):
        read_hmdb51(dataset.videos)
    path = dataset.annotations / "sit_test_split1.txt"
    path.write_text(path.read_text().replace(" 2 ", " 3 "))
    with pytest.raises(ValueError, match=r"sit_test_split1.txt, line 2: expected `video.avi 1\|2\|0`"):
        read_hmdb51(dataset.annotations)


def test_ucf101_refuses_a_class_index_file_that_is_not_one(tmp_path):
    dataset = write_ucf101(tmp_path)
    (dataset.annotations / "classInd.txt").write_text("ApplyEyeMakeup\nBasketball\n")
    with pytest.raises(ValueError, match=r"classInd.txt, line 1: expected `1 ClassName`"):
        read_ucf101(dataset.annotations)
    with pytest.raises(FileNotFoundError, match=r"classInd.txt: no such file; --annotations must be UCF101's"):
        read_ucf101(tmp_path / "elsewhere")


def test_read_dataset_checks_the_split(tmp_path):
    with pytest.raises(ValueError, match="one official train/validation split"):
        read_dataset("kinetics400", tmp_path, tmp_path, split=1)
    with pytest.raises(ValueError, match="splits 1, 2 and 3, not 4"):
        read_dataset("hmdb51", tmp_path, tmp_path, split=4)


def test_video_problem_tells_missing_from_unreadable(tmp_path):
    dataset = write_hmdb51(tmp_path)
    assert video_problem(dataset.videos / dataset.missing) == "missing"
    assert "Cannot read video" in video_problem(dataset.videos / dataset.broken)
    assert video_problem(dataset.videos / dataset.expected["train"][0][0]) is None


def test_kinetics_takes_validate_csv_and_its_folder_when_there_is_no_val_csv(tmp_path):
    dataset = write_kinetics(tmp_path)
    (dataset.annotations / "val.csv").rename(dataset.annotations / "validate.csv")
    (dataset.videos / "val").rename(dataset.videos / "validate")
    validation = read_kinetics(dataset.annotations, dataset.videos).splits["validation"]
    expected = [(video.replace("val/", "validate/", 1), label) for video, label in dataset.expected["validation"]]
    assert sorted(pairs(validation)) == sorted(expected)
