"""examples/run_video_classification.py, end to end on tiny generated videos and a tiny random CLIP backbone."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from torchcodec.encoders import VideoEncoder
from training_utils import ROOT, SCRIPT, run_video_classification, train_tiny
from transformers import TrainingArguments, pipeline

import evl_hf  # noqa: F401  (registers EVL with the Auto classes, for the pipeline)
from evl_hf.video_processing_evl import EVLVideoProcessor
from evl_hf.video_utils import VideoDecodingError, sample_frame_indices


# isort: split
import video_files  # examples/, on sys.path once training_utils is imported (above, hence the split)


@pytest.fixture
def run(tmp_path, tiny_clip, videos):
    """Runs the script in this process with small settings; returns the output folder."""

    def run_script(args: str = "", data: str | None = None, output_dir: Path | None = None) -> Path:
        data = data or f"--train_dir {videos / 'train'} --validation_dir {videos / 'validation'}"
        return train_tiny(tiny_clip, data, output_dir or tmp_path / "output", tmp_path / "cache", args)

    return run_script


def write_clip(path: Path, num_frames: int = 10, height: int = 32, width: int = 32) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = torch.randint(0, 256, (num_frames, 3, height, width), dtype=torch.uint8)
    VideoEncoder(frames, frame_rate=10).to_file(str(path), codec="libx264", pixel_format="yuv420p")
    return path


# ---- End to end -----------------------------------------------------------------------------------------------


def test_trains_and_writes_model_processors_metrics_and_model_card(run, tiny_clip):
    output_dir = run()
    written = {path.name for path in output_dir.iterdir()}
    assert {
        "model.safetensors",
        "config.json",
        "video_preprocessor_config.json",
        "preprocessor_config.json",
        "train_results.json",
        "eval_results.json",
        "all_results.json",
        "README.md",
        "confusion_matrix.png",
    } <= written
    metrics = json.loads((output_dir / "eval_results.json").read_text())
    # the confusion matrix counts the 8 validation clips; its diagonal is the top-1 accuracy
    confusion = json.loads((output_dir / "confusion_matrix.json").read_text())
    matrix = torch.tensor(confusion["matrix"])
    assert confusion["labels"] == ["down", "left", "right", "up"] and matrix.sum() == 8
    assert metrics["eval_accuracy"] == pytest.approx(matrix.trace().item() / 8)
    assert metrics["eval_top5_accuracy"] == 1.0  # 4 labels: every clip has its label among the top 5
    card = (output_dir / "README.md").read_text()
    assert "pipeline_tag: video-classification" in card
    assert tiny_clip in card and "eval_accuracy" in card and "eval_top5_accuracy" in card
    assert "import evl_hf" in card and "trust_remote_code=True" in card  # both ways to load the model


def test_saved_processor_follows_the_backbone_and_the_sampling_arguments(run):
    output_dir = run("--max_steps 1 --do_train --frame_sampling segment")
    processor = json.loads((output_dir / "video_preprocessor_config.json").read_text())
    assert processor["crop_size"] == {"height": 32, "width": 32}
    assert processor["size"] == {"shortest_edge": 32}
    assert (processor["num_frames"], processor["frame_stride"], processor["frame_sampling"]) == (4, 2, "segment")


def test_training_continues_from_an_evl_checkpoint(run, tmp_path, videos):
    first = run("--max_steps 1 --do_train", output_dir=tmp_path / "first")
    run_video_classification.main(
        f"""
        --model_name_or_path {first} --train_dir {videos / "train"} --output_dir {tmp_path / "second"}
        --cache_dir {tmp_path / "cache"} --max_steps 1 --per_device_train_batch_size 2 --save_strategy no
        """.split()
    )
    config = json.loads((tmp_path / "second" / "config.json").read_text())
    assert config["model_type"] == "evl" and config["num_frames"] == 4
    assert sorted(config["label2id"]) == ["down", "left", "right", "up"]


def test_continuing_with_another_num_frames_interpolates_the_trained_temporal_embedding(run, tmp_path, videos):
    from evl_hf import EVLForVideoClassification

    first = run("--max_steps 2 --do_train", output_dir=tmp_path / "first")
    run_video_classification.main(
        f"""
        --model_name_or_path {first} --train_dir {videos / "train"} --output_dir {tmp_path / "second"}
        --cache_dir {tmp_path / "cache"} --num_frames 6 --frame_stride 1 --max_steps 1 --learning_rate 0
        --per_device_train_batch_size 2 --save_strategy no --dataloader_num_workers 0 --report_to none
        """.split()
    )
    trained = EVLForVideoClassification.from_pretrained(first).evl.decoder.layers[0].temporal_pos_embed
    continued = EVLForVideoClassification.from_pretrained(tmp_path / "second")
    assert continued.config.num_frames == 6
    table = continued.evl.decoder.layers[0].temporal_pos_embed
    expected = torch.nn.functional.interpolate(trained.T[None], size=6, mode="linear", align_corners=False)[0].T
    assert trained.abs().sum() > 0 and table.shape == (6, trained.shape[1])
    assert torch.allclose(table, expected, atol=1e-6)  # learning rate 0: the interpolated table, not a fresh one


def test_default_run_output_loads_in_the_video_classification_pipeline(tmp_path):
    output_dir = tmp_path / "default"
    # No data or model argument: the embedded synthetic-motion run, shortened.
    run_video_classification.main(
        f"""
        --synthetic_data_dir {tmp_path / "synthetic"} --synthetic_train_videos_per_label 2
        --synthetic_validation_videos_per_label 1 --max_steps 1 --per_device_train_batch_size 2
        --dataloader_num_workers 0 --output_dir {output_dir} --cache_dir {tmp_path / "cache"} --disable_tqdm True
        """.split()
    )
    classifier = pipeline("video-classification", model=str(output_dir))
    video = next((tmp_path / "synthetic").glob("*/validation/up/*.mp4"))
    predictions = classifier(str(video), top_k=4)
    assert sorted(p["label"] for p in predictions) == ["down", "left", "right", "up"]
    assert sum(p["score"] for p in predictions) == pytest.approx(1.0, abs=1e-4)


def test_without_arguments_the_embedded_default_is_used():
    model_args, data_args, training_args = run_video_classification.parse_arguments([])
    assert model_args.model_name_or_path is None and data_args.train_dir is None
    assert run_video_classification.is_embedded_default(model_args, data_args)
    assert training_args.output_dir == "outputs/evl-synthetic-motion"
    assert (training_args.do_train, training_args.do_eval) == (True, True)
    assert data_args.horizontal_flip is False  # it would swap "left" and "right"


def test_embedded_defaults_do_not_apply_once_data_is_given():
    model_args, data_args, training_args = run_video_classification.parse_arguments(["--train_dir", "videos"])
    assert training_args.output_dir != "outputs/evl-synthetic-motion" and data_args.frame_stride is None
    assert data_args.train_dir == "videos" and not run_video_classification.is_embedded_default(model_args, data_args)


def test_arguments_can_come_from_a_json_file(tmp_path):
    path = tmp_path / "args.json"
    path.write_text(json.dumps({"train_dir": "videos", "output_dir": "out", "use_temporal_conv": False}))
    model_args, data_args, training_args = run_video_classification.parse_arguments([str(path)])
    assert (data_args.train_dir, training_args.output_dir, model_args.use_temporal_conv) == ("videos", "out", False)


def test_temporal_modules_can_be_switched_off(run):
    output_dir = run(
        "--max_steps 1 --do_train "
        "--use_temporal_conv False --use_temporal_pos_embed False --use_temporal_cross_attention False"
    )
    config = json.loads((output_dir / "config.json").read_text())
    switches = ("use_temporal_conv", "use_temporal_pos_embed", "use_temporal_cross_attention")
    assert not any(config[switch] for switch in switches)


# ---- Data ------------------------------------------------------------------------------------------------------


def test_a_training_clip_depends_only_on_seed_epoch_and_index(videos):
    processor = EVLVideoProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, num_frames=4)
    paths = sorted(str(p) for p in (videos / "train").glob("*/*.mp4"))
    rows = Dataset.from_dict({"video": paths, "labels": [0] * len(paths)})

    def clip(epoch, index):
        dataset = run_video_classification.VideoClipDataset(rows, "video", processor, train=True)
        dataset.set_epoch(epoch)
        return dataset[index]["pixel_values"]

    torch.manual_seed(123)  # the global generator must not matter
    assert torch.equal(clip(0, 3), clip(0, 3))
    assert not torch.equal(clip(0, 3), clip(1, 3))


def test_kinetics_style_list_is_read_relative_to_the_video_root(tmp_path):
    listing = tmp_path / "train.txt"
    listing.write_text("abseiling/clip one.mp4 0\n\n# a comment\nzumba/clip_2.mp4 399\n")
    dataset = video_files.load_video_list(str(listing), "/data/k400", "video", "label")
    assert dataset["video"] == ["/data/k400/abseiling/clip one.mp4", "/data/k400/zumba/clip_2.mp4"]
    assert dataset["label"] == [0, 399]


def test_a_malformed_line_of_a_list_names_the_file_and_line(tmp_path):
    listing = tmp_path / "val.txt"
    listing.write_text("a.mp4 1\nb.mp4 walking\n")
    with pytest.raises(ValueError, match=r"val.txt, line 2"):
        video_files.load_video_list(str(listing), None, "video", "label")


def test_trains_from_a_kinetics_style_list(run, tmp_path, videos):
    label_index = {"down": 0, "left": 1, "right": 2, "up": 3}
    paths = sorted((videos / "train").glob("*/*.mp4"))
    lines = [f"{path.parent.name}/{path.name} {label_index[path.parent.name]}" for path in paths]
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n")
    output_dir = run(
        "--max_steps 1 --do_train",
        data=f"--train_file {tmp_path / 'train.txt'} --video_root {videos / 'train'}",
    )
    config = json.loads((output_dir / "config.json").read_text())
    assert config["id2label"] == {"0": "0", "1": "1", "2": "2", "3": "3"}


def test_a_label_names_file_names_the_indices_of_a_list(run, tmp_path, videos):
    label_index = {"down": 0, "left": 1, "right": 2, "up": 3}
    paths = sorted((videos / "train").glob("*/*.mp4"))
    lines = [f"{path.parent.name}/{path.name} {label_index[path.parent.name]}\n" for path in paths]
    (tmp_path / "train.txt").write_text("".join(lines))
    (tmp_path / "names.txt").write_text("down\nleft\nright\nup\n")
    output_dir = run(
        f"--max_steps 1 --do_train --label_names_file {tmp_path / 'names.txt'}",
        data=f"--train_file {tmp_path / 'train.txt'} --video_root {videos / 'train'}",
    )
    config = json.loads((output_dir / "config.json").read_text())
    assert config["id2label"] == {"0": "down", "1": "left", "2": "right", "3": "up"}


def test_a_half_precision_backbone_trains_and_is_saved_in_float32(run):
    output_dir = run("--max_steps 1 --do_train --backbone_dtype bfloat16")
    from safetensors.torch import load_file

    weights = load_file(str(output_dir / "model.safetensors"))
    assert {tensor.dtype for tensor in weights.values() if tensor.is_floating_point()} == {torch.float32}
    assert "Backbone trained in bfloat16 and saved in float32" in (output_dir / "README.md").read_text()


def test_an_int8_frozen_backbone_trains_and_checkpoints_hold_the_float32_backbone(run, tiny_clip):
    pytest.importorskip("torchao")
    from safetensors.torch import load_file

    output_dir = run("--do_train --backbone_dtype int8 --save_strategy steps --save_steps 1")
    clip = load_file(str(next(Path(tiny_clip).glob("*.safetensors"))))
    for folder in (output_dir, output_dir / "checkpoint-1"):
        weights = load_file(str(folder / "model.safetensors"))
        backbone = {name.removeprefix("evl."): tensor for name, tensor in weights.items() if ".vision_model." in name}
        assert backbone and all(torch.equal(tensor, clip[name]) for name, tensor in backbone.items() if name in clip)
        assert {tensor.dtype for tensor in weights.values() if tensor.is_floating_point()} == {torch.float32}
    assert "Backbone trained in int8 and saved in float32" in (output_dir / "README.md").read_text()


def test_an_int8_backbone_cannot_be_fine_tuned(run):
    pytest.importorskip("torchao")
    with pytest.raises(ValueError, match="--backbone_dtype int8 quantizes a frozen backbone"):
        run("--do_train --backbone_dtype int8 --freeze_backbone False")


def test_trains_from_a_csv_file_with_named_columns(run, tmp_path, videos):
    paths = sorted((videos / "train").glob("*/*.mp4"))
    rows = [f"{path.parent.name}/{path.name},{path.parent.name}" for path in paths]
    (tmp_path / "train.csv").write_text("path,action\n" + "\n".join(rows) + "\n")
    output_dir = run(
        "--max_steps 1 --do_train --video_column_name path --label_column_name action",
        data=f"--train_file {tmp_path / 'train.csv'} --video_root {videos / 'train'}",
    )
    assert sorted(json.loads((output_dir / "config.json").read_text())["label2id"]) == ["down", "left", "right", "up"]


def test_trains_from_a_dataset_loaded_by_name(run, videos):
    # A local folder stands in for a Hub dataset: `load_dataset` finds its train and validation splits by name.
    output_dir = run("--max_steps 1", data=f"--dataset_name {videos}")
    confusion = json.loads((output_dir / "confusion_matrix.json").read_text())
    assert confusion["labels"] == ["down", "left", "right", "up"]
    assert sum(map(sum, confusion["matrix"])) == 8  # every validation clip


def test_evaluation_matches_the_saved_video_processor(tmp_path):
    processor = EVLVideoProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, num_frames=4)
    path = str(write_clip(tmp_path / "wide.mp4", num_frames=40, height=36, width=64))
    rows = Dataset.from_dict({"video": [path], "labels": [0]})
    clip = run_video_classification.VideoClipDataset(rows, "video", processor, train=False)[0]["pixel_values"]
    expected = processor(videos=path, return_tensors="pt")["pixel_values"][0]
    torch.testing.assert_close(clip, expected, atol=1e-5, rtol=0)


def test_multi_view_evaluation_gives_temporal_and_spatial_views(tmp_path):
    # Frame t has green level 4t everywhere, and red rising from left to right: views are told apart by colour.
    num_frames, height, width = 60, 32, 64
    green = (torch.arange(num_frames) * 4).view(-1, 1, 1).expand(-1, height, width)
    red = torch.linspace(0, 255, width).view(1, 1, -1).expand(num_frames, height, -1)
    frames = torch.stack([red, green, torch.zeros_like(red)], dim=1).to(torch.uint8)
    path = tmp_path / "views.mp4"
    VideoEncoder(frames, frame_rate=10).to_file(str(path), codec="libx264", pixel_format="yuv444p", crf=0)

    processor = EVLVideoProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, num_frames=4, frame_stride=4
    )
    rows = Dataset.from_dict({"video": [str(path)], "labels": [0]})
    dataset = run_video_classification.VideoClipDataset(
        rows, "video", processor, train=False, num_clips=2, num_crops=3
    )
    pixel_values = dataset[0]["pixel_values"]
    assert pixel_values.shape == (6, 4, 3, 32, 32)  # (spatial views x temporal views, T, 3, H, W)
    views = pixel_values.view(3, 2, 4, 3, 32, 32)
    mean, std = torch.tensor(processor.image_mean), torch.tensor(processor.image_std)
    levels = (views.mean(dim=(-2, -1)) * std + mean) * 255  # (spatial, temporal, T, 3) mean colour per frame
    for temporal_view in range(2):
        expected = sample_frame_indices(num_frames, 4, frame_stride=4, num_clips=2, clip_index=temporal_view)
        torch.testing.assert_close(levels[0, temporal_view, :, 1], torch.tensor(expected) * 4.0, atol=3, rtol=0)
    red = levels[:, 0, 0, 0]  # left, centre, right crop
    assert red[0] < red[1] < red[2]


def test_multi_view_scores_average_the_softmax_over_views(tiny_clip, tmp_path):
    model = run_video_classification.EVLForVideoClassification.from_clip_pretrained(
        tiny_clip, num_frames=4, decoder_num_layers=2, num_labels=5
    ).eval()
    trainer = run_video_classification.VideoClassificationTrainer(
        model=model, args=TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    )
    pixel_values = torch.randn(2, 3, 4, 3, 32, 32)  # (clips, views, T, 3, H, W)
    labels = torch.tensor([1, 4])
    with torch.no_grad():
        inputs = {"pixel_values": pixel_values, "labels": labels}
        loss, outputs = trainer.compute_loss(model, inputs, return_outputs=True)
        per_view = model(pixel_values=pixel_values.flatten(0, 1)).logits.view(2, 3, 5).softmax(dim=-1)
    torch.testing.assert_close(outputs.logits.exp(), per_view.mean(dim=1))
    torch.testing.assert_close(loss, -per_view.mean(dim=1)[torch.arange(2), labels].log().mean())


# ---- Bad input: a clear error before training, naming what is wrong -----------------------------------------------


def test_a_missing_data_folder_is_named(run, tmp_path, videos):
    with pytest.raises(FileNotFoundError, match="no_such_folder"):
        run(data=f"--train_dir {tmp_path / 'no_such_folder'} --validation_dir {videos / 'validation'}")


def test_a_missing_list_file_is_named(run, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        run(data=f"--train_file {tmp_path / 'missing.csv'}")


def test_a_folder_without_videos_is_named(run, tmp_path, videos):
    (tmp_path / "empty" / "left").mkdir(parents=True)
    (tmp_path / "empty" / "left" / "notes.txt").write_text("not a video")
    with pytest.raises(ValueError, match="empty.*holds no video files"):
        run(data=f"--train_dir {tmp_path / 'empty'} --validation_dir {videos / 'validation'}")


def test_a_label_column_that_does_not_exist_is_named(run):
    with pytest.raises(ValueError, match="'action' is not a column"):
        run("--label_column_name action")


def test_a_validation_label_training_never_saw_is_named(run, tmp_path, videos):
    for label in ("left", "right"):
        shutil.copytree(videos / "train" / label, tmp_path / "train" / label)
    for label in ("left", "jump"):
        shutil.copytree(videos / "validation" / "left", tmp_path / "validation" / label)
    with pytest.raises(ValueError, match=r"never has: \['jump'\]"):
        run(data=f"--train_dir {tmp_path / 'train'} --validation_dir {tmp_path / 'validation'}")


def test_push_to_hub_offline_fails_before_any_work(run, tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match="offline"):
        run("--push_to_hub True")
    assert not (tmp_path / "output").exists()


# ---- Robustness ----------------------------------------------------------------------------------------------------


@pytest.fixture
def train_dir_with_a_broken_video(tmp_path, videos) -> Path:
    """The 8 training clips plus `left/broken.mp4`, which is text."""
    train_dir = tmp_path / "train_with_broken"
    shutil.copytree(videos / "train", train_dir)
    (train_dir / "left" / "broken.mp4").write_text("this is not a video")
    return train_dir


def test_an_undecodable_training_video_is_skipped_named_and_counted(run, train_dir_with_a_broken_video, caplog):
    output_dir = run(
        "--max_steps 1 --per_device_train_batch_size 9 --max_skipped_fraction 0.5 --do_train",
        data=f"--train_dir {train_dir_with_a_broken_video}",
    )
    assert json.loads((output_dir / "train_results.json").read_text())["train_skipped_videos"] == 1
    assert "broken.mp4" in caplog.text


def test_too_many_undecodable_videos_stop_the_run(run, train_dir_with_a_broken_video):
    # 1 of 9 videos is above the default 5%.
    with pytest.raises(RuntimeError, match=r"broken\.mp4"):
        run(
            "--max_steps 1 --per_device_train_batch_size 9 --do_train",
            data=f"--train_dir {train_dir_with_a_broken_video}",
        )


def test_a_resumed_run_ends_like_an_uninterrupted_one(run, tmp_path):
    # 8 clips in batches of 3: 3 steps per epoch, so the resumed run starts mid-way and crosses an epoch boundary.
    args = (
        "--max_steps 6 --per_device_train_batch_size 3 --save_strategy steps --save_steps 4 --do_train "
        "--dataloader_num_workers 1 --seed 7"
    )
    uninterrupted = run(args, output_dir=tmp_path / "uninterrupted")
    # An interrupted run leaves its output folder with the last checkpoint; continue from there.
    interrupted = tmp_path / "interrupted"
    shutil.copytree(uninterrupted / "checkpoint-4", interrupted / "checkpoint-4")
    resumed = run(f"{args} --resume_from_checkpoint {interrupted / 'checkpoint-4'}", output_dir=interrupted)

    def last_logged_step(output_dir):
        state = json.loads((output_dir / "trainer_state.json").read_text())
        return state["global_step"], [entry for entry in state["log_history"] if "loss" in entry][-1]

    (steps, entry), (resumed_steps, resumed_entry) = last_logged_step(uninterrupted), last_logged_step(resumed)
    assert steps == resumed_steps == 6
    assert resumed_entry["step"] == entry["step"] == 6
    assert resumed_entry["loss"] == pytest.approx(entry["loss"], abs=1e-6)


# ---- Distributed ---------------------------------------------------------------------------------------------------


def test_two_processes_evaluate_every_validation_clip_exactly_once(tmp_path, tiny_clip, videos):
    # 5 validation clips over 2 processes in batches of 2: the last batch is padded with repeats, which must not count.
    validation_dir = tmp_path / "validation"
    for label, count in {"left": 2, "right": 1, "up": 1, "down": 1}.items():
        for path in sorted((videos / "validation" / label).glob("*.mp4"))[:count]:
            (validation_dir / label).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, validation_dir / label / path.name)
    output_dir = tmp_path / "output"
    # accelerate's `--cpu` starts several processes only through MPI; its torchrun launcher (`--multi_gpu`) with
    # `--use_cpu True` gives processes on the CPU that talk through gloo.
    command = f"""
        {sys.executable} -m accelerate.commands.launch --multi_gpu --num_processes 2 --num_machines 1
        --mixed_precision no --dynamo_backend no {SCRIPT} --use_cpu True --ddp_timeout 120
        --model_name_or_path {tiny_clip} --train_dir {videos / "train"} --validation_dir {validation_dir}
        --output_dir {output_dir} --cache_dir {tmp_path / "cache"} --num_frames 4 --frame_stride 2
        --decoder_num_layers 2 --max_steps 2 --per_device_train_batch_size 2 --per_device_eval_batch_size 2
        --num_temporal_views 2 --num_spatial_views 3 --save_strategy no --dataloader_num_workers 0 --disable_tqdm True
    """.split()
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=400, env=environment, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert re.search(r"Process rank: 1, device: cpu\S*, world size: 2", result.stdout + result.stderr)

    confusion = json.loads((output_dir / "confusion_matrix.json").read_text())
    rows = dict(zip(confusion["labels"], (sum(row) for row in confusion["matrix"])))
    assert rows == {"down": 1, "left": 2, "right": 1, "up": 1}


def test_the_embedded_default_does_not_warn_about_its_random_backbone(tmp_path, caplog):
    run_video_classification.main(
        f"""
        --synthetic_data_dir {tmp_path / "synthetic"} --synthetic_train_videos_per_label 1
        --synthetic_validation_videos_per_label 1 --max_steps 1 --per_device_train_batch_size 2 --do_eval False
        --dataloader_num_workers 0 --output_dir {tmp_path / "out"} --cache_dir {tmp_path / "cache"} --disable_tqdm True
        """.split()
    )
    assert "No --model_name_or_path" not in caplog.text


def test_a_broken_video_stored_as_bytes_gets_the_diagnosis_of_a_broken_file():
    rows = Dataset.from_dict({"video": [{"bytes": b"not a video, only text\n" * 50, "path": None}], "labels": [0]})
    processor = EVLVideoProcessor(
        num_frames=4, frame_stride=2, size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    dataset = run_video_classification.VideoClipDataset(rows, "video", processor, train=False)
    with pytest.raises(VideoDecodingError, match=r"row 0.*it is a text file"):
        dataset[0]
