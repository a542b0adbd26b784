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


def test_data_path_reports_clips_per_second_for_each_method(data_path):
    assert set(data_path["videos"]) == {"keyframe_interval_250", "keyframe_interval_30"}
    for video in data_path["videos"].values():
        assert set(video["methods"]) == {"pyav_whole_video", "torchcodec_sampled", "processor_from_path"}
        for method in video["methods"].values():
            assert_positive(method, ["clips_per_s", "seconds_per_clip"])
    assert all(value > 0 for value in data_path["ratios"].values())


def test_data_path_times_the_evaluation_path_for_one_and_three_views(data_path):
    assert set(data_path["evaluation"]) == {"keyframe_interval_250", "keyframe_interval_30"}
    for by_views in data_path["evaluation"].values():
        assert set(by_views) == {"views_1", "views_3"}
        for views, result in by_views.items():
            num_views = int(views.split("_")[1])
            assert set(result["methods"]) == {"pyav_reference_eval", "torchcodec_sampled", "processor_from_path"}
            for method in result["methods"].values():
                assert_positive(method, ["videos_per_s", "clips_per_s", "seconds_per_video"])
                assert method["clips_per_s"] == pytest.approx(num_views * method["videos_per_s"])


def test_data_path_evaluation_methods_give_the_same_views(data_path):
    # Both resize the same frames, with and without antialiasing: far closer than two frames of a clip are.
    for by_views in data_path["evaluation"].values():
        for result in by_views.values():
            agreement = result["agreement"]
            assert agreement["mean_abs_diff"] < 0.1 * agreement["mean_abs_diff_between_clip_frames"]


def test_data_path_checks_the_3x_target_for_training_and_evaluation_separately(data_path):
    expected = {
        f"{path}_torchcodec_over_pyav_keyframe_interval_{interval}"
        for path in ("training", "evaluation_1_view", "evaluation_3_views")
        for interval in (250, 30)
    }
    assert set(data_path["targets"]) == expected
    for check in data_path["targets"].values():
        assert check["target"] == ">= 3.0" and check["value"] > 0 and isinstance(check["met"], bool)


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
