"""The benchmark harness: its entry point, its refusal of a result that disagrees with itself, and docs/benchmarks.md
made from the result files."""

import argparse
import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import docs
from benchmarks.__main__ import main
from benchmarks.harness import DERIVED, inconsistencies, write


ROOT = Path(__file__).resolve().parent.parent
RESULTS = docs.load()


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


@pytest.mark.parametrize(  # the results with a derived figure (the gpu suite's older ones have none)
    "name", [name for name, result in RESULTS.items() if any(DERIVED.get(result["benchmark"], lambda _: ())(result))]
)
def test_the_harness_refuses_a_result_whose_derived_figure_disagrees_with_its_inputs(name, tmp_path):
    result = copy.deepcopy(RESULTS[name])
    kind = result["benchmark"]
    assert inconsistencies(kind, result) == []  # as its suite wrote it
    path, expected = next((p, e) for p, e in DERIVED[kind](result) if isinstance(e, float) and e)
    parent = result
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = 1.5 * expected
    with pytest.raises(ValueError, match=re.escape(f"{'.'.join(path)} is {1.5 * expected} but its inputs give")):
        write(kind, result, argparse.Namespace(output=str(tmp_path), name=name))
    assert not list(tmp_path.iterdir())


def test_the_harness_refuses_a_reference_result_whose_models_disagree(tmp_path):
    result = copy.deepcopy(RESULTS["reference"])
    result["max_abs_logit_diff"]["evl_hf_fp32"] = 0.5
    with pytest.raises(ValueError, match=r"max_abs_logit_diff.evl_hf_fp32 is 0.5, outside \[0, 0.0001\]"):
        write("reference", result, argparse.Namespace(output=str(tmp_path), name="reference"))


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
        "timeline", "--quick", "--output", str(tmp_path), "--video_dir", str(tmp_path), "--name", "timeline_vit_b16"
    )
    assert json.loads((tmp_path / "timeline_vit_b16.json").read_text()) == result
    assert result["max_probability_difference"] < 1e-5
    assert result["machine"]["collect_env"]["torch_version"]  # torch.utils.collect_env's record
    results = {**RESULTS, "timeline_vit_b16": docs.upgrade("timeline_vit_b16", result)}
    page = docs.render(results, docs.TEMPLATE.read_text())
    assert f"**ViT-B/16: {result['speedup']:.2f}x less wall-clock time" in page


@pytest.mark.slow  # accelerate launch of the training script for 4 steps, twice: two minutes on 2 busy cores
def test_a_quick_training_run_records_time_and_the_final_metrics(tmp_path):
    result = run_suite("training", "--quick", "--output", str(tmp_path))
    assert json.loads((tmp_path / "training.json").read_text()) == result
    assert result["wall_s"] > 0 and result["cpu_s"] > 0 and result["metrics_file"] == "all_results.json"
    assert result["data"] == {"source": "videos", "augment_on_device": None}
    # the same data as frame archives, under its own name, with the default's settings given and the quick ones winning
    archived = run_suite("training", "--quick", "--frame_archives", "--output", str(tmp_path))
    assert json.loads((tmp_path / "training_frame_archives.json").read_text()) == archived
    assert archived["data"]["source"] == "frame_archives" and archived["data"]["augment_on_device"] == "True"
    assert archived["data"]["archive_bytes"] > 0 and archived["data"]["short_side"] == 64
    used = " ".join(archived["settings"]["script_args"])
    assert (
        "--frame_stride 3 " in used
        and "--train_dir <tmp>/frames/train --validation_dir <tmp>/frames/validation" in used
    )
    assert archived["metrics"]["epoch"] == result["metrics"]["epoch"]  # 4 steps each, not the default's 900
    assert 0 <= archived["metrics"]["eval_accuracy"] <= 1
    assert 0 <= result["metrics"]["eval_accuracy"] <= 1
    assert "run" not in docs.upgrade("training", copy.deepcopy(result))  # a quick run is no figure for the docs
    full = docs.upgrade(
        "training_single_label", {**copy.deepcopy(result), "settings": {**result["settings"], "quick": False}}
    )
    assert full["run"]["metric"] == "eval_accuracy" and full["run"]["value"] == result["metrics"]["eval_accuracy"]
    row = f"| {result['metrics']['eval_accuracy']:.3f} in {result['wall_s'] / 60:.1f} min |"
    assert row in docs.render({**RESULTS, "training_single_label": full}, docs.SUMMARY.read_text())


def test_the_data_path_suite_refuses_a_frame_step_that_does_not_divide_the_stride():
    from benchmarks.__main__ import build_parser
    from benchmarks.data import data_path

    with pytest.raises(ValueError, match="every 5th source frame, which does not divide the frame stride 16"):
        data_path(build_parser("data_path").parse_args(["--quick", "--frame_step", "5"]))


@pytest.mark.slow  # a subprocess importing torch, videos generated and prepared three ways, 15 routes: 20-60 s
def test_a_quick_data_path_run_times_every_storage_and_its_tables_show_them(tmp_path):
    result = run_suite("data_path", "--quick", "--output", str(tmp_path), "--video_dir", str(tmp_path))
    assert json.loads((tmp_path / "data_path.json").read_text()) == result
    methods = result["videos"]["128x96"]["methods"]
    assert {method["videos"] for method in methods.values()} == {"original", "g4", "g8", "frames"}
    for suffix in ("", "_augment_float32", "_augment_uint8", "_decode_only"):
        assert methods[f"frame_archive_sampled{suffix}"]["clips_per_s"] > 0
    assert methods["torchcodec_prepared_g4_decode_only"]["videos"] == "g4"
    frames, agreement = result["preparation"]["128x96_frames"], result["prepared_agreement"]["128x96_frames"]
    assert frames["gb_per_hour_after"] < frames["gb_per_hour_before"] and frames["prepared_size"] == "84x64"
    assert 25 < agreement["psnr_db_luma"] < 60 and 25 < agreement["psnr_db_rgb"] < 60  # lossy, yet the same frames
    tables = [line for line in docs.TEMPLATE.read_text().splitlines() if line.startswith("{{ for data_path:")]
    page = docs.render({"data_path": docs.upgrade("data_path", copy.deepcopy(result))}, "\n".join(tables))
    assert "n/a" not in page and "| 128x96 | frame_archive_sampled_decode_only | frames |" in page
    assert f"| {frames['gb_per_hour_before']:.3f} | {frames['gb_per_hour_after']:.3f} |" in page
    assert f"| 128x96 | frames | {agreement['psnr_db_rgb']:.1f} | {agreement['psnr_db_luma']:.1f} |" in page


@pytest.mark.slow  # a subprocess importing torch, a generated 4 s video and its frame archive, the tiny model
def test_a_quick_gpu_run_on_the_cpu_measures_the_frame_archive_data_path(tmp_path):
    result = run_suite("gpu", "--quick", "--device", "cpu", "--output", str(tmp_path), "--video_dir", str(tmp_path))
    assert json.loads((tmp_path / "gpu_on_cpu_bf16.json").read_text()) == result
    archive_training = result["archive_training"]
    assert archive_training["batch_size"] == 2 and set(archive_training["methods"]) == {
        "device_decode",
        "worker_decode",
    }
    for method in archive_training["methods"].values():
        assert method["clips_per_s"] > 0 and method["cpu_seconds_per_clip"] > 0
    for method in archive_training["methods"].values():  # the worker's share is part of the whole
        assert 0 < method["worker_cpu_seconds_per_clip"] < method["cpu_seconds_per_clip"]
    assert archive_training["mean_abs_difference_device_vs_cpu_decode"] == 0  # both decoded by libjpeg-turbo here
