"""`evl-hf timeline` and `classify_windows`: every window of a video, one backbone pass per sampled frame."""

import json

import pytest
import torch

from evl_hf import EVLForVideoClassification, EVLVideoProcessor
from evl_hf.commands import main
from evl_hf.inference import classify_windows, window_frame_indices
from evl_hf.video_utils import read_video_frames

from .conftest import LABELS, encode_video, save_tiny_model


@pytest.fixture(scope="module")
def model_and_processor(model_folder):
    model = EVLForVideoClassification.from_pretrained(model_folder).eval()
    return model, EVLVideoProcessor.from_pretrained(model_folder)


def model_logits(model, processor, video, indices):
    """The model on the clip made of `indices`, preprocessed by the processor as for any clip."""
    frames = read_video_frames(video, indices)
    with torch.no_grad():
        return model(**processor(frames, return_tensors="pt")).logits[0]


def logits_from_probabilities(probabilities):
    return torch.tensor(probabilities).log()


def assert_window_matches_model(model, processor, video, window, probabilities):
    expected = model_logits(model, processor, video, window["frame_indices"])
    torch.testing.assert_close(torch.tensor(probabilities), expected.softmax(-1), atol=1e-5, rtol=0)
    # The log-probabilities are the logits up to a constant: compare those too, at the logits' tolerance.
    log_probabilities = logits_from_probabilities(probabilities)
    torch.testing.assert_close(
        log_probabilities - log_probabilities.mean(), expected - expected.mean(), atol=1e-4, rtol=0
    )


def test_every_window_equals_the_model_on_that_windows_frames(model_and_processor, tmp_path):
    model, processor = model_and_processor
    video = encode_video(tmp_path / "clip.mp4", 61)
    # a stride that is not a multiple of frame_stride: windows share some frames and not others
    result = classify_windows(model, processor, video, stride_frames=3, batch_size=5, progress=False)

    assert [w["start_frame"] for w in result["windows"]] == list(range(0, 61 - 12, 3))
    assert result["labels"] == LABELS and result["num_video_frames"] == 61 and result["fps"] == pytest.approx(15)
    for window, probabilities in zip(result["windows"], result["probabilities"]):
        assert window["frame_indices"] == [window["start_frame"] + 4 * i for i in range(4)]  # frame_stride 4 apart
        assert window["end_frame"] == window["start_frame"] + 12
        assert window["start_time"] == pytest.approx(window["start_frame"] / 15)
        assert_window_matches_model(model, processor, video, window, probabilities)


def test_a_model_without_temporal_cross_attention_decodes_through_the_model(tmp_path):
    folder = save_tiny_model(tmp_path / "model", use_temporal_cross_attention=False)
    model = EVLForVideoClassification.from_pretrained(folder).eval()
    processor = EVLVideoProcessor.from_pretrained(folder)
    video = encode_video(tmp_path / "clip.mp4", 30)
    result = classify_windows(model, processor, video, stride_frames=2, batch_size=3, progress=False)
    assert len(result["windows"]) == (30 - 13) // 2 + 1
    for window, probabilities in zip(result["windows"], result["probabilities"]):
        assert_window_matches_model(model, processor, video, window, probabilities)


def test_the_centred_window_equals_the_processor_reading_the_file(model_and_processor, tmp_path):
    model, processor = model_and_processor
    video = encode_video(tmp_path / "clip.mp4", 61)  # the processor's centred clip starts at (61 - 13) // 2 = 24
    result = classify_windows(model, processor, video, progress=False)
    centred = [w["start_frame"] for w in result["windows"]].index(24)
    with torch.no_grad():
        expected = model(**processor(str(video), return_tensors="pt")).logits[0].softmax(-1)
    torch.testing.assert_close(torch.tensor(result["probabilities"][centred]), expected, atol=1e-5, rtol=0)
    window = result["windows"][centred]
    assert window["labels"][0] == LABELS[int(expected.argmax())]
    assert window["scores"] == pytest.approx(sorted(expected.tolist(), reverse=True)[:5], abs=1e-5)


def test_a_video_shorter_than_one_window_repeats_its_last_frame(model_and_processor, tmp_path):
    model, processor = model_and_processor
    video = encode_video(tmp_path / "short.mp4", 7)  # a window spans 13 frames
    result = classify_windows(model, processor, video, progress=False)

    assert len(result["windows"]) == 1
    assert (result["windows"][0]["start_frame"], result["windows"][0]["end_frame"]) == (0, 6)
    assert result["windows"][0]["frame_indices"] == [0, 4, 6, 6]
    with torch.no_grad():  # the processor on the file samples frames 0, 4, 6, 6
        expected = model(**processor(str(video), return_tensors="pt")).logits[0].softmax(-1)
    torch.testing.assert_close(torch.tensor(result["probabilities"][0]), expected, atol=1e-5, rtol=0)


def test_window_frame_indices_cover_the_video_at_the_stride():
    assert window_frame_indices(30, 4, 4, 4) == [[s, s + 4, s + 8, s + 12] for s in range(0, 18, 4)]
    assert window_frame_indices(3, 4, 4, 4) == [[0, 2, 2, 2]]
    assert window_frame_indices(13, 4, 4, 100) == [[0, 4, 8, 12]]


def test_a_long_video_runs_the_backbone_once_per_frame_and_frees_features(model_and_processor, tmp_path):
    model, processor = model_and_processor
    video = encode_video(tmp_path / "long.mp4", 1500, height=32, width=48, fps=30)
    backbone_frames = []
    get_frame_features = model.evl.get_frame_features

    def counting_get_frame_features(frames):
        backbone_frames.append(frames.shape[0])
        return get_frame_features(frames)

    model.evl.get_frame_features = counting_get_frame_features
    try:
        result = classify_windows(model, processor, video, batch_size=8, progress=False)
    finally:
        del model.evl.get_frame_features

    windows = result["windows"]
    assert len(windows) == (1500 - 13) // 4 + 1
    # every 4th frame is in some window, and each went through the backbone exactly once
    assert sum(backbone_frames) == 1500 // 4
    assert max(backbone_frames) <= 8 + 3  # a batch of 8 windows at stride 4 brings at most 11 new frames
    # features are freed after their last window: at most one batch of windows' frames (8 windows of 4 frames,
    # overlapping) is held, however long the video
    assert result["max_cached_frames"] <= 8 + 3
    for index in (0, len(windows) // 2, len(windows) - 1):
        assert_window_matches_model(model, processor, video, windows[index], result["probabilities"][index])


def test_command_writes_json_and_a_plot(model_folder, tmp_path):
    video = encode_video(tmp_path / "clip.mp4", 40)
    output, plot = tmp_path / "timeline.json", tmp_path / "timeline.png"
    status = main(
        [
            "timeline",
            "--model",
            str(model_folder),
            str(video),
            "--output",
            str(output),
            "--plot",
            str(plot),
            "--top_k",
            "2",
        ]
    )
    assert status == 0
    result = json.loads(output.read_text())
    assert len(result["windows"]) == (40 - 13) // 4 + 1
    assert all(len(window["labels"]) == 2 and set(window["labels"]) <= set(LABELS) for window in result["windows"])
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_command_rejects_a_missing_video_with_status_2(model_folder, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["timeline", "--model", str(model_folder), str(tmp_path / "missing.mp4")])
    assert exit_info.value.code == 2
    assert "missing.mp4" in capsys.readouterr().err


def test_command_reports_an_unreadable_video_with_status_1(model_folder, tmp_path, capsys):
    broken = tmp_path / "broken.mp4"
    broken.write_text("not a video")
    assert main(["timeline", "--model", str(model_folder), str(broken)]) == 1
    error = capsys.readouterr().err
    assert "broken.mp4" in error and "text file" in error


@pytest.mark.slow  # a subprocess importing torch, then the tiny model over a 10 s video: 20-60 s on 2 busy cores
def test_the_benchmark_runs_and_matches_the_per_window_model(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "timeline", "--quick", "--video_dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=root,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["num_windows"] == (300 - 113) // 16 + 1
    assert result["max_probability_difference"] < 1e-5
    assert all(value[0] > 0 for value in result["whole_video_cpu_seconds"].values())


def test_saliency_writes_the_best_windows_with_their_attention(model_folder, tmp_path):
    from PIL import Image

    video = encode_video(tmp_path / "clip.mp4", 40)
    output, folder = tmp_path / "timeline.json", tmp_path / "saliency"
    arguments = ["timeline", "--model", str(model_folder), str(video), "--output", str(output)]
    assert main([*arguments, "--saliency", str(folder), "--saliency_windows", "2"]) == 0
    windows = json.loads(output.read_text())["windows"]
    entries = json.loads((folder / "saliency.json").read_text())
    best = sorted(range(len(windows)), key=lambda i: windows[i]["scores"][0], reverse=True)[:2]
    assert [entry["window"] for entry in entries] == sorted(best)
    for entry in entries:
        window = windows[entry["window"]]
        assert entry["frames"] == list(range(window["start_frame"], window["end_frame"] + 1, 4))
        assert sum(entry["frame_attention_shares"]) == pytest.approx(1.0, abs=1e-5)
        image = Image.open(folder / entry["image"])
        assert image.size == (4 * 32, 32)  # the 4 frames the model saw, side by side
