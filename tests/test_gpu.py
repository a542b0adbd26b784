"""On a CUDA device: the pipeline, `evl-hf predict`, training through `accelerate launch`, torchcodec's GPU decoder, the
ONNX export check and the gpu benchmark suite's quick mode. `make test-gpu` runs them (marked `gpu`); without a GPU they skip."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torchcodec.encoders import VideoEncoder
from transformers import CLIPVisionConfig, CLIPVisionModel, pipeline

import evl_hf  # noqa: F401  (registers EVL with the Auto classes, for the pipeline)
from evl_hf import EVLConfig, EVLForVideoClassification, EVLVideoProcessor
from evl_hf.testing_utils import tiny_vision_config
from evl_hf.video_transforms import draw_clip_augmentation


pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]

ROOT = Path(__file__).resolve().parents[1]
LABELS = ["left", "right", "up", "down"]
ENVIRONMENT = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


@pytest.fixture(autouse=True)
def true_float32():
    """fp32 that means fp32 (no TF32 in cuDNN's convolutions), so that GPU and CPU results compare closely."""
    allowed = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = allowed


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    """3 s of a square moving right over noise, 96x128, 15 fps, H.264."""
    frames = torch.randint(0, 64, (45, 3, 96, 128), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    for t in range(45):
        frames[t, :, 32:64, 2 * t : 2 * t + 32] = 255
    path = tmp_path_factory.mktemp("video") / "square.mp4"
    VideoEncoder(frames, frame_rate=15).to_file(str(path), codec="libx264", pixel_format="yuv420p")
    return path


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory) -> Path:
    """A saved EVL with a 4-layer, 128-wide random CLIP on 64 px frames, its zero-initialised parts given values."""
    torch.manual_seed(0)
    vision_config = CLIPVisionConfig(
        hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4, image_size=64, patch_size=8
    )
    config = EVLConfig(
        vision_config=vision_config,
        num_frames=8,
        decoder_num_layers=2,
        id2label=dict(enumerate(LABELS)),
        label2id={label: i for i, label in enumerate(LABELS)},
    )
    model = EVLForVideoClassification(config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if any(part in name for part in ("temporal_cross_attention", "temporal_pos_embed", "query_token")):
                parameter.copy_(torch.randn(parameter.shape) * 0.5)
    folder = tmp_path_factory.mktemp("model")
    model.save_pretrained(folder)
    EVLVideoProcessor(
        num_frames=8, frame_stride=4, size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}
    ).save_pretrained(folder)
    return folder


def scores(results: list[dict]) -> dict:
    return {result["label"]: result["score"] for result in results}


def test_the_pipeline_on_device_0_gives_the_cpu_scores(model_folder, video):
    on_gpu = pipeline("video-classification", model=str(model_folder), device=0)
    assert on_gpu.model.device == torch.device("cuda", 0)
    expected = scores(pipeline("video-classification", model=str(model_folder), device="cpu")(str(video), top_k=4))
    got = scores(on_gpu(str(video), top_k=4))
    assert got.keys() == expected.keys()
    for label in expected:
        assert got[label] == pytest.approx(expected[label], abs=1e-4), label


def predict(model_folder, video, output, *options) -> dict:
    from evl_hf.commands import main

    assert main(["predict", str(video), "--model", str(model_folder), "--output", str(output), *options]) == 0
    (line,) = Path(output).read_text().splitlines()
    result = json.loads(line)
    return dict(zip(result["labels"], result["scores"]))


@pytest.mark.parametrize("dtype", ["bfloat16", "int8"])
def test_predict_on_cuda_agrees_with_float32_on_the_cpu(model_folder, video, tmp_path, dtype):
    if dtype == "int8":
        pytest.importorskip("torchao", reason="int8 needs torchao")
    expected = predict(model_folder, video, tmp_path / "cpu.jsonl", "--top_k", "4")
    got = predict(model_folder, video, tmp_path / "gpu.jsonl", "--top_k", "4", "--device", "cuda", "--dtype", dtype)
    assert got.keys() == expected.keys()
    for label in expected:  # rounding of a half-precision or int8 backbone, not another result
        assert got[label] == pytest.approx(expected[label], abs=0.05), label


@pytest.mark.parametrize("videos_as", ["videos", "frame_archives"])
def test_twenty_bf16_training_steps_through_accelerate_launch(tmp_path, videos_as):
    """Training from H.264 videos decoded in the workers, or from frame archives whose JPEGs the training step decodes
    on the GPU (`--decode_device auto`)."""
    sys.path.insert(0, str(ROOT / "examples"))
    from synthetic_data import SyntheticMotionConfig, generate_synthetic_motion_dataset

    from evl_hf.commands import main

    videos = generate_synthetic_motion_dataset(
        tmp_path / "videos",
        SyntheticMotionConfig(train_videos_per_label=4, validation_videos_per_label=2, num_frames=12, frame_size=32),
    )
    options = ""
    if videos_as == "frame_archives":
        for split in ("train", "validation"):
            arguments = ["--format", "frames", "--frame_step", "2", "--num_workers", "1"]
            assert main(["prepare-videos", str(videos / split), str(tmp_path / "archives" / split), *arguments]) == 0
        videos, options = tmp_path / "archives", "--decode_device auto --log_level info"
    torch.manual_seed(0)
    clip = tmp_path / "clip"
    CLIPVisionModel(tiny_vision_config(hidden_size=64, intermediate_size=128)).save_pretrained(clip)
    output_dir = tmp_path / "output"
    command = f"""
        {sys.executable} -m accelerate.commands.launch --num_processes 1 --num_machines 1 --mixed_precision bf16
        --dynamo_backend no {ROOT / "examples" / "run_video_classification.py"} --model_name_or_path {clip}
        --train_dir {videos / "train"} --validation_dir {videos / "validation"} --output_dir {output_dir}
        --cache_dir {tmp_path / "cache"} --num_frames 4 --frame_stride 2 --decoder_num_layers 2 --max_steps 20
        --per_device_train_batch_size 4 --learning_rate 1e-3 --bf16 --backbone_dtype bfloat16 --logging_steps 5
        --save_strategy no --dataloader_num_workers 2 --disable_tqdm True --report_to none {options}
    """.split()
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=ENVIRONMENT, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "device: cuda" in result.stdout + result.stderr
    if videos_as == "frame_archives":
        assert "decoded in batches on cuda" in result.stdout + result.stderr
    state = json.loads((output_dir / "trainer_state.json").read_text())
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert state["global_step"] == 20 and len(losses) == 4 and all(map(math.isfinite, losses))
    assert "eval_accuracy" in json.loads((output_dir / "eval_results.json").read_text())


def test_torchcodec_cuda_decoder_through_the_processor_matches_the_cpu_decoder(model_folder, video):
    from torchcodec.decoders import VideoDecoder

    try:
        decoder = VideoDecoder(str(video), device="cuda")
        decoder.get_frame_at(0)
    except Exception as error:  # an FFmpeg or torchcodec built without NVDEC: nothing to check here
        pytest.skip(f"torchcodec cannot decode on CUDA here: {type(error).__name__}: {error}")
    processor = EVLVideoProcessor.from_pretrained(model_folder)
    on_gpu = processor(decoder, return_tensors="pt")["pixel_values"]
    on_cpu = processor(VideoDecoder(str(video)), return_tensors="pt")["pixel_values"]
    assert on_gpu.shape == on_cpu.shape == (1, 8, 3, 64, 64)
    # NVDEC's colour conversion differs from FFmpeg's by a few grey levels (0.1 is 7 of 255 after CLIP's std).
    assert (on_gpu.cpu().float() - on_cpu).abs().mean() < 0.1


def test_the_export_check_on_cuda(model_folder, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from evl_hf.onnx_export import check_onnx, export_onnx

    model = EVLForVideoClassification.from_pretrained(model_folder).cuda().eval()
    export_onnx(model, tmp_path / "evl.onnx")
    difference, scale = check_onnx(model, tmp_path / "evl.onnx")  # onnxruntime on the CPU against PyTorch on CUDA
    assert difference <= 1e-4 * max(1.0, scale)  # the command's own tolerance


def test_bench_gpu_quick_mode(tmp_path):
    command = [
        sys.executable,
        "-m",
        "benchmarks",
        "gpu",
        "--quick",
        "--output",
        str(tmp_path),
        "--video_dir",
        str(tmp_path / "videos"),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=ENVIRONMENT, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    measured = json.loads((tmp_path / "gpu_bf16.json").read_text())
    shape = measured["results"]["vit-b16"]
    assert shape["inference"]["clips_per_s"] > 0 and shape["train"]["clips_per_s"] > 0
    assert shape["accuracy"]["max_abs_diff"] < 1.0  # bf16 rounding of logits of about unit size
    assert set(measured["decode"]["devices"]) == {"cpu", "cuda"}
    archive_training = measured["archive_training"]  # frame archives' JPEGs decoded on the GPU and on the CPU
    assert all(method["clips_per_s"] > 0 for method in archive_training["methods"].values())
    # in grey levels: two decoders and two resizers, not two clips
    assert archive_training["mean_abs_difference_device_vs_cpu_decode"] < 2.0


def test_nvjpeg_decodes_a_frame_archive_as_the_cpu_does(video, tmp_path):
    from evl_hf.frame_archives import write_frame_archive
    from evl_hf.video_utils import open_video

    write_frame_archive(video, tmp_path / "square.evlf", frame_step=4)
    archive = open_video(tmp_path / "square.evlf")
    indices = [0, 5, 16, 33, 44]
    on_cpu = archive.read_frames(indices)
    on_gpu = archive.read_frames(indices, device="cuda")  # one nvJPEG batch
    assert on_gpu.device.type == "cuda" and on_gpu.shape == on_cpu.shape == (5, 3, 96, 128)
    error = ((on_gpu.cpu().float() - on_cpu.float()) ** 2).mean()
    assert 10 * math.log10(255**2 / max(float(error), 1e-12)) > 40  # two decoders, not two encodings


@pytest.mark.parametrize(
    "options",
    [dict(do_augment=True, horizontal_flip=True, rand_augment=True), dict(num_clips=2, num_crops=3)],
    ids=["training", "evaluation_views"],
)
def test_frame_archive_jpegs_decoded_on_cuda_in_one_batch_give_the_cpus_clips(video, tmp_path, options):
    """`--decode_device cuda`'s path: the JPEGs of 16 clips decoded as one nvJPEG batch and cropped (training) or
    resized and cropped into views (evaluation) on CUDA, against the same clips decoded by libjpeg-turbo and made on
    the CPU, then augmented and normalised on CUDA: two decoders and two resizers, not two clips."""
    from evl_hf.frame_archives import decode_clip_jpegs, read_clip_jpegs, write_frame_archive

    write_frame_archive(video, tmp_path / "square.evlf", frame_step=2)
    processor = EVLVideoProcessor(
        num_frames=8, frame_stride=4, size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}
    )
    path = str(tmp_path / "square.evlf")
    clips = [read_clip_jpegs(processor, path, seed=seed, device_transforms=True, **options) for seed in range(16)]
    on_cuda, on_cpu = (decode_clip_jpegs(clips, processor, device) for device in ("cuda", "cpu"))
    assert on_cuda["pixel_values"].device.type == "cuda" and on_cuda["pixel_values"].dtype == torch.uint8
    assert on_cuda["pixel_values"].shape == on_cpu["pixel_values"].shape
    error = ((on_cuda["pixel_values"].cpu().float() - on_cpu["pixel_values"].float()) ** 2).mean()
    assert 10 * math.log10(255**2 / max(float(error), 1e-12)) > 40
    if "augmentation" in on_cpu:  # the same draws, cropped alike; then augmented on CUDA from either decoder
        assert torch.equal(on_cuda["augmentation"], on_cpu["augmentation"])
        augmented = [
            processor.augment_batch(made["pixel_values"], made["augmentation"], "cuda") for made in (on_cuda, on_cpu)
        ]
        assert (augmented[0] - augmented[1]).abs().mean() < 0.05  # normalised units: about 3 grey levels


def test_device_augmentation_on_cuda_gives_the_cpus_clips():
    """Workers' uint8 clips (cropped, or of one size and cropped on the device), flipped, RandAugmented and normalised
    on CUDA: within a grey level of the same batch on the CPU, except a few pixels where a rotation or shear rounds
    its sampling grid the other way."""
    processor = EVLVideoProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64})
    generator = torch.Generator().manual_seed(0)
    videos = torch.randint(0, 256, (16, 8, 3, 96, 128), dtype=torch.uint8, generator=generator)
    options = dict(do_augment=True, horizontal_flip=True, rand_augment=True, device_transforms=True)
    worker = [processor(video, seed=seed, return_tensors="pt", **options) for seed, video in enumerate(videos)]
    cropped = torch.cat([clip["pixel_values"] for clip in worker])
    rows = torch.cat([clip["augmentation"] for clip in worker])
    uncropped_rows = torch.stack([draw_clip_augmentation(96, 128, 0.08, True, True, seed) for seed in range(16)])
    grey_level = 1 / 255 / min(processor.image_std)  # one grey level in normalised units, at most
    for pixel_values, augmentation in [(cropped, rows), (videos, uncropped_rows)]:
        on_cpu = processor.augment_batch(pixel_values, augmentation)
        on_cuda = processor.augment_batch(pixel_values, augmentation, device="cuda")
        assert on_cuda.device.type == "cuda" and on_cuda.shape == on_cpu.shape == (16, 8, 3, 64, 64)
        difference = (on_cuda.cpu() - on_cpu).abs()
        assert (difference <= 1.01 * grey_level).float().mean() > 0.99, difference.max()
