"""Loading evl_hf files never runs untrusted code: no pickle in what we read or write, and no remote code needed."""

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from safetensors import safe_open

from evl_hf.testing_utils import save_tiny_model


REPO_ROOT = Path(__file__).resolve().parent.parent
# The code that ships or that users copy and run.
SCANNED_FOLDERS = ("evl_hf", "examples")


def torch_load_calls(source: str, filename: str = "<source>") -> list[tuple[int, bool]]:
    """
    Every call of `torch.load` in `source`, whatever it is imported as (`torch.load`, `import torch as th; th.load`,
    `from torch import load`, `torch.serialization.load`), with whether it passes the literal `weights_only=True`.

    Returns:
        `list[tuple[int, bool]]`: `(line, passes weights_only=True)` per call.
    """
    tree = ast.parse(source, filename=filename)
    torch_names, serialization_names, load_names = set(), set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "torch":
                    torch_names.add(alias.asname or "torch")
                elif alias.name == "torch.serialization":
                    # `import torch.serialization` binds `torch`; with `as` it binds the submodule itself.
                    (serialization_names if alias.asname else torch_names).add(alias.asname or "torch")
        elif isinstance(node, ast.ImportFrom) and node.module in ("torch", "torch.serialization"):
            for alias in node.names:
                if alias.name == "load":
                    load_names.add(alias.asname or "load")
                elif alias.name == "serialization":
                    serialization_names.add(alias.asname or "serialization")

    def is_torch_load(function: ast.expr) -> bool:
        if isinstance(function, ast.Name):
            return function.id in load_names
        if not isinstance(function, ast.Attribute) or function.attr != "load":
            return False
        owner = function.value
        if isinstance(owner, ast.Name):
            return owner.id in torch_names or owner.id in serialization_names
        return (
            isinstance(owner, ast.Attribute)
            and owner.attr == "serialization"
            and isinstance(owner.value, ast.Name)
            and owner.value.id in torch_names
        )

    calls = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and is_torch_load(node.func):
            safe = any(
                keyword.arg == "weights_only"
                and isinstance(keyword.value, ast.Constant)
                and keyword.value.value is True
                for keyword in node.keywords
            )
            calls.append((node.lineno, safe))
    return calls


def python_files():
    for folder in SCANNED_FOLDERS:
        yield from sorted((REPO_ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize(
    "source,expected",
    [
        ("import torch\ntorch.load('x.pt', weights_only=True)", [(2, True)]),
        ("import torch\ntorch.load('x.pt')", [(2, False)]),
        ("import torch\ntorch.load('x.pt', weights_only=False)", [(2, False)]),
        ("import torch\nflag = True\ntorch.load('x.pt', weights_only=flag)", [(3, False)]),
        ("import torch\nopts = {'weights_only': True}\ntorch.load('x.pt', **opts)", [(3, False)]),
        ("import torch as th\nth.load('x.pt')", [(2, False)]),
        ("from torch import load\nload('x.pt')", [(2, False)]),
        ("from torch import load as read\nread('x.pt', weights_only=True)", [(2, True)]),
        ("import torch\ntorch.serialization.load('x.pt')", [(2, False)]),
        ("import torch.serialization as ts\nts.load('x.pt')", [(2, False)]),
        ("import json\njson.load(open('x.json'))", []),
    ],
)
def test_torch_load_finder_sees_every_spelling_and_only_accepts_a_literal_true(source, expected):
    assert torch_load_calls(source) == expected


def test_every_torch_load_in_the_package_and_examples_passes_weights_only_true():
    unsafe, found = [], 0
    for path in python_files():
        for line, safe in torch_load_calls(path.read_text(), str(path)):
            found += 1
            if not safe:
                unsafe.append(f"{path.relative_to(REPO_ROOT)}:{line}")
    assert not unsafe, f"torch.load without weights_only=True (arbitrary code on load): {unsafe}"
    assert found >= 1, "the converter's torch.load was not found: the scan is not looking at the package"


@pytest.fixture(scope="module")
def saved_folder(tmp_path_factory):
    """A tiny EVL model with both processors, saved as users save it."""
    return save_tiny_model(tmp_path_factory.mktemp("evl"), labels=["left", "right"], image_processor=True)


def test_save_pretrained_writes_the_weights_as_safetensors(saved_folder):
    with safe_open(saved_folder / "model.safetensors", framework="pt") as weights:
        names = set(weights.keys())
    assert "evl.decoder.query_token" in names and "classifier.weight" in names
    assert any(name.startswith("evl.vision_model.") for name in names)


def test_save_pretrained_writes_no_pickle_file(saved_folder):
    files = sorted(path for path in saved_folder.rglob("*") if path.is_file())
    assert not [path.name for path in files if path.suffix in (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")]
    # By content too: anything that is not a safetensors file is plain text (JSON configs, copied module files).
    for path in files:
        if path.suffix == ".safetensors":
            with safe_open(path, framework="pt"):
                pass
        else:
            text = path.read_bytes().decode("utf-8")
            if path.suffix == ".json":
                json.loads(text)


def tampered_copy(saved_folder: Path, destination: Path) -> Path:
    """A copy of `saved_folder` whose module files raise as soon as anything imports them."""
    destination.mkdir()
    for path in saved_folder.iterdir():
        content = b'raise RuntimeError("the copied module file was executed")\n' if path.suffix == ".py" else None
        (destination / path.name).write_bytes(content or path.read_bytes())
    copied = {path.name for path in destination.iterdir()}
    assert {"modeling_evl.py", "configuration_evl.py", "video_processing_evl.py"} <= copied
    return destination


def run_python(script: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run `script` in a fresh interpreter with its own module cache and no network."""
    env = dict(os.environ, HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1")
    command = [sys.executable, "-c", textwrap.dedent(script)]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)


def test_saved_folder_loads_without_trust_remote_code_and_never_runs_its_module_files(saved_folder, tmp_path):
    folder = tampered_copy(saved_folder, tmp_path / "tampered")
    script = f"""
        import os, sys
        from pathlib import Path
        import evl_hf
        from transformers import (
            AutoConfig, AutoImageProcessor, AutoModelForVideoClassification, AutoVideoProcessor, pipeline,
        )
        folder = {str(folder)!r}
        config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
        model = AutoModelForVideoClassification.from_pretrained(folder, trust_remote_code=False)
        video_processor = AutoVideoProcessor.from_pretrained(folder, trust_remote_code=False)
        image_processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=False)
        classifier = pipeline("video-classification", model=folder, trust_remote_code=False)
        loaded = [config, model, video_processor, image_processor, classifier.model, classifier.video_processor]
        assert all(type(obj).__module__.startswith("evl_hf.") for obj in loaded), [type(o).__module__ for o in loaded]
        assert not any(name.startswith("transformers_modules") for name in sys.modules)
        assert not list(Path(os.environ["HF_MODULES_CACHE"]).rglob("*_evl.py")), "module files were copied for import"
        print("loaded without remote code")
        """
    result = run_python(script, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "loaded without remote code" in result.stdout


def test_tampered_folder_is_live_where_evl_hf_is_not_imported(saved_folder, tmp_path):
    """The control for the test above: the same tampered files do run when the classes come from the folder."""
    folder = tampered_copy(saved_folder, tmp_path / "tampered")
    script = f"""
        from transformers import AutoModelForVideoClassification
        AutoModelForVideoClassification.from_pretrained({str(folder)!r}, trust_remote_code=True)
        """
    result = run_python(script, tmp_path)
    assert result.returncode != 0
    assert "the copied module file was executed" in result.stderr
    assert list((tmp_path / "modules").rglob("*_evl.py")), "remote code is imported from the module cache"
