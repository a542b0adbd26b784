"""Frame archives (`evl_hf.frame_archives`): read at source-frame indices by the one video reader, by the processor,
the pipeline, `evl-hf predict` and the training script (folders and `--streaming`), and their errors."""

import json
import shutil
import struct
import tarfile
from pathlib import Path

import pytest
import torch
from training_utils import run_video_classification, train_tiny  # puts examples/ on sys.path
from transformers import pipeline

from evl_hf import EVLVideoProcessor
from evl_hf.commands import main
from evl_hf.frame_archives import (
    FrameArchive,
    FrameStepError,
    decode_clip_jpegs,
    read_clip_jpegs,
    write_frame_archive,
)
from evl_hf.testing_utils import encode_video
from evl_hf.video_utils import (
    VideoDecodingError,
    is_video_file,
    open_video,
    read_video_frames,
    read_video_metadata,
    walk_videos,
)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A 40-frame 15 fps video of a square moving over noise: every frame differs."""
    return encode_video(tmp_path_factory.mktemp("source") / "clip.mp4", 40)


@pytest.fixture(scope="module")
def archive(source):
    """`source` as a frame archive of every 4th frame at full size."""
    path = source.with_suffix(".evlf")
    write_frame_archive(source, path, frame_step=4)
    return path


def mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a.float() - b.float()) ** 2).mean())


def test_an_index_between_stored_frames_reads_the_stored_frame_at_or_before_it(archive):
    frames = read_video_frames(archive, [0, 1, 3, 4, 7, 39])
    assert frames.shape == (6, 3, 48, 64) and frames.dtype == torch.uint8
    assert torch.equal(frames, read_video_frames(archive, [0, 0, 0, 4, 4, 36]))


def test_archive_frames_are_the_sources_frames_at_their_positions(source, archive):
    stored = read_video_frames(archive, [8, 9])
    decoded = read_video_frames(source, [8, 9])
    # the square moves one pixel a frame: frame 9 of the archive is source frame 8, not 9
    assert mse(stored[1], decoded[0]) < mse(stored[1], decoded[1])
    assert mse(stored[0], decoded[0]) < 100  # JPEG at quality 90 over noise


def test_metadata_is_in_source_frames(archive):
    metadata = read_video_metadata(archive)
    assert (metadata.total_num_frames, metadata.fps, metadata.width, metadata.height) == (40, 15, 64, 48)
    assert metadata.duration == pytest.approx(40 / 15)
    assert metadata.frame_step == 4


def test_bytes_and_file_objects_read_as_the_path_does(archive):
    expected = read_video_frames(archive, [5, 20])
    assert torch.equal(read_video_frames(archive.read_bytes(), [5, 20]), expected)
    with open(archive, "rb") as file:
        assert torch.equal(read_video_frames(file, [5, 20]), expected)
    assert isinstance(open_video(archive.read_bytes()), FrameArchive)


def test_archives_are_found_as_videos(archive):
    assert is_video_file(archive)
    assert str(archive) in walk_videos(archive.parent)


def test_the_processor_samples_an_archive_as_its_video(source, archive):
    processor = EVLVideoProcessor(num_frames=4, frame_stride=8, size={"shortest_edge": 32}, crop_size=32)
    from_video = processor(str(source), return_tensors="pt", return_metadata=True)
    from_archive = processor(str(archive), return_tensors="pt", return_metadata=True)
    # the centred window of 40 frames starts at frame 7: the archive shows each of its frames' stored frame before it
    assert from_archive["video_metadata"][0].frames_indices == from_video["video_metadata"][0].frames_indices
    assert from_video["video_metadata"][0].frames_indices == [7, 15, 23, 31]
    on_the_grid = processor(read_video_frames(source, [4, 12, 20, 28]), return_tensors="pt")
    assert mse(from_archive["pixel_values"], on_the_grid["pixel_values"]) < 0.01
    assert mse(from_archive["pixel_values"], from_video["pixel_values"]) > 0.1


def test_the_pipeline_classifies_an_archive_as_its_video(model_folder, source, archive):
    classifier = pipeline("video-classification", model=str(model_folder))
    from_video, from_archive = classifier(str(source), top_k=5), classifier(str(archive), top_k=5)
    assert [p["score"] for p in from_archive] == pytest.approx([p["score"] for p in from_video], abs=2e-3)


def test_predict_on_archives_gives_the_top_label_of_the_videos(model_folder, tmp_path):
    videos, archives = tmp_path / "videos", tmp_path / "archives"
    (videos / "x").mkdir(parents=True)
    for seed in range(3):
        encode_video(videos / "x" / f"{seed}.mp4", 40, seed=seed)
    assert main(["prepare-videos", str(videos), str(archives), "--format", "frames", "--num_workers", "1"]) == 0
    records = {}
    for name, inputs in (("videos", videos), ("archives", archives)):
        output = tmp_path / f"{name}.jsonl"
        assert (
            main(["predict", "--model", str(model_folder), "--num_workers", "0", str(inputs), "--output", str(output)])
            == 0
        )
        records[name] = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r["video"].endswith(".evlf") for r in records["archives"]] == [True] * 3
    assert [r["labels"][0] for r in records["archives"]] == [r["labels"][0] for r in records["videos"]]


# ---- Errors name the file ------------------------------------------------------------------------------------------


def test_a_corrupt_jpeg_is_a_decoding_error_naming_the_archive_and_frame(archive, tmp_path):
    broken = tmp_path / "broken.evlf"
    header = FrameArchive(archive, "x")
    data = bytearray(archive.read_bytes())
    data[header._offsets[2] : header._offsets[2] + 16] = bytes(16)  # frame 8's JPEG loses its start markers
    broken.write_bytes(bytes(data))
    assert read_video_frames(broken, [0, 4]).shape[0] == 2  # the other frames still read
    with pytest.raises(VideoDecodingError, match=r"frame 8 of frame archive .*broken\.evlf"):
        read_video_frames(broken, [0, 9])


def test_a_truncated_archive_is_refused_naming_it(archive, tmp_path):
    truncated = tmp_path / "truncated.evlf"
    truncated.write_bytes(archive.read_bytes()[:-100])
    with pytest.raises(VideoDecodingError, match=r"truncated\.evlf.*truncated.*the last 1 of them missing"):
        read_video_metadata(truncated)


def test_an_archive_of_a_newer_format_version_says_to_upgrade(archive, tmp_path):
    newer = tmp_path / "newer.evlf"
    data = bytearray(archive.read_bytes())
    data[4:8] = struct.pack("<I", 99)
    newer.write_bytes(bytes(data))
    with pytest.raises(VideoDecodingError, match=r"newer\.evlf.*version 99.*newer evl_hf"):
        read_video_frames(newer, [0])


def test_a_frame_step_that_does_not_divide_the_stride_is_refused_with_the_steps_that_fit(source, tmp_path):
    path = tmp_path / "step3.evlf"
    write_frame_archive(source, path, frame_step=3)
    processor = EVLVideoProcessor(num_frames=4, frame_stride=4, size={"shortest_edge": 32}, crop_size=32)
    with pytest.raises(FrameStepError, match=r"step3\.evlf.*every 3th.*stride 4.*\[1, 2, 4\]"):
        processor(str(path), return_tensors="pt")
    processor(str(path), return_tensors="pt", frame_sampling="uniform")  # any grid serves uniform sampling


# ---- Training ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def archive_tree(tmp_path_factory, videos):
    """The synthetic-motion dataset as frame archives of every 2nd frame (the tests train at stride 2)."""
    folder = tmp_path_factory.mktemp("archives")
    for split in ("train", "validation"):
        arguments = ["--format", "frames", "--frame_step", "2", "--num_workers", "1"]
        assert main(["prepare-videos", str(videos / split), str(folder / split), *arguments]) == 0
    return folder


def test_training_reads_folders_of_archives(tmp_path, tiny_clip, archive_tree, videos):
    data = f"--train_dir {archive_tree / 'train'} --validation_dir {archive_tree / 'validation'}"
    output_dir = train_tiny(tiny_clip, data, tmp_path / "output", tmp_path / "cache", "--do_train --do_eval")
    results = json.loads((output_dir / "all_results.json").read_text())
    assert results["train_skipped_videos"] == 0 and "eval_accuracy" in results


def test_streaming_training_reads_shards_of_archives(tmp_path, tiny_clip, videos, caplog):
    shards = tmp_path / "shards"
    arguments = ["--format", "frames", "--frame_step", "2", "--shard_size", "4", "--num_workers", "1"]
    assert main(["prepare-videos", str(videos / "train"), str(shards), *arguments]) == 0
    with tarfile.open(shards / "train-000000.tar") as archive:
        assert sorted(name.rsplit(".", 1)[-1] for name in archive.getnames()) == ["evlf"] * 4 + ["json"] * 4
    output_dir = tmp_path / "output"
    run_video_classification.main(
        f"""
        --model_name_or_path {tiny_clip} --train_file {shards}/train-*.tar --streaming --output_dir {output_dir}
        --cache_dir {tmp_path / "cache"} --num_frames 4 --frame_stride 2 --decoder_num_layers 2 --max_steps 2
        --per_device_train_batch_size 2 --logging_steps 1 --disable_tqdm True --report_to none --do_train
        --dataloader_num_workers 0
        """.split()
    )
    assert json.loads((output_dir / "train_results.json").read_text())["train_skipped_videos"] == 0


def test_an_archive_with_corrupt_jpegs_is_skipped_and_counted_in_training(tmp_path, tiny_clip, archive_tree, caplog):
    train_dir = tmp_path / "train"
    shutil.copytree(archive_tree / "train", train_dir)
    victim = sorted(train_dir.glob("*/*.evlf"))[0]
    data, offsets = bytearray(victim.read_bytes()), FrameArchive(victim, "x")._offsets
    for start in offsets[:-1]:  # every frame's JPEG loses its start markers
        data[start : start + 16] = bytes(16)
    victim.write_bytes(bytes(data))
    output_dir = train_tiny(
        tiny_clip,
        f"--train_dir {train_dir}",
        tmp_path / "output",
        tmp_path / "cache",
        "--do_train --max_steps 1 --per_device_train_batch_size 8 --max_skipped_fraction 0.5",
    )
    assert json.loads((output_dir / "train_results.json").read_text())["train_skipped_videos"] == 1
    assert f"Skipping training video {victim}" in caplog.text


def test_an_archive_whose_header_is_longer_than_the_first_read_opens(tmp_path):
    # 2,000 stored frames: an index of about 20 kB, past the bytes read at once on opening
    video = encode_video(tmp_path / "long.mp4", 2000, height=32, width=32)
    write_frame_archive(video, tmp_path / "long.evlf", frame_step=1)
    assert read_video_metadata(tmp_path / "long.evlf").total_num_frames == 2000
    assert read_video_frames(tmp_path / "long.evlf", [1999]).shape == (1, 3, 32, 32)


# ---- Decoding on the training device (--decode_device) --------------------------------------------------------------


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    """Three archives of every 2nd frame, one of a video too short for a 4-frame clip at stride 4 (repeated frames)."""
    folder = tmp_path_factory.mktemp("jpeg_clips")
    paths = []
    for seed, num_frames in enumerate([40, 6, 60]):
        video = encode_video(folder / f"{seed}.mp4", num_frames, seed=seed)
        write_frame_archive(video, folder / f"{seed}.evlf", frame_step=2)
        paths.append(str(folder / f"{seed}.evlf"))
    return paths


JPEG_PROCESSOR = dict(num_frames=4, frame_stride=4, size={"shortest_edge": 32}, crop_size=32)


@pytest.mark.parametrize(
    "options",
    [dict(do_augment=True, horizontal_flip=True, rand_augment=True), dict(num_clips=3), dict(num_crops=3)],
    ids=["training", "temporal_views", "spatial_views"],
)
def test_jpegs_decoded_in_one_batch_give_the_workers_clips(archives, options):
    processor = EVLVideoProcessor(**JPEG_PROCESSOR)
    seeds = {"seed": 7} if options.get("do_augment") else {}
    clips = [read_clip_jpegs(processor, path, device_transforms=True, **seeds, **options) for path in archives]
    assert clips[1].jpegs[-1] is clips[1].jpegs[-2]  # a frame sampled twice is read, and decoded, once
    made = decode_clip_jpegs(clips, processor)
    expected = processor(archives, return_tensors="pt", device_transforms=True, **seeds, **options)
    assert made["pixel_values"].dtype == torch.uint8
    assert torch.equal(made["pixel_values"], expected["pixel_values"])
    if options.get("do_augment"):
        assert torch.equal(made["augmentation"], expected["augmentation"])
        # the archives' frames share a size: the clips stay uncropped, their boxes for the device to crop
        assert torch.equal(clips[0].augmentation, made["augmentation"][0])
        normalised = processor.augment_batch(made["pixel_values"], made["augmentation"])
        torch.testing.assert_close(normalised, processor.augment_batch(**expected), rtol=0, atol=0)
    assert made["kept"] == [0, 1, 2] and made["skipped"] == {}


def test_a_clip_with_a_corrupt_jpeg_is_left_out_or_named(archives, tmp_path):
    broken = tmp_path / "broken.evlf"
    data, offsets = bytearray(Path(archives[0]).read_bytes()), FrameArchive(archives[0], "x")._offsets
    for start in offsets[:-1]:  # every frame's JPEG loses its start markers
        data[start : start + 16] = bytes(16)
    broken.write_bytes(bytes(data))
    processor = EVLVideoProcessor(**JPEG_PROCESSOR)
    clips = [read_clip_jpegs(processor, path, do_augment=True, seed=0) for path in [archives[1], broken, archives[2]]]
    with pytest.raises(VideoDecodingError, match=r"frame \d+ of frame archive .*broken\.evlf.*corrupted"):
        decode_clip_jpegs(clips)
    made = decode_clip_jpegs(clips, skip_undecodable=True)
    assert made["kept"] == [0, 2] and list(made["skipped"]) == [f"'{broken}'"]
    assert torch.equal(made["pixel_values"], decode_clip_jpegs([clips[0], clips[2]])["pixel_values"])


def test_a_video_that_is_not_an_archive_is_refused_naming_it(source):
    with pytest.raises(ValueError, match=r"clip\.mp4.* is not a frame archive.*--format frames"):
        read_clip_jpegs(EVLVideoProcessor(**JPEG_PROCESSOR), str(source), do_augment=True)


def test_the_training_step_decodes_the_workers_jpegs_into_their_clips(tiny_clip, archive_tree, tmp_path):
    """The training script's dataset, collate and `_prepare_inputs` with `--decode_device cpu`: the workers' JPEGs,
    decoded in the step, give the clips of workers that decode (uint8, then augmented and normalised alike)."""
    from datasets import Dataset
    from transformers import TrainingArguments

    script = run_video_classification
    processor = EVLVideoProcessor(num_frames=4, frame_stride=2, size={"shortest_edge": 32}, crop_size=32)
    paths = sorted(str(path) for path in (archive_tree / "train").glob("*/*.evlf"))
    rows = Dataset.from_dict({"video": paths, "labels": list(range(len(paths)))})
    model = script.EVLForVideoClassification.from_clip_pretrained(tiny_clip, num_frames=4, decoder_num_layers=2)
    arguments = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    trainer = script.VideoClassificationTrainer(
        model=model, args=arguments, processing_class=processor, decode_device=torch.device("cpu")
    )
    options = dict(train=True, rand_augment=True, horizontal_flip=True, device_transforms=True)
    batches = [
        script.collate_fn(
            [script.VideoClipDataset(rows, "video", processor, jpegs=jpegs, **options)[i] for i in range(8)]
        )
        for jpegs in (True, False)
    ]
    assert "pixel_values" not in batches[0] and len(batches[0]["clips"]) == 8
    decoded, expected = (trainer._prepare_inputs(batch) for batch in batches)
    assert torch.equal(decoded["pixel_values"], expected["pixel_values"])
    assert torch.equal(decoded["labels"], expected["labels"]) and "clips" not in decoded


def test_decode_device_cpu_trains_and_cuda_is_refused_without_a_gpu(tmp_path, tiny_clip, archive_tree, videos):
    data = f"--train_dir {archive_tree / 'train'}"
    output_dir = train_tiny(tiny_clip, data, tmp_path / "output", tmp_path / "cache", "--do_train --decode_device cpu")
    assert json.loads((output_dir / "train_results.json").read_text())["train_skipped_videos"] == 0
    with pytest.raises(
        ValueError, match="--decode_device cuda decodes on the training GPU, but this run trains on cpu"
    ):
        train_tiny(tiny_clip, data, tmp_path / "cuda", tmp_path / "cache", "--do_train --decode_device cuda")
    with pytest.raises(ValueError, match=r"first training video, .*\.mp4.*, is not one: .*--format frames"):
        train_tiny(
            tiny_clip,
            f"--train_dir {videos / 'train'}",
            tmp_path / "mp4",
            tmp_path / "cache",
            "--do_train --decode_device cpu",
        )
