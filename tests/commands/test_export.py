"""`evl-hf export`: an ONNX file that onnxruntime runs at any batch size and clip length with PyTorch's logits."""

import json

import pytest
import torch

from evl_hf import EVLForVideoClassification, EVLVideoProcessor
from evl_hf.commands import main

from .conftest import LABELS, encode_video


onnx = pytest.importorskip("onnx", reason="the `export` extra is not installed")
onnxruntime = pytest.importorskip("onnxruntime", reason="the `export` extra is not installed")
pytest.importorskip("onnxscript", reason="the `export` extra is not installed")


@pytest.fixture(scope="module")
def exported(model_folder, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    assert main(["export", "--model", str(model_folder), "--output", str(path), "--opset", "18"]) == 0
    return path


@pytest.mark.slow  # the export (torch.export, ONNX translation) takes 5 s on a quiet 2-core CPU, 20-110 s on a busy one
@pytest.mark.parametrize("batch_size, num_frames", [(1, 4), (4, 4), (2, 2), (1, 7), (3, 16)])
def test_onnxruntime_logits_equal_pytorch_at_any_batch_size_and_clip_length(
    model_folder, exported, batch_size, num_frames
):
    model = EVLForVideoClassification.from_pretrained(model_folder).eval()
    assert model.config.num_frames == 4  # traced at 4 frames: other lengths interpolate the position embedding
    generator = torch.Generator().manual_seed(batch_size)
    pixel_values = torch.randn(batch_size, num_frames, 3, 32, 32, generator=generator)
    session = onnxruntime.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"pixel_values": pixel_values.numpy()})
    with torch.no_grad():
        expected = model(pixel_values=pixel_values).logits
    torch.testing.assert_close(torch.from_numpy(logits), expected, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_a_processed_video_classifies_the_same_with_onnxruntime(model_folder, exported, tmp_path):
    video = encode_video(tmp_path / "clip.mp4", 30)
    processor = EVLVideoProcessor.from_pretrained(model_folder)
    pixel_values = processor(str(video), return_tensors="pt")["pixel_values"]
    session = onnxruntime.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"pixel_values": pixel_values.numpy()})
    model = EVLForVideoClassification.from_pretrained(model_folder).eval()
    with torch.no_grad():
        expected = model(pixel_values=pixel_values).logits
    torch.testing.assert_close(torch.from_numpy(logits), expected, atol=1e-4, rtol=0)
    # the file carries what a runtime needs to read its output and build its input
    metadata = {entry.key: entry.value for entry in onnx.load(str(exported)).metadata_props}
    assert json.loads(metadata["id2label"]) == {str(i): label for i, label in enumerate(LABELS)}
    assert (metadata["num_frames"], metadata["image_size"]) == ("4", "32")
    graph_input = session.get_inputs()[0]
    assert graph_input.name == "pixel_values" and graph_input.shape[2:] == [3, 32, 32]
    assert not any(isinstance(size, int) for size in graph_input.shape[:2])  # batch and frames are symbolic


def test_a_bad_model_path_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--model", str(tmp_path / "no_model"), "--output", str(tmp_path / "model.onnx")])
    assert exit_info.value.code == 2
    assert "no_model" in capsys.readouterr().err


@pytest.mark.slow
def test_the_onnx_benchmark_runs_and_reports_parity():
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "onnx", "--quick"], capture_output=True, text=True, timeout=600, cwd=root
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["max_logit_difference"] < 1e-4
    assert all(value > 0 for value in result["median_seconds"].values())
