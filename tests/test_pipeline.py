"""`pipeline("video-classification")` and the Auto classes on a saved EVL folder and a real encoded mp4."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torchcodec.encoders import VideoEncoder
from transformers import AutoImageProcessor, AutoVideoProcessor, pipeline

from evl_hf import EVLForVideoClassification, EVLImageProcessor, EVLVideoProcessor
from evl_hf.testing_utils import save_tiny_model


LABELS = ["left", "right", "up", "down"]


@pytest.fixture(scope="module")
def video_path(tmp_path_factory):
    """A 2 s, 15 fps, 48x64 H.264 clip of a bright square moving right."""
    frames = torch.zeros(30, 3, 48, 64, dtype=torch.uint8)
    for t in range(30):
        frames[t, :, 16:32, t : t + 16] = 255
    path = tmp_path_factory.mktemp("video") / "square.mp4"
    VideoEncoder(frames, frame_rate=15).to_file(path, codec="libx264", pixel_format="yuv420p")
    return path


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("model"), labels=LABELS, image_processor=True)


def test_pipeline_from_a_folder_returns_top_k_labels_with_scores(model_folder, video_path):
    classifier = pipeline("video-classification", model=str(model_folder))
    predictions = classifier(str(video_path), top_k=3)
    assert len(predictions) == 3
    assert {p["label"] for p in predictions} <= set(LABELS)
    scores = [p["score"] for p in predictions]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1 + 1e-6


def test_pipeline_scores_equal_the_model_softmax(model_folder, video_path):
    model = EVLForVideoClassification.from_pretrained(model_folder).eval()
    processor = EVLVideoProcessor.from_pretrained(model_folder)
    classifier = pipeline("video-classification", model=model, video_processor=processor)
    predictions = classifier(str(video_path), top_k=4)
    with torch.no_grad():
        probabilities = model(**processor(str(video_path), return_tensors="pt")).logits.softmax(-1)[0]
    for prediction in predictions:
        assert prediction["score"] == pytest.approx(probabilities[LABELS.index(prediction["label"])].item(), abs=1e-5)


def test_auto_processors_load_the_evl_classes(model_folder):
    assert isinstance(AutoVideoProcessor.from_pretrained(model_folder), EVLVideoProcessor)
    assert isinstance(AutoImageProcessor.from_pretrained(model_folder), EVLImageProcessor)


def test_folder_classifies_a_video_with_trust_remote_code_where_evl_hf_is_missing(model_folder, video_path, tmp_path):
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["evl_hf"] = None  # any `import evl_hf` now fails
        from transformers import pipeline
        classifier = pipeline("video-classification", model={str(model_folder)!r}, trust_remote_code=True)
        assert type(classifier.model).__module__.startswith("transformers_modules"), type(classifier.model).__module__
        assert type(classifier.video_processor).__name__ == "EVLVideoProcessor"
        print(classifier({str(video_path)!r}, top_k=2))
        """
    )
    env = dict(os.environ, HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "'label'" in result.stdout
