"""
What the executed docs run against (`make test-docs`, pytest-markdown-docs over README.md and docs/*.md).

Every ```python block of the pages runs, in page order, in one working folder (`docs_workspace`) that holds what the
pages name, made here from real files:

- the Hub id `openai/clip-vit-base-patch16`: a random tiny `CLIPModel` with ViT-B/16's input geometry (224 px
  images, 16 px patches, 4 layers, 32 wide), saved into a Hub cache of its own laid out as a download is
  (`models--openai--clip-vit-base-patch16/snapshots/<revision>/`), with the Hub offline (`HF_HUB_OFFLINE=1`,
  `HF_HUB_CACHE`), so that `from_pretrained("openai/clip-vit-base-patch16")` resolves it as it would the real one;
- `video.mp4`, `clip.mp4`, `long.mp4` and `videos/<label>/00000.mp4`, encoded with `evl_hf.testing_utils.encode_video`;
- `outputs/evl-synthetic-motion`, in place of what `make train` writes: a tiny random EVL with that run's labels,
  clip length and frame stride, and its processors;
- `k400_vitb16_8f_dec4x768.pth` and `k400_class_mappings.json`: an official-layout checkpoint (400 classes) for the
  tiny CLIP and a label list, converted by the README's command into `evl-vitb16-8f-k400`;
- `evl-vitb16-8f`: a classifier built with `from_clip_pretrained` on the tiny CLIP, saved with its processors;
- `evl.onnx` exported from `outputs/evl-synthetic-motion`, and `embeddings/` written by `evl-hf predict --embeddings`;
- `examples/`, the repository's, for the blocks that import the synthetic-motion generator.

The collection check below makes sure that no block drops out: each page yields as many tests as it has ```python
fences, and a skipped block fails the run.
"""

import re
from pathlib import Path

import pytest


ROOT = Path(__file__).parent
PYTHON_FENCE = re.compile(r"^[ \t]*```[ \t]*(?:python3?|py)\b", re.MULTILINE)  # as pytest-markdown-docs names them
CLIP_ID = "openai/clip-vit-base-patch16"
MOTION_LABELS = ["down", "left", "right", "up"]  # the synthetic-motion folders, in the order the training script sorts


def markdown_docs_enabled(config) -> bool:
    return bool(getattr(config.option, "markdowndocs", False))


def is_markdown_block(item) -> bool:
    return item.get_closest_marker("markdown-docs") is not None


@pytest.hookimpl(tryfirst=True)  # before `-k`/`-m` deselect anything: the count is of the pages, not of a selection
def pytest_collection_modifyitems(config, items):
    if not markdown_docs_enabled(config):
        return
    collected = {}
    for item in items:
        if is_markdown_block(item) and item.path.suffix == ".md":
            collected[item.path] = collected.get(item.path, 0) + 1
    pages = set(collected) | {Path(arg.split("::")[0]).resolve() for arg in config.args if arg.endswith(".md")}
    for folder in {Path(arg).resolve() for arg in config.args if Path(arg).is_dir()}:
        pages |= set(folder.glob("*.md"))
    wrong = [
        f"{page}: {len(PYTHON_FENCE.findall(page.read_text()))} ```python fences, {collected.get(page, 0)} tests"
        for page in sorted(pages)
        if len(PYTHON_FENCE.findall(page.read_text())) != collected.get(page, 0)
    ]
    if wrong:
        raise pytest.UsageError(
            "Some ```python blocks would not run (a `notest` option, or a fence markdown-it "
            "does not see): " + "; ".join(wrong)
        )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.skipped and is_markdown_block(item):  # a docs block must run: a skip would hide a page gone false
        report.outcome = "failed"
        report.longrepr = f"a documentation block was skipped, which make test-docs does not allow: {report.longrepr}"
    return report


def save_to_hub_cache(cache: Path, repo_id: str, model, revision: str = "0" * 40) -> Path:
    """Saves `model` where huggingface_hub looks for the files of `repo_id` at its `main` revision."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / revision
    model.save_pretrained(snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    return snapshot


def tiny_clip_vit_b16_geometry():
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig

    from evl_hf.testing_utils import tiny_vision_config

    # 4 layers, for the default of 4 decoder layers (each reads one encoder layer)
    vision_config = tiny_vision_config(num_hidden_layers=4, image_size=224, patch_size=16)
    text_config = CLIPTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    torch.manual_seed(0)
    return CLIPModel(
        CLIPConfig(text_config=text_config.to_dict(), vision_config=vision_config.to_dict(), projection_dim=32)
    )


def official_checkpoint(path: Path, labels_path: Path, num_classes: int = 400):
    import json
    import sys

    import torch

    sys.path.insert(0, str(ROOT / "tests"))  # the official layout is built by the converter's tests
    from test_convert_evl_original_to_hf import official_state_dict

    torch.save({"model": official_state_dict(layers=4, frames=8, classes=num_classes, width=32, grid=14)}, path)
    labels_path.write_text(json.dumps([f"class {i}" for i in range(num_classes)]))


@pytest.fixture(scope="session")
def docs_workspace(tmp_path_factory):
    from huggingface_hub import constants

    root = tmp_path_factory.mktemp("docs")
    hub_cache, work = root / "hub", root / "work"
    work.mkdir()
    with pytest.MonkeyPatch.context() as patch:
        # the environment for anything started from here, the constants for this process, which read them at import
        patch.setenv("HF_HUB_CACHE", str(hub_cache))
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setattr(constants, "HF_HUB_CACHE", str(hub_cache))
        patch.setattr(constants, "HF_HUB_OFFLINE", True)
        patch.chdir(work)
        make_workspace(work, hub_cache)
        yield work


def make_workspace(work: Path, hub_cache: Path):
    from evl_hf import EVLForVideoClassification, EVLImageProcessor, EVLVideoProcessor
    from evl_hf.commands import main as evl_hf_main
    from evl_hf.convert_evl_original_to_hf import main as convert_main
    from evl_hf.onnx_export import export_onnx
    from evl_hf.testing_utils import encode_video, save_tiny_model

    save_to_hub_cache(hub_cache, CLIP_ID, tiny_clip_vit_b16_geometry())
    for name, frames in (("video.mp4", 150), ("clip.mp4", 150), ("long.mp4", 240)):
        encode_video(work / name, frames, height=120, width=160, fps=30)
    for label in ("left", "up"):
        (work / "videos" / label).mkdir(parents=True)
        encode_video(work / "videos" / label / "00000.mp4", 30, seed=len(label))
    (work / "examples").symlink_to(ROOT / "examples")

    trained = work / "outputs" / "evl-synthetic-motion"
    save_tiny_model(trained, num_frames=8, frame_stride=3, labels=MOTION_LABELS, image_processor=True)

    official_checkpoint(work / "k400_vitb16_8f_dec4x768.pth", work / "k400_class_mappings.json")
    convert_main(
        [
            "--checkpoint",
            "k400_vitb16_8f_dec4x768.pth",
            "--clip_model",
            CLIP_ID,
            "--labels_file",
            "k400_class_mappings.json",
            "--output_dir",
            "evl-vitb16-8f-k400",
        ]
    )

    labels = ["left", "right", "up", "down"]
    model = EVLForVideoClassification.from_clip_pretrained(
        CLIP_ID, num_frames=8, id2label=dict(enumerate(labels)), label2id={label: i for i, label in enumerate(labels)}
    )
    model.save_pretrained("evl-vitb16-8f")
    EVLVideoProcessor(num_frames=8, frame_stride=16).save_pretrained("evl-vitb16-8f")
    EVLImageProcessor().save_pretrained("evl-vitb16-8f")

    export_onnx(EVLForVideoClassification.from_pretrained(trained).eval(), "evl.onnx")
    status = evl_hf_main(
        [
            "predict",
            "--model",
            str(trained),
            "videos/",
            "--output",
            "predictions.jsonl",
            "--embeddings",
            "embeddings",
            "--num_workers",
            "0",
        ]
    )
    assert status == 0, f"evl-hf predict exited with {status}"


@pytest.fixture(autouse=True)
def _docs_block_workspace(request):
    """Gives the blocks of this repository's pages the workspace; other tests are left as they are."""
    if is_markdown_block(request.node) and request.node.path.is_relative_to(ROOT):
        request.getfixturevalue("docs_workspace")
