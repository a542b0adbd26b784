"""`--streaming`: examples/run_video_classification.py trained from WebDataset shards of generated videos (examples/
streaming.py), in this process and with real processes: evaluation, broken videos, bad shards, exact resumption."""

import io
import json
import os
import re
import shutil
import signal
import sys
import tarfile
from pathlib import Path

import pytest

# training_utils puts examples/ on sys.path; the tiny CLIP and video fixtures come from conftest.py
from training_utils import SCRIPT, logged_steps, run_video_classification, start, wait_for


# isort: split
from preemption import checkpoint_problem  # examples/


ROOT = SCRIPT.parents[1]


def add_member(archive: tarfile.TarFile, name: str, data: bytes):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def write_shards(folder: Path, split_dir: Path, name: str, num_shards: int, label_field: str = "json") -> list[Path]:
    """The videos of a videofolder split as `num_shards` tar shards, one sample (`<key>.mp4` and `<key>.json`, or
    `<key>.cls` holding the index of the sorted label names) per video, dealt out in turn."""
    files = sorted(split_dir.glob("*/*.mp4"))
    labels = sorted({video.parent.name for video in files})
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{name}-{shard:05d}.tar" for shard in range(num_shards)]
    archives = [tarfile.open(path, "w") for path in paths]
    for number, video in enumerate(files):
        archive, key = archives[number % num_shards], f"{video.parent.name}_{video.stem}"
        add_member(archive, f"{key}.mp4", video.read_bytes())
        label = video.parent.name
        if label_field == "json":
            add_member(archive, f"{key}.json", json.dumps({"label": label}).encode())
        else:
            add_member(archive, f"{key}.cls", str(labels.index(label)).encode())
    for archive in archives:
        archive.close()
    return paths


@pytest.fixture(scope="module")
def shards(tmp_path_factory, videos) -> Path:
    """8 training clips in 2 shards and 8 validation clips in 2 shards."""
    folder = tmp_path_factory.mktemp("shards")
    write_shards(folder, videos / "train", "train", 2)
    write_shards(folder, videos / "validation", "validation", 2)
    return folder


def stream_args(tiny_clip, output_dir: Path, data: str, extra: str = "") -> list[str]:
    return f"""
        --model_name_or_path {tiny_clip} {data} --streaming --output_dir {output_dir}
        --cache_dir {output_dir.parent / "cache"} --num_frames 4 --frame_stride 2 --decoder_num_layers 2
        --learning_rate 1e-3 --per_device_train_batch_size 2 --per_device_eval_batch_size 2 --logging_steps 1
        --disable_tqdm True --report_to none --seed 7 {extra}
    """.split()


def shard_data(shards: Path) -> str:
    return f"--train_file {shards}/train-*.tar --validation_file {shards}/validation-*.tar"


def label_names_file(folder: Path) -> Path:
    """A `--label_names_file` naming the four directions, index i on line i."""
    names = folder / "names.txt"
    names.write_text("down\nleft\nright\nup\n")
    return names


def training_clips(shards: Path):
    """The `VideoClipDataset` of 4 frames of 32 px over the training stream of the `train-*.tar` shards in `shards`."""
    from types import SimpleNamespace

    from streaming import load_streaming_datasets

    data_args = SimpleNamespace(
        dataset_name=None,
        train_file=f"{shards}/train-*.tar",
        validation_file=None,
        label_column_name="label",
        video_column_name="video",
    )
    streams, _ = load_streaming_datasets(data_args, None, None, None, run_video_classification.encode_labels)
    processor = run_video_classification.EVLVideoProcessor(
        num_frames=4, frame_stride=2, size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    return run_video_classification.VideoClipDataset(streams["train"], "video", processor, train=True)


def final_step_and_loss(output_dir: Path):
    state = json.loads((output_dir / "trainer_state.json").read_text())
    return state["global_step"], [entry for entry in state["log_history"] if "loss" in entry][-1]["loss"]


# ---- In this process ------------------------------------------------------------------------------------------------


def test_trains_from_shards_and_evaluates_every_validation_clip(tmp_path, tiny_clip, shards):
    output_dir = tmp_path / "output"
    run_video_classification.main(
        stream_args(
            tiny_clip, output_dir, shard_data(shards), "--max_steps 6 --save_strategy no --dataloader_num_workers 0"
        )
    )
    assert final_step_and_loss(output_dir)[0] == 6  # 6 steps of 2 from 8 clips: the stream's second epoch too
    confusion = json.loads((output_dir / "confusion_matrix.json").read_text())
    assert sorted(confusion["labels"]) == ["down", "left", "right", "up"]
    assert sum(map(sum, confusion["matrix"])) == 8  # every validation clip exactly once
    assert json.loads((output_dir / "train_results.json").read_text())["train_skipped_videos"] == 0
    config = json.loads((output_dir / "config.json").read_text())
    assert sorted(config["id2label"].values()) == ["down", "left", "right", "up"]


def test_cls_labels_take_their_names_from_the_label_names_file(tmp_path, tiny_clip, videos):
    shards = tmp_path / "shards"
    write_shards(shards, videos / "train", "train", 2, label_field="cls")
    names = label_names_file(tmp_path)
    output_dir = tmp_path / "output"
    data = f"--train_file {shards}/train-*.tar --label_names_file {names}"
    run_video_classification.main(stream_args(tiny_clip, output_dir, data, "--max_steps 2 --do_train"))
    config = json.loads((output_dir / "config.json").read_text())
    assert config["id2label"] == {"0": "down", "1": "left", "2": "right", "3": "up"}


def test_a_folder_of_shards_streams_as_a_dataset_name(tmp_path, tiny_clip, shards):
    # What a Hub repository of WebDataset shards looks like to datasets: splits from the file names.
    names = label_names_file(tmp_path)
    output_dir = tmp_path / "output"
    data = f"--dataset_name {shards} --label_names_file {names}"
    run_video_classification.main(stream_args(tiny_clip, output_dir, data, "--max_steps 2"))
    confusion = json.loads((output_dir / "confusion_matrix.json").read_text())
    assert sum(map(sum, confusion["matrix"])) == 8


def test_a_broken_video_inside_a_shard_is_skipped_named_and_counted(tmp_path, tiny_clip, videos, caplog):
    shards = tmp_path / "shards"
    (path,) = write_shards(shards, videos / "train", "train", 1)
    with tarfile.open(path, "a") as archive:
        add_member(archive, "broken.mp4", b"this is not a video")
        add_member(archive, "broken.json", json.dumps({"label": "left"}).encode())
    output_dir = tmp_path / "output"
    extra = (
        "--max_steps 3 --per_device_train_batch_size 3 --do_train --max_skipped_fraction 0.5 --shuffle_buffer_size 0"
    )
    run_video_classification.main(stream_args(tiny_clip, output_dir, f"--train_file {path}", extra))
    assert json.loads((output_dir / "train_results.json").read_text())["train_skipped_videos"] == 1
    assert f"Skipping training video {path}:broken" in caplog.text


def test_too_many_broken_videos_stop_a_streaming_run(tmp_path, tiny_clip, videos):
    shards = tmp_path / "shards"
    (path,) = write_shards(shards, videos / "train", "train", 1)
    with tarfile.open(path, "a") as archive:
        add_member(archive, "broken.mp4", b"this is not a video")
        add_member(archive, "broken.json", json.dumps({"label": "left"}).encode())
    with pytest.raises(RuntimeError, match="broken"):  # 1 of 9 read: more than the default 5%
        run_video_classification.main(
            stream_args(
                tiny_clip,
                tmp_path / "output",
                f"--train_file {path}",
                "--max_steps 3 --per_device_train_batch_size 3 --do_train",
            )
        )


def test_each_process_reads_its_own_shards(shards):
    from streaming import StreamingClipDataset

    clips = training_clips(shards)
    urls = [{row["__url__"] for row in StreamingClipDataset(clips, rank=rank, world_size=2).rows} for rank in (0, 1)]
    assert urls == [{f"{shards}/train-00000.tar"}, {f"{shards}/train-00001.tar"}]


def test_the_streams_epoch_is_set_once_in_the_main_process_and_only_read_by_the_workers(shards):
    # datasets shares a stream's epoch between the main process and the workers and sets it by a read-modify-write:
    # two workers setting epoch 1 at once could leave it at 2, a wrong order for the epoch (a resumed run then differs).
    # A resumed worker is given the epoch of its state by the main process before it starts.
    from streaming import StreamingClipDataset
    from torch.utils.data import DataLoader

    dataset = StreamingClipDataset(training_clips(shards), shuffle_buffer_size=4)
    dataset.set_epoch(1)
    assert dataset.rows.epoch == 1  # before any worker starts
    loader = DataLoader(dataset, batch_size=2, num_workers=2, collate_fn=run_video_classification.collate_fn)
    assert sum(len(batch["labels"]) for batch in loader) == 8
    assert dataset.rows.epoch == 1
    with pytest.raises(RuntimeError, match="call `set_epoch` in the main process"):  # a resumed worker's check
        dataset.load_state_dict({"epoch": 2, "rows": 3})


# ---- Bad input --------------------------------------------------------------------------------------------------


def test_streaming_without_max_steps_is_refused(tmp_path, tiny_clip, shards):
    with pytest.raises(ValueError, match="--streaming needs --max_steps"):
        run_video_classification.main(stream_args(tiny_clip, tmp_path / "output", shard_data(shards)))


def test_a_glob_that_matches_nothing_is_named(tmp_path, tiny_clip):
    pattern = f"{tmp_path}/nothing-*.tar"
    with pytest.raises(FileNotFoundError, match=re.escape(f"--train_file '{pattern}' matches no file")):
        run_video_classification.main(
            stream_args(tiny_clip, tmp_path / "output", f"--train_file {pattern}", "--max_steps 2")
        )


def test_a_list_file_with_streaming_says_to_make_shards(tmp_path, tiny_clip):
    with pytest.raises(ValueError, match="prepare-videos INPUT OUTPUT_DIR --format webdataset"):
        run_video_classification.main(
            stream_args(tiny_clip, tmp_path / "output", "--train_file train.csv", "--max_steps 2")
        )


@pytest.mark.parametrize(
    "members, problem",
    [
        ({"a.json": b'{"label": "left"}'}, "sample 'a' of .* has no video member"),
        ({"a.mp4": None}, "sample 'a' of .* has no label: expected a.json holding a 'label' field"),
        ({"a.mp4": None, "a.json": b'{"class": "left"}'}, "has no label"),
    ],
)
def test_a_shard_sample_without_video_or_label_is_named(tmp_path, tiny_clip, videos, members, problem):
    video = next((videos / "train").glob("*/*.mp4")).read_bytes()
    path = tmp_path / "train-00000.tar"
    with tarfile.open(path, "w") as archive:
        for name, data in members.items():
            add_member(archive, name, video if data is None else data)
    with pytest.raises(ValueError, match=problem):
        run_video_classification.main(
            stream_args(tiny_clip, tmp_path / "output", f"--train_file {path}", "--max_steps 2")
        )


def test_shards_with_mixed_label_fields_are_refused(tmp_path, tiny_clip, videos):
    write_shards(tmp_path / "a", videos / "train", "train", 1)
    write_shards(tmp_path / "b", videos / "train", "train", 1, label_field="cls")
    (tmp_path / "b" / "train-00000.tar").rename(tmp_path / "a" / "train-00001.tar")
    with pytest.raises(
        ValueError,
        match=r"mixed label fields: \S*train-00000.tar labels its samples with .json, "
        r"\S*train-00001.tar with .cls",
    ):
        run_video_classification.main(
            stream_args(tiny_clip, tmp_path / "output", f"--train_file {tmp_path}/a/train-*.tar", "--max_steps 2")
        )


# ---- Resuming ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [0, 2])
def test_a_resumed_streaming_run_takes_the_same_samples_and_ends_with_the_same_loss(
    tmp_path, tiny_clip, shards, workers
):
    # 8 clips in 2 shards, batches of 3 through a shuffle buffer of 4: the checkpoint at step 2 is inside the first
    # epoch with rows in the buffer, and the resumed run crosses into the second epoch.
    args = (
        f"--max_steps 5 --per_device_train_batch_size 3 --save_strategy steps --save_steps 2 --do_train "
        f"--shuffle_buffer_size 4 --dataloader_num_workers {workers}"
    )
    straight = tmp_path / "straight"
    run_video_classification.main(stream_args(tiny_clip, straight, f"--train_file {shards}/train-*.tar", args))
    resumed = tmp_path / "resumed"
    shutil.copytree(straight / "checkpoint-2", resumed / "checkpoint-2")
    saved = (resumed / "checkpoint-2" / "trainer_state.json").stat().st_mtime_ns
    run_video_classification.main(
        stream_args(tiny_clip, resumed, f"--train_file {shards}/train-*.tar", f"{args} --resume_from_checkpoint last")
    )
    history = [
        json.loads((folder / "trainer_state.json").read_text())["log_history"] for folder in (straight, resumed)
    ]
    losses = [{entry["step"]: entry["loss"] for entry in log if "loss" in entry} for log in history]
    assert (resumed / "checkpoint-2" / "trainer_state.json").stat().st_mtime_ns == saved  # resumed, not restarted
    assert sorted(losses[1]) == [1, 2, 3, 4, 5]  # steps 1 and 2 from the checkpoint's state
    for step in (3, 4, 5):
        assert losses[1][step] == pytest.approx(losses[0][step], abs=1e-6), step


def test_a_finished_streaming_run_rerun_with_resume_last_trains_no_step_and_keeps_its_model(
    tmp_path, tiny_clip, shards
):
    # A preemption wrapper passes --resume_from_checkpoint last every time, also once the run has finished.
    # 8 clips in batches of 2: the run ends inside the stream's third epoch.
    output_dir = tmp_path / "output"
    args = "--max_steps 10 --save_strategy steps --save_steps 5 --do_train --lr_scheduler_type constant"
    args = stream_args(tiny_clip, output_dir, f"--train_file {shards}/train-*.tar", args)
    run_video_classification.main(args)
    saved = {path.name: path.read_bytes() for path in output_dir.glob("*.safetensors")}
    last = (output_dir / "checkpoint-10" / "trainer_state.json").stat().st_mtime_ns
    run_video_classification.main([*args, "--resume_from_checkpoint", "last"])
    assert {path.name: path.read_bytes() for path in output_dir.glob("*.safetensors")} == saved
    state = json.loads((output_dir / "trainer_state.json").read_text())
    assert state["global_step"] == 10 and max(entry["step"] for entry in state["log_history"]) == 10
    assert (output_dir / "checkpoint-10" / "trainer_state.json").stat().st_mtime_ns == last  # not saved again
    assert not (output_dir / "checkpoint-11").exists()


@pytest.mark.parametrize("workers", [0, 2])
def test_a_run_resumed_at_the_end_of_the_streams_epoch_goes_on_into_the_next(tmp_path, tiny_clip, shards, workers):
    # 8 clips in batches of 2: the checkpoint at step 4 is at the end of the stream's first epoch, which the run saving
    # it did not know yet (an empty resumed epoch would stop training at step 4).
    args = f"--max_steps 6 --save_strategy steps --save_steps 4 --do_train --dataloader_num_workers {workers}"
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_video_classification.main(stream_args(tiny_clip, straight, f"--train_file {shards}/train-*.tar", args))
    shutil.copytree(straight / "checkpoint-4", resumed / "checkpoint-4")
    args += " --resume_from_checkpoint last"
    run_video_classification.main(stream_args(tiny_clip, resumed, f"--train_file {shards}/train-*.tar", args))
    assert final_step_and_loss(resumed) == (6, pytest.approx(final_step_and_loss(straight)[1], abs=1e-6))


# ---- Real processes ---------------------------------------------------------------------------------------------


def launch_two_processes(args: list[str]) -> list[str]:
    # accelerate's torchrun launcher with the Trainer's --use_cpu: two CPU processes talking through gloo.
    return (
        f"""
        {sys.executable} -m accelerate.commands.launch --multi_gpu --num_processes 2 --num_machines 1
        --mixed_precision no --dynamo_backend no {SCRIPT} --use_cpu True --ddp_timeout 120
    """.split()
        + args
    )


@pytest.mark.slow
def test_two_processes_train_on_their_own_shards_and_evaluate_every_clip_once(tmp_path, tiny_clip, shards):
    output_dir, log = tmp_path / "output", tmp_path / "log.txt"
    args = stream_args(
        tiny_clip,
        output_dir,
        shard_data(shards),
        "--max_steps 4 --do_train --do_eval --eval_strategy steps --eval_steps 2 --save_strategy no "
        "--dataloader_num_workers 1",
    )
    process = start(launch_two_processes(args), log)
    assert process.wait(timeout=600) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert "world size: 2" in text
    assert final_step_and_loss(output_dir)[0] == 4
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    assert [entry["step"] for entry in history if "eval_loss" in entry] == [2, 4]  # during training
    assert "eval_accuracy" in json.loads((output_dir / "eval_results.json").read_text())  # and at the end
    confusion = json.loads((output_dir / "confusion_matrix.json").read_text())
    assert sum(map(sum, confusion["matrix"])) == 8  # every validation clip exactly once over the two processes


@pytest.mark.slow
def test_two_processes_with_two_workers_each_resume_exactly_and_a_finished_run_stays_finished(
    tmp_path, tiny_clip, videos
):
    # 8 clips in 4 shards: each process reads 2 shards, one per DataLoader worker, in batches of 1 through a shuffle
    # buffer of 2. The checkpoint at step 6 (what a run killed at step 7 or 8 leaves) is in the second epoch.
    write_shards(tmp_path / "shards", videos / "train", "train", 4)
    data = f"--train_file {tmp_path}/shards/train-*.tar"
    args = (
        "--max_steps 10 --save_strategy steps --save_steps 3 --do_train --per_device_train_batch_size 1 "
        "--shuffle_buffer_size 2 --dataloader_num_workers 2 --lr_scheduler_type constant"
    )
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    for output_dir in (straight, resumed):
        command = launch_two_processes(
            [*stream_args(tiny_clip, output_dir, data, args), "--resume_from_checkpoint", "last"]
        )
        if output_dir == resumed:
            shutil.copytree(straight / "checkpoint-6", resumed / "checkpoint-6")
        process = start(command, log := tmp_path / f"{output_dir.name}.txt")
        assert process.wait(timeout=600) == 0, log.read_text()[-3000:]
    history = [
        json.loads((folder / "trainer_state.json").read_text())["log_history"] for folder in (straight, resumed)
    ]
    losses = [{entry["step"]: entry["loss"] for entry in log if "loss" in entry} for log in history]
    assert sorted(losses[1]) == list(range(1, 11))
    for step in range(7, 11):
        assert losses[1][step] == pytest.approx(losses[0][step], abs=1e-6), step

    saved = (resumed / "model.safetensors").read_bytes()  # run again, finished: no step, the same model
    process = start(command, log := tmp_path / "again.txt")
    assert process.wait(timeout=600) == 0, log.read_text()[-3000:]
    assert (resumed / "model.safetensors").read_bytes() == saved and logged_steps(log) == 0
    assert json.loads((resumed / "trainer_state.json").read_text())["global_step"] == 10


@pytest.mark.slow
def test_a_streaming_run_stopped_by_sigterm_and_sigkill_resumes_to_the_straight_runs_loss(tmp_path, tiny_clip, shards):
    args = (
        "--max_steps 24 --save_strategy steps --save_steps 3 --do_train --dataloader_num_workers 1 "
        "--shuffle_buffer_size 3"
    )
    data = f"--train_file {shards}/train-*.tar"
    straight, log = tmp_path / "straight", tmp_path / "straight.txt"
    process = start([sys.executable, str(SCRIPT), *stream_args(tiny_clip, straight, data, args)], log)
    assert process.wait(timeout=600) == 0, log.read_text()[-3000:]

    output_dir = tmp_path / "output"
    resume = [
        sys.executable,
        str(SCRIPT),
        *stream_args(tiny_clip, output_dir, data, args),
        "--resume_from_checkpoint",
        "last",
    ]
    # SIGTERM (the main process: it saves at the step it is in and exits 143), then SIGKILL of the whole group once a
    # checkpoint after the first exists (a resumed run, killed, loses only the steps since its last checkpoint).
    log = tmp_path / "sigterm.txt"
    process = start(resume, log)
    assert wait_for(lambda: logged_steps(log) >= 4, process), log.read_text()[-3000:]
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 143, log.read_text()[-3000:]
    stopped = max(int(path.name.split("-")[1]) for path in output_dir.glob("checkpoint-*"))
    assert 4 <= stopped < 24 and checkpoint_problem(output_dir / f"checkpoint-{stopped}") is None

    log = tmp_path / "sigkill.txt"
    process = start(resume, log)
    newer = lambda: any(int(path.name.split("-")[1]) > stopped for path in output_dir.glob("checkpoint-*"))
    if wait_for(newer, process) and process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=120)
    log = tmp_path / "finished.txt"
    process = start(resume, log)
    assert process.wait(timeout=600) == 0, log.read_text()[-3000:]
    assert "Skipping" not in log.read_text()  # no broken video, no incomplete checkpoint
    step, loss = final_step_and_loss(output_dir)
    assert (step, loss) == (24, pytest.approx(final_step_and_loss(straight)[1], abs=1e-3))
