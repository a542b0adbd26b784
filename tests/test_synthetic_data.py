"""The synthetic-motion dataset: real H.264 clips whose label only the order of the frames reveals."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torchcodec.decoders import VideoDecoder


# The demo data generator and the metric live next to the training script in examples/, not in the library.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import synthetic_data  # noqa: E402
from synthetic_data import (  # noqa: E402
    SYNTHETIC_MOTION_LABELS,
    SyntheticMotionConfig,
    generate_synthetic_motion_dataset,
    sample_trajectory,
)


SMALL = SyntheticMotionConfig(train_videos_per_label=3, validation_videos_per_label=2, num_frames=12, frame_size=48)


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    return generate_synthetic_motion_dataset(tmp_path_factory.mktemp("synthetic"), SMALL)


def object_centres(frames: torch.Tensor) -> np.ndarray:
    """Centre (x, y) of the pixels that differ from the background colour, per frame of a `(T, 3, H, W)` clip."""
    frames = frames.float()
    background = frames.flatten(2).median(dim=2).values[:, :, None, None]  # the object covers well under half
    mask = (frames - background).abs().sum(dim=1) > 60  # (T, H, W)
    ys, xs = torch.meshgrid(torch.arange(frames.shape[2]), torch.arange(frames.shape[3]), indexing="ij")
    area = mask.sum(dim=(1, 2)).float()
    return torch.stack([(mask * xs).sum(dim=(1, 2)) / area, (mask * ys).sum(dim=(1, 2)) / area], dim=1).numpy()


def test_splits_are_in_videofolder_layout_with_exactly_the_four_labels(dataset_dir):
    for split, per_label in [("train", 3), ("validation", 2)]:
        assert sorted(p.name for p in (dataset_dir / split).iterdir()) == sorted(SYNTHETIC_MOTION_LABELS)
        for label in SYNTHETIC_MOTION_LABELS:
            assert len(list((dataset_dir / split / label).glob("*.mp4"))) == per_label


def test_clips_are_h264_mp4_files_torchcodec_decodes(dataset_dir):
    decoder = VideoDecoder(str(next((dataset_dir / "train" / "left").glob("*.mp4"))))
    assert decoder.metadata.codec == "h264"
    assert len(decoder) == SMALL.num_frames
    assert decoder.get_frames_at([0]).data.shape == (1, 3, SMALL.frame_size, SMALL.frame_size)


def test_the_object_moves_toward_the_edge_named_by_the_label(dataset_dir):
    expected_direction = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
    for split in ("train", "validation"):
        for label, direction in expected_direction.items():
            for path in (dataset_dir / split / label).glob("*.mp4"):
                centres = object_centres(VideoDecoder(str(path)).get_frames_in_range(0, SMALL.num_frames).data)
                displacement = centres[-1] - centres[0]
                along = displacement @ np.array(direction)
                assert along >= SMALL.min_speed * (SMALL.num_frames - 1) * 0.8, (path, displacement)
                assert abs(displacement @ np.array(direction[::-1])) < 1.5, (path, displacement)


def test_start_positions_are_spread_over_the_frame_not_centred():
    config = SyntheticMotionConfig()
    rng = np.random.default_rng(0)
    starts = np.array([sample_trajectory(rng, label, config)[0][0] for _ in range(100) for label in ("left", "up")])
    for axis in (0, 1):
        assert np.ptp(starts[:, axis]) > 0.6 * config.frame_size


def test_a_random_frame_shows_the_object_at_the_same_place_whatever_the_label():
    # Position of the object in one frame drawn at random from a clip: its distribution must not depend on the
    # label, or a single frame would give the label away.
    config = SyntheticMotionConfig()
    rng = np.random.default_rng(0)
    positions = {}
    for label in SYNTHETIC_MOTION_LABELS:
        centres = np.stack([sample_trajectory(rng, label, config)[0] for _ in range(4000)])  # (clips, T, 2)
        frames = rng.integers(0, config.num_frames, size=len(centres))
        positions[label] = centres[np.arange(len(centres)), frames]  # (clips, 2)
    for label in SYNTHETIC_MOTION_LABELS:
        for axis in (0, 1):
            quantiles = np.quantile(positions[label][:, axis], [0.1, 0.25, 0.5, 0.75, 0.9])
            reference = np.quantile(positions["left"][:, axis], [0.1, 0.25, 0.5, 0.75, 0.9])
            assert np.abs(quantiles - reference).max() < 1.5, (label, axis, quantiles, reference)


def test_the_object_stays_inside_the_frame():
    config = SyntheticMotionConfig()
    rng = np.random.default_rng(1)
    for _ in range(200):
        for label in SYNTHETIC_MOTION_LABELS:
            centres, size = sample_trajectory(rng, label, config)
            assert centres.min() >= size / 2 and centres.max() <= config.frame_size - size / 2


def test_a_generated_dataset_is_reused_not_generated_again(dataset_dir, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the cached dataset should have been reused")

    monkeypatch.setattr(synthetic_data, "render_clip", fail)
    assert generate_synthetic_motion_dataset(dataset_dir.parent, SMALL) == dataset_dir


def test_different_settings_get_a_different_cache_folder():
    assert SMALL.version != SyntheticMotionConfig(**{**SMALL.__dict__, "seed": 1}).version
    assert SMALL.version == SyntheticMotionConfig(**SMALL.__dict__).version


def test_cache_folder_defaults_under_the_user_cache_and_can_be_moved(monkeypatch, tmp_path):
    monkeypatch.delenv("EVL_HF_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert synthetic_data.default_cache_dir() == tmp_path / "evl_hf" / "synthetic_motion"
    monkeypatch.setenv("EVL_HF_CACHE", str(tmp_path / "elsewhere"))
    assert synthetic_data.default_cache_dir() == tmp_path / "elsewhere" / "synthetic_motion"


def test_an_interrupted_generation_leaves_no_dataset_behind(tmp_path, monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic_data, "_write_mp4", interrupt)
    with pytest.raises(KeyboardInterrupt):
        generate_synthetic_motion_dataset(tmp_path, SMALL)
    assert list(tmp_path.iterdir()) == []


def test_the_same_settings_give_byte_identical_files_in_another_process(tmp_path):
    # Two processes, as two users' runs are: x264's macroblock tree made about one clip in ten differ between them.
    config = dict(train_videos_per_label=12, validation_videos_per_label=3, num_frames=16, frame_size=48)
    script = (
        f"import sys; sys.path.insert(0, {str(Path(synthetic_data.__file__).parent)!r}); import synthetic_data; "
        f"print(synthetic_data.generate_synthetic_motion_dataset(sys.argv[1], **{config!r}))"
    )
    folders = []
    for name in ("first", "second"):
        done = subprocess.run([sys.executable, "-c", script, str(tmp_path / name)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
        folders.append(Path(done.stdout.strip()))
    files = sorted(path.relative_to(folders[0]) for path in folders[0].glob("*/*/*.mp4"))
    assert len(files) == 4 * (12 + 3)
    assert [path for path in files if (folders[0] / path).read_bytes() != (folders[1] / path).read_bytes()] == []
