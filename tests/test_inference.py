"""The inference core (evl_hf/inference.py): scores by head type, and every route that runs a model agreeing on them."""

import json

import pytest
import torch
from transformers import pipeline

import evl_hf  # noqa: F401  (registers EVL with the pipeline)
from evl_hf import EVLConfig, EVLForVideoClassification, EVLVideoProcessor
from evl_hf.commands import main
from evl_hf.commands.demo import classify_video
from evl_hf.inference import (
    MULTI_LABEL_THRESHOLD,
    average_view_scores,
    classify_windows,
    default_function_to_apply,
    labels_above_threshold,
    multi_view_scores,
    paper_test_views,
    postprocess_logits,
    top_k_labels,
)
from evl_hf.testing_utils import encode_video, save_tiny_model, tiny_model


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


# ---- multi-view scoring ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wide_video(tmp_path_factory):
    """A 40-frame 48x72 video: resized to 32x48, a 32x32 crop has 16 columns to move along, so three crops differ."""
    return encode_video(tmp_path_factory.mktemp("views") / "wide.mp4", 40, height=48, width=72)


def tiny_processor(**kwargs):
    sizes = dict(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return EVLVideoProcessor(num_frames=4, frame_stride=4, **sizes, **kwargs)


def hand_multi_view_scores(model, processor, video, num_clips, num_crops, function):
    """Each view cut by hand from the processor's uncropped clips, run alone, scored and averaged."""
    scores = []
    for clip_index in range(num_clips):
        frames = processor(
            video, num_clips=num_clips, clip_index=clip_index, do_center_crop=False, return_tensors="pt"
        )["pixel_values"]  # (1, 4, 3, 32, 48)
        room = frames.shape[-1] - 32
        starts = [room // 2] if num_crops == 1 else [0, room // 2, room]  # the centre; or both ends and the centre
        for start in starts:
            with torch.no_grad():
                logits = model(pixel_values=frames[..., start : start + 32]).logits
            scores.append(logits.sigmoid() if function == "sigmoid" else logits.softmax(-1))
    return torch.stack(scores).mean(dim=0)


@pytest.mark.parametrize("problem_type", ["single_label_classification", "multi_label_classification"])
@pytest.mark.parametrize("num_clips,num_crops", [(3, 1), (1, 3), (2, 3)])
def test_multi_view_scores_average_each_views_scores_by_head_type(wide_video, problem_type, num_clips, num_crops):
    model = tiny_model(problem_type=problem_type)
    processor = tiny_processor()
    function = default_function_to_apply(model.config)
    expected = hand_multi_view_scores(model, processor, wide_video, num_clips, num_crops, function)
    scores = multi_view_scores(model, processor, wide_video, num_clips=num_clips, num_crops=num_crops)
    assert scores.shape == (1, len(model.config.id2label))
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=0)
    if function == "sigmoid":  # independent probabilities: no softmax crept in
        assert scores.sum() > 1.5


def test_one_view_equals_a_plain_forward(wide_video):
    model, processor = tiny_model(), tiny_processor()
    with torch.no_grad():
        logits = model(**processor(wide_video, return_tensors="pt")).logits
    scores = multi_view_scores(model, processor, wide_video, num_clips=1, num_crops=1)
    torch.testing.assert_close(scores, logits.softmax(-1), atol=1e-6, rtol=0)


def test_the_default_views_are_the_processors_else_the_papers(wide_video):
    assert [paper_test_views(num_frames) for num_frames in (8, 16, 32)] == [(3, 1), (1, 3), (1, 3)]
    model = tiny_model()  # 4 frames: the paper's 8-frame protocol, 3 clips x 1 crop
    torch.testing.assert_close(
        multi_view_scores(model, tiny_processor(), wide_video),
        multi_view_scores(model, tiny_processor(), wide_video, num_clips=3, num_crops=1),
    )
    declared = tiny_processor(num_crops=3)  # a processor saved with views keeps them
    torch.testing.assert_close(
        multi_view_scores(model, declared, wide_video),
        multi_view_scores(model, tiny_processor(), wide_video, num_clips=1, num_crops=3),
    )


def test_multi_view_scores_take_a_batch_of_videos_and_whole_video_frames(wide_video, tmp_path):
    from evl_hf.video_utils import read_video_frames

    model, processor = tiny_model(), tiny_processor()
    other = encode_video(tmp_path / "other.mp4", 30, height=48, width=72, seed=1)
    batch = multi_view_scores(model, processor, [wide_video, other])
    assert batch.shape == (2, 5)
    torch.testing.assert_close(batch[1:], multi_view_scores(model, processor, other))
    frames = read_video_frames(wide_video, range(40))  # the whole video, sampled like the file
    torch.testing.assert_close(
        multi_view_scores(model, processor, frames, do_sample_frames=True), batch[:1], atol=1e-6, rtol=0
    )


def test_average_view_scores_follow_the_head_and_want_a_views_axis():
    logits = torch.tensor([[[0.0, 2.0], [2.0, 0.0], [1.0, 1.0]]])  # one video, three views
    for problem_type, expected in [
        (None, logits.softmax(-1).mean(1)),
        ("multi_label_classification", logits.sigmoid().mean(1)),
        ("regression", logits.mean(1)),
    ]:
        config = EVLConfig(num_labels=2, problem_type=problem_type)
        torch.testing.assert_close(average_view_scores(logits, config), expected)
    with pytest.raises(ValueError, match=r"expected \(batch_size, num_views, num_labels\)"):
        average_view_scores(logits[0], EVLConfig(num_labels=2))


# ---- the multi-label threshold ---------------------------------------------------------------------------------------


def test_a_label_is_predicted_strictly_above_the_threshold():
    scores = torch.tensor([[0.2, MULTI_LABEL_THRESHOLD, 0.9], [0.7, 0.1, 0.6]])
    assert labels_above_threshold(scores).tolist() == [[False, False, True], [True, False, True]]
    assert labels_above_threshold(scores, 0.65).tolist() == [[False, False, True], [True, False, False]]


def test_predict_and_the_training_script_default_to_the_librarys_threshold():
    import sys
    from pathlib import Path

    from evl_hf.commands import build_parser

    args = build_parser().parse_args(["predict", "--model", "m", "video.mp4"])
    assert args.threshold == MULTI_LABEL_THRESHOLD
    sys.path.insert(0, str(Path(__file__).parents[1] / "examples"))
    try:
        from run_video_classification import DataTrainingArguments
    finally:
        sys.path.pop(0)
    assert DataTrainingArguments.__dataclass_fields__["threshold"].default == MULTI_LABEL_THRESHOLD


# ---- windows ---------------------------------------------------------------------------------------------------------


def test_each_window_carries_its_frame_positions(wide_video):
    model, processor = tiny_model(), tiny_processor()
    result = classify_windows(model, processor, wide_video, stride_frames=8)
    # 4 frames 4 apart span 13 of the 40 frames: windows start at 0, 8, 16, 24
    assert [window["frame_indices"] for window in result["windows"]] == [
        [0, 4, 8, 12],
        [8, 12, 16, 20],
        [16, 20, 24, 28],
        [24, 28, 32, 36],
    ]
    assert all(w["frame_indices"][::3] == [w["start_frame"], w["end_frame"]] for w in result["windows"])


def test_the_demo_shows_the_frames_the_processor_sampled(model_folder, tmp_path):
    model = EVLForVideoClassification.from_pretrained(model_folder).eval()
    processor = EVLVideoProcessor.from_pretrained(model_folder)
    video = encode_video(tmp_path / "clip.mp4", 40)
    result = classify_video(model, processor, str(video))
    assert result["frame_indices"] == [13, 17, 21, 25]  # the centred clip of 4 frames 4 apart in 40
    assert len(result["timeline"]["windows"]) == 7
    assert classify_video(model, processor, str(encode_video(tmp_path / "short.mp4", 13)))["timeline"] is None
