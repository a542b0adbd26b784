"""Multi-label training with examples/run_video_classification.py: label lists in JSON lines, CSV and `datasets`
columns, trained with the real Trainer on real encoded videos, its metrics and reports, and the errors of bad input."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, Sequence, Value
from torchcodec.decoders import VideoDecoder
from training_utils import run_video_classification, train_tiny
from transformers import TrainingArguments

from evl_hf import EVLConfig
from evl_hf.testing_utils import encode_video


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from reports import multi_label_metrics  # noqa: E402
from synthetic_data import SYNTHETIC_MOTION_LABELS, generate_synthetic_multi_label_dataset  # noqa: E402


# Every label is in the training split; `swim` is only in the training split.
TRAIN_LABELS = [["run", "jump"], ["jump"], ["swim", "run"], ["run"]]
VALIDATION_LABELS = [["jump", "run"], ["run"]]
MULTI_LABEL = EVLConfig(num_labels=3, problem_type="multi_label_classification")  # what the metrics read of a model


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """Six real H.264 clips, `train/0.mp4` ... `train/3.mp4` and `validation/0.mp4`, `validation/1.mp4`."""
    folder = tmp_path_factory.mktemp("clips")
    for split, labels in [("train", TRAIN_LABELS), ("validation", VALIDATION_LABELS)]:
        (folder / split).mkdir()
        for index in range(len(labels)):
            encode_video(folder / split / f"{index}.mp4", 10, height=32, width=32, seed=index)
    return folder


def write_json_lines(path: Path, split: str, labels: list, column: str = "labels") -> Path:
    rows = [json.dumps({"video": f"{split}/{i}.mp4", column: row}) for i, row in enumerate(labels)]
    path.write_text("\n".join(rows) + "\n")
    return path


def write_csv(path: Path, split: str, labels: list, separator: str = ";") -> Path:
    rows = [f"{split}/{i}.mp4,{separator.join(row)}" for i, row in enumerate(labels)]
    path.write_text("video,label\n" + "\n".join(rows) + "\n")
    return path


@pytest.fixture
def run(tmp_path, tiny_clip, clips):
    """Trains on `clips` with the list files `write` makes for both splits; returns the output folder."""

    def run_script(
        write=write_json_lines,
        args: str = "--label_column_name labels",
        train=TRAIN_LABELS,
        validation=VALIDATION_LABELS,
        suffix: str = ".jsonl",
    ) -> Path:
        train_file = write(tmp_path / f"train{suffix}", "train", train)
        validation_file = write(tmp_path / f"validation{suffix}", "validation", validation)
        data = f"--train_file {train_file} --validation_file {validation_file} --video_root {clips}"
        return train_tiny(tiny_clip, data, tmp_path / "output", tmp_path / "cache", args)

    return run_script


def assert_multi_label_run(output_dir: Path, label_names: list[str]):
    config = json.loads((output_dir / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification"
    assert [config["id2label"][str(i)] for i in range(len(label_names))] == label_names
    metrics = json.loads((output_dir / "eval_results.json").read_text())
    assert {"eval_map", "eval_f1", "eval_f1_micro", "eval_top1_any", "eval_loss"} <= set(metrics)
    assert "eval_accuracy" not in metrics
    report = json.loads((output_dir / "average_precision.json").read_text())
    assert report["labels"] == label_names and len(report["average_precision"]) == len(label_names)
    assert report["map"] == pytest.approx(metrics["eval_map"])  # the same predictions, scored the same way
    assert (output_dir / "average_precision.png").stat().st_size > 0
    assert not (output_dir / "confusion_matrix.json").exists()
    card = (output_dir / "README.md").read_text()
    assert "eval_map" in card and f"average precision of `{label_names[0]}`" in card


# ---- The three input formats --------------------------------------------------------------------------------------


def test_json_lines_with_label_lists_train_a_multi_label_model(run):
    output_dir = run()
    assert_multi_label_run(output_dir, ["jump", "run", "swim"])  # the union of the training labels, sorted
    report = json.loads((output_dir / "average_precision.json").read_text())
    # `swim` has no validation video: its average precision is undefined, and the report says so
    assert report["positives"] == [1, 2, 0] and report["average_precision"][2] is None


def test_csv_with_joined_labels_trains_a_multi_label_model(run):
    assert_multi_label_run(run(write_csv, "", suffix=".csv"), ["jump", "run", "swim"])


def test_the_csv_label_separator_can_be_chosen(run):
    def write(path, split, labels):
        return write_csv(path, split, labels, separator="|")

    assert_multi_label_run(run(write, "--label_separator |", suffix=".csv"), ["jump", "run", "swim"])


def test_a_dataset_column_of_class_label_sequences_trains_a_multi_label_model(tmp_path, tiny_clip, clips):
    # Parquet files keep their `datasets` features, so `load_dataset(folder)` gives back the List(ClassLabel) column.
    names = ["jump", "run", "swim"]
    features = Features({"video": Value("string"), "tags": Sequence(ClassLabel(names=names))})
    for split, labels in [("train", TRAIN_LABELS), ("validation", VALIDATION_LABELS)]:
        rows = {
            "video": [str(clips / split / f"{i}.mp4") for i in range(len(labels))],
            "tags": [[names.index(name) for name in row] for row in labels],
        }
        Dataset.from_dict(rows, features=features).to_parquet(tmp_path / "hub" / "data" / f"{split}.parquet")
    output_dir = train_tiny(
        tiny_clip,
        f"--dataset_name {tmp_path / 'hub'}",
        tmp_path / "output",
        tmp_path / "cache",
        "--label_column_name tags",
    )
    assert_multi_label_run(output_dir, names)


def test_a_label_names_file_gives_the_label_set_and_its_order(run, tmp_path):
    (tmp_path / "names.txt").write_text("swim\nrun\njump\nfly\n")
    output_dir = run(args=f"--label_column_name labels --label_names_file {tmp_path / 'names.txt'}")
    assert_multi_label_run(output_dir, ["swim", "run", "jump", "fly"])


def test_metric_for_best_model_can_be_the_map(run):
    output_dir = run(
        args="--label_column_name labels --do_train --do_eval --eval_strategy steps --eval_steps 1 "
        "--save_strategy steps --save_steps 1 --load_best_model_at_end --metric_for_best_model map"
    )
    state = json.loads((output_dir / "trainer_state.json").read_text())
    assert state["best_metric"] == max(entry["eval_map"] for entry in state["log_history"] if "eval_map" in entry)


# ---- Metrics and loss -----------------------------------------------------------------------------------------------


def test_metrics_on_a_known_case():
    references = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=np.float32)
    probabilities = np.array([[0.9, 0.2, 0.6], [0.3, 0.8, 0.4], [0.7, 0.1, 0.2], [0.8, 0.3, 0.45]])
    logits = np.log(probabilities / (1 - probabilities))
    metrics = multi_label_metrics(logits, references, MULTI_LABEL, threshold=0.5)
    # label 0: scores 0.9 (+), 0.8 (-), 0.7 (+), 0.3 (-): precision 1 at the first positive, 2/3 at the second
    # label 1: 0.8 (+), 0.3 (-), 0.2 (-), 0.1 (+): 1, then 2/4; label 2: 0.6 (+), 0.45 (+): AP 1
    expected_map = ((1 + 2 / 3) / 2 + (1 + 2 / 4) / 2 + 1) / 3
    # above 0.5, per label (tp, fp, fn): 0: (2, 1, 0), F1 4/5; 1: (1, 0, 1), F1 2/3; 2: (1, 0, 1), F1 2/3
    expected_f1, expected_micro = (4 / 5 + 2 / 3 + 2 / 3) / 3, 2 * 4 / (2 * 4 + 1 + 2)
    # top label per video: 0 (true), 1 (true), 0 (true), 0 (false)
    assert metrics == pytest.approx(
        {"map": expected_map, "f1": expected_f1, "f1_micro": expected_micro, "top1_any": 3 / 4}
    )


def test_the_threshold_decides_which_labels_are_predicted():
    references = np.array([[1, 0], [0, 1]], dtype=np.float32)
    logits = np.log(np.array([[0.7 / 0.3, 0.4 / 0.6], [0.2 / 0.8, 0.6 / 0.4]]))  # probabilities 0.7, 0.4; 0.2, 0.6
    assert multi_label_metrics(logits, references, MULTI_LABEL, threshold=0.5)["f1"] == pytest.approx(1.0)
    missed = multi_label_metrics(logits, references, MULTI_LABEL, threshold=0.65)
    assert missed["f1"] == pytest.approx(0.5)  # label 1 missed


def test_multi_view_scores_average_the_sigmoids_and_train_with_the_models_binary_cross_entropy(tiny_clip, tmp_path):
    model = run_video_classification.EVLForVideoClassification.from_clip_pretrained(
        tiny_clip, num_frames=4, decoder_num_layers=2, num_labels=3, problem_type="multi_label_classification"
    ).eval()
    trainer = run_video_classification.VideoClassificationTrainer(
        model=model, args=TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    )
    pixel_values = torch.randn(2, 3, 4, 3, 32, 32)  # (clips, views, T, 3, H, W)
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    with torch.no_grad():
        loss, outputs = trainer.compute_loss(model, {"pixel_values": pixel_values, "labels": labels}, True)
        per_view = model(pixel_values=pixel_values.flatten(0, 1)).logits.view(2, 3, 3).sigmoid()
    mean = per_view.mean(dim=1)
    torch.testing.assert_close(outputs.logits.sigmoid(), mean)
    torch.testing.assert_close(loss, torch.nn.functional.binary_cross_entropy(mean, labels))


# ---- Bad input: a clear error naming the input and what to do -------------------------------------------------------


def test_a_label_outside_the_label_names_file_is_named(run, tmp_path):
    (tmp_path / "names.txt").write_text("run\njump\n")
    with pytest.raises(ValueError, match=r"\['swim'\] are not in --label_names_file .*names.txt"):
        run(args=f"--label_column_name labels --label_names_file {tmp_path / 'names.txt'}")


def test_an_empty_label_list_is_named(run):
    with pytest.raises(ValueError, match=r"train.jsonl: entries \[2\] have an empty 'labels' list"):
        run(train=[["run"], [], ["jump"], ["swim"]])


def test_an_empty_label_cell_of_a_multi_label_csv_is_named(run):
    with pytest.raises(ValueError, match=r"train.csv: entries \[2\] have an empty 'label' list"):
        run(write_csv, "", train=[["run", "jump"], [], ["swim"], ["run"]], suffix=".csv")


def test_a_column_mixing_single_labels_and_lists_is_named(run):
    with pytest.raises(
        ValueError,
        match=r"train.jsonl: 'labels' is a list of labels in some entries and a single "
        r"label in others \(entries \[2, 4\]\)",
    ):
        run(train=[["run", "jump"], "jump", ["swim"], "run"])


def test_splits_mixing_single_labels_and_lists_are_named(run):
    with pytest.raises(ValueError, match="lists of labels in the train split and single labels in the validation"):
        run(validation=["jump", "run"])


@pytest.mark.parametrize("threshold", ["0", "1", "1.5", "-0.1"])
def test_a_threshold_outside_zero_to_one_is_an_error(threshold):
    with pytest.raises(ValueError, match=f"--threshold {float(threshold)}: a probability strictly between 0 and 1"):
        run_video_classification.parse_arguments(["--synthetic_multi_label", "--threshold", threshold])


def test_the_synthetic_multi_label_dataset_cannot_be_mixed_with_data(tmp_path):
    with pytest.raises(ValueError, match="--synthetic_multi_label generates .* leave out --train_dir"):
        run_video_classification.parse_arguments(["--synthetic_multi_label", "--train_dir", str(tmp_path)])


# ---- The embedded multi-label default -----------------------------------------------------------------------------


def test_synthetic_multi_label_selects_its_dataset_and_settings():
    _, data_args, training_args = run_video_classification.parse_arguments(["--synthetic_multi_label"])
    assert data_args.synthetic_multi_label and data_args.label_column_name == "labels"
    assert training_args.output_dir == "outputs/evl-synthetic-multi-label"
    assert training_args.metric_for_best_model == "map"
    # more clips and steps than the single-label default: two objects a clip take longer to learn
    assert (data_args.synthetic_train_videos_per_label, training_args.max_steps) == (900, 1500)


def test_the_synthetic_multi_label_dataset_lists_one_or_two_directions_per_clip(tmp_path):
    sizes = dict(train_videos_per_label=4, validation_videos_per_label=1, num_frames=8, frame_size=32)
    folder = generate_synthetic_multi_label_dataset(tmp_path, **sizes, min_object_size=6, max_object_size=10)
    assert (
        generate_synthetic_multi_label_dataset(tmp_path, **sizes, min_object_size=6, max_object_size=10) == folder
    )  # cached
    rows = [json.loads(line) for line in (folder / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 16 and len((folder / "validation.jsonl").read_text().splitlines()) == 4
    for row in rows:
        assert 1 <= len(row["labels"]) <= 2 and len(set(row["labels"])) == len(row["labels"])
        assert set(row["labels"]) <= set(SYNTHETIC_MOTION_LABELS)
        assert len(VideoDecoder(str(folder / row["video"]))) == 8
    assert {len(row["labels"]) for row in rows} == {1, 2}
