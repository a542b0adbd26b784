"""The benchmark scripts run end to end in --tiny mode and print JSON with the numbers the docs quote."""

import json
import subprocess
import sys
from pathlib import Path

import pytest


BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def run_benchmark(script: str, *args: str) -> dict:
    """Runs `benchmarks/<script>` in a subprocess; returns the JSON it prints before its markdown table."""
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result, end = json.JSONDecoder().raw_decode(done.stdout)
    assert "| " in done.stdout[end:], "a markdown table follows the JSON"
    return result


def assert_positive(mapping: dict, keys: list[str]) -> None:
    for key in keys:
        value = mapping[key]
        assert isinstance(value, (int, float)) and value > 0, f"{key} = {value!r}"


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("benchmark_results")


@pytest.fixture(scope="module")
def cpu_models(results_dir) -> dict:
    return run_benchmark("bench_cpu_models.py", "--tiny", "--repeats", "1", "--output", str(results_dir))


@pytest.fixture(scope="module")
def data_path(results_dir, tmp_path_factory) -> dict:
    videos = tmp_path_factory.mktemp("videos")
    return run_benchmark("bench_data_path.py", "--tiny", "--video-dir", str(videos), "--output", str(results_dir))


@pytest.fixture(scope="module")
def data_wait(results_dir, tmp_path_factory) -> dict:
    videos = tmp_path_factory.mktemp("synthetic_motion")
    return run_benchmark(
        "bench_data_wait.py",
        "--tiny",
        "--num-workers",
        "2,0",
        "--synthetic-data-dir",
        str(videos),
        "--output",
        str(results_dir),
    )


def test_cpu_models_reports_time_memory_and_flops_for_every_system(cpu_models):
    assert set(cpu_models["systems"]) == {"evl", "videomae", "timesformer"}
    for system in cpu_models["systems"].values():
        assert_positive(
            system,
            [
                "train_step_s",
                "inference_s",
                "inference_clips_per_s",
                "peak_rss_train_mb",
                "peak_rss_inference_mb",
                "inference_flops",
                "train_flops",
                "inference_gflops_per_s",
                "trainable_parameters",
            ],
        )
    assert_positive(cpu_models["systems"]["evl"], ["backbone_inference_s", "backbone_inference_gflops_per_s"])
    assert cpu_models["matmul_gflops_per_s"] > 0


def test_cpu_models_trains_only_the_evl_decoder_and_the_baselines_end_to_end(cpu_models):
    systems = cpu_models["systems"]
    assert systems["evl"]["trainable_parameters"] < systems["evl"]["parameters"]
    for baseline in ("videomae", "timesformer"):
        assert systems[baseline]["trainable_parameters"] == systems[baseline]["parameters"]


def test_cpu_models_checks_each_target_against_a_measured_ratio(cpu_models):
    expected = {
        "evl_train_step_over_evl_inference",
        "evl_train_step_over_timesformer",
        "evl_train_peak_rss_over_timesformer",
        "evl_backbone_gflops_over_matmul",
    }
    assert set(cpu_models["targets"]) == expected
    for check in cpu_models["targets"].values():
        assert check["value"] > 0 and isinstance(check["met"], bool)


def test_cpu_models_output_writes_json_and_markdown(cpu_models, results_dir):
    assert json.loads((results_dir / "cpu_models.json").read_text()) == cpu_models
    assert (results_dir / "cpu_models.md").read_text().count("| evl |") == 1


TRAINING_METHODS = {"pyav_whole_video", "torchcodec_sampled", "torchcodec_prepared_g4", "torchcodec_prepared_g8"}


def test_data_path_reports_clips_per_second_per_core_for_each_method_and_size(data_path):
    assert set(data_path["videos"]) == {"128x96", "192x108"}
    gpu_clips_per_s = data_path["settings"]["gpu_clips_per_s"]
    assert gpu_clips_per_s == pytest.approx(494.7e12 / 332.1e9)  # half an H100's bf16 peak, EVL B/16 8 frames
    for video in data_path["videos"].values():
        assert set(video["methods"]) == TRAINING_METHODS
        for method in video["methods"].values():
            assert_positive(method, ["clips_per_s", "seconds_per_clip", "cores_per_gpu"])
            assert method["cores_per_gpu"] == pytest.approx(gpu_clips_per_s / method["clips_per_s"])
    assert all(value > 0 for value in data_path["ratios"].values())


def test_data_path_prepared_videos_have_frequent_keyframes_and_a_measured_disk_cost(data_path):
    for name, video in data_path["videos"].items():
        keyframes = video["keyframes_in_first_video"]
        assert keyframes["original"] == [0]  # 4 s, 120 frames: libx264's default puts one keyframe
        assert keyframes["g4"] == [0, 4, 8, 12, 16, 20, 24, 28]  # the first 8
        assert keyframes["g8"] == [0, 8, 16, 24, 32, 40, 48, 56]
        assert min(video["prepared_size"]) == 64  # --tiny prepares with short side 64
        for copy in ("g4", "g8"):
            preparation = data_path["preparation"][f"{name}_{copy}"]
            assert_positive(preparation, ["bytes_before", "bytes_after", "seconds_per_video"])
            assert preparation["size_ratio"] == pytest.approx(preparation["bytes_after"] / preparation["bytes_before"])


def test_data_path_prepared_frames_are_the_original_frames(data_path):
    # A re-encoded, smaller copy of the same frames: far closer than two frames of a clip are to each other.
    assert len(data_path["prepared_agreement"]) == 4
    for agreement in data_path["prepared_agreement"].values():
        between = agreement["mean_abs_diff_between_clip_frames"]
        assert 0 < agreement["mean_abs_diff_frames"] < 0.3 * between
        assert 0 < agreement["mean_abs_diff_frames_luma"] < 0.3 * between
        # Upscaled from the 64-pixel short side of --tiny to 224, the chroma lost at 64 pixels shows more.
        assert 0 < agreement["mean_abs_diff_model_input"] < 0.5 * between


def test_data_path_times_the_evaluation_path_for_one_and_three_views(data_path):
    assert set(data_path["evaluation"]) == {"views_1", "views_3"}
    for views, result in data_path["evaluation"].items():
        num_views = int(views.split("_")[1])
        assert set(result["methods"]) == {"pyav_reference_eval", "torchcodec_sampled", "processor_from_path"}
        for method in result["methods"].values():
            assert_positive(method, ["videos_per_s", "clips_per_s", "seconds_per_video"])
            assert method["clips_per_s"] == pytest.approx(num_views * method["videos_per_s"])


def test_data_path_evaluation_methods_give_the_same_views(data_path):
    # Both resize the same frames, with and without antialiasing: far closer than two frames of a clip are.
    for result in data_path["evaluation"].values():
        agreement = result["agreement"]
        assert agreement["mean_abs_diff"] < 0.1 * agreement["mean_abs_diff_between_clip_frames"]


def test_data_path_checks_the_prepared_targets_per_size_and_the_evaluation_target(data_path, results_dir):
    expected = {f"evaluation_{views}_torchcodec_over_pyav": ">= 3.0" for views in ("1_view", "3_views")}
    for size in ("128x96", "192x108"):
        for copy in ("g4", "g8"):
            expected[f"training_{size}_prepared_{copy}_over_torchcodec_sampled"] = ">= 3.0"
            expected[f"training_{size}_prepared_{copy}_over_pyav_whole_video"] = ">= 5.0"
            for difference in ("frames", "frames_luma"):  # in grey levels (0-255)
                expected[f"prepared_{size}_{copy}_mean_abs_diff_{difference}_grey_levels"] = "<= 2.0"
    assert {name: check["target"] for name, check in data_path["targets"].items()} == expected
    for check in data_path["targets"].values():
        assert check["value"] > 0 and isinstance(check["met"], bool)
    assert json.loads((results_dir / "data_path.json").read_text()) == data_path


def test_data_wait_reports_the_share_of_the_training_loop_spent_waiting_for_data(data_wait):
    assert set(data_wait["runs"]) == {"workers_2", "workers_0"}
    for run in data_wait["runs"].values():
        # --tiny: 16 training videos in batches of 4, so 6 steps start a second epoch.
        assert run["steps"] == 6 and run["epochs_started"] == 2
        assert 0 < run["first_batch_of_epoch_wait_s"] <= run["data_wait_s"] < run["train_loop_s"]
        assert 0 < run["data_wait_fraction"] < 1
        assert_positive(run, ["seconds_per_step", "clips_per_s"])


def test_data_wait_checks_the_2_worker_target(data_wait, results_dir):
    check = data_wait["targets"]["data_wait_fraction_2_workers"]
    assert check["target"] == "<= 0.1" and check["value"] == data_wait["runs"]["workers_2"]["data_wait_fraction"]
    assert json.loads((results_dir / "data_wait.json").read_text()) == data_wait
    assert "| 2 |" in (results_dir / "data_wait.md").read_text()


def test_gpu_benchmark_runs_on_cpu_and_reports_the_half_precision_logits_difference(tmp_path):
    result = run_benchmark("bench_gpu.py", "--tiny", "--device", "cpu", "--steps", "1", "--video-dir", str(tmp_path))
    tiny = result["results"]["tiny"]
    assert_positive(tiny["inference"], ["clips_per_s", "peak_memory_mb"])
    assert_positive(tiny["train"], ["clips_per_s", "peak_memory_mb"])
    # bf16 keeps about 3 significant digits: a difference, but a small one.
    assert 0 < tiny["accuracy"]["max_abs_diff"] < 0.1
    # without a GPU only the CPU decoder is timed
    assert set(result["decode"]["devices"]) == {"cpu"}
    assert_positive(result["decode"]["devices"]["cpu"], ["clips_per_s"])


def test_reference_benchmark_says_where_to_get_the_reference_code(tmp_path):
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_reference.py"), "--reference-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "has no model.py" in done.stderr and "git clone https://github.com/OpenGVLab/efficient-video-recognition" in done.stderr


def test_plot_writes_a_png(cpu_models, data_path, results_dir):
    output = results_dir / "benchmarks.png"
    done = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "plot_benchmarks.py"),
            "--results",
            str(results_dir),
            "--output",
            str(output),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert output.read_bytes().startswith(b"\x89PNG")


def test_streaming_benchmark_times_streamed_and_map_style_clips_with_1_and_2_workers(tmp_path):
    result = run_benchmark("bench_streaming.py", "--tiny", "--video-dir", str(tmp_path))
    for workers in ("1_workers", "2_workers"):
        for kind in ("map-style", "streamed"):
            assert_positive(result["results"][workers][kind], ["clips_per_s"])
        assert_positive(result["results"][workers], ["streamed_over_map_style"])
