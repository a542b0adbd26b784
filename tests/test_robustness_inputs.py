"""Odd but valid videos decode; broken ones fail fast with an exception that names the file and the problem.

The corpus is generated here with the ffmpeg command line tool: tiny frames (except the one large case) and a few
frames each, so the whole module runs in seconds.
"""

import io
import os
import shutil
import struct
import subprocess

import pytest
import torch

from evl_hf.video_processing_evl import EVLVideoProcessor
from evl_hf.video_utils import VideoDecodingError, open_video, read_video_frames, sample_frame_indices


pytest.importorskip("torchcodec.decoders")

# A broken file must never hang the decoder (pytest-timeout turns a hang into a failure).
pytestmark = pytest.mark.timeout(60)

# A hue that turns with every frame makes all frames differ.
PATTERN = "testsrc2=size=32x24:rate=25,hue=h=n*7"

# name -> (ffmpeg arguments after the input, lavfi source, number of frames, (height, width))
ODD_VIDEOS = {
    "single_frame.mp4": (["-c:v", "libx264", "-pix_fmt", "yuv420p"], PATTERN, 1, (24, 32)),
    "three_frames.mp4": (["-c:v", "libx264", "-pix_fmt", "yuv420p"], PATTERN, 3, (24, 32)),
    "tiny_8x8.mp4": (["-c:v", "libx264", "-pix_fmt", "yuv420p"], "testsrc2=size=8x8:rate=25", 10, (8, 8)),
    "large_1920x1080.mp4": (
        ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"],
        "testsrc2=size=1920x1080:rate=25",
        3,
        (1080, 1920),
    ),
    "gray_ffv1.mkv": (["-c:v", "ffv1", "-pix_fmt", "gray"], PATTERN, 10, (24, 32)),
    "alpha_vp9.webm": (["-c:v", "libvpx-vp9", "-pix_fmt", "yuva420p"], PATTERN, 10, (24, 32)),
    "rgba_png.mov": (["-c:v", "png", "-pix_fmt", "rgba"], PATTERN, 10, (24, 32)),
    "argb_qtrle.mov": (["-c:v", "qtrle", "-pix_fmt", "argb"], PATTERN, 10, (24, 32)),
    "ten_bit.mp4": (["-c:v", "libx264", "-pix_fmt", "yuv420p10le"], PATTERN, 10, (24, 32)),
    "vp9.webm": (["-c:v", "libvpx-vp9", "-pix_fmt", "yuv420p"], PATTERN, 10, (24, 32)),
    "h264.mkv": (["-c:v", "libx264", "-pix_fmt", "yuv420p"], PATTERN, 10, (24, 32)),
    "h264.mov": (["-c:v", "libx264", "-pix_fmt", "yuv420p"], PATTERN, 10, (24, 32)),
    "mpeg4.avi": (["-c:v", "mpeg4"], PATTERN, 10, (24, 32)),
    # Frame durations of 40 ms, then a 300 ms gap, then 40 ms again.
    "variable_frame_rate.mkv": (
        ["-vf", "setpts='N*0.04/TB+gte(N,5)*0.3/TB'", "-fps_mode", "vfr", "-c:v", "libx264", "-pix_fmt", "yuv420p"],
        PATTERN,
        10,
        (24, 32),
    ),
}


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", *args], check=True, timeout=60)


def _top_level_mp4_box_offset(data: bytes, box_type: bytes) -> int:
    position = 0
    while position + 8 <= len(data):
        size, found = struct.unpack(">I4s", data[position : position + 8])
        if found == box_type:
            return position
        position += size
    raise AssertionError(f"no {box_type!r} box")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    if shutil.which("ffmpeg") is None:
        pytest.skip("the ffmpeg command line tool is needed to generate the test videos")
    folder = tmp_path_factory.mktemp("corpus")
    for name, (output_args, source, num_video_frames, _) in ODD_VIDEOS.items():
        _ffmpeg("-f", "lavfi", "-i", f"{source},trim=end_frame={num_video_frames}", *output_args, str(folder / name))

    # Broken files.
    (folder / "empty.mp4").write_bytes(b"")
    random_bytes = torch.randint(0, 256, (4096,), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    (folder / "random_bytes.mp4").write_bytes(random_bytes.numpy().tobytes())
    (folder / "text.mp4").write_text("This is a text file that only claims to be a video.\n" * 20)
    _ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=0.5", "-c:a", "aac", str(folder / "audio_only.mp4"))
    # An MP4 whose index (`moov`) is at the end, cut in half: the index is lost.
    h264 = ["-f", "lavfi", "-i", f"{PATTERN},trim=end_frame=25", "-c:v", "libx264", "-pix_fmt", "yuv420p"]
    _ffmpeg(*h264, str(folder / "whole.mp4"))
    whole = (folder / "whole.mp4").read_bytes()
    (folder / "truncated_index.mp4").write_bytes(whole[: len(whole) // 2])
    # An MP4 with its index first (`faststart`), cut 200 bytes into the frame data: the index lists frames whose
    # bytes are missing.
    _ffmpeg(*h264, "-movflags", "+faststart", str(folder / "whole_faststart.mp4"))
    faststart = (folder / "whole_faststart.mp4").read_bytes()
    (folder / "truncated_data.mp4").write_bytes(faststart[: _top_level_mp4_box_offset(faststart, b"mdat") + 200])
    (folder / "a_folder.mp4").mkdir()
    return folder


@pytest.fixture(scope="module")
def small_processor():
    return EVLVideoProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})


# --------------------------------------------------------------------------------------------------------------------
# Odd but valid videos


@pytest.mark.parametrize("name", sorted(ODD_VIDEOS))
def test_odd_valid_video_decodes_to_a_full_rgb_clip(corpus, name):
    _, _, num_video_frames, (height, width) = ODD_VIDEOS[name]
    frame_counts = []

    def sampler(num_frames_found):
        frame_counts.append(num_frames_found)
        return sample_frame_indices(num_frames_found, 8)

    frames = read_video_frames(corpus / name, sampler)
    assert frame_counts == [num_video_frames]  # every frame was found
    assert frames.dtype == torch.uint8
    assert frames.shape == (8, 3, height, width)
    assert frames.float().std() > 10  # a picture, not a blank buffer


@pytest.mark.parametrize("name", sorted(ODD_VIDEOS))
def test_odd_valid_video_gives_pixel_values(corpus, small_processor, name):
    pixel_values = small_processor(str(corpus / name), return_tensors="pt")["pixel_values"]
    assert pixel_values.shape == (1, 8, 3, 32, 32)
    assert torch.isfinite(pixel_values).all()


def test_large_video_gives_default_size_pixel_values(corpus):
    pixel_values = EVLVideoProcessor()(str(corpus / "large_1920x1080.mp4"), return_tensors="pt")["pixel_values"]
    assert pixel_values.shape == (1, 8, 3, 224, 224)


def test_grayscale_video_decodes_to_equal_rgb_channels(corpus):
    frames = read_video_frames(corpus / "gray_ffv1.mkv", range(10))
    assert torch.equal(frames[:, 0], frames[:, 1])
    assert torch.equal(frames[:, 1], frames[:, 2])


def test_short_videos_repeat_their_last_frame(corpus):
    frames = read_video_frames(corpus / "three_frames.mp4", lambda n: sample_frame_indices(n, 8))  # 0, 2, 2, ...
    assert not torch.equal(frames[0], frames[1])
    assert all(torch.equal(frame, frames[1]) for frame in frames[1:])
    single = read_video_frames(corpus / "single_frame.mp4", lambda n: sample_frame_indices(n, 8))
    assert all(torch.equal(frame, single[0]) for frame in single)


def test_ten_bit_video_matches_its_eight_bit_encoding(corpus):
    # The same lossy source in 10 and 8 bit: the decoded uint8 frames agree up to coding noise.
    ten_bit = read_video_frames(corpus / "ten_bit.mp4", range(10)).float()
    eight_bit = read_video_frames(corpus / "h264.mov", range(10)).float()
    assert (ten_bit - eight_bit).abs().mean() < 8


# --------------------------------------------------------------------------------------------------------------------
# Broken inputs

BROKEN_FILES = {
    "empty.mp4": r"empty \(0 bytes\)",
    "random_bytes.mp4": r"not a video container",
    "text.mp4": r"text file",
    "audio_only.mp4": r"no video stream",
    "truncated_index.mp4": r"truncated",
    "truncated_data.mp4": r"truncated",
}


def _read_with_reader(reader, path, processor):
    if reader == "read_video_frames":
        return read_video_frames(path, lambda n: sample_frame_indices(n, 8))
    return processor(str(path), return_tensors="pt")


@pytest.mark.parametrize("reader", ["read_video_frames", "processor"])
@pytest.mark.parametrize("name", sorted(BROKEN_FILES))
def test_broken_file_raises_video_decoding_error_naming_file_and_cause(corpus, small_processor, reader, name):
    with pytest.raises(VideoDecodingError, match=BROKEN_FILES[name]) as error:
        _read_with_reader(reader, corpus / name, small_processor)
    assert str(corpus / name) in str(error.value)
    assert isinstance(error.value, ValueError)
    assert ".cpp" not in str(error.value)  # our explanation, not the decoder's internals


@pytest.mark.parametrize("reader", ["read_video_frames", "processor"])
def test_missing_path_raises_file_not_found(corpus, small_processor, reader):
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        _read_with_reader(reader, corpus / "missing.mp4", small_processor)


@pytest.mark.parametrize("reader", ["read_video_frames", "processor"])
def test_folder_raises_is_a_directory(corpus, small_processor, reader):
    with pytest.raises(IsADirectoryError, match="a_folder.mp4"):
        _read_with_reader(reader, corpus / "a_folder.mp4", small_processor)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes need a POSIX system")
def test_named_pipe_raises_instead_of_blocking(tmp_path):
    # Opening a pipe that no one writes to would block forever.
    pipe = tmp_path / "pipe.mp4"
    os.mkfifo(pipe)
    with pytest.raises(VideoDecodingError, match="not a regular file"):
        read_video_frames(pipe, [0])


# Stored bytes (a `datasets` row) and file objects get the diagnosis of a file, naming the video as the caller does.
OPENED_FROM_BYTES = ["empty.mp4", "text.mp4", "audio_only.mp4", "truncated_index.mp4"]


@pytest.mark.parametrize("kind", ["bytes", "file object"])
@pytest.mark.parametrize("name", OPENED_FROM_BYTES)
def test_broken_bytes_raise_the_diagnosis_of_the_file_naming_the_video(corpus, name, kind):
    data = (corpus / name).read_bytes()
    source = data if kind == "bytes" else io.BytesIO(data)
    expected = "empty" if name == "empty.mp4" else BROKEN_FILES[name]
    with pytest.raises(VideoDecodingError, match=expected) as error:
        open_video(source, name=f"row 7 of {name}")
    assert f"row 7 of {name}" in str(error.value) and ".cpp" not in str(error.value)


def test_good_bytes_decode_the_frames_of_the_file(corpus):
    path = corpus / "h264.mkv"
    from_bytes = read_video_frames(open_video(path.read_bytes(), name="h264.mkv"), [0, 5, 9])
    assert torch.equal(from_bytes, read_video_frames(path, [0, 5, 9]))
