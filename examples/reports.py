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
"""What the training script reports about a trained classifier: the multi-label metrics (from scikit-learn), and the
per-class pictures written next to the model: a confusion matrix for single-label models, the average precision of
each label for multi-label ones; and the model card."""

import json
import os
from pathlib import Path

import numpy as np


# The metrics the model card shows, in this order, when the evaluation gave them.
CARD_METRICS = (
    "eval_accuracy",
    "eval_top5_accuracy",
    "eval_map",
    "eval_f1",
    "eval_f1_micro",
    "eval_top1_any",
    "eval_loss",
)


def multi_label_metrics(
    logits: np.ndarray, references: np.ndarray, config, threshold: float | None = None
) -> dict[str, float]:
    """
    Metrics of a multi-label classifier (`config`, a multi-label model's) from its logits `(videos, num_labels)` and
    multi-hot `references`:

    - `map`: mean over labels of the average precision (macro; a label without positives counts 0, as in sklearn);
    - `f1`, `f1_micro`: F1 of the labels whose probability (sigmoid) is above `threshold` (by default the library's
      `MULTI_LABEL_THRESHOLD`), macro and micro averaged;
    - `top1_any`: fraction of videos whose highest-scoring label is one of their labels.
    """
    import torch
    from sklearn.metrics import average_precision_score, f1_score, precision_score

    from evl_hf.inference import MULTI_LABEL_THRESHOLD, labels_above_threshold, postprocess_logits

    references = references.astype(np.int64)
    probabilities = postprocess_logits(torch.from_numpy(logits), config)  # the pipeline's sigmoids
    threshold = MULTI_LABEL_THRESHOLD if threshold is None else threshold
    predicted = labels_above_threshold(probabilities, threshold).numpy().astype(np.int64)  # as `evl-hf predict` lists
    top1 = np.zeros_like(references)
    top1[np.arange(len(logits)), logits.argmax(axis=-1)] = 1
    return {
        # Ranks by the logits: sigmoid is monotonic, and float32 probabilities of confident scores tie at 1.0.
        "map": float(average_precision_score(references, logits, average="macro")),
        "f1": float(f1_score(references, predicted, average="macro", zero_division=0)),
        "f1_micro": float(f1_score(references, predicted, average="micro", zero_division=0)),
        # With one predicted label per video, a video's precision is 1 when it is one of its labels, else 0.
        "top1_any": float(precision_score(references, top1, average="samples", zero_division=0)),
    }


def _figure(num_labels: int, height: float):
    from matplotlib.figure import Figure  # without pyplot: no display, no global state

    figure = Figure(figsize=(min(4 + 0.4 * num_labels, 40), height), layout="tight")
    return figure, figure.subplots()


def save_confusion_matrix(predictions: np.ndarray, references: np.ndarray, label_names: list[str], output_dir: str):
    """Writes `confusion_matrix.json` (rows: true label, columns: predicted) and its picture `confusion_matrix.png`."""
    num_labels = len(label_names)
    matrix = np.zeros((num_labels, num_labels), dtype=np.int64)
    np.add.at(matrix, (references, predictions), 1)
    with open(os.path.join(output_dir, "confusion_matrix.json"), "w") as file:
        json.dump({"labels": label_names, "matrix": matrix.tolist()}, file, indent=1)
    figure, axes = _figure(num_labels, min(4 + 0.4 * num_labels, 40))
    figure.colorbar(axes.imshow(matrix, cmap="Blues"), ax=axes, fraction=0.046, pad=0.04)
    if num_labels <= 50:  # beyond, the names would overlap
        axes.set_xticks(range(num_labels), label_names, rotation=90)
        axes.set_yticks(range(num_labels), label_names)
    axes.set(xlabel="predicted label", ylabel="true label", title=f"Confusion matrix ({len(references)} videos)")
    figure.savefig(os.path.join(output_dir, "confusion_matrix.png"), dpi=100)


def save_average_precision(logits: np.ndarray, references: np.ndarray, label_names: list[str], output_dir: str):
    """Writes `average_precision.json` (each label's average precision and number of positive videos, and their mean)
    and its bar chart `average_precision.png`: for a multi-label model, what a confusion matrix is for a single-label
    one."""
    from sklearn.metrics import average_precision_score

    # No positives: sklearn's value is 0 (with a warning); the report says null, and the count says why.
    positives = references.sum(axis=0).astype(np.int64)
    per_label = average_precision_score(references.astype(np.int64), logits, average=None)
    values = [float(value) if count else None for value, count in zip(per_label, positives)]
    with open(os.path.join(output_dir, "average_precision.json"), "w") as file:
        json.dump(
            {
                "labels": label_names,
                "average_precision": values,
                "positives": positives.tolist(),
                "map": float(np.mean(per_label)),
            },
            file,
            indent=1,
        )
    figure, axes = _figure(len(label_names), 4)
    axes.bar(range(len(label_names)), [value or 0.0 for value in values], color="tab:blue")
    if len(label_names) <= 50:  # beyond, the names would overlap
        axes.set_xticks(range(len(label_names)), label_names, rotation=90)
    axes.set(
        ylim=(0, 1),
        xlabel="label",
        ylabel="average precision",
        title=f"Average precision per label (mAP {np.mean(per_label):.3f}, {len(references)} videos)",
    )
    figure.savefig(os.path.join(output_dir, "average_precision.png"), dpi=100)


def write_model_card(trainer, description: str, hub_model_id: str | None = None, **kwargs):
    """Writes the output folder's `README.md`: what `Trainer.create_model_card` writes, then examples/model_card_evl.md
    with the run's `description`, its evaluation metrics and, for a multi-label model, each label's average precision.
    """
    import huggingface_hub
    from transformers.modelcard import TrainingSummary

    output_dir = trainer.args.output_dir
    summary = TrainingSummary.from_trainer(trainer, **kwargs)
    summary.finetuned_from = kwargs.get("finetuned_from")  # not the empty name of a model built from a config
    card = huggingface_hub.ModelCard(summary.to_model_card())
    card.data.pipeline_tag, card.data.library_name = "video-classification", "transformers"
    results, per_label = Path(output_dir, "eval_results.json"), Path(output_dir, "average_precision.json")
    metrics = json.loads(results.read_text()) if results.is_file() else {}
    rows = [f"| `{key}` | {metrics[key]:.4f} |" for key in CARD_METRICS if key in metrics]
    if per_label.is_file():  # multi-label: the pipeline gives each label its own probability (a sigmoid)
        report = json.loads(per_label.read_text())
        rows += [
            f"| average precision of `{name}` ({count} videos) | {'n/a' if value is None else f'{value:.4f}'} |"
            for name, value, count in zip(report["labels"], report["average_precision"], report["positives"])
        ]
    card.text += (
        (Path(__file__).resolve().parent / "model_card_evl.md")
        .read_text()
        .format(description=description, metrics="\n".join(rows), repo=hub_model_id or output_dir)
    )
    card.save(os.path.join(output_dir, "README.md"))
