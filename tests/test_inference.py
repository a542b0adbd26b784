"""The inference core (evl_hf/inference.py): scores by head type, and every route that runs a model agreeing on them."""

import json

import pytest
import torch
from transformers import pipeline

import evl_hf  # noqa: F401  (registers EVL with the pipeline)
from evl_hf import EVLConfig, EVLForVideoClassification, EVLVideoProcessor
from evl_hf.commands import main
from evl_hf.commands.demo import classify_video
from evl_hf.inference import classify_windows, default_function_to_apply, postprocess_logits, top_k_labels
from evl_hf.testing_utils import encode_video, save_tiny_model


HEADS = {
    "single_label": {},
    "multi_label": {"problem_type": "multi_label_classification"},
    "regression": {"problem_type": "regression", "labels": ["value"]},
}


@pytest.mark.parametrize(
    "problem_type,function",
    [
        (None, "softmax"),
        ("single_label_classification", "softmax"),
        ("multi_label_classification", "sigmoid"),
        ("regression", "none"),
    ],
)
def test_the_function_follows_the_problem_type_as_in_the_pipeline(problem_type, function):
    config = EVLConfig(num_labels=3, problem_type=problem_type)
    logits = torch.tensor([[0.5, -1.0, 2.0]])
    expected = {"softmax": logits.softmax(-1), "sigmoid": logits.sigmoid(), "none": logits}[function]
    assert default_function_to_apply(config) == function
    torch.testing.assert_close(postprocess_logits(logits, config), expected)


def test_function_to_apply_overrides_the_head_type_and_is_checked():
    config = EVLConfig(num_labels=2, problem_type="multi_label_classification")
    logits = torch.tensor([[1.0, 3.0]], dtype=torch.bfloat16)
    scores = postprocess_logits(logits, config, function_to_apply="softmax")
    assert scores.dtype == torch.float32 and scores.sum().item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="function_to_apply='tanh'"):
        postprocess_logits(logits, config, function_to_apply="tanh")


def test_top_k_labels_are_best_first_and_at_most_num_labels():
    config = EVLConfig(num_labels=3, id2label={0: "a", 1: "b", 2: "c"}, label2id={"a": 0, "b": 1, "c": 2})
    best = top_k_labels(torch.tensor([[0.2, 0.5, 0.3], [0.6, 0.1, 0.3]]), config, top_k=5)
    assert best == [
        {"labels": ["b", "c", "a"], "scores": pytest.approx([0.5, 0.3, 0.2])},
        {"labels": ["a", "c", "b"], "scores": pytest.approx([0.6, 0.3, 0.1])},
    ]


@pytest.fixture(scope="module", params=list(HEADS))
def head(request, tmp_path_factory):
    """A saved tiny model of each head type and a video exactly one window long (4 frames 4 apart: 13 frames)."""
    folder = tmp_path_factory.mktemp(request.param)
    save_tiny_model(folder / "model", **HEADS[request.param])
    return request.param, folder / "model", encode_video(folder / "clip.mp4", 13)


def test_pipeline_predict_timeline_demo_and_the_library_agree(head, tmp_path):
    name, folder, video = head
    expected = pipeline("video-classification", model=str(folder))(str(video), top_k=5)
    expected = {"labels": [row["label"] for row in expected], "scores": [row["score"] for row in expected]}

    model = EVLForVideoClassification.from_pretrained(folder).eval()
    processor = EVLVideoProcessor.from_pretrained(folder)
    with torch.no_grad():
        logits = model(**processor(str(video), return_tensors="pt")).logits
    routes = {"library": top_k_labels(postprocess_logits(logits, model.config), model.config, 5)[0]}

    assert (
        main(
            [
                "predict",
                "--model",
                str(folder),
                str(video),
                "--output",
                str(tmp_path / "out.jsonl"),
                "--num_workers",
                "0",
            ]
        )
        == 0
    )
    routes["predict"] = json.loads((tmp_path / "out.jsonl").read_text())
    assert main(["timeline", "--model", str(folder), str(video), "--output", str(tmp_path / "timeline.json")]) == 0
    (window,) = json.loads((tmp_path / "timeline.json").read_text())["windows"]
    routes["timeline"] = window
    (window,) = classify_windows(model, processor, video)["windows"]
    routes["classify_windows"] = window
    demo = classify_video(model, processor, str(video))["scores"]
    routes["demo"] = {"labels": list(demo), "scores": list(demo.values())}

    num_labels = len(HEADS[name].get("labels", "12345"))
    assert len(expected["labels"]) == num_labels
    if name == "multi_label":  # independent probabilities, not a distribution
        assert sum(expected["scores"]) > 1.5
    for route, result in routes.items():
        assert result["labels"] == expected["labels"], route
        torch.testing.assert_close(
            torch.tensor(result["scores"]), torch.tensor(expected["scores"]), atol=1e-5, rtol=0, msg=route
        )


def test_attention_heatmaps_lay_the_query_attention_on_each_frame_patch_grid():
    from evl_hf.inference import attention_heatmaps
    from evl_hf.testing_utils import random_clip, tiny_model

    model = tiny_model(num_frames=4)  # 32x32 frames in 8x8 patches: a 4x4 grid
    with torch.no_grad():
        outputs = model(random_clip(batch_size=2), output_attentions=True)
    heatmaps, shares = attention_heatmaps(outputs.decoder_attentions, 4, model.config.spatial_size)
    assert heatmaps.shape == (2, 4, 4, 4) and shares.shape == (2, 4)
    torch.testing.assert_close(shares.sum(-1), torch.ones(2))
    # a frame's share is its patches' attention and its class token's
    first_layer = outputs.decoder_attentions[0].mean(1)[:, 0].view(2, 4, 17)
    one_layer, one_layer_shares = attention_heatmaps(outputs.decoder_attentions, 4, (4, 4), layer=0)
    torch.testing.assert_close(one_layer.flatten(-2), first_layer[..., 1:])
    torch.testing.assert_close(one_layer_shares, first_layer.sum(-1))
    assert not torch.allclose(one_layer, heatmaps)  # the mean over layers is another map
    with pytest.raises(ValueError, match="tokens per frame"):
        attention_heatmaps(outputs.decoder_attentions, 4, (5, 5))


def test_unnormalize_frames_gives_back_the_frames_the_processor_received():
    from evl_hf.inference import unnormalize_frames

    processor = EVLVideoProcessor(num_frames=3, size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    frames = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    pixel_values = processor(frames, return_tensors="pt")["pixel_values"][0]  # already 32x32: no resize, no crop
    restored = unnormalize_frames(pixel_values, processor)
    assert restored.shape == (3, 3, 32, 32) and restored.dtype == torch.uint8
    assert (restored.int() - frames.int()).abs().max() <= 1


def test_overlay_attention_reddens_each_patch_by_its_share():
    from evl_hf.inference import overlay_attention

    frames = torch.full((2, 3, 8, 8), 100, dtype=torch.uint8)
    heatmaps = torch.zeros(2, 2, 2)  # a 2x2 patch grid: each patch covers 4x4 pixels
    heatmaps[1, 0, 1] = 0.5  # the most attention in the clip: frame 1, top-right patch
    heatmaps[0, 1, 0] = 0.2  # 0.4 of that: frame 0, bottom-left patch
    painted = overlay_attention(frames, heatmaps, opacity=0.6)
    assert painted.shape == frames.shape and painted.dtype == torch.uint8
    # opacity 0.6 at the largest share: 0.4 * 100 + 0.6 * 255 in red, 0.4 * 100 in green and blue
    assert painted[1, :, :4, 4:].flatten(1).unique(dim=1).tolist() == [[193], [40], [40]]
    # 0.24 at 0.4 of it: 0.76 * 100 + 0.24 * 255 = 137.2 in red, 76 in green and blue
    assert painted[0, :, 4:, :4].flatten(1).unique(dim=1).tolist() == [[137], [76], [76]]
    assert torch.equal(painted[0, :, :4], frames[0, :, :4])  # no attention: the frame as it was


def test_attention_overlays_paint_each_clip_and_keep_each_frame_share():
    from evl_hf.inference import attention_heatmaps, attention_overlays, overlay_attention, unnormalize_frames
    from evl_hf.testing_utils import random_clip, tiny_model

    model = tiny_model(num_frames=4)
    processor = EVLVideoProcessor(num_frames=4, size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    pixel_values = random_clip(batch_size=2)
    with torch.no_grad():
        outputs = model(pixel_values, output_attentions=True)
    painted, shares = attention_overlays(pixel_values, outputs.decoder_attentions, processor, (4, 4))
    assert painted.shape == (2, 4, 3, 32, 32) and painted.dtype == torch.uint8 and shares.shape == (2, 4)
    torch.testing.assert_close(shares.sum(-1), torch.ones(2))
    heatmaps, expected_shares = attention_heatmaps(outputs.decoder_attentions, 4, (4, 4))
    torch.testing.assert_close(shares, expected_shares)
    # each clip is painted against its own largest patch share, not the batch's
    for clip in range(2):
        expected = overlay_attention(unnormalize_frames(pixel_values[clip], processor), heatmaps[clip])
        assert torch.equal(painted[clip], expected)
    # one layer's attention is another picture
    _, first_layer_shares = attention_overlays(pixel_values, outputs.decoder_attentions, processor, (4, 4), layer=0)
    torch.testing.assert_close(first_layer_shares, attention_heatmaps(outputs.decoder_attentions, 4, (4, 4), 0)[1])


def test_the_demo_gets_attention_from_the_forward_pass_that_scores(model_folder, tmp_path):
    from evl_hf.inference import attention_overlays

    model = EVLForVideoClassification.from_pretrained(model_folder).eval()
    processor = EVLVideoProcessor.from_pretrained(model_folder)
    video = encode_video(tmp_path / "clip.mp4", 13)
    result = classify_video(model, processor, str(video))
    pixel_values = processor(str(video), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        outputs = model(pixel_values, output_attentions=True)
    painted, shares = attention_overlays(
        pixel_values, outputs.decoder_attentions, processor, model.config.spatial_size
    )
    assert result["attention"].shape == result["frames"].shape == (4, 32, 32, 3)
    assert (result["attention"] == painted[0].permute(0, 2, 3, 1).numpy()).all()
    assert result["attention_shares"] == pytest.approx(shares[0].tolist(), abs=1e-6)
    assert sum(result["attention_shares"]) == pytest.approx(1.0, abs=1e-5)
    assert (result["attention"] != result["frames"]).any()
