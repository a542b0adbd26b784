# Copyright 2026 The evl_hf authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Pictures the commands draw with matplotlib (the `plot` extra): the class scores of a video over time."""


def plot_timeline(result: dict, path, top_classes: int = 5, format: str | None = None):
    """
    Draws the score of the `top_classes` best classes (by their peak over the video) against time,
    one line per class, and saves the figure to `path` in `format` (PNG, SVG, PDF; by default matplotlib picks by the
    extension, and PNG into a binary file object).

    Args:
        result (`dict`): what [`~evl_hf.inference.classify_windows`] returns.
        path (`str`, `os.PathLike` or a binary file object): where to write the picture.
        top_classes (`int`, *optional*, defaults to 5): how many classes to draw.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("Drawing a timeline needs matplotlib: pip install 'evl-hf[plot]'") from None

    probabilities = result["probabilities"]
    labels = result["labels"]
    # A window is drawn at its centre: the probability describes what happens across the window. Without a frame
    # rate the axis counts frames.
    fps = result["fps"]
    times = [(window["start_frame"] + window["end_frame"]) / 2 / (fps or 1) for window in result["windows"]]
    peaks = [max(row[i] for row in probabilities) for i in range(len(labels))]
    chosen = sorted(range(len(labels)), key=lambda i: peaks[i], reverse=True)[:top_classes]

    figure, axes = plt.subplots(figsize=(10, 3.5), layout="constrained")
    for i in chosen:
        axes.plot(times, [row[i] for row in probabilities], label=labels[i], linewidth=1.5)
    axes.set_xlabel("time (s, window centre)" if fps else "frame (window centre)")
    # a multi-label model's scores are independent probabilities (they need not sum to 1); a regression's are values
    function = result.get("function_to_apply", "softmax")
    axes.set_ylabel(
        {"softmax": "probability", "sigmoid": "probability (independent per label)"}.get(function, "score")
    )
    if function != "none":
        axes.set_ylim(0, 1)
    if times:
        axes.set_xlim(0, max(times[-1], result["num_video_frames"] / (fps or 1)))
    axes.set_title(f"{result['video']}: top {len(chosen)} classes over time", fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=9)
    figure.savefig(path, dpi=120, format=format)
    plt.close(figure)
