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
"""The label column of the training script's datasets turned into the `labels` the model trains on: a class index per
video (single-label), or a multi-hot float vector per video when the column holds lists of labels (multi-label)."""

import logging

import numpy as np
from datasets import ClassLabel, DatasetDict, List


logger = logging.getLogger(__name__)


def is_multi_label(dataset: DatasetDict, label_column: str) -> bool:
    """Whether the label column holds lists of labels (in every split), or single labels (in every split)."""
    kinds = {split: isinstance(dataset[split].features[label_column], List) for split in dataset}
    if len(set(kinds.values())) > 1:
        lists, single = ([split for split, kind in kinds.items() if kind is value] for value in (True, False))
        raise ValueError(
            f"Column {label_column!r} holds lists of labels in the {', '.join(lists)} split and single "
            f"labels in the {', '.join(single)} split. Give every split in the same form: lists for "
            "multi-label training, one label per video otherwise."
        )
    return any(kinds.values())


def encode_labels(dataset: DatasetDict, label_column: str, known_names: list[str] | None) -> tuple[DatasetDict, list]:
    """Adds an integer `labels` column; returns the names in index order. Indices (Kinetics lists) take `known_names`
    when there are enough; known names covering the dataset's keep their order, so a checkpoint's head applies."""
    reference = "train" if "train" in dataset else "validation"
    values = {split: dataset[split][label_column] for split in dataset}
    if isinstance(dataset[reference].features[label_column], ClassLabel):
        # Each split's own ClassLabel: splits loaded separately may number their labels differently.
        values = {split: dataset[split].features[label_column].int2str(v) for split, v in values.items()}
    elif all(isinstance(value, (int, np.integer)) for split_values in values.values() for value in split_values):
        if any(value < 0 for split_values in values.values() for value in split_values):
            raise ValueError(f"Label indices in column {label_column!r} must not be negative.")
        num_labels = max(max(split_values) for split_values in values.values()) + 1
        if known_names and num_labels > len(known_names):
            logger.warning(f"Label indices reach {num_labels - 1}, {len(known_names)} names are known: using indices.")
        names = known_names if known_names and num_labels <= len(known_names) else list(map(str, range(num_labels)))
        values = {split: [names[value] for value in split_values] for split, split_values in values.items()}
    values = {split: [str(value) for value in split_values] for split, split_values in values.items()}
    names = label_names(values, reference, known_names)
    index = {name: position for position, name in enumerate(names)}
    return _with_labels(dataset, {split: [index[value] for value in values[split]] for split in dataset}), names


def encode_multi_labels(
    dataset: DatasetDict, label_column: str, known_names: list[str] | None, label_names_file: str | None = None
) -> tuple[DatasetDict, list]:
    """Adds a multi-hot float `labels` column (1.0 for each label a video has) from a column of label lists (names,
    or a `List(ClassLabel)`'s indices); returns the names in index order: `known_names` when they name every label,
    else the union of the training labels, sorted. With `label_names_file` (where `known_names` come from) a label
    outside it is an error."""
    reference = "train" if "train" in dataset else "validation"
    values = {}
    for split in dataset:
        feature, rows = dataset[split].features[label_column].feature, dataset[split][label_column]
        if isinstance(feature, ClassLabel):
            rows = [feature.int2str(row) for row in rows]
        values[split] = [[str(value) for value in row] for row in rows]
        if empty := [number for number, row in enumerate(values[split]) if not row]:
            raise ValueError(
                f"The {split} split has videos with an empty label list in column {label_column!r} "
                f"(rows {empty[:5]}). Every video needs at least one label: remove those videos or "
                "label them."
            )
    if label_names_file is not None:
        found = {value for split_values in values.values() for row in split_values for value in row}
        if unknown := sorted(found - set(known_names)):
            raise ValueError(
                f"Labels {unknown[:10]} are not in --label_names_file {label_names_file!r}, which "
                f"names {len(known_names)} labels. Add them to the file (one name a line) or fix the "
                "label lists."
            )
    flat = {split: [value for row in split_values for value in row] for split, split_values in values.items()}
    names = label_names(flat, reference, known_names)
    index = {name: position for position, name in enumerate(names)}
    multi_hot = {}
    for split, split_values in values.items():
        vectors = np.zeros((len(split_values), len(names)), dtype=np.float32)
        for row, row_values in enumerate(split_values):
            vectors[row, [index[value] for value in row_values]] = 1.0
        multi_hot[split] = list(vectors)
    return _with_labels(dataset, multi_hot), names


def label_names(values: dict[str, list[str]], reference: str, known_names: list[str] | None) -> list[str]:
    """The label names in index order: `known_names` when they cover the labels of `values` (so that a checkpoint's
    head keeps its meaning), else the sorted labels of the `reference` split. Validation labels the training split
    never has are an error: the classifier cannot learn them."""
    names = sorted(set(values[reference]))
    if "train" in values and (unseen := sorted(set(values.get("validation", [])) - set(values["train"]))):
        raise ValueError(
            f"The validation split has labels the training split never has: {unseen}. The classifier "
            "cannot learn them; remove those videos or add training videos for them."
        )
    return list(known_names) if known_names and set(names) <= set(known_names) else names


def _with_labels(dataset: DatasetDict, labels: dict[str, list]) -> DatasetDict:
    for split in dataset:
        rows = dataset[split].remove_columns([name for name in ["labels"] if name in dataset[split].column_names])
        dataset[split] = rows.add_column("labels", labels[split])
    return dataset
