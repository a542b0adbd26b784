"""What every benchmark script here shares: the machine description, tables, and writing results.

Each script prints its results as JSON followed by a markdown table on stdout (progress goes to
stderr), and with `--output DIR` also writes `DIR/<benchmark>.json` and `DIR/<benchmark>.md`.
"""

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
from importlib import metadata
from pathlib import Path


# CLIP ViT shapes the benchmarks build models with (random weights); "tiny" is for runs in seconds.
VIT_SHAPES = {
    "vit-b16": {
        "image_size": 224,
        "patch_size": 16,
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
    },
    "vit-l14": {
        "image_size": 224,
        "patch_size": 14,
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
    },
    "tiny": {
        "image_size": 32,
        "patch_size": 8,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
    },
}


def synthetic_data():
    """`examples/synthetic_data.py`, the synthetic-motion generator, which sits next to the training script."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
    import synthetic_data

    return synthetic_data


def default_video_dir() -> Path:
    """`$EVL_HF_CACHE/benchmark_videos`, by default `~/.cache/evl_hf/benchmark_videos`, next to the synthetic data."""
    return synthetic_data().default_cache_dir().parent / "benchmark_videos"


def log(message: str) -> None:
    """Progress for the reader of a long run; stderr, so stdout stays parseable."""
    print(message, file=sys.stderr, flush=True)


def cpu_model_name() -> str:
    """`lscpu`'s "Model name", falling back to the platform's processor string."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown"
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine_info() -> dict:
    versions = {}
    for package in ("torch", "torchvision", "torchcodec", "transformers", "av", "evl-hf"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "cpu": cpu_model_name(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
        # The machine is shared: the load average tells how quiet it was during the run.
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
    }


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def target(value: float | None, *, at_most: float | None = None, at_least: float | None = None) -> dict:
    """A ratio with the goal it is checked against; `met` is None when it could not be measured."""
    if at_most is not None:
        goal, met = f"<= {at_most}", None if value is None else value <= at_most
    else:
        goal, met = f">= {at_least}", None if value is None else value >= at_least
    return {"value": value, "target": goal, "met": met}


def fmt(value, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def targets_table(targets: dict) -> str:
    rows = [[name, t["target"], t["value"], t["met"]] for name, t in targets.items()]
    return markdown_table(["ratio", "target", "measured", "met"], rows)


def emit(name: str, result: dict, markdown: str, output: str | None) -> None:
    """Print the JSON then the markdown table; with `output`, also write both into that folder."""
    text = json.dumps(result, indent=2)
    print(text)
    print()
    print(markdown)
    if output:
        folder = Path(output)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}.json").write_text(text + "\n")
        (folder / f"{name}.md").write_text(markdown + "\n")
        log(f"wrote {folder / name}.json and .md")
