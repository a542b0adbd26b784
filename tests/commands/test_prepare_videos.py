"""`evl-hf prepare-videos` on generated video trees and lists, broken files and earlier runs included."""

import csv
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time

import av
import pytest
import torch
from torchcodec.decoders import VideoDecoder
from torchcodec.encoders import VideoEncoder

from evl_hf.commands import main
from evl_hf.commands.prepare_videos import REPORT_NAME
from evl_hf.frame_archives import FrameArchive
from evl_hf.video_utils import read_video_frames, read_video_metadata


pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg program (make install)")


def write_video(path, num_frames=40, height=48, width=64, fps=15):
    """A square moving over panning smooth random blobs; H.264, libx264's default keyframe interval (one keyframe)."""
    generator = torch.Generator().manual_seed(num_frames * height + width)
    blobs = torch.rand(1, 3, height // 8 + 2, width // 8 + 2, generator=generator) * 200
    background = torch.nn.functional.interpolate(blobs, size=(height, width), mode="bilinear").to(torch.uint8)
    frames = torch.cat([background.roll(t, dims=-1) for t in range(num_frames)])  # panning
    for t in range(num_frames):
        frames[t, :, height // 4 : height // 2, t % (width // 2) : t % (width // 2) + width // 4] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    # libx264 takes odd sizes only with full-resolution colour.
    odd = height % 2 or width % 2
    VideoEncoder(frames, frame_rate=fps).to_file(path, codec="libx264", pixel_format="yuv444p" if odd else "yuv420p")
    return path


def video_facts(path) -> dict:
    decoder = VideoDecoder(str(path), seek_mode="exact")
    metadata = decoder.metadata
    return {
        "frames": len(decoder),
        "width": metadata.width,
        "height": metadata.height,
        "codec": metadata.codec,
    }


def frame_times(path) -> torch.Tensor:
    decoder = VideoDecoder(str(path), seek_mode="exact")
    return decoder.get_frames_in_range(0, len(decoder)).pts_seconds


def keyframe_indices(path) -> list[int]:
    """Presentation-order indices of the keyframes, from the packet flags."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        packets = sorted((p for p in container.demux(stream) if p.size), key=lambda p: p.pts)
        has_audio = bool(container.streams.audio)
    assert not has_audio
    return [index for index, packet in enumerate(packets) if packet.is_keyframe]


def prepare(*args) -> int:
    return main(["prepare-videos", *map(str, args), "--num_workers", "1"])


@pytest.fixture
def tree(tmp_path):
    """A videofolder tree: two good videos (one .mkv), and three broken files named like videos."""
    root = tmp_path / "videos"
    write_video(root / "left" / "a.mp4")
    write_video(root / "right" / "b.mkv", num_frames=37)
    (root / "right" / "notes.txt").write_text("not a video, and not named like one")
    return root


def add_broken_files(root):
    (root / "left" / "empty.mp4").write_bytes(b"")
    (root / "left" / "text.mp4").write_text("this is text\n")
    whole = write_video(root / "right" / "whole.mp4").read_bytes()
    (root / "right" / "truncated.mp4").write_bytes(whole[: len(whole) // 2])
    (root / "right" / "whole.mp4").unlink()


def test_tree_keeps_the_layout_with_mp4_names_and_every_frame(tree, tmp_path):
    out = tmp_path / "prepared"
    assert prepare(tree, out, "--short_side", 32) == 0
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.mp4")) == ["left/a.mp4", "right/b.mp4"]
    pairs = ((tree / "left/a.mp4", out / "left/a.mp4"), (tree / "right/b.mkv", out / "right/b.mp4"))
    for source, prepared in pairs:
        before, after = video_facts(source), video_facts(prepared)
        assert after["frames"] == before["frames"]
        # The same timestamps (to the millisecond a Matroska file keeps), so the same frame rate.
        assert torch.allclose(frame_times(prepared), frame_times(source), atol=1e-3)
        assert after["codec"] == "h264"
        assert (after["width"], after["height"]) == (42, 32)  # 64x48 with its short side brought to 32
    assert (out / REPORT_NAME).read_text() == ""


def test_a_keyframe_every_keyframe_interval_frames(tree, tmp_path):
    out = tmp_path / "prepared"
    assert keyframe_indices(tree / "left/a.mp4") == [0]
    assert prepare(tree, out, "--keyframe_interval", 8) == 0
    assert keyframe_indices(out / "left/a.mp4") == [0, 8, 16, 24, 32]
    assert keyframe_indices(out / "right/b.mp4") == [0, 8, 16, 24, 32]


def test_defaults_a_keyframe_every_4_frames_and_no_b_frames(tree, tmp_path):
    # What makes a sampled frame cheap: few frames back to a keyframe, none ahead (a B-frame needs a later frame).
    out = tmp_path / "prepared"
    assert prepare(tree, out) == 0
    assert keyframe_indices(out / "left/a.mp4") == list(range(0, 40, 4))
    with av.open(str(out / "left/a.mp4")) as container:
        picture_types = {av.video.frame.PictureType(frame.pict_type).name for frame in container.decode(video=0)}
    assert picture_types == {"I", "P"}


def test_prepared_frames_are_the_original_frames(tree, tmp_path):
    out = tmp_path / "prepared"
    assert prepare(tree, out, "--short_side", 48, "--crf", 10) == 0  # no resizing: compare pixel for pixel
    original = VideoDecoder(str(tree / "left/a.mp4")).get_frames_in_range(0, 40).data.float()
    prepared = VideoDecoder(str(out / "left/a.mp4")).get_frames_in_range(0, 40).data.float()
    # Within a grey level on average, where the next frame is 9 levels away.
    assert (prepared - original).abs().mean() < 1
    assert (prepared[1:] - original[:-1]).abs().mean() > 5


def test_small_and_odd_sized_videos_are_not_upscaled_and_get_even_sides(tmp_path):
    root = tmp_path / "videos"
    write_video(root / "c" / "small.mp4", num_frames=20, height=35, width=45)
    write_video(root / "c" / "odd.mp4", num_frames=20, height=75, width=101)
    out = tmp_path / "prepared"
    assert prepare(root, out, "--short_side", 64) == 0
    small, odd = video_facts(out / "c/small.mp4"), video_facts(out / "c/odd.mp4")
    assert (small["width"], small["height"]) == (44, 34)  # never upscaled; odd sides lose one pixel
    assert (odd["width"], odd["height"]) == (86, 64)  # 101 * 64 / 75 = 86.2
    assert small["frames"] == odd["frames"] == 20


def test_broken_inputs_are_reported_and_skipped_without_stopping_the_run(tree, tmp_path, capsys):
    add_broken_files(tree)
    out = tmp_path / "prepared"
    assert prepare(tree, out) == 1
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.mp4")) == ["left/a.mp4", "right/b.mp4"]
    report = [json.loads(line) for line in (out / REPORT_NAME).read_text().splitlines()]
    reasons = {os.path.basename(entry["input"]): entry["reason"] for entry in report}
    assert set(reasons) == {"empty.mp4", "text.mp4", "truncated.mp4"}
    assert "empty" in reasons["empty.mp4"]
    assert "text file" in reasons["text.mp4"]
    assert "truncated" in reasons["truncated.mp4"]
    assert not [p for p in out.rglob("*") if "partial" in p.name], "no temporary file is left behind"
    assert "could not be prepared" in capsys.readouterr().err


def test_finished_outputs_are_kept_by_a_second_run(tree, tmp_path, capsys):
    out = tmp_path / "prepared"
    assert prepare(tree, out) == 0
    modified = {p: p.stat().st_mtime_ns for p in out.rglob("*.mp4")}
    capsys.readouterr()
    assert prepare(tree, out) == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.mp4")} == modified
    assert capsys.readouterr().out.startswith("0 prepared, 2 kept")


def test_a_partial_output_left_by_a_killed_run_is_redone(tree, tmp_path, capsys):
    out = tmp_path / "prepared"
    partial = out / "left" / ".a.mp4.partial"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"\x00\x00\x00\x18ftypmp42 half of a video")
    assert prepare(tree, out) == 0
    assert capsys.readouterr().out.startswith("2 prepared, 0 kept")
    assert not partial.exists()
    assert video_facts(out / "left/a.mp4")["frames"] == 40


def test_txt_list_gets_a_new_list_with_the_new_paths_and_the_same_labels(tree, tmp_path):
    add_broken_files(tree)
    listing = tree / "train.txt"
    listing.write_text("# path label\nleft/a.mp4 3\nright/b.mkv 0\nleft/text.mp4 1\nleft/a.mp4 3\n")
    out = tmp_path / "prepared"
    assert prepare(listing, out) == 1  # text.mp4 fails; its line is left out of the new list
    assert (out / "train.txt").read_text() == "left/a.mp4 3\nright/b.mp4 0\nleft/a.mp4 3\n"
    for line in (out / "train.txt").read_text().splitlines():
        assert video_facts(out / line.split()[0])["codec"] == "h264"
    report = out / f"train.txt.{REPORT_NAME}"
    assert [json.loads(line)["input"] for line in report.read_text().splitlines()] == [str(tree / "left/text.mp4")]


def test_csv_list_keeps_every_column(tree, tmp_path):
    listing = tmp_path / "lists" / "val.csv"
    listing.parent.mkdir()
    with open(listing, "w", newline="") as file:
        csv.writer(file).writerows(
            [["video", "label", "split"], ["left/a.mp4", "left", "val"], ["right/b.mkv", "right", "val"]]
        )
    out = tmp_path / "prepared"
    assert prepare(listing, out, "--video_root", tree) == 0
    with open(out / "val.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert rows == [
        {"video": "left/a.mp4", "label": "left", "split": "val"},
        {"video": "right/b.mp4", "label": "right", "split": "val"},
    ]


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--keyframe_interval", "0"], "argument --keyframe_interval: must be at least 1, got 0"),
        (["--crf", "60"], "argument --crf: must be between 0 and 51, got 60"),
        (["--short_side", "1"], "argument --short_side: must be at least 2, got 1"),
        (["--num_workers", "0"], "argument --num_workers: must be at least 1, got 0"),
    ],
)
def test_bad_settings_are_usage_errors(tree, tmp_path, capsys, arguments, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["prepare-videos", str(tree), str(tmp_path / "out"), *arguments])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_bad_inputs_are_usage_errors(tree, tmp_path, capsys):
    (tmp_path / "list.json").write_text("[]")
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.txt").write_text("left/a.mp4\n")
    cases = {
        tmp_path / "missing": "no such file or folder",
        tmp_path / "list.json": "expected a videofolder tree",
        tmp_path / "empty": "holds no videos",
        tmp_path / "bad.txt": "line 1: expected `<video path> <label index>`",
    }
    for source, message in cases.items():
        with pytest.raises(SystemExit) as exit_info:
            prepare(source, tmp_path / "out")
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err


def test_other_settings_than_the_earlier_run_are_refused(tree, tmp_path, capsys):
    out = tmp_path / "prepared"
    assert prepare(tree, out, "--keyframe_interval", 8) == 0
    with pytest.raises(SystemExit) as exit_info:
        prepare(tree, out, "--keyframe_interval", 16)
    assert exit_info.value.code == 2
    assert "prepared with" in capsys.readouterr().err


def test_missing_ffmpeg_is_a_usage_error_that_says_how_to_install_it(tree, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # a PATH that holds no ffmpeg
    with pytest.raises(SystemExit) as exit_info:
        prepare(tree, tmp_path / "out")
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "ffmpeg program is not on PATH" in error and "apt-get install ffmpeg" in error


@pytest.mark.slow
def test_a_process_pool_prepares_a_tree_and_a_killed_run_resumes(tree, tmp_path):
    add_broken_files(tree)
    for index in range(6):
        write_video(tree / "more" / f"{index}.mp4", num_frames=60, height=96, width=128)
    out = tmp_path / "prepared"
    command = [sys.executable, "-m", "evl_hf", "prepare-videos", str(tree), str(out), "--num_workers", "2"]
    assert subprocess.run(command, capture_output=True).returncode == 1
    expected = {p.relative_to(out): video_facts(p)["frames"] for p in out.rglob("*.mp4")}
    assert len(expected) == 8
    shutil.rmtree(out)
    # Killed as soon as the first output appears, then run again until done.
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    while not list(out.rglob("*.mp4")) and process.poll() is None:
        time.sleep(0.05)
    os.killpg(process.pid, 9)
    process.wait()
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 1
    assert {p.relative_to(out): video_facts(p)["frames"] for p in out.rglob("*.mp4")} == expected
    assert not [p for p in out.rglob("*") if "partial" in p.name]


# ---- --format webdataset -------------------------------------------------------------------------------------------


def shard_members(path) -> dict:
    """`{member name: bytes}` of a tar shard, in the archive's order."""
    with tarfile.open(path) as archive:
        return {member.name: archive.extractfile(member).read() for member in archive}


def test_webdataset_shards_hold_each_prepared_video_with_its_label(tree, tmp_path, capsys):
    out = tmp_path / "shards"
    assert prepare(tree, out, "--format", "webdataset", "--shard_size", 1, "--short_side", 32) == 0
    assert sorted(path.name for path in out.iterdir()) == [
        "prepare_settings.json",
        "videos-000000.tar",
        "videos-000001.tar",
        f"videos.{REPORT_NAME}",
    ]
    first, second = shard_members(out / "videos-000000.tar"), shard_members(out / "videos-000001.tar")
    assert list(first) == ["left/a.mp4", "left/a.json"] and list(second) == ["right/b.mp4", "right/b.json"]
    assert json.loads(first["left/a.json"]) == {"label": "left"} and json.loads(second["right/b.json"]) == {
        "label": "right"
    }
    decoder = VideoDecoder(second["right/b.mp4"])
    assert (len(decoder), decoder.metadata.width, decoder.metadata.height) == (37, 42, 32)  # every frame, prepared
    assert "2 shard(s) written" in capsys.readouterr().out


def test_webdataset_shards_that_exist_are_kept_and_the_missing_ones_made(tree, tmp_path, capsys):
    out = tmp_path / "shards"
    assert prepare(tree, out, "--format", "webdataset", "--shard_size", 1) == 0
    kept = (out / "videos-000000.tar").stat().st_mtime_ns
    (out / "videos-000001.tar").unlink()  # as a run killed before its last shard was renamed leaves it
    (out / ".videos-000001.tar.partial").write_bytes(b"half a shard")
    capsys.readouterr()
    assert prepare(tree, out, "--format", "webdataset", "--shard_size", 1) == 0
    assert "1 shard(s) written, 1 kept from an earlier run" in capsys.readouterr().out
    assert (out / "videos-000000.tar").stat().st_mtime_ns == kept
    assert list(shard_members(out / "videos-000001.tar")) == ["right/b.mp4", "right/b.json"]
    assert not (out / ".videos-000001.tar.partial").exists() and not (out / ".webdataset-work").exists()
    with pytest.raises(SystemExit) as exit_info:  # another shard size into the same folder would mix two layouts
        prepare(tree, out, "--format", "webdataset", "--shard_size", 2)
    assert exit_info.value.code == 2 and "prepared with" in capsys.readouterr().err


def test_webdataset_leaves_broken_videos_out_and_reports_them(tree, tmp_path, capsys):
    add_broken_files(tree)
    out = tmp_path / "shards"
    assert prepare(tree, out, "--format", "webdataset", "--shard_size", 10) == 1
    assert [name for name in shard_members(out / "videos-000000.tar") if name.endswith(".mp4")] == [
        "left/a.mp4",
        "right/b.mp4",
    ]
    reported = [json.loads(line)["input"] for line in (out / f"videos.{REPORT_NAME}").read_text().splitlines()]
    assert len(reported) == 3 and all("empty" in p or "text" in p or "truncated" in p for p in reported)


def test_webdataset_of_a_txt_list_labels_with_its_indices(tree, tmp_path):
    (tree / "train.txt").write_text("left/a.mp4 0\nright/b.mkv 1\n")
    out = tmp_path / "shards"
    assert prepare(tree / "train.txt", out, "--format", "webdataset") == 0
    members = shard_members(out / "train-000000.tar")
    assert json.loads(members["left/a.json"]) == {"label": 0} and json.loads(members["right/b.json"]) == {"label": 1}


def test_webdataset_needs_label_folders(tmp_path, capsys):
    write_video(tmp_path / "flat" / "a.mp4", num_frames=8)
    with pytest.raises(SystemExit) as exit_info:
        prepare(tmp_path / "flat", tmp_path / "shards", "--format", "webdataset")
    assert exit_info.value.code == 2
    assert "has no label: the videofolder layout is INPUT/<label>/<video>" in capsys.readouterr().err


def test_webdataset_output_trains_directly(tmp_path):
    from synthetic_data import generate_synthetic_motion_dataset
    from training_utils import TINY_VIDEOS, run_video_classification
    from transformers import CLIPVisionModel

    from evl_hf.testing_utils import tiny_vision_config

    videos = generate_synthetic_motion_dataset(tmp_path / "videos", TINY_VIDEOS)
    shards = tmp_path / "shards"
    for split in ("train", "validation"):
        assert prepare(videos / split, shards, "--format", "webdataset", "--shard_size", 4, "--short_side", 32) == 0
    torch.manual_seed(0)
    clip = tmp_path / "clip"
    CLIPVisionModel(tiny_vision_config()).save_pretrained(clip)
    output_dir = tmp_path / "output"
    run_video_classification.main(
        f"""
        --model_name_or_path {clip} --streaming --train_file {shards}/train-*.tar
        --validation_file {shards}/validation-*.tar --output_dir {output_dir} --cache_dir {tmp_path / "cache"}
        --num_frames 4 --frame_stride 2 --decoder_num_layers 2 --max_steps 3 --per_device_train_batch_size 2
        --per_device_eval_batch_size 2 --save_strategy no --dataloader_num_workers 0 --disable_tqdm True
        --report_to none
    """.split()
    )
    assert json.loads((output_dir / "train_results.json").read_text())["train_skipped_videos"] == 0
    confusion = json.loads((output_dir / "confusion_matrix.json").read_text())
    assert sorted(confusion["labels"]) == ["down", "left", "right", "up"]
    assert sum(map(sum, confusion["matrix"])) == 8  # every prepared validation video, once


# ---- --format frames -----------------------------------------------------------------------------------------------


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(255**2 / ((a.float() - b.float()) ** 2).mean()))


def luma(frames: torch.Tensor) -> torch.Tensor:
    """BT.601 luma of RGB frames `(T, 3, H, W)` -> `(T, H, W)`."""
    return torch.einsum("tchw,c->thw", frames.float(), torch.tensor([0.299, 0.587, 0.114]))


def test_frames_writes_an_archive_per_video_whose_frames_are_the_sources(tree, tmp_path):
    out = tmp_path / "frames"
    assert prepare(tree, out, "--format", "frames") == 0
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.evlf")) == ["left/a.evlf", "right/b.evlf"]
    for source, archive, num_frames in (
        (tree / "left/a.mp4", out / "left/a.evlf", 40),
        (tree / "right/b.mkv", out / "right/b.evlf", 37),
    ):
        metadata = read_video_metadata(archive)
        assert (metadata.total_num_frames, metadata.frame_step) == (num_frames, 4)
        assert metadata.fps == read_video_metadata(source).fps  # the source's, as its container gives it
        assert (metadata.width, metadata.height) == (64, 48)  # smaller than 256: kept
        positions = list(range(0, num_frames, 4))
        assert FrameArchive(archive, "x").positions == positions
        original = VideoDecoder(str(source)).get_frames_at(positions).data
        stored = read_video_frames(archive, positions)
        # JPEG halves the colour resolution (4:2:0) again after the source's yuv420p: the square's coloured edges
        # cost RGB about 31 dB here, while brightness, what the detail is in, keeps about 45 dB.
        assert psnr(luma(stored), luma(original)) > 40
        assert psnr(stored, original) > 30


def test_frames_brings_the_short_side_to_256_with_even_sides_and_a_quality(tmp_path):
    root = tmp_path / "videos"
    write_video(root / "c" / "large.mp4", num_frames=9, height=300, width=401)
    for quality, out in ((90, tmp_path / "q90"), (50, tmp_path / "q50")):
        assert prepare(root, out, "--format", "frames", "--quality", quality, "--frame_step", 2) == 0
    metadata = read_video_metadata(tmp_path / "q90/c/large.evlf")
    assert (metadata.width, metadata.height) == (342, 256)  # 401 * 256 / 300 = 342.2, as for videos
    assert FrameArchive(tmp_path / "q90/c/large.evlf", "x").positions == [0, 2, 4, 6, 8]
    assert (tmp_path / "q50/c/large.evlf").stat().st_size < (tmp_path / "q90/c/large.evlf").stat().st_size


def test_frames_reports_broken_inputs_keeps_finished_archives_and_refuses_other_settings(tree, tmp_path, capsys):
    add_broken_files(tree)
    out = tmp_path / "frames"
    assert prepare(tree, out, "--format", "frames") == 1
    reasons = [json.loads(line) for line in (out / REPORT_NAME).read_text().splitlines()]
    assert sorted(os.path.basename(entry["input"]) for entry in reasons) == ["empty.mp4", "text.mp4", "truncated.mp4"]
    modified = {p: p.stat().st_mtime_ns for p in out.rglob("*.evlf")}
    assert len(modified) == 2 and not [p for p in out.rglob("*") if "partial" in p.name]
    capsys.readouterr()
    assert prepare(tree, out, "--format", "frames") == 1
    assert capsys.readouterr().out.startswith("0 prepared, 2 kept")
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.evlf")} == modified
    with pytest.raises(SystemExit) as exit_info:
        prepare(tree, out, "--format", "frames", "--quality", 80)
    assert exit_info.value.code == 2 and "prepared with" in capsys.readouterr().err


def test_frames_of_a_txt_list_gives_a_list_of_archives_with_the_same_labels(tree, tmp_path):
    listing = tree / "train.txt"
    listing.write_text("left/a.mp4 3\nright/b.mkv 0\n")
    out = tmp_path / "frames"
    assert prepare(listing, out, "--format", "frames") == 0
    assert (out / "train.txt").read_text() == "left/a.evlf 3\nright/b.evlf 0\n"
    assert read_video_metadata(out / "left/a.evlf").total_num_frames == 40


def test_frames_with_shard_size_writes_shards_of_archives_and_labels(tree, tmp_path, capsys):
    out = tmp_path / "shards"
    assert prepare(tree, out, "--format", "frames", "--shard_size", 1) == 0
    with tarfile.open(out / "videos-000001.tar") as shard:
        assert shard.getnames() == ["right/b.evlf", "right/b.json"]
        archive = shard.extractfile("right/b.evlf").read()
        assert json.loads(shard.extractfile("right/b.json").read()) == {"label": "right"}
    assert read_video_metadata(archive).total_num_frames == 37
    assert "2 shard(s) written" in capsys.readouterr().out


def test_frames_needs_no_ffmpeg_program(tree, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # a PATH that holds no ffmpeg
    assert prepare(tree, tmp_path / "frames", "--format", "frames") == 0
