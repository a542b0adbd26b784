"""Plot the CPU model and data-path results (the JSON files `--output` wrote) into one PNG for docs/benchmarks.md.

python benchmarks/plot_benchmarks.py --results docs/benchmark_results --output docs/benchmark_results/benchmarks.png
"""

import argparse
import json
from pathlib import Path

import matplotlib


matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402


def bar(ax, labels, values, title, ylabel, fmt="{:.2f}"):
    bars = ax.bar(labels, values, color=["tab:green"] + ["tab:gray"] * (len(values) - 1))
    ax.bar_label(bars, [fmt.format(v) for v in values], fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(ylabel)
    ax.tick_params(axis="x", labelsize=8)
    ax.margins(y=0.15)


def plot(results: Path, output: Path) -> Path:
    cpu = json.loads((results / "cpu_models.json").read_text())
    data_file = results / "data_path.json"
    data = json.loads(data_file.read_text()) if data_file.exists() else None

    fig, axes = plt.subplots(1, 4 if data else 3, figsize=(16 if data else 12, 3.8))
    systems = cpu["systems"]
    names = list(systems)
    bar(
        axes[0],
        names,
        [systems[n]["train_step_s"] for n in names],
        "training step (lower is better)",
        "s / batch of 2",
    )
    bar(
        axes[1],
        names,
        [systems[n]["peak_rss_train_mb"] / 1024 for n in names],
        "peak RSS in training (lower is better)",
        "GiB",
    )
    bar(
        axes[2],
        names,
        [systems[n]["inference_clips_per_s"] for n in names],
        "inference (higher is better)",
        "clips / s",
    )
    if data:
        labels, values, colours = [], [], []
        short = {"pyav_whole_video": "PyAV", "torchcodec_sampled": "torchcodec"}
        for size, video in data["videos"].items():
            for method, result in video["methods"].items():
                # torchcodec_prepared_g4 -> "prepared g4"
                labels.append(f"{size} {short.get(method, 'prepared ' + method.rsplit('_', 1)[-1])}")
                values.append(result["clips_per_s"])
                colours.append({"PyAV": "tab:gray", "torchcodec": "tab:green"}.get(short.get(method), "tab:blue"))
        bars = axes[3].bar(labels, values, color=colours)
        axes[3].bar_label(bars, [f"{v:.1f}" for v in values], fontsize=8)
        axes[3].set_title("decode + transforms, 1 thread (higher is better)", fontsize=10)
        axes[3].set_ylabel("clips / s")
        axes[3].tick_params(axis="x", labelsize=7, labelrotation=60)
        axes[3].margins(y=0.15)

    s = cpu["settings"]
    shape = "tiny shapes" if s["tiny"] else "ViT-B/16 shapes"
    fig.suptitle(
        f"{cpu['machine']['cpu']}, {s['threads']} threads, fp32, {shape}, {s['num_frames']} frames, "
        f"batch {s['batch_size']} "
        f"(medians of {s['repeats']} alternating rounds)",
        fontsize=10,
    )
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=110)
    return output


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--results", type=Path, required=True, help="folder holding cpu_models.json (and data_path.json)"
    )
    parser.add_argument("--output", type=Path, required=True, help="PNG file to write")
    args = parser.parse_args(argv)
    print(plot(args.results, args.output))


if __name__ == "__main__":
    main()
