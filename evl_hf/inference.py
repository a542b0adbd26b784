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
"""
Running an EVL classifier: the scores of its logits by head type, as `pipeline("video-classification")` computes them,
and the classification of every window of a long video with the backbone run once per frame.

Every way evl_hf runs a model (the `evl-hf` commands, the demo, a user's own loop) calls these, so a multi-label or a
regression model gets the same answer everywhere.
"""

import os
import sys

import torch
import torch.nn.functional as F

from .modeling_evl import EVLFrameFeatures
from .video_utils import clip_span, load_video_frames, open_video, sample_frame_indices
from .video_utils import is_video_decoder as _is_video_decoder


FUNCTIONS_TO_APPLY = ("softmax", "sigmoid", "none")


def window_frame_indices(num_video_frames: int, num_frames: int, frame_stride: int, window_stride: int):
    """
    The frames of every window of a long video: `num_frames` frames `frame_stride` apart, one window starting every
    `window_stride` frames for as long as a window fits in the video. A video shorter than one window gets a single
    window, made as [`sample_frame_indices`] makes a clip of a short video.

    Returns:
        `list[list[int]]`: one list of `num_frames` frame indices per window, in time order.
    """
    if min(num_video_frames, num_frames, frame_stride, window_stride) < 1:
        raise ValueError(
            f"Need at least one video frame, frame and stride, got num_video_frames={num_video_frames}, "
            f"num_frames={num_frames}, frame_stride={frame_stride}, window_stride={window_stride}"
        )
    span = clip_span(num_frames, frame_stride)
    if num_video_frames < span:
        return [sample_frame_indices(num_video_frames, num_frames, frame_stride=frame_stride)]
    starts = range(0, num_video_frames - span + 1, window_stride)
    return [[start + i * frame_stride for i in range(num_frames)] for start in starts]


def default_function_to_apply(config) -> str:
    """The function that turns a model's logits into scores, by `config.problem_type`, as the video-classification
    pipeline chooses it: `"sigmoid"` for multi-label classification, `"none"` for regression, else `"softmax"`."""
    if config.problem_type == "regression":
        return "none"
    if config.problem_type == "multi_label_classification":
        return "sigmoid"
    return "softmax"


def postprocess_logits(logits: torch.Tensor, config, function_to_apply: str | None = None) -> torch.Tensor:
    r"""
    Scores from logits, as `pipeline("video-classification")` computes them.

    Args:
        logits (`torch.FloatTensor` of shape `(..., num_labels)`):
            The classifier's logits.
        config ([`EVLConfig`]):
            The model's configuration; its `problem_type` picks the function.
        function_to_apply (`str`, *optional*):
            `"softmax"`, `"sigmoid"` or `"none"`; by default [`default_function_to_apply`] of `config`.

    Returns:
        `torch.FloatTensor` of the shape of `logits`, in float32: probabilities over the labels (softmax),
        independent probabilities (sigmoid) or the logits themselves (none).

    Example:

    ```python
    >>> import torch
    >>> from evl_hf import EVLConfig
    >>> from evl_hf.inference import postprocess_logits

    >>> config = EVLConfig(num_labels=3, problem_type="multi_label_classification")
    >>> postprocess_logits(torch.tensor([[0.0, 2.0, -2.0]]), config).round(decimals=3)
    tensor([[0.5000, 0.8810, 0.1190]])
    ```
    """
    function_to_apply = function_to_apply or default_function_to_apply(config)
    if function_to_apply not in FUNCTIONS_TO_APPLY:
        raise ValueError(f"function_to_apply={function_to_apply!r}: expected one of {FUNCTIONS_TO_APPLY}.")
    logits = logits.float()
    if function_to_apply == "softmax":
        return logits.softmax(-1)
    if function_to_apply == "sigmoid":
        return logits.sigmoid()
    return logits


def top_k_labels(scores: torch.Tensor, config, top_k: int = 5) -> list[dict]:
    """
    The `top_k` best labels of each row of `scores` `(batch_size, num_labels)` (at most `num_labels`), best first.

    Returns:
        `list[dict]`: per row, `{"labels": [...], "scores": [...]}`.
    """
    scores, indices = scores.topk(min(top_k, scores.shape[-1]), dim=-1)
    return [
        {"labels": [config.id2label[i] for i in row_indices], "scores": row_scores}
        for row_scores, row_indices in zip(scores.tolist(), indices.tolist())
    ]


def attention_heatmaps(
    decoder_attentions: tuple[torch.Tensor, ...],
    num_frames: int,
    spatial_size: tuple[int, int],
    layer: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""
    Where the video query looked: the decoder's attention over the tokens of every frame as per-frame maps on the
    patch grid.

    Args:
        decoder_attentions (`tuple(torch.FloatTensor)`):
            The model's `decoder_attentions` (`output_attentions=True`): per decoder layer `(batch_size, num_heads, 1,
            num_frames * (1 + num_patches))`, the query's attention weights over the tokens, frame after frame.
        num_frames (`int`):
            Frames per clip.
        spatial_size (`tuple[int, int]`):
            The patch grid, `(height, width)` (`config.spatial_size`).
        layer (`int`, *optional*):
            One decoder layer's attention; by default the mean over the layers.

    Returns:
        `tuple[torch.FloatTensor, torch.FloatTensor]`: the maps `(batch_size, num_frames, height, width)`, each patch's
        share of the query's attention (averaged over heads), and each frame's share `(batch_size, num_frames)`, its
        patches' and its class token's; the shares of all frames sum to 1.
    """
    weights = decoder_attentions if layer is None else decoder_attentions[layer : layer + 1 or None]
    # (layers, batch, heads, 1, tokens) -> (batch, frames, 1 + num_patches)
    attention = torch.stack([w.float() for w in weights]).mean(dim=(0, 2))[:, 0].unflatten(-1, (num_frames, -1))
    height, width = spatial_size
    if attention.shape[-1] != 1 + height * width:
        raise ValueError(
            f"decoder_attentions hold {attention.shape[-1]} tokens per frame for {num_frames} frames, "
            f"not 1 + {height} * {width}: check num_frames and spatial_size."
        )
    return attention[..., 1:].unflatten(-1, (height, width)), attention.sum(-1)


def unnormalize_frames(pixel_values: torch.Tensor, video_processor) -> torch.Tensor:
    """
    Undoes the processor's rescaling and normalisation, to show a clip as the model received it.

    Args:
        pixel_values (`torch.Tensor` of shape `(num_frames, 3, height, width)`): one processed clip.
        video_processor ([`EVLVideoProcessor`]): the processor that made it.

    Returns:
        `torch.Tensor`: uint8 frames of shape `(num_frames, 3, height, width)`.
    """
    frames = pixel_values.float().cpu()
    if video_processor.do_normalize:
        mean = torch.tensor(video_processor.image_mean).view(1, 3, 1, 1)
        std = torch.tensor(video_processor.image_std).view(1, 3, 1, 1)
        frames = frames * std + mean
    if video_processor.do_rescale:
        frames = frames / video_processor.rescale_factor
    return frames.round().clamp(0, 255).to(torch.uint8)


def overlay_attention(frames: torch.Tensor, heatmaps: torch.Tensor, opacity: float = 0.6) -> torch.Tensor:
    """
    Paints [`attention_heatmaps`] over the frames they belong to, in red, as bright as the patch's share of the
    attention against the largest share in the clip (so the frames of a clip compare).

    Args:
        frames (`torch.Tensor` of shape `(num_frames, 3, height, width)`): uint8 frames (see [`unnormalize_frames`]).
        heatmaps (`torch.Tensor` of shape `(num_frames, grid_height, grid_width)`): one clip's maps.
        opacity (`float`, *optional*, defaults to 0.6): how much red the patch with the most attention gets.

    Returns:
        `torch.Tensor`: uint8 `(num_frames, 3, height, width)`.
    """
    height, width = frames.shape[-2:]
    weight = heatmaps.float() / heatmaps.float().max().clamp_min(1e-12)
    # each patch covers its square of the frame
    weight = F.interpolate(weight[:, None], size=(height, width), mode="nearest") * opacity  # (T, 1, H, W)
    red = torch.tensor([255.0, 0.0, 0.0]).view(1, 3, 1, 1)
    return (frames.float() * (1 - weight) + red * weight).round().clamp(0, 255).to(torch.uint8)


def attention_overlays(
    pixel_values: torch.Tensor,
    decoder_attentions: tuple[torch.Tensor, ...],
    video_processor,
    spatial_size: tuple[int, int],
    layer: int | None = None,
    opacity: float = 0.6,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""
    The clips the model saw with its decoder's attention painted over them, and each frame's share of that attention:
    [`attention_heatmaps`], [`unnormalize_frames`] and [`overlay_attention`] from one forward pass's inputs and
    outputs, which is what a page or a folder of pictures shows.

    Args:
        pixel_values (`torch.FloatTensor` of shape `(batch_size, num_frames, 3, height, width)`):
            The processed clips given to the model.
        decoder_attentions (`tuple(torch.FloatTensor)`):
            The model's `decoder_attentions` for those clips (`output_attentions=True`).
        video_processor ([`EVLVideoProcessor`]):
            The processor that made `pixel_values`.
        spatial_size (`tuple[int, int]`):
            The patch grid, `config.spatial_size`.
        layer (`int`, *optional*):
            One decoder layer's attention; by default the mean over the layers.
        opacity (`float`, *optional*, defaults to 0.6):
            As in [`overlay_attention`]; each clip is scaled to its own largest patch share.

    Returns:
        `tuple[torch.Tensor, torch.FloatTensor]`: uint8 frames `(batch_size, num_frames, 3, height, width)` on the CPU,
        and each frame's share of the attention `(batch_size, num_frames)` (each clip's shares sum to 1).
    """
    num_frames = pixel_values.shape[1]
    heatmaps, shares = attention_heatmaps(decoder_attentions, num_frames, spatial_size, layer)
    heatmaps = heatmaps.cpu()
    painted = torch.stack(
        [
            overlay_attention(unnormalize_frames(clip, video_processor), clip_heatmaps, opacity)
            for clip, clip_heatmaps in zip(pixel_values, heatmaps)
        ]
    )
    return painted, shares.cpu()


def classify_windows(
    model,
    video_processor,
    video,
    *,
    stride_frames: int | None = None,
    top_k: int = 5,
    batch_size: int = 8,
    function_to_apply: str | None = None,
    progress: bool = False,
) -> dict:
    r"""
    Classifies every window of a long video with the model's clip shape.

    A window is `model.config.num_frames` frames, `video_processor.frame_stride` frames apart; windows start every
    `stride_frames` frames ([`window_frame_indices`]). Each window's scores equal those of the model on that window's
    frames preprocessed by `video_processor`, but the CLIP backbone runs once per distinct frame
    ([`EVLModel.get_frame_features`]) and the temporal cross attention, which depends on two neighbouring frames only,
    once per distinct pair of neighbours ([`EVLModel.get_neighbour_cross_attention`]); each window then only runs the
    decoder ([`EVLModel.decode_frame_features`]) and the head. Frames are decoded a few windows at a time and their
    features freed once no later window uses them, so memory does not grow with the length of the video.

    Args:
        model ([`EVLForVideoClassification`]):
            The classifier, in eval mode.
        video_processor ([`EVLVideoProcessor`]):
            Its processor: resizing, cropping, normalisation and `frame_stride` come from it.
        video (`str`, `os.PathLike` or `torchcodec.decoders.VideoDecoder`):
            The video file, or a decoder of it.
        stride_frames (`int`, *optional*):
            Frames between the starts of two windows; defaults to `video_processor.frame_stride`.
        top_k (`int`, *optional*, defaults to 5):
            Labels kept per window in `"labels"`/`"scores"`.
        batch_size (`int`, *optional*, defaults to 8):
            Windows decoded together; their new frames go through the backbone together.
        function_to_apply (`str`, *optional*):
            As in [`postprocess_logits`]: by default the model's head type decides.
        progress (`bool`, *optional*, defaults to `False`):
            Show a progress bar on standard error.

    Returns:
        `dict` with `"video"`, `"num_video_frames"`, `"fps"`, `"num_frames"`, `"frame_stride"`, `"stride_frames"`,
        `"function_to_apply"`, `"labels"` (every label name, in class index order), `"windows"` (per window:
        `"frame_indices"` (the positions of its `num_frames` frames in the video), `"start_frame"`, `"end_frame"` (its
        last frame), `"start_time"`, `"end_time"` (in seconds, `frame / fps`;
        `None` when the video has no frame rate), the top-k `"labels"` and `"scores"`), `"probabilities"` (per window,
        the scores of every label: a softmax for single-label models, independent sigmoids for multi-label ones,
        the logits for regression) and `"max_cached_frames"` (the most frames whose features were held at once).
    """
    from tqdm.auto import tqdm

    config = model.config
    num_frames, frame_stride = config.num_frames, video_processor.frame_stride
    stride_frames = frame_stride if stride_frames is None else stride_frames
    if stride_frames < 1:
        raise ValueError(f"stride_frames must be at least 1, got {stride_frames}")
    function_to_apply = function_to_apply or default_function_to_apply(config)
    decoder = video if _is_video_decoder(video) else open_video(video)
    name = "the given VideoDecoder" if decoder is video else str(video)
    num_video_frames = len(decoder)
    fps = decoder.metadata.average_fps or None  # None when the container does not say
    windows = window_frame_indices(num_video_frames, num_frames, frame_stride, stride_frames)
    # The last window that reads each frame (and each pair of neighbouring frames): freed after that window.
    last_use = {}
    for window_index, window in enumerate(windows):
        for key in (*window, *zip(window[:-1], window[1:])):
            last_use[key] = window_index
    share_pairs = config.use_temporal_cross_attention and num_frames > 1

    device = model.device
    # frame index -> [hidden states, queries, keys], each a list over the read layers of `(1 + num_patches, ...)`
    features = {}
    # (frame, next frame) -> per decoder layer, `(2, 1 + num_patches, hidden_size)`: what the frame collects looking
    # ahead and what the next frame collects looking back
    pairs = {}
    results, probabilities, max_cached_frames = [], [], 0

    def stack(items, group: int, layer: int) -> torch.Tensor:
        """`(len(items), len(item), ...)`: the cached tensors of every frame of each item (a window or a pair)."""
        return torch.stack([torch.stack([features[frame][group][layer] for frame in item]) for item in items])

    with (
        torch.inference_mode(),
        tqdm(
            total=len(windows), unit="window", disable=not progress, file=sys.stderr, desc=os.path.basename(name)
        ) as bar,
    ):
        for first in range(0, len(windows), batch_size):
            batch = windows[first : first + batch_size]
            new_frames = sorted({frame for window in batch for frame in window} - features.keys())
            if new_frames:
                frames, _ = load_video_frames(decoder, lambda metadata: new_frames)  # uint8 (n, 3, H, W)
                pixel_values = video_processor(frames, do_sample_frames=False, return_tensors="pt")["pixel_values"]
                frame_features = model.evl.get_frame_features(pixel_values[0].to(device))
                groups = (frame_features.hidden_states, frame_features.queries, frame_features.keys)
                for row, frame in enumerate(new_frames):
                    features[frame] = [None if group is None else [t[row] for t in group] for group in groups]
            max_cached_frames = max(max_cached_frames, len(features))

            num_layers = config.decoder_num_layers
            # (windows * num_frames, 1 + num_patches, ...) per layer read
            read = lambda group: tuple(stack(batch, group, layer).flatten(0, 1) for layer in range(num_layers))
            if share_pairs:
                new_pairs = sorted({pair for window in batch for pair in zip(window[:-1], window[1:])} - pairs.keys())
                if new_pairs:
                    layer_queries, layer_keys = (
                        [stack(new_pairs, group, layer) for layer in range(num_layers)] for group in (1, 2)
                    )
                    outputs = model.evl.get_neighbour_cross_attention(layer_queries, layer_keys)
                    for row, pair in enumerate(new_pairs):
                        pairs[pair] = [output[row] for output in outputs]
                # per layer, (windows, num_frames - 1, 2, 1 + num_patches, hidden_size): each window's pairs in order
                neighbours = tuple(
                    torch.stack([torch.stack([pairs[pair][layer] for pair in zip(w[:-1], w[1:])]) for w in batch])
                    for layer in range(num_layers)
                )
                pooled, _ = model.evl.decode_frame_features(
                    EVLFrameFeatures(hidden_states=read(0)), num_frames, neighbours
                )
            else:
                has_projections = features[batch[0][0]][1] is not None
                window_features = EVLFrameFeatures(
                    hidden_states=read(0),
                    queries=read(1) if has_projections else None,
                    keys=read(2) if has_projections else None,
                )
                pooled, _ = model.evl.decode_frame_features(window_features, num_frames)
            window_scores = postprocess_logits(model.compute_logits(pooled), config, function_to_apply).cpu()
            for window, best, row in zip(batch, top_k_labels(window_scores, config, top_k), window_scores.tolist()):
                start, end = window[0], window[-1]
                results.append(
                    {
                        "frame_indices": window,
                        "start_frame": start,
                        "end_frame": end,
                        "start_time": start / fps if fps else None,
                        "end_time": end / fps if fps else None,
                        **best,
                    }
                )
                probabilities.append(row)

            last_window = first + len(batch) - 1
            for cache in (features, pairs):
                for key in [key for key in cache if last_use[key] <= last_window]:
                    del cache[key]
            bar.update(len(batch))

    return {
        "video": name,
        "num_video_frames": num_video_frames,
        "fps": fps,
        "num_frames": num_frames,
        "frame_stride": frame_stride,
        "stride_frames": stride_frames,
        "function_to_apply": function_to_apply,
        "labels": [config.id2label[i] for i in range(config.num_labels)],
        "windows": results,
        "probabilities": probabilities,
        "max_cached_frames": max_cached_frames,
    }


# The score above which a multi-label model predicts a label, wherever evl_hf turns scores into predicted labels
# (`evl-hf predict --threshold`, the training script's F1); a sigmoid of 0.5 is a logit of 0.
MULTI_LABEL_THRESHOLD = 0.5


def labels_above_threshold(scores: torch.Tensor, threshold: float = MULTI_LABEL_THRESHOLD) -> torch.Tensor:
    r"""
    The labels a multi-label model predicts: those whose score is above `threshold`.

    Args:
        scores (`torch.FloatTensor` of shape `(..., num_labels)`):
            Independent probabilities, [`postprocess_logits`] of a multi-label model's logits.
        threshold (`float`, *optional*, defaults to `MULTI_LABEL_THRESHOLD` (0.5)):
            A label is predicted when its score is strictly above it.

    Returns:
        `torch.BoolTensor` of the shape of `scores`.

    Example:

    ```python
    >>> import torch
    >>> from evl_hf.inference import labels_above_threshold

    >>> labels_above_threshold(torch.tensor([[0.2, 0.5, 0.9]]))
    tensor([[False, False,  True]])
    ```
    """
    return scores > threshold


def paper_test_views(num_frames: int) -> tuple[int, int]:
    """
    The paper's test views `(num_clips, num_crops)` for clips of `num_frames` frames: 3 temporal clips x 1 centre crop
    for 8 frames (and fewer), 1 clip x 3 spatial crops for 16 and 32 frames (and more).
    """
    return (3, 1) if num_frames <= 8 else (1, 3)


def average_view_scores(logits: torch.Tensor, config, function_to_apply: str | None = None) -> torch.Tensor:
    r"""
    The multi-view score of each video: the scores of its views ([`postprocess_logits`], by the model's head type)
    averaged over the views. A single-label model averages its softmax probabilities (the paper's test protocol), a
    multi-label one its sigmoids, a regression its outputs.

    Args:
        logits (`torch.FloatTensor` of shape `(batch_size, num_views, num_labels)`):
            The classifier's logits for every view of every video.
        config ([`EVLConfig`]):
            The model's configuration; its `problem_type` picks the function.
        function_to_apply (`str`, *optional*):
            `"softmax"`, `"sigmoid"` or `"none"`; by default [`default_function_to_apply`] of `config`.

    Returns:
        `torch.FloatTensor` of shape `(batch_size, num_labels)`, in float32.

    Example:

    ```python
    >>> import torch
    >>> from evl_hf import EVLConfig
    >>> from evl_hf.inference import average_view_scores

    >>> config = EVLConfig(num_labels=2)
    >>> logits = torch.tensor([[[0.0, 0.0], [0.0, 2.0]]])  # one video, two views
    >>> average_view_scores(logits, config).round(decimals=3)  # the mean of [0.5, 0.5] and [0.119, 0.881]
    tensor([[0.3100, 0.6900]])
    ```
    """
    if logits.ndim != 3:
        raise ValueError(
            f"logits of shape {tuple(logits.shape)}: expected (batch_size, num_views, num_labels); a batch of single "
            "views is logits[:, None]."
        )
    return postprocess_logits(logits, config, function_to_apply).mean(dim=1)


def multi_view_scores(
    model,
    video_processor,
    videos,
    *,
    num_clips: int | None = None,
    num_crops: int | None = None,
    function_to_apply: str | None = None,
    **processor_kwargs,
) -> torch.Tensor:
    r"""
    Classifies videos with several views each and averages their scores ([`average_view_scores`]): the paper's test
    protocol by default.

    The views are the processor's: `num_clips` temporal clips spread over the video, times `num_crops` crops spread
    along each frame's longer side ([`EVLVideoProcessorKwargs`]). All views of the batch go through the model in one
    forward pass.

    Args:
        model ([`EVLForVideoClassification`]):
            The classifier, in eval mode.
        video_processor ([`EVLVideoProcessor`]):
            Its processor, which decodes, samples and makes the views.
        videos (`str`, `os.PathLike`, `torchcodec.decoders.VideoDecoder`, `torch.Tensor`, or a list of them):
            A video or a batch, as the processor takes them. Frames (a uint8 `(num_video_frames, 3, height, width)`
            tensor of the whole video) need `do_sample_frames=True`, so that the clips are sampled from them.
        num_clips (`int`, *optional*):
            Temporal views. With `num_crops`, by default the processor's own `num_clips` and `num_crops` when they
            ask for several views, else the paper's protocol for `model.config.num_frames` ([`paper_test_views`]).
        num_crops (`int`, *optional*):
            Spatial views; see `num_clips`.
        function_to_apply (`str`, *optional*):
            As in [`postprocess_logits`]: by default the model's head type decides.
        processor_kwargs (*optional*):
            Passed to the processor for this call (`do_sample_frames`, `frame_stride`, ...).

    Returns:
        `torch.FloatTensor` of shape `(batch_size, num_labels)` on the CPU, in float32: per video, the mean over its
        `num_clips * num_crops` views of their probabilities (softmax), independent probabilities (sigmoid) or
        outputs (none).

    Example:

    ```python
    >>> import tempfile
    >>> from evl_hf import EVLVideoProcessor
    >>> from evl_hf.inference import multi_view_scores
    >>> from evl_hf.testing_utils import encode_video, tiny_model

    >>> model = tiny_model(num_frames=4)  # random weights, 5 labels
    >>> video_processor = EVLVideoProcessor(
    ...     num_frames=4, frame_stride=4, size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    ... )
    >>> video = encode_video(f"{tempfile.mkdtemp()}/clip.mp4", num_frames=40)
    >>> scores = multi_view_scores(model, video_processor, video)  # 4 frames: 3 clips x 1 crop
    >>> scores.shape, round(scores.sum().item(), 4)
    (torch.Size([1, 5]), 1.0)
    ```
    """
    if num_clips is None and num_crops is None:
        own = (video_processor.num_clips, video_processor.num_crops)
        num_clips, num_crops = own if own != (1, 1) else paper_test_views(model.config.num_frames)
    num_clips, num_crops = num_clips or 1, num_crops or 1
    pixel_values = video_processor(
        videos, num_clips=num_clips, clip_index=None, num_crops=num_crops, return_tensors="pt", **processor_kwargs
    )["pixel_values"]
    if num_clips * num_crops == 1:  # (batch_size, num_frames, 3, height, width): one view per video
        pixel_values = pixel_values[:, None]
    batch_size, num_views = pixel_values.shape[:2]
    with torch.inference_mode():
        # (batch_size * num_views, num_frames, 3, height, width) -> (batch_size, num_views, num_labels)
        logits = model(pixel_values=pixel_values.flatten(0, 1).to(model.device)).logits
    return average_view_scores(logits.view(batch_size, num_views, -1), model.config, function_to_apply).cpu()


__all__ = [
    "FUNCTIONS_TO_APPLY",
    "MULTI_LABEL_THRESHOLD",
    "attention_heatmaps",
    "attention_overlays",
    "average_view_scores",
    "classify_windows",
    "default_function_to_apply",
    "labels_above_threshold",
    "multi_view_scores",
    "overlay_attention",
    "paper_test_views",
    "postprocess_logits",
    "top_k_labels",
    "unnormalize_frames",
    "window_frame_indices",
]
