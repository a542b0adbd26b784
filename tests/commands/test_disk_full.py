"""`evl-hf` commands on a full disk: one line that names the path and says what to do, exit status 1, nothing torn
left behind, and a rerun once there is space that ends as a run that never ran out of it.

A full disk is a small tmpfs where the test may mount one (root), or a file-size limit (`RLIMIT_FSIZE`, which fails
writes with `EFBIG`) in the child process."""

import json
import os
import subprocess
import sys

import pytest

from evl_hf.commands import main
from evl_hf.testing_utils import limited_file_size

from .conftest import LABELS, encode_video


ENVIRONMENT = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}


def evl_hf(*arguments, limit: int | None = None) -> subprocess.CompletedProcess:
    """`python -m evl_hf ARGUMENTS` in a child process, its files limited to `limit` bytes when given."""
    return subprocess.run(
        [sys.executable, "-m", "evl_hf", *map(str, arguments)],
        capture_output=True,
        text=True,
        env=ENVIRONMENT,
        timeout=600,
        preexec_fn=limited_file_size(limit) if limit is not None else None,
    )


def remount(disk, size: str):
    subprocess.run(["mount", "-o", f"remount,size={size}", disk], check=True)


def assert_one_line(result: subprocess.CompletedProcess, expected: str):
    assert result.returncode == 1, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == expected, result.stderr[-3000:]
    assert "Traceback" not in result.stderr + result.stdout


@pytest.fixture(scope="module")
def many_videos(tmp_path_factory):
    """60 paths (links to three short videos): enough records to fill 8 kB."""
    folder = tmp_path_factory.mktemp("many")
    videos = [encode_video(folder / f"source{i}.mp4", 10 + 7 * i, seed=i) for i in range(3)]
    (folder / "links").mkdir()
    for i in range(60):
        os.symlink(videos[i % 3], folder / "links" / f"v{i:02d}.mp4")
    return folder / "links"


def assert_same_records(text: str, expected: str):
    """The same videos, labels and errors in the same order; scores equal to float32 rounding (a rerun batches the
    remaining videos otherwise, which changes the last bits of a matmul)."""
    records, references = (
        [json.loads(line) for line in text.splitlines()],
        [json.loads(line) for line in expected.splitlines()],
    )
    assert [r.get("video") for r in records] == [r.get("video") for r in references]
    for record, reference in zip(records, references):
        assert {k: v for k, v in record.items() if k != "scores"} == {
            k: v for k, v in reference.items() if k != "scores"
        }
        assert record.get("scores") == pytest.approx(reference.get("scores"), abs=1e-6)


def predict_arguments(model_folder, videos, output):
    return ["predict", "--model", model_folder, videos, "--output", output, "--num_workers", "0", "--batch_size", "4"]


@pytest.fixture(scope="module")
def roomy_predictions(model_folder, many_videos, tmp_path_factory):
    """The records a run on a roomy disk writes, as text (in this process, as the reruns are)."""
    output = tmp_path_factory.mktemp("roomy") / "out.jsonl"
    assert main(list(map(str, predict_arguments(model_folder, many_videos, output)))) == 0
    return output.read_text()


@pytest.mark.parametrize("disk", ["tmpfs", "file size limit", "file size limit, --debug"])
def test_predict_on_a_full_disk_ends_in_one_line_keeps_whole_records_and_the_rerun_equals_a_roomy_run(
    model_folder, many_videos, roomy_predictions, tmp_path, request, disk
):
    if disk == "tmpfs":
        folder, limit = request.getfixturevalue("small_disk"), None
        remount(folder, "12k")  # three pages: one for the lock file, two for the records (about 5 kB of 14 kB)
        reason = "No space left on device"
    else:
        folder, limit, reason = tmp_path, 8192, "File too large"
    output = folder / "out.jsonl"
    debug = ["--debug"] if "--debug" in disk else []

    full = evl_hf(*debug, *predict_arguments(model_folder, many_videos, output), limit=limit)

    if debug:  # the error itself, with its traceback
        assert full.returncode == 1 and "Traceback" in full.stderr and "Disk full" not in full.stderr
        return
    assert_one_line(
        full,
        f"Disk full: writing {output} failed ({reason}). Free space or pass another --output; the same command then "
        "resumes: the videos already recorded are skipped.",
    )
    written = output.read_text()
    assert written.endswith("\n") and 0 < written.count("\n") < 60  # whole records only
    assert roomy_predictions.startswith(written)
    assert not (folder / "out.jsonl.lock").exists()

    if disk == "tmpfs":
        remount(folder, "1m")  # space freed
    assert main(list(map(str, predict_arguments(model_folder, many_videos, output)))) == 0
    assert_same_records(output.read_text(), roomy_predictions)


def test_a_record_the_disk_cannot_take_is_cut_off_in_csv_too(model_folder, many_videos, tmp_path):
    output = tmp_path / "out.csv"
    full = evl_hf(*predict_arguments(model_folder, many_videos, output), limit=4096)
    assert full.returncode == 1 and "Disk full: writing" in full.stderr.strip().splitlines()[-1]
    text = output.read_bytes().decode()
    assert text.endswith("\r\n") and len(text.splitlines()) > 1
    assert all(line.count(",") == text.splitlines()[0].count(",") for line in text.splitlines())


def test_timeline_on_a_full_disk_ends_in_one_line_and_leaves_no_cut_short_json(model_folder, tmp_path):
    video = encode_video(tmp_path / "long.mp4", 60)
    output = tmp_path / "timeline.json"
    arguments = ["timeline", "--model", model_folder, video, "--output", output]

    full = evl_hf(*arguments, limit=1024)

    assert_one_line(
        full,
        f"Disk full: writing {output} failed (File too large). Free space or pass another --output; then run the same "
        "command again.",
    )
    assert sorted(path.name for path in tmp_path.iterdir()) == ["long.mp4"]
    assert main(list(map(str, arguments))) == 0
    assert len(json.loads(output.read_text())["windows"]) > 1


@pytest.fixture(scope="module")
def video_tree(tmp_path_factory):
    """Two small videos and a large one (320x240 noise, about 200 kB prepared), in a videofolder tree."""
    root = tmp_path_factory.mktemp("tree")
    for label in ("a", "b"):
        (root / label).mkdir()
    encode_video(root / "a" / "small1.mp4", 12, seed=1)
    encode_video(root / "a" / "small2.mp4", 12, seed=2)
    encode_video(root / "b" / "large.mp4", 45, height=240, width=320, seed=3)
    return root


@pytest.fixture(scope="module")
def roomy_prepared(video_tree, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("roomy") / "prepared"
    assert main(["prepare-videos", str(video_tree), str(output_dir), "--num_workers", "1"]) == 0
    return {path.relative_to(output_dir): path.read_bytes() for path in output_dir.rglob("*.mp4")}


# in this process, and in a pool of worker processes
@pytest.mark.parametrize("disk, num_workers", [("tmpfs", 1), ("file size limit", 2)])
def test_prepare_videos_on_a_full_disk_ends_in_one_line_leaves_no_partial_file_and_the_rerun_finishes(
    video_tree, roomy_prepared, tmp_path, request, disk, num_workers
):
    small = max(len(data) for relative, data in roomy_prepared.items() if relative.parts[0] == "a")
    large = len(roomy_prepared[next(relative for relative in roomy_prepared if relative.parts[0] == "b")])
    assert large > 4 * small  # the small videos fit, the large one does not
    if disk == "tmpfs":
        folder, limit, reason = request.getfixturevalue("small_disk"), None, "No space left on device"
        pages = (2 * small + 4 * 4096) // 4096 + 4  # the small videos, the settings, the lock, a little room
        remount(folder, f"{pages * 4}k")
    else:
        folder, limit, reason = tmp_path, 2 * small, "File too large"
    output_dir = folder / "prepared"
    arguments = ["prepare-videos", video_tree, output_dir, "--num_workers", num_workers]

    full = evl_hf(*arguments, limit=limit)

    assert_one_line(
        full,
        f"Disk full: writing {output_dir / 'b' / 'large.mp4'} failed ({reason}). Free space or pass another "
        "OUTPUT_DIR; the same command then resumes: the finished videos are kept.",
    )
    left = sorted(str(path.relative_to(output_dir)) for path in output_dir.rglob("*") if path.is_file())
    assert "b/large.mp4" not in left and not [name for name in left if "partial" in name or name.endswith(".lock")]
    for name in left:
        if name.endswith(".mp4"):  # whole, as a roomy run writes them
            assert (output_dir / name).read_bytes() == roomy_prepared[
                output_dir.joinpath(name).relative_to(output_dir)
            ]

    if disk == "tmpfs":
        remount(folder, "20m")
    rerun = evl_hf(*arguments)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert {path.relative_to(output_dir): path.read_bytes() for path in output_dir.rglob("*.mp4")} == roomy_prepared


@pytest.mark.slow  # the export (torch.export, ONNX translation) takes 5 s on a quiet 2-core CPU, 20-110 s on a busy one
def test_export_on_a_full_disk_ends_in_one_line_and_leaves_no_onnx_file(model_folder, tmp_path):
    output = tmp_path / "model.onnx"
    full = evl_hf("export", "--model", model_folder, "--output", output, "--opset", "18", limit=20_000)
    assert full.returncode == 1, full.stderr[-3000:]
    last_line = full.stderr.strip().splitlines()[-1]
    assert last_line.startswith("Disk full: writing ") and "(File too large)" in last_line
    assert last_line.endswith("Free space or pass another --output; then run the same command again.")
    assert "Traceback" not in full.stderr
    assert list(tmp_path.iterdir()) == []


def test_the_demo_page_says_its_disk_is_full_shows_the_labels_and_keeps_serving(
    model_folder, small_disk, monkeypatch, tmp_path
):
    pytest.importorskip("gradio", reason="the `demo` extra is not installed")
    from evl_hf.commands.demo import build_demo
    from evl_hf.commands.utils import load_model_and_processor

    remount(small_disk, "8k")
    (small_disk / "filler").write_bytes(b"\0" * 8192)  # the disk the page stores its pictures on is full
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(small_disk))
    model, processor = load_model_and_processor(str(model_folder))
    demo = build_demo(model, processor, title="tiny", examples=[])
    (predict,) = [function.fn for function in demo.fns.values() if function.fn.__name__ == "predict"]
    video = encode_video(tmp_path / "clip.mp4", 12)

    status, scores, frames, attention, _ = predict(str(video))

    assert 'data-status="error"' in status and "The server&#x27;s disk is full: the frames cannot be shown." in status
    assert set(scores) <= set(LABELS) and len(scores) == 5  # the labels need no disk
    assert frames is None and attention is None
    remount(small_disk, "1m")  # space freed: the next video is shown whole
    status, _, frames, _, _ = predict(str(video))
    assert 'data-status="ok"' in status and len(frames) == model.config.num_frames


def test_a_timeline_plot_the_disk_cannot_take_leaves_the_old_picture_whole(model_folder, tmp_path):
    video = encode_video(tmp_path / "long.mp4", 60)
    plot = tmp_path / "timeline.png"
    plot.write_bytes(b"the picture of an earlier run")

    full = evl_hf("timeline", "--model", model_folder, video, "--plot", plot, limit=4096)

    assert full.returncode == 1 and f"Disk full: writing {plot} failed" in full.stderr.strip().splitlines()[-1]
    assert plot.read_bytes() == b"the picture of an earlier run"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["long.mp4", "timeline.png"]
