"""Epoch boundaries of examples/run_video_classification.py's training DataLoaders, whose workers persist across epochs
by default: each epoch's augmentations still reach them, and many epochs in a row, with other threads (pyarrow's,
gloo's) alive in the parent, never hang at a fork."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader

# training_utils puts examples/ on sys.path; the tiny CLIP and video fixtures come from conftest.py
from training_utils import ENVIRONMENT, ROOT, SCRIPT, run_video_classification, train_tiny


# isort: split
from streaming import StreamingClipDataset, StreamingDataLoader  # examples/
from test_streaming import training_clips, write_shards


def processor():
    return run_video_classification.EVLVideoProcessor(
        num_frames=4, frame_stride=2, size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )


def passes(dataset, loader, epochs) -> list[torch.Tensor]:
    """The clips of one pass of `loader` per epoch of `epochs`, `set_epoch` in this process before each."""
    clips = []
    for epoch in epochs:
        dataset.set_epoch(epoch)
        clips.append(torch.cat([batch["pixel_values"] for batch in loader]))
    return clips


def test_persistent_workers_make_the_clips_of_each_epoch(videos):
    script = run_video_classification
    data_args = script.DataTrainingArguments(train_dir=str(videos / "train"))
    rows, _ = script.encode_labels(script.load_video_datasets(data_args, None, None), "label", None)
    dataset = script.VideoClipDataset(rows["train"], "video", processor(), train=True, seed=3)
    loader = DataLoader(dataset, batch_size=4, num_workers=2, persistent_workers=True, collate_fn=script.collate_fn)
    clips = passes(dataset, loader, [0, 1, 2])
    for epoch, epoch_clips in enumerate(clips):
        dataset.set_epoch(epoch)  # here, in this process: what the epoch's clips must be
        expected = torch.stack([dataset[index]["pixel_values"] for index in range(len(dataset))])
        torch.testing.assert_close(epoch_clips, expected, rtol=0, atol=0, msg=f"epoch {epoch}")
    assert not torch.equal(clips[0], clips[1])


def test_persistent_workers_read_each_epoch_of_a_stream(tmp_path, videos):
    write_shards(tmp_path, videos / "train", "train", 2)
    clips = training_clips(tmp_path)
    dataset = StreamingClipDataset(clips, shuffle_buffer_size=4)
    collate = run_video_classification.collate_fn
    persistent = StreamingDataLoader(dataset, batch_size=2, num_workers=2, persistent_workers=True, collate_fn=collate)
    fresh = [StreamingDataLoader(dataset, batch_size=2, num_workers=2, collate_fn=collate) for _ in range(3)]
    got = passes(dataset, persistent, [0, 1, 2])
    expected = [passes(dataset, loader, [epoch])[0] for epoch, loader in enumerate(fresh)]
    for epoch in range(3):
        torch.testing.assert_close(got[epoch], expected[epoch], rtol=0, atol=0, msg=f"epoch {epoch}")
    assert not torch.equal(got[0], got[1])


def test_training_with_persistent_workers_ends_like_training_with_new_workers_every_epoch(tmp_path, tiny_clip, videos):
    # 8 clips in batches of 3: 3 epochs of 3 steps, the last batch of each epoch short.
    args = "--do_train --max_steps 9 --per_device_train_batch_size 3 --dataloader_num_workers 2 --seed 5"
    weights = []
    for persistent in (True, False):
        output_dir = tmp_path / f"persistent-{persistent}"
        data = f"--train_dir {videos / 'train'}"
        train_tiny(
            tiny_clip, data, output_dir, tmp_path / "cache", f"{args} --dataloader_persistent_workers {persistent}"
        )
        weights.append(load_file(output_dir / "model.safetensors"))
    for name in weights[1]:
        torch.testing.assert_close(weights[0][name], weights[1][name], rtol=0, atol=1e-6, msg=name)


@pytest.mark.slow
def test_200_epochs_with_two_workers_two_processes_and_pyarrow_threads_end(tmp_path, tiny_clip, videos):
    # Each process of the run holds a gloo group and pyarrow's threads (datasets) while its DataLoader crosses 200
    # epochs of one step each (8 clips, 4 a process, in one batch).
    output_dir = tmp_path / "output"
    command = f"""
        {sys.executable} -m accelerate.commands.launch --multi_gpu --num_processes 2 --num_machines 1
        --mixed_precision no --dynamo_backend no {SCRIPT} --use_cpu True --ddp_timeout 120
        --model_name_or_path {tiny_clip} --train_dir {videos / "train"} --output_dir {output_dir}
        --cache_dir {tmp_path / "cache"} --num_frames 4 --frame_stride 2 --decoder_num_layers 2 --do_train
        --per_device_train_batch_size 4 --num_train_epochs 200 --save_strategy no --logging_steps 50
        --dataloader_num_workers 2 --disable_tqdm True --report_to none
    """.split()
    run = subprocess.run(command, capture_output=True, text=True, env=ENVIRONMENT, cwd=ROOT, timeout=540)
    assert run.returncode == 0, run.stderr[-3000:]
    state = json.loads((output_dir / "trainer_state.json").read_text())
    assert (state["global_step"], state["epoch"]) == (200, 200.0)


def test_training_workers_persist_across_epochs_unless_told_otherwise(tmp_path):
    parse = run_video_classification.parse_arguments
    assert parse([])[2].dataloader_persistent_workers  # the embedded default
    assert parse(["--train_dir", "videos"])[2].dataloader_persistent_workers
    assert not parse(["--train_dir", "videos", "--dataloader_persistent_workers", "False"])[
        2
    ].dataloader_persistent_workers
    path = tmp_path / "args.json"
    path.write_text(json.dumps({"train_dir": "videos"}))
    assert parse([str(path)])[2].dataloader_persistent_workers
    path.write_text(json.dumps({"train_dir": "videos", "dataloader_persistent_workers": False}))
    assert not parse([str(path)])[2].dataloader_persistent_workers
