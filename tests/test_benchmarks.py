"""The benchmark harness: its entry point, the ratios in every result file, and docs/benchmarks.md made from them."""

import copy
import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import docs
from benchmarks.__main__ import main


ROOT = Path(__file__).resolve().parent.parent
RESULTS = docs.load()


def of_kind(kind: str) -> list:
    return [pytest.param(result, id=name) for name, result in RESULTS.items() if result.get("benchmark") == kind]


def test_the_entry_point_lists_every_suite(capsys):
    assert main(["--list"]) == 0
    listed = {line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]}
    assert listed == {
        "cpu_models",
        "reference",
        "precision",
        "startup",
        "data_path",
        "data_wait",
        "streaming",
        "timeline",
        "onnx",
        "gpu",
        "training",
    }


def test_an_unknown_suite_is_refused_with_the_list(capsys):
    assert main(["cpu-models"]) == 2
    error = capsys.readouterr().err
    assert "unknown suite 'cpu-models'" in error and "cpu_models" in error


def test_the_committed_page_is_what_the_results_give():
    assert docs.render(RESULTS, docs.TEMPLATE.read_text()) == docs.PAGE.read_text(), "run `make benchmark-docs`"


def test_a_number_on_the_page_moves_with_its_result_file():
    results = copy.deepcopy(RESULTS)
    run = results["timeline_vit_b16"]
    run["whole_video_cpu_seconds"]["per_window"] = [2 * s for s in run["whole_video_cpu_seconds"]["per_window"]]
    run.pop("cpu_speedup")
    page = docs.render({name: docs.upgrade(name, r) for name, r in results.items()}, docs.TEMPLATE.read_text())
    before = f"{RESULTS['timeline_vit_b16']['cpu_speedup']:.2f}x less CPU"
    assert before in docs.PAGE.read_text() and before not in page
    assert f"{2 * RESULTS['timeline_vit_b16']['cpu_speedup']:.2f}x less CPU" in page


def test_a_missing_value_names_its_file_and_path():
    with pytest.raises(KeyError, match="onnx.json has no median_seconds.tensorrt"):
        docs.render(RESULTS, "{{ onnx:median_seconds.tensorrt }}")


@pytest.mark.parametrize("result", of_kind("cpu_models"))
def test_cpu_model_ratios_are_those_of_their_systems(result):
    systems, ratios = result["systems"], result["ratios"]
    for baseline in ("timesformer", "videomae"):
        if baseline in systems:
            evl, other = systems["evl"], systems[baseline]
            assert ratios[f"evl_train_step_over_{baseline}"] == pytest.approx(
                evl["train_step_s"] / other["train_step_s"]
            )
            assert ratios[f"evl_train_peak_rss_over_{baseline}"] == pytest.approx(
                evl["peak_rss_train_mb"] / other["peak_rss_train_mb"]
            )
    evl = systems["evl"]
    assert evl["train_step_s"] == pytest.approx(statistics.median(evl["runs"]["train_step_s"]))
    assert ratios["evl_backbone_gflops_over_matmul"] == pytest.approx(
        evl["backbone_inference_flops"] / 1e9 / evl["backbone_inference_s"] / result["matmul_gflops_per_s"]
    )


@pytest.mark.parametrize("result", of_kind("reference"))
def test_reference_speedups_are_the_reference_time_over_the_row_time(result):
    times, runs = result["times"], result["runs"]
    for key, value in result["ratios"].items():
        system, mode = key.removesuffix("_speedup").rsplit("_", 1)
        if mode not in result["settings"].get("modes", ["inference", "train"]):
            assert value is None and times[system][f"{mode}_s"] is None  # the older files' untimed mode
            continue
        assert value == pytest.approx(times["reference_fp32"][f"{mode}_s"] / times[system][f"{mode}_s"])
        assert times[system][f"{mode}_s"] == pytest.approx(statistics.median(runs[system][f"{mode}_s"]))
        per_round = [b / t for b, t in zip(runs["reference_fp32"][f"{mode}_s"], runs[system][f"{mode}_s"])]
        assert result["median_of_round_ratios"][key] == pytest.approx(statistics.median(per_round))
    assert result["max_abs_logit_diff"]["evl_hf_fp32"] < 1e-4  # parity: one set of weights in both


@pytest.mark.parametrize("result", of_kind("timeline"))
def test_timeline_speedups_are_those_of_the_median_times(result):
    for key, seconds in (("speedup", "whole_video_seconds"), ("cpu_speedup", "whole_video_cpu_seconds")):
        times = result[seconds]
        assert result[key] == pytest.approx(
            statistics.median(times["per_window"]) / statistics.median(times["timeline"])
        )
        if "targets" in result:  # the older files also stored the ratio itself
            assert result[key] == pytest.approx(result["targets"][f"{key}_timeline_vs_per_window"]["value"])


@pytest.mark.parametrize("result", of_kind("data_path"))
def test_data_path_rates_and_ratios_follow_from_the_timed_clips(result):
    gpu = result["settings"]["gpu_clips_per_s"]
    assert gpu == pytest.approx(result["settings"]["gpu_tflops"] * 1e3 / result["settings"]["gflop_per_clip"])
    for size, video in result["videos"].items():
        methods = video["methods"]
        for method in methods.values():
            assert method["cores_per_gpu"] == pytest.approx(gpu / method["clips_per_s"])
            assert method["seconds_per_clip"] == pytest.approx(1 / method["clips_per_s"])
        for copy_name in result["settings"]["prepare_videos"]["keyframe_intervals"]:
            prepared = methods[f"torchcodec_prepared_g{copy_name}"]["clips_per_s"]
            assert result["ratios"][f"training_{size}_prepared_g{copy_name}_over_torchcodec_sampled"] == pytest.approx(
                prepared / methods["torchcodec_sampled"]["clips_per_s"]
            )
    for preparation in result["preparation"].values():
        assert preparation["size_ratio"] == pytest.approx(preparation["bytes_after"] / preparation["bytes_before"])
    for views, evaluation in result["evaluation"].items():
        for method in evaluation["methods"].values():
            assert method["clips_per_s"] == pytest.approx(int(views.split("_")[1]) * method["videos_per_s"])


@pytest.mark.parametrize("result", of_kind("data_wait"))
def test_data_wait_fractions_are_waits_over_the_loop(result):
    for run in result["runs"].values():
        assert run["data_wait_fraction"] == pytest.approx(run["data_wait_s"] / run["train_loop_s"])
        assert 0 < run["first_batch_of_epoch_wait_s"] <= run["data_wait_s"] < run["train_loop_s"]


@pytest.mark.parametrize("result", of_kind("streaming") + of_kind("onnx"))
def test_streaming_and_onnx_ratios_are_those_of_their_medians(result):
    if result["benchmark"] == "onnx":
        medians = result["median_seconds"]
        assert medians["pytorch"] == pytest.approx(statistics.median(result["seconds"]["pytorch"]))
        assert result["speedup_onnxruntime_vs_pytorch"] == pytest.approx(medians["pytorch"] / medians["onnxruntime"])
        return
    for entry in result["results"].values():
        assert entry["streamed"]["clips_per_s"] == pytest.approx(statistics.median(entry["streamed"]["runs"]))
        assert entry["streamed_over_map_style"] == pytest.approx(
            entry["streamed"]["clips_per_s"] / entry["map-style"]["clips_per_s"]
        )


def test_the_readme_summary_is_rewritten_between_its_markers_only():
    text = f"# EVL\nintro\n{docs.BEGIN}\nstale table\n{docs.END}\nrest\n"
    rewritten = docs.readme_with_summary(text, RESULTS)
    assert rewritten.startswith("# EVL\nintro\n") and rewritten.endswith(f"{docs.END}\nrest\n")
    assert "stale table" not in rewritten
    parity = f"{RESULTS['reference']['max_abs_logit_diff']['evl_hf_fp32']:.1e}"
    assert f"| {parity} |" in rewritten
    assert docs.readme_with_summary("# no markers\n", RESULTS) == "# no markers\n"


def test_the_reference_suite_says_where_to_get_the_reference_code(tmp_path):
    from benchmarks.reference import checkout

    (tmp_path / "notes.txt").write_text("not a checkout")
    with pytest.raises(
        SystemExit, match="has no model.py and cloning .* failed .*git clone https://github.com/OpenGVLab"
    ):
        checkout(tmp_path)


def run_suite(*args: str, timeout: int = 600) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


@pytest.mark.slow  # a subprocess importing torch, a generated 10 s video, the tiny model: 20-60 s on 2 busy cores
def test_a_quick_timeline_run_writes_a_result_the_generator_reads(tmp_path):
    result = run_suite(
        "timeline", "--quick", "--output", str(tmp_path), "--video-dir", str(tmp_path), "--name", "timeline_vit_b16"
    )
    assert json.loads((tmp_path / "timeline_vit_b16.json").read_text()) == result
    assert result["max_probability_difference"] < 1e-5
    assert result["machine"]["collect_env"]["torch_version"]  # torch.utils.collect_env's record
    results = {**RESULTS, "timeline_vit_b16": docs.upgrade("timeline_vit_b16", result)}
    page = docs.render(results, docs.TEMPLATE.read_text())
    assert f"**ViT-B/16: {result['speedup']:.2f}x less wall-clock time" in page


@pytest.mark.slow  # accelerate launch of the training script for 4 steps: a minute on 2 busy cores
def test_a_quick_training_run_records_time_and_the_final_metrics(tmp_path):
    result = run_suite("training", "--quick", "--output", str(tmp_path))
    assert json.loads((tmp_path / "training.json").read_text()) == result
    assert result["wall_s"] > 0 and result["cpu_s"] > 0 and result["metrics_file"] == "all_results.json"
    assert 0 <= result["metrics"]["eval_accuracy"] <= 1
    assert "run" not in docs.upgrade("training", copy.deepcopy(result))  # a quick run is no figure for the docs
    full = docs.upgrade(
        "training_single_label", {**copy.deepcopy(result), "settings": {**result["settings"], "quick": False}}
    )
    assert full["run"]["metric"] == "eval_accuracy" and full["run"]["value"] == result["metrics"]["eval_accuracy"]
    row = f"| {result['metrics']['eval_accuracy']:.3f} in {result['wall_s'] / 60:.1f} min |"
    assert row in docs.render({**RESULTS, "training_single_label": full}, docs.SUMMARY.read_text())
