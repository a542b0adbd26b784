"""Tests of EVL's frame sampling and video processor, and of the old import paths of what moved out of its module."""

import importlib
import json
import pathlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PILImageResampling

import evl_hf.video_processing_evl
from evl_hf.testing_utils import encode_video
from evl_hf.video_processing_evl import EVLVideoProcessor
from evl_hf.video_utils import read_video_frames, sample_frame_indices


torchcodec_decoders = pytest.importorskip("torchcodec.decoders")

NUM_VIDEO_FRAMES = 160  # long enough for a centred 8 x 16 dense clip (113 frames) with room to move


def _decode_all_frames(path) -> torch.Tensor:
    """Every frame, decoded sequentially from the start: the reference the sampled decodes must match."""
    decoder = torchcodec_decoders.VideoDecoder(str(path))
    return decoder.get_frames_in_range(0, len(decoder)).data


@pytest.fixture(scope="module")
def video_path(tmp_path_factory):
    """H.264 MP4, 160 frames of 40x32 at 25 fps, every frame different."""
    return encode_video(
        tmp_path_factory.mktemp("videos") / "pattern.mp4", NUM_VIDEO_FRAMES, height=32, width=40, fps=25
    )


@pytest.fixture(scope="module")
def short_video_path(tmp_path_factory):
    """H.264 MP4 with 20 frames, shorter than an 8 x 16 dense clip."""
    return encode_video(tmp_path_factory.mktemp("videos") / "short.mp4", 20, height=32, width=40, fps=25)


# --------------------------------------------------------------------------------------------------------------------
# sample_frame_indices


def test_dense_sampling_centres_the_clip():
    # 8 frames 16 apart span 113 frames; 200 - 113 = 87 frames to spare, 43 before the clip.
    assert sample_frame_indices(200, 8, frame_stride=16) == [43, 59, 75, 91, 107, 123, 139, 155]


def test_dense_sampling_fitting_exactly_starts_at_the_first_frame():
    assert sample_frame_indices(113, 8, frame_stride=16) == list(range(0, 113, 16))


def test_dense_multi_view_clips_are_evenly_spaced_from_start_to_end():
    clips = [sample_frame_indices(201, 8, frame_stride=16, num_clips=3, clip_index=k) for k in range(3)]
    assert clips[0][0] == 0
    assert clips[1] == sample_frame_indices(201, 8, frame_stride=16)  # the middle view is the centred clip
    assert clips[2][-1] == 200
    assert all(clip[1] - clip[0] == 16 for clip in clips)


def test_dense_sampling_of_a_short_video_repeats_its_last_frame():
    assert sample_frame_indices(50, 8, frame_stride=16) == [0, 16, 32, 48, 49, 49, 49, 49]


def test_single_frame_video_gives_that_frame_for_every_strategy():
    for strategy in ("dense", "uniform", "segment"):
        assert sample_frame_indices(1, 8, strategy=strategy) == [0] * 8


def test_dense_random_start_is_reproducible_and_covers_the_slack():
    draws = [sample_frame_indices(200, 8, frame_stride=16, random=torch.Generator().manual_seed(s)) for s in range(40)]
    assert draws[3] == sample_frame_indices(200, 8, frame_stride=16, random=torch.Generator().manual_seed(3))
    starts = {draw[0] for draw in draws}
    assert len(starts) > 10
    assert min(starts) >= 0 and max(starts) <= 87
    assert all(draw == list(range(draw[0], draw[0] + 8 * 16, 16)) for draw in draws)


def test_uniform_sampling_takes_the_centre_of_equal_stretches():
    assert sample_frame_indices(80, 8, strategy="uniform") == [5, 15, 25, 35, 45, 55, 65, 75]


def test_uniform_multi_view_clips_shift_within_the_stretches():
    clips = [sample_frame_indices(80, 4, strategy="uniform", num_clips=2, clip_index=k) for k in range(2)]
    assert clips == [[5, 25, 45, 65], [15, 35, 55, 75]]


def test_uniform_random_keeps_an_exact_spacing():
    indices = sample_frame_indices(80, 8, strategy="uniform", random=torch.Generator().manual_seed(0))
    assert {b - a for a, b in zip(indices, indices[1:])} == {10}


def test_segment_sampling_is_centred_at_inference():
    assert sample_frame_indices(80, 8, strategy="segment") == sample_frame_indices(80, 8, strategy="uniform")


def test_segment_random_draws_one_frame_per_segment():
    generator = torch.Generator().manual_seed(0)
    draws = [sample_frame_indices(80, 8, strategy="segment", random=generator) for _ in range(20)]
    for draw in draws:
        assert all(10 * i <= index < 10 * (i + 1) for i, index in enumerate(draw))
    assert len({tuple(draw) for draw in draws}) > 1


def test_uniform_sampling_of_a_short_video_plays_it_then_repeats_its_last_frame():
    assert sample_frame_indices(3, 8, strategy="uniform") == [0, 1, 2, 2, 2, 2, 2, 2]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_video_frames": 0, "num_frames": 8},
        {"num_video_frames": 10, "num_frames": 0},
        {"num_video_frames": 10, "num_frames": 8, "frame_stride": 0},
        {"num_video_frames": 10, "num_frames": 8, "strategy": "random"},
        {"num_video_frames": 10, "num_frames": 8, "num_clips": 3, "clip_index": 3},
        {"num_video_frames": 10, "num_frames": 8, "num_clips": 3, "random": True},
    ],
)
def test_invalid_sampling_arguments_raise_value_error(kwargs):
    with pytest.raises(ValueError):
        sample_frame_indices(**kwargs)


@settings(max_examples=300, deadline=None)
@given(
    num_video_frames=st.integers(1, 5000),
    num_frames=st.integers(1, 64),
    frame_stride=st.integers(1, 32),
    strategy=st.sampled_from(["dense", "uniform", "segment"]),
    seed=st.none() | st.integers(0, 2**31),
    views=st.integers(1, 5).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n - 1))),
)
def test_sampled_indices_are_in_range_non_decreasing_and_complete(
    num_video_frames, num_frames, frame_stride, strategy, seed, views
):
    num_clips, clip_index = views if seed is None else (1, 0)
    indices = sample_frame_indices(
        num_video_frames,
        num_frames,
        strategy=strategy,
        frame_stride=frame_stride,
        random=False if seed is None else torch.Generator().manual_seed(seed),
        num_clips=num_clips,
        clip_index=clip_index,
    )
    assert len(indices) == num_frames
    assert all(isinstance(index, int) and 0 <= index < num_video_frames for index in indices)
    assert indices == sorted(indices)


@settings(max_examples=200, deadline=None)
@given(num_video_frames=st.integers(1, 3000), num_frames=st.integers(1, 32), frame_stride=st.integers(1, 32))
def test_dense_indices_keep_the_stride_until_the_video_ends(num_video_frames, num_frames, frame_stride):
    indices = sample_frame_indices(num_video_frames, num_frames, frame_stride=frame_stride)
    steps = [b - a for a, b in zip(indices, indices[1:])]
    # Exactly `frame_stride` apart, except where a short video has run out and its last frame repeats.
    assert all(
        step == frame_stride or (step < frame_stride and b == num_video_frames - 1)
        for step, b in zip(steps, indices[1:])
    )


# --------------------------------------------------------------------------------------------------------------------
# EVLVideoProcessor


def test_processor_defaults_are_clip_preprocessing_and_dense_8x16_sampling():
    processor = EVLVideoProcessor()
    assert list(processor.image_mean) == OPENAI_CLIP_MEAN
    assert list(processor.image_std) == OPENAI_CLIP_STD
    assert processor.size.shortest_edge == 224
    assert (processor.crop_size.height, processor.crop_size.width) == (224, 224)
    assert processor.resample == PILImageResampling.BILINEAR
    assert (processor.num_frames, processor.frame_stride, processor.frame_sampling) == (8, 16, "dense")
    assert processor.model_input_names == ["pixel_values"]


def test_processor_decodes_a_path_into_a_normalised_clip(video_path):
    processor = EVLVideoProcessor()
    batch = processor(str(video_path), return_tensors="pt", return_metadata=True)
    assert set(batch.keys()) == {"pixel_values", "video_metadata"}
    pixel_values = batch["pixel_values"]
    assert pixel_values.shape == (1, 8, 3, 224, 224)
    assert pixel_values.dtype == torch.float32
    metadata = batch["video_metadata"][0]
    assert metadata.total_num_frames == NUM_VIDEO_FRAMES
    assert metadata.frames_indices == sample_frame_indices(NUM_VIDEO_FRAMES, 8, frame_stride=16)

    # Same pixels as preprocessing those frames taken from a full decode.
    frames = _decode_all_frames(video_path)[metadata.frames_indices]
    expected = processor(frames, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(pixel_values, expected)
    # CLIP normalisation: (x / 255 - mean) / std.
    mean = torch.tensor(OPENAI_CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(OPENAI_CLIP_STD).view(3, 1, 1)
    assert pixel_values.min() >= (0 - mean.max()) / std.min() - 1e-5
    assert pixel_values.max() <= (1 - mean.min()) / std.min() + 1e-5


def test_processor_decodes_a_batch_of_paths_and_pathlib_paths(video_path, short_video_path):
    processor = EVLVideoProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    batch = processor([pathlib.Path(video_path), str(short_video_path)], return_tensors="pt", return_metadata=True)
    assert batch["pixel_values"].shape == (2, 8, 3, 32, 32)
    assert batch["video_metadata"][1].frames_indices == [0, 16, 19, 19, 19, 19, 19, 19]


def test_processor_sampling_options_at_call_time(video_path):
    processor = EVLVideoProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    for kwargs in (
        {"frame_sampling": "uniform", "num_frames": 4},
        {"frame_sampling": "segment", "num_frames": 16},
        {"frame_stride": 4, "num_clips": 3, "clip_index": 2},
    ):
        batch = processor(str(video_path), return_tensors="pt", return_metadata=True, **kwargs)
        expected = sample_frame_indices(
            NUM_VIDEO_FRAMES,
            kwargs.get("num_frames", 8),
            strategy=kwargs.get("frame_sampling", "dense"),
            frame_stride=kwargs.get("frame_stride", 16),
            num_clips=kwargs.get("num_clips", 1),
            clip_index=kwargs.get("clip_index", 0),
        )
        assert batch["video_metadata"][0].frames_indices == expected
        assert batch["pixel_values"].shape == (1, len(expected), 3, 32, 32)


def test_processor_reads_a_torchcodec_decoder_like_a_path(video_path):
    processor = EVLVideoProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    from_decoder = processor(torchcodec_decoders.VideoDecoder(str(video_path)), return_tensors="pt")["pixel_values"]
    from_path = processor(str(video_path), return_tensors="pt")["pixel_values"]
    assert torch.equal(from_decoder, from_path)


def test_processor_takes_decoded_frames_as_the_clip(video_path):
    processor = EVLVideoProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    clip = read_video_frames(video_path, range(0, 80, 10))  # uint8 (8, 3, 32, 40)
    single = processor(clip, return_tensors="pt")["pixel_values"]
    assert single.shape == (1, 8, 3, 32, 32)
    batch = processor([clip, clip.flip(0)], return_tensors="pt")["pixel_values"]
    assert batch.shape == (2, 8, 3, 32, 32)
    assert torch.equal(batch[0], single[0])
    assert torch.equal(batch[1], single[0].flip(0))
    frames = processor(list(clip), return_tensors="pt")["pixel_values"]  # one clip as a list of (3, H, W) frames
    assert torch.equal(frames, single)


def test_processor_samples_decoded_frames_when_asked(video_path):
    processor = EVLVideoProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    video = _decode_all_frames(video_path)
    sampled = processor(video, do_sample_frames=True, return_tensors="pt")["pixel_values"]
    from_path = processor(str(video_path), return_tensors="pt")["pixel_values"]
    assert torch.equal(sampled, from_path)


def test_processor_round_trips_through_save_pretrained(tmp_path):
    processor = EVLVideoProcessor(num_frames=16, frame_stride=4, frame_sampling="segment", size={"shortest_edge": 64})
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "video_preprocessor_config.json").read_text())
    assert saved["video_processor_type"] == "EVLVideoProcessor"
    assert (saved["num_frames"], saved["frame_stride"], saved["frame_sampling"]) == (16, 4, "segment")

    loaded = EVLVideoProcessor.from_pretrained(tmp_path)
    assert (loaded.num_frames, loaded.frame_stride, loaded.frame_sampling) == (16, 4, "segment")
    assert loaded.size.shortest_edge == 64
    assert loaded.to_dict() == processor.to_dict()


def test_training_augmentation_is_identical_on_every_frame_of_a_clip():
    processor = EVLVideoProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    frame = torch.randint(0, 256, (1, 3, 48, 40), dtype=torch.uint8)
    torch.manual_seed(0)
    for _ in range(10):
        clip = processor(
            frame.expand(8, -1, -1, -1), do_augment=True, horizontal_flip=True, rand_augment=True, return_tensors="pt"
        )["pixel_values"][0]
        assert clip.shape == (8, 3, 32, 32)
        assert torch.equal(clip, clip[:1].expand_as(clip))


def test_seeded_training_clips_repeat_and_differ_between_seeds(video_path):
    processor = EVLVideoProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})

    def clip(seed):
        batch = processor(str(video_path), do_augment=True, seed=seed, return_tensors="pt", return_metadata=True)
        return batch["pixel_values"], batch["video_metadata"][0].frames_indices

    (first, indices), (again, indices_again), (other, _) = clip(1), clip(1), clip(2)
    assert torch.equal(first, again) and indices == indices_again
    assert not torch.equal(first, other)
    assert indices == list(range(indices[0], indices[0] + 8 * 16, 16))  # a dense clip at a random start


def test_unknown_frame_sampling_fails_at_construction_naming_it(tmp_path):
    with pytest.raises(ValueError, match="'randm'"):
        EVLVideoProcessor(frame_sampling="randm")
    EVLVideoProcessor().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "video_preprocessor_config.json").read_text())
    (tmp_path / "video_preprocessor_config.json").write_text(json.dumps({**config, "frame_sampling": "randm"}))
    with pytest.raises(ValueError, match="'randm'"):
        EVLVideoProcessor.from_pretrained(tmp_path)


def test_fps_samples_that_many_frames_per_second_of_video(video_path):
    # 160 frames at 25 fps is 6.4 s: 2 frames per second gives 12 frames, spread over the whole video.
    processor = EVLVideoProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    batch = processor(str(video_path), fps=2, return_tensors="pt", return_metadata=True)
    assert batch["pixel_values"].shape == (1, 12, 3, 32, 32)
    assert batch["video_metadata"][0].frames_indices == sample_frame_indices(NUM_VIDEO_FRAMES, 12, strategy="uniform")
    saved = EVLVideoProcessor(fps=2, size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    assert saved.num_frames is None
    assert torch.equal(saved(str(video_path), return_tensors="pt")["pixel_values"], batch["pixel_values"])


def test_fps_with_num_frames_or_without_a_frame_rate_is_an_error(video_path):
    processor = EVLVideoProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    with pytest.raises(ValueError, match="mutually exclusive"):
        processor(str(video_path), fps=2, num_frames=8)
    with pytest.raises(ValueError, match="mutually exclusive"):
        EVLVideoProcessor(fps=2, num_frames=8)
    frames = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8)
    with pytest.raises(ValueError, match="frame rate"):
        processor(frames, fps=2, do_sample_frames=True)


def test_without_sampling_a_path_gives_every_frame(video_path):
    processor = EVLVideoProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    pixel_values = processor(str(video_path), do_sample_frames=False, return_tensors="pt")["pixel_values"]
    assert pixel_values.shape == (1, NUM_VIDEO_FRAMES, 3, 32, 32)


def test_a_saved_processor_carries_the_module_that_reads_videos(tmp_path):
    # Loading with trust_remote_code imports the copied files: the processor's relative imports must be among them.
    EVLVideoProcessor().save_pretrained(tmp_path)
    assert sorted(path.name for path in tmp_path.glob("*.py")) == [
        "frame_archives.py",
        "video_processing_evl.py",
        "video_transforms.py",
        "video_utils.py",
    ]


# --------------------------------------------------------------------------------------------------------------------
# Names that moved out of the module


@pytest.mark.parametrize(
    "old_name, new_place",
    [
        ("VideoDecodingError", "video_utils.VideoDecodingError"),
        ("_diagnose_unopenable_video", "video_utils._diagnose_unopenable_video"),
        ("_is_video_decoder", "video_utils.is_video_decoder"),
        ("load_video_frames", "video_utils.load_video_frames"),
        ("open_video", "video_utils.open_video"),
        ("read_video_frames", "video_utils.read_video_frames"),
        ("window_frame_indices", "inference.window_frame_indices"),
    ],
)
def test_a_moved_name_still_imports_from_the_old_place_with_a_warning_naming_the_new_one(old_name, new_place):
    module, new_name = f"evl_hf.{new_place}".rsplit(".", 1)
    with pytest.warns(
        FutureWarning, match=rf"`evl_hf\.video_processing_evl\.{old_name}` moved to `{module}\.{new_name}`"
    ):
        moved = getattr(evl_hf.video_processing_evl, old_name)
    assert moved is getattr(importlib.import_module(module), new_name)


def test_from_import_of_a_moved_name_warns():
    with pytest.warns(FutureWarning, match="evl_hf.video_utils.open_video"):
        from evl_hf.video_processing_evl import open_video
    assert open_video is importlib.import_module("evl_hf.video_utils").open_video


def test_a_name_that_never_existed_is_still_an_attribute_error():
    with pytest.raises(AttributeError, match="no_such_name"):
        evl_hf.video_processing_evl.no_such_name
    assert not hasattr(evl_hf.video_processing_evl, "sample_frame_index")
