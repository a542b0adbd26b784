"""`--dtype int8` and `--compile` in the commands that run a model, and what export says of a quantized model."""

import json
import sys

import pytest

from evl_hf.commands import main

from .conftest import encode_video


pytest.importorskip("torchao")


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("videos")
    return [encode_video(folder / f"{index}.mp4", 20, seed=index) for index in range(3)]


def predict(model_folder, videos, output, *arguments) -> list[dict]:
    status = main(
        [
            "predict",
            "--model",
            str(model_folder),
            "--num_workers",
            "0",
            "--output",
            str(output),
            "--top_k",
            "5",
            *map(str, videos),
            *arguments,
        ]
    )
    assert status == 0
    return [json.loads(line) for line in output.read_text().splitlines()]


def scores_by_label(record):
    return dict(zip(record["labels"], record["scores"]))


@pytest.mark.parametrize("dtype", ["int8", "int8-weight-only"])
def test_predict_with_an_int8_backbone_agrees_with_float32(model_folder, videos, tmp_path, dtype):
    expected = predict(model_folder, videos, tmp_path / "fp32.jsonl")
    records = predict(model_folder, videos, tmp_path / "int8.jsonl", "--dtype", dtype, "--batch_size", "2")
    for record, reference in zip(records, expected, strict=True):
        assert record["labels"][0] == reference["labels"][0]
        assert scores_by_label(record) == pytest.approx(scores_by_label(reference), abs=1e-3)


def test_timeline_with_an_int8_backbone_agrees_with_float32(model_folder, videos, tmp_path):
    results = {}
    for dtype in ("float32", "int8"):
        output = tmp_path / f"{dtype}.json"
        assert (
            main(["timeline", "--model", str(model_folder), str(videos[0]), "--dtype", dtype, "--output", str(output)])
            == 0
        )
        results[dtype] = json.loads(output.read_text())
    windows = [result["windows"] for result in results.values()]
    assert len(windows[0]) == len(windows[1]) > 1
    for window, reference in zip(*windows[::-1]):
        assert window["labels"][0] == reference["labels"][0]
        assert window["scores"][0] == pytest.approx(reference["scores"][0], abs=1e-3)


def test_int8_without_torchao_names_the_extra_to_install(model_folder, videos, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torchao.quantization", None)  # what `import` finds when torchao is absent
    with pytest.raises(SystemExit, match="2"):
        main(["predict", "--model", str(model_folder), str(videos[0]), "--dtype", "int8"])
    error = capsys.readouterr().err
    assert "--dtype int8 quantizes the backbone with torchao, which is not installed" in error
    assert "pip install 'evl-hf[quantize]'" in error


def test_float8_on_a_cpu_says_it_needs_a_gpu(model_folder, videos, capsys):
    with pytest.raises(SystemExit, match="2"):
        main(["timeline", "--model", str(model_folder), str(videos[0]), "--dtype", "float8"])
    assert "--dtype float8 runs on CUDA GPUs" in capsys.readouterr().err


def test_export_of_a_quantized_model_says_what_it_supports(model_folder, tmp_path, capsys):
    pytest.importorskip("onnxscript")
    from evl_hf import EVLForVideoClassification, EVLVideoProcessor
    from evl_hf.quantization import from_pretrained_kwargs

    quantized = tmp_path / "int8"
    EVLForVideoClassification.from_pretrained(model_folder, **from_pretrained_kwargs("int8")).save_pretrained(
        quantized
    )
    EVLVideoProcessor.from_pretrained(model_folder).save_pretrained(quantized)
    with pytest.raises(SystemExit, match="2"):
        main(["export", "--model", str(quantized), "--output", str(tmp_path / "model.onnx")])
    error = capsys.readouterr().err
    assert "export writes the float32 model to ONNX" in error and "quantize_dynamic" in error
    assert not (tmp_path / "model.onnx").exists()


@pytest.mark.slow
def test_predict_compiled_int8_equals_eager_int8(model_folder, videos, tmp_path):
    expected = predict(model_folder, videos, tmp_path / "eager.jsonl", "--dtype", "int8", "--batch_size", "3")
    records = predict(
        model_folder, videos, tmp_path / "compiled.jsonl", "--dtype", "int8", "--batch_size", "3", "--compile"
    )
    for record, reference in zip(records, expected, strict=True):
        assert record["labels"][0] == reference["labels"][0]
        assert scores_by_label(record) == pytest.approx(scores_by_label(reference), abs=1e-3)


def test_predict_dtype_auto_says_what_it_chose_and_why(model_folder, videos, tmp_path, capsys):
    from evl_hf.precision import choose_dtype

    records = predict(model_folder, videos[:1], tmp_path / "auto.jsonl", "--dtype", "auto")
    dtype, reason = choose_dtype("cpu", compile=False)
    assert f"--dtype auto: {dtype} ({reason})" in capsys.readouterr().err
    assert len(records) == 1


@pytest.fixture(scope="module")
def float32_package(model_folder, tmp_path_factory):
    package = tmp_path_factory.mktemp("aoti") / "model.pt2"
    status = main(["export", "--format", "aoti", "--model", str(model_folder), "--output", str(package)])
    assert status == 0 and package.is_file()
    return package


def test_predict_with_an_aoti_package_gives_the_eager_predictions(model_folder, videos, tmp_path, float32_package):
    expected = predict(model_folder, videos, tmp_path / "eager.jsonl", "--batch_size", "2")
    records = predict(
        model_folder, videos, tmp_path / "aoti.jsonl", "--batch_size", "2", "--aoti_package", str(float32_package)
    )
    for record, reference in zip(records, expected, strict=True):
        assert record["labels"] == reference["labels"]
        assert scores_by_label(record) == pytest.approx(scores_by_label(reference), abs=1e-5)


def test_predict_with_an_aoti_package_writes_the_eager_embeddings(model_folder, videos, tmp_path, float32_package):
    from datasets import load_dataset

    vectors = {}
    for name, extra in (("eager", ()), ("aoti", ("--aoti_package", str(float32_package)))):
        folder = tmp_path / name
        predict(
            model_folder, videos, tmp_path / f"{name}.jsonl", "--batch_size", "2", "--embeddings", str(folder), *extra
        )
        rows = load_dataset("parquet", data_files=str(folder / "*.parquet"), split="train")
        vectors[name] = dict(zip(rows["video"], rows["embedding"]))
    assert len(vectors["aoti"]) == len(videos) and vectors["aoti"].keys() == vectors["eager"].keys()
    for video, vector in vectors["aoti"].items():
        assert vector == pytest.approx(vectors["eager"][video], abs=1e-5)


def test_an_aoti_package_of_another_model_is_refused(videos, tmp_path, float32_package, capsys):
    from evl_hf.testing_utils import save_tiny_model

    other = save_tiny_model(tmp_path / "eight_frames", num_frames=8)
    with pytest.raises(SystemExit, match="2"):
        main(["predict", "--model", str(other), str(videos[0]), "--aoti_package", str(float32_package)])
    error = capsys.readouterr().err
    assert "was not exported from this model" in error and "num_frames 4 (the model has 8)" in error


def test_a_missing_aoti_package_says_how_to_make_one(model_folder, videos, tmp_path, capsys):
    with pytest.raises(SystemExit, match="2"):
        main(["predict", "--model", str(model_folder), str(videos[0]), "--aoti_package", str(tmp_path / "no.pt2")])
    assert "is not a file: write one with `evl-hf export --format aoti`" in capsys.readouterr().err


def test_onnx_export_of_another_dtype_points_to_aoti(model_folder, tmp_path, capsys):
    with pytest.raises(SystemExit, match="2"):
        main(["export", "--model", str(model_folder), "--dtype", "int8", "--output", str(tmp_path / "m.onnx")])
    assert "ONNX export writes the float32 model" in capsys.readouterr().err
