"""The `evaluate` metric module examples/video_accuracy.py, loaded by path."""

import sys
from pathlib import Path

import evaluate
import numpy as np
import pytest


# The demo data generator and the metric live next to the training script in examples/, not in the library.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import video_accuracy  # noqa: E402


@pytest.fixture(scope="module")
def metric():
    return evaluate.load(video_accuracy.__file__, keep_in_memory=True)


def test_loads_by_path_without_the_hub(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(evaluate.config, "HF_EVALUATE_OFFLINE", True)
    metric = evaluate.load(video_accuracy.__file__, keep_in_memory=True)
    assert metric.compute(predictions=[[0.0, 1.0]], references=[1]) == {"accuracy": 1.0, "top5_accuracy": 1.0}


def test_top1_and_top5_match_hand_computed_values(metric):
    logits = [
        [0.1, 0.9, 0.0, 0.0, 0.0, 0.0, 0.0],  # true 1: top-1 hit
        [0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1],  # true 4: 5th highest -> top-5 hit only
        [0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1],  # true 5: 6th highest -> miss
        [-1.0, -2.0, -3.0, 0.0, -4.0, -5.0, -6.0],  # true 0: 2nd highest -> top-5 hit only
    ]
    result = metric.compute(predictions=logits, references=[1, 4, 5, 0])
    assert result == {"accuracy": 0.25, "top5_accuracy": 0.75}


def test_k_sets_the_top_k_cut(metric):
    logits = [[3.0, 2.0, 1.0], [3.0, 2.0, 1.0], [3.0, 2.0, 1.0]]
    result = metric.compute(predictions=logits, references=[0, 1, 2], k=2)
    assert result == pytest.approx({"accuracy": 1 / 3, "top5_accuracy": 2 / 3})


def test_with_fewer_classes_than_k_every_clip_is_a_top5_hit(metric):
    result = metric.compute(predictions=[[0.2, 0.8], [0.9, 0.1]], references=[0, 1])
    assert result == {"accuracy": 0.0, "top5_accuracy": 1.0}


def test_ties_are_broken_like_argmax(metric):
    # argmax of a tie picks the lowest index: class 0 is the top-1 prediction, class 1 is second.
    result = metric.compute(predictions=[[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]], references=[0, 1], k=1)
    assert result == {"accuracy": 0.5, "top5_accuracy": 0.5}


def test_top1_agrees_with_argmax_on_random_scores(metric):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(200, 10)).astype(np.float32)
    references = rng.integers(0, 10, size=200)
    result = metric.compute(predictions=logits, references=references)
    assert result["accuracy"] == pytest.approx(np.mean(logits.argmax(axis=1) == references))
    top5 = np.argsort(-logits, axis=1, kind="stable")[:, :5]
    assert result["top5_accuracy"] == pytest.approx(np.mean((top5 == references[:, None]).any(axis=1)))


def test_batches_added_one_by_one_give_the_same_result(metric):
    metric.add_batch(predictions=[[0.0, 1.0, 2.0]], references=[2])
    metric.add_batch(predictions=[[2.0, 1.0, 0.0]], references=[1])
    assert metric.compute(k=1) == {"accuracy": 0.5, "top5_accuracy": 0.5}


def test_a_reference_outside_the_classes_is_an_error(metric):
    with pytest.raises(ValueError, match="class indices"):
        metric.compute(predictions=[[0.1, 0.9]], references=[2])
