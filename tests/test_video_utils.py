"""Tests of reading videos (`evl_hf.video_utils`): opening paths, bytes, file objects and URLs, decoding the frames
asked for, and the metadata. Broken files are the subject of test_robustness_inputs.py."""

import functools
import http.server
import io
import json
import shutil
import socket
import subprocess
import threading
import time

import pytest
import torch

from evl_hf.testing_utils import encode_video
from evl_hf.video_processing_evl import EVLVideoProcessor
from evl_hf.video_utils import (
    VideoDecodingError,
    is_video_decoder,
    load_video_frames,
    open_video,
    read_video_frames,
    read_video_metadata,
    sample_frame_indices,
)


torchcodec_decoders = pytest.importorskip("torchcodec.decoders")

NUM_VIDEO_FRAMES = 160


@pytest.fixture(scope="module")
def video_path(tmp_path_factory):
    """H.264 MP4, 160 frames of 40x32 at 25 fps, every frame different."""
    return encode_video(
        tmp_path_factory.mktemp("videos") / "pattern.mp4", NUM_VIDEO_FRAMES, height=32, width=40, fps=25
    )


@pytest.fixture(scope="module")
def all_frames(video_path) -> torch.Tensor:
    """Every frame, decoded sequentially from the start: the reference the sampled decodes must match."""
    return torchcodec_decoders.VideoDecoder(str(video_path))[:]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


@pytest.fixture(scope="module")
def server(video_path):
    """An HTTP server on 127.0.0.1, in a thread, serving the folder of `video_path` (and a text file `notes.mp4`);
    yields its address."""
    (video_path.parent / "notes.mp4").write_text("This text only claims to be a video.\n" * 20)
    handler = functools.partial(_QuietHandler, directory=str(video_path.parent))
    # A proxy set in the environment must not stand between the test and its own server.
    with pytest.MonkeyPatch.context() as patch, http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as httpd:
        patch.setenv("no_proxy", "127.0.0.1")
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
        httpd.shutdown()


# --------------------------------------------------------------------------------------------------------------------
# Decoding the frames asked for


def test_read_video_frames_returns_the_requested_frames_as_uint8_rgb(video_path, all_frames):
    indices = [3, 40, 40, 159, 7]  # repeats and any order are allowed
    frames = read_video_frames(video_path, indices)
    assert frames.dtype == torch.uint8
    assert frames.shape == (5, 3, 32, 40)
    assert torch.equal(frames, all_frames[indices])
    assert not torch.equal(frames[0], frames[4])  # neighbouring frames differ, so a wrong index would show


def test_read_video_frames_accepts_a_sampling_function(video_path, all_frames):
    frames = read_video_frames(str(video_path), lambda n: sample_frame_indices(n, 8, frame_stride=16))
    assert torch.equal(frames, all_frames[sample_frame_indices(NUM_VIDEO_FRAMES, 8, frame_stride=16)])


def test_read_video_frames_accepts_a_torchcodec_decoder(video_path, all_frames):
    decoder = torchcodec_decoders.VideoDecoder(str(video_path), dimension_order="NHWC")
    frames = read_video_frames(decoder, [0, 80])
    assert frames.shape == (2, 3, 32, 40)
    assert torch.equal(frames, all_frames[[0, 80]])


def test_read_video_frames_reads_bytes_and_file_objects_like_the_file(video_path, all_frames):
    data = video_path.read_bytes()
    assert torch.equal(read_video_frames(data, [5, 90]), all_frames[[5, 90]])
    assert torch.equal(read_video_frames(io.BytesIO(data), [5, 90]), all_frames[[5, 90]])


def test_read_video_frames_rejects_out_of_range_indices_naming_the_file(video_path):
    with pytest.raises(IndexError, match=r"\[160\].*pattern\.mp4.*160 frames"):
        read_video_frames(video_path, [0, 160])


def test_load_video_frames_gives_the_metadata_with_the_frame_indices(video_path, all_frames):
    frames, metadata = load_video_frames(video_path, lambda metadata: [metadata.total_num_frames - 1, 0])
    assert torch.equal(frames, all_frames[[159, 0]])
    assert metadata.frames_indices == [159, 0]
    assert (metadata.total_num_frames, metadata.fps, metadata.video_backend) == (160, 25, "torchcodec")


def test_only_the_sampled_frames_are_decoded(tmp_path):
    # In an intra-only MJPEG MOV each frame is one self-contained packet. Destroying the packets of every frame the
    # clip does not use leaves a file that still decodes at the sampled frames, and only there.
    if shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None:
        pytest.skip("the ffmpeg and ffprobe command line tools are needed to write and inspect an MJPEG file")
    path = tmp_path / "intra.mov"
    source = "testsrc2=size=32x32:rate=25,hue=h=n*7,trim=end_frame=16"
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i", source, "-c:v", "mjpeg", str(path)],
        check=True,
        timeout=60,
    )
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "packet=pos,size", "-of", "json", path],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    packets = [(int(p["pos"]), int(p["size"])) for p in json.loads(probe.stdout)["packets"]]
    assert len(packets) == 16
    processor = EVLVideoProcessor(
        num_frames=4, frame_stride=4, size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    sampled = sample_frame_indices(16, 4, frame_stride=4)
    data = bytearray(path.read_bytes())
    for index, (position, size) in enumerate(packets):
        if index not in sampled:
            data[position : position + size] = bytes(size)
    damaged = tmp_path / "intra_damaged.mov"
    damaged.write_bytes(bytes(data))

    assert torch.equal(read_video_frames(damaged, sampled), torchcodec_decoders.VideoDecoder(str(path))[:][sampled])
    assert torch.equal(
        processor(str(damaged), return_tensors="pt")["pixel_values"],
        processor(str(path), return_tensors="pt")["pixel_values"],
    )
    with pytest.raises(VideoDecodingError, match="intra_damaged.mov"):
        read_video_frames(damaged, range(16))


# --------------------------------------------------------------------------------------------------------------------
# Metadata and decoders


def test_read_video_metadata_of_a_path_bytes_and_a_decoder_agree(video_path):
    decoder = open_video(video_path)
    for video in (video_path, video_path.read_bytes(), decoder):
        metadata = read_video_metadata(video)
        assert (metadata.total_num_frames, metadata.fps, metadata.width, metadata.height) == (160, 25, 40, 32)
        assert metadata.duration == pytest.approx(6.4, abs=0.05)


def test_is_video_decoder_recognises_torchcodec_decoders_only(video_path):
    assert is_video_decoder(open_video(video_path))
    assert not is_video_decoder(str(video_path))
    assert not is_video_decoder(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))


# --------------------------------------------------------------------------------------------------------------------
# URLs


def test_a_url_reads_the_frames_of_the_file(server, all_frames):
    url = f"{server}/pattern.mp4"
    assert torch.equal(read_video_frames(url, [0, 80, 159]), all_frames[[0, 80, 159]])
    assert read_video_metadata(url).total_num_frames == NUM_VIDEO_FRAMES


def test_the_processor_reads_a_url_as_it_reads_the_file(server, video_path):
    processor = EVLVideoProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    from_url = processor(f"{server}/pattern.mp4", return_tensors="pt", return_metadata=True)
    from_path = processor(str(video_path), return_tensors="pt", return_metadata=True)
    assert torch.equal(from_url["pixel_values"], from_path["pixel_values"])
    assert from_url["video_metadata"][0].frames_indices == from_path["video_metadata"][0].frames_indices


def test_a_url_the_server_does_not_have_raises_file_not_found_naming_it(server):
    with pytest.raises(FileNotFoundError, match=r"404.*missing\.mp4"):
        open_video(f"{server}/missing.mp4")


def test_a_url_to_something_else_than_a_video_gets_the_diagnosis_of_a_file(server):
    url = f"{server}/notes.mp4"
    with pytest.raises(VideoDecodingError, match="text file") as error:
        read_video_frames(url, [0])
    assert url in str(error.value)


def test_a_server_that_never_answers_times_out_naming_the_url():
    # A socket that listens but never answers: connections complete, requests get no reply.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/video.mp4"
        start = time.monotonic()
        with pytest.raises(TimeoutError, match="video.mp4"):
            open_video(url, timeout=0.5)
        assert time.monotonic() - start < 10


def test_a_server_that_refuses_the_connection_raises_connection_error_naming_the_url():
    with socket.socket() as unused:  # a port nothing listens on once this socket is closed
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    with pytest.raises(ConnectionError, match=rf"127\.0\.0\.1:{port}/video\.mp4"):
        open_video(f"http://127.0.0.1:{port}/video.mp4", timeout=5)
