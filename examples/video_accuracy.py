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
"""Top-1 and top-5 accuracy of a video classifier, as an `evaluate` metric module.

`evaluate.load("accuracy")` fetches its script from the Hub; this module sits next to the training script and is
loaded by path, so evaluation works offline:

```python
>>> import evaluate
>>> metric = evaluate.load("examples/video_accuracy.py")
>>> metric.compute(predictions=[[0.1, 2.0, 0.3], [1.5, 0.2, 0.1]], references=[1, 2], k=2)
{'accuracy': 0.5, 'top5_accuracy': 0.5}
```

The file imports nothing from its neighbours: `evaluate` copies it into its module cache and imports it on its own.
"""

import datasets
import evaluate
import numpy as np


_DESCRIPTION = """
Accuracy of a classifier computed from its scores. `accuracy` is top-1: the highest-scoring class is the reference.
`top5_accuracy` is top-k with k=5 (or the `k` given to `compute`): the reference is among the k highest-scoring
classes. With fewer than k classes every prediction counts as a top-k hit. These are the numbers video papers report
(Kinetics-400 top-1 / top-5).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`, shape `(num_clips, num_labels)`):
        Scores per class: logits, probabilities, or log-probabilities (any score that increases with confidence;
        for several views per clip, the log of the averaged softmax).
    references (`list` of `int`, shape `(num_clips,)`):
        The true class of each clip.
    k (`int`, *optional*, defaults to 5):
        How many of the highest-scoring classes count as a hit for `top5_accuracy`.
Returns:
    accuracy (`float`): fraction of clips whose highest-scoring class is the reference, in [0, 1].
    top5_accuracy (`float`): fraction of clips whose reference is among the `k` highest-scoring classes, in [0, 1].
Examples:
    >>> metric = evaluate.load("examples/video_accuracy.py")
    >>> metric.compute(predictions=[[0.1, 0.7, 0.2], [0.6, 0.3, 0.1]], references=[1, 1])
    {'accuracy': 0.5, 'top5_accuracy': 1.0}
"""

_CITATION = """
@inproceedings{lin2022frozen,
  title={Frozen CLIP Models are Efficient Video Learners},
  author={Lin, Ziyi and Geng, Shijie and Zhang, Renrui and Gao, Peng and de Melo, Gerard and Wang, Xiaogang and
          Dai, Jifeng and Qiao, Yu and Li, Hongsheng},
  booktitle={European Conference on Computer Vision (ECCV)},
  year={2022}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class VideoAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float32")),
                    "references": datasets.Value("int64"),
                }
            ),
        )

    def _compute(self, predictions, references, k: int = 5):
        scores = np.asarray(predictions, dtype=np.float64)  # (num_clips, num_labels)
        references = np.asarray(references, dtype=np.int64)  # (num_clips,)
        if scores.ndim != 2 or scores.shape[0] != references.shape[0]:
            raise ValueError(
                f"predictions must be (num_clips, num_labels) scores for the {references.shape[0]} references, "
                f"got shape {scores.shape}."
            )
        num_labels = scores.shape[1]
        if references.size and (references.min() < 0 or references.max() >= num_labels):
            raise ValueError(f"references must be class indices in [0, {num_labels}), got {references.tolist()}.")
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}.")
        # Position of the true class when classes are sorted by score, ties broken by index as `np.argmax` and
        # `torch.topk` do: 0 means a top-1 hit.
        true_scores = scores[np.arange(len(references)), references][:, None]
        higher = (scores > true_scores).sum(axis=1)
        tied_before = ((scores == true_scores) & (np.arange(num_labels)[None, :] < references[:, None])).sum(axis=1)
        rank = higher + tied_before  # (num_clips,)
        return {
            "accuracy": float(np.mean(rank < 1)) if references.size else 0.0,
            "top5_accuracy": float(np.mean(rank < k)) if references.size else 0.0,
        }
