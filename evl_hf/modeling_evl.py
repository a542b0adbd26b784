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
"""PyTorch EVL: a frozen CLIP image encoder and a small video decoder ("Frozen CLIP Models are Efficient Video
Learners", Lin et al., ECCV 2022)."""

import math
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPVisionModel, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN, QuickGELUActivation
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import ImageClassifierOutput
from transformers.utils import ModelOutput, can_return_tuple

from .configuration_evl import EVLConfig


@dataclass
class EVLModelOutput(ModelOutput):
    r"""
    pooler_output (`torch.FloatTensor` of shape `(batch_size, hidden_size)`):
        The video query token after the last decoder layer: one vector per clip.
    hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned when `output_hidden_states=True`):
        The outputs of the encoder layers the decoder reads, shallow to deep, each of shape
        `(batch_size, num_frames, 1 + num_patches, hidden_size)`.
    decoder_hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned when `output_hidden_states=True`):
        The query token before the first decoder layer and after each one, each of shape `(batch_size, hidden_size)`.
    """

    pooler_output: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    decoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class EVLFrameFeatures(ModelOutput):
    r"""
    What the EVL decoder reads from the CLIP encoder, per frame: see [`EVLModel.get_frame_features`].

    hidden_states (`tuple(torch.FloatTensor)`):
        The outputs of the encoder layers the decoder reads, shallow to deep, each of shape
        `(num_images, 1 + num_patches, hidden_size)`.
    queries, keys (`tuple(torch.FloatTensor)`, *optional*):
        Those layers' attention queries and keys before scaling, each of shape
        `(num_images, 1 + num_patches, num_heads, head_dim)`; `None` without temporal cross attention.
    """

    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    queries: tuple[torch.FloatTensor, ...] | None = None
    keys: tuple[torch.FloatTensor, ...] | None = None


class EVLQuickGELUActivation(QuickGELUActivation):
    """
    CLIP's QuickGELU, `x * sigmoid(1.702 * x)`, bit for bit, computed in place while autograd is not recording.

    The stock module makes three new tensors the size of a CLIP MLP's hidden activations (`(images, tokens, 4 *
    width)`: 39 MB per ViT-B/16 layer for 16 frames). The allocator gives tensors that large fresh pages from the
    kernel every time, and faulting them in costs more than the arithmetic. EVL's frozen backbone runs without
    autograd, so there this module makes one such tensor and overwrites its input (the output of `fc1`, which nothing
    else reads) with the result, like `nn.ReLU(inplace=True)`. With autograd recording, or under `torch.compile`
    (which fuses the stock formula), it is the stock module.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or torch.compiler.is_compiling():
            return super().forward(input)
        return input.mul_((1.702 * input).sigmoid_())


class EVLTemporalCrossAttention(nn.Module):
    """
    Temporal cross attention: every patch of frame t looks at the patches of frame t-1 (and, with a second table,
    of frame t+1) through the frozen CLIP attention map, and collects a learned vector for each 2-D displacement.

    The reference formulation gathers a `(num_patches, num_patches, hidden_size)` table per direction. Here the
    head-averaged attention of each query patch is first summed into the `(2h-1) * (2w-1)` displacement bins, then
    multiplied by the table: the same result without ever materialising the gathered table.
    """

    def __init__(self, config: EVLConfig):
        super().__init__()
        height, width = config.spatial_size
        self.spatial_size = (height, width)
        num_offsets = (2 * height - 1) * (2 * width - 1)
        self.w_fwd = nn.Parameter(torch.zeros(num_offsets, config.hidden_size))
        self.w_bwd = nn.Parameter(torch.zeros(num_offsets, config.hidden_size))
        # Built lazily from the config: a buffer made in __init__ would come back uninitialised from the meta device.
        self._offset_index = {}

    def offset_index(self, device: torch.device) -> torch.LongTensor:
        """`(num_patches, num_patches)` index of the displacement bin between query patch p and key patch r."""
        if device not in self._offset_index:
            height, width = self.spatial_size
            rows = torch.arange(height, device=device).repeat_interleave(width)
            cols = torch.arange(width, device=device).repeat(height)
            row_offset = rows[:, None] - rows[None, :] + height - 1
            col_offset = cols[:, None] - cols[None, :] + width - 1
            self._offset_index[device] = row_offset * (2 * width - 1) + col_offset
        return self._offset_index[device]

    def _attend(self, queries: torch.Tensor, keys: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        # queries, keys: (batch, pairs, num_patches, heads, head_dim) -> (batch, pairs, heads, num_patches, head_dim)
        queries, keys = queries.transpose(2, 3), keys.transpose(2, 3)
        scores = queries @ keys.transpose(-1, -2) * queries.shape[-1] ** -0.5
        attention = scores.softmax(dim=-1).mean(dim=2)  # (batch, pairs, num_patches, num_patches)
        index = self.offset_index(attention.device).expand_as(attention)
        bins = attention.new_zeros(*attention.shape[:-1], table.shape[0]).scatter(-1, index, attention)
        return bins @ table.to(bins.dtype)  # (batch, pairs, num_patches, hidden_size)

    def forward(self, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """
        Args:
            queries, keys (`torch.Tensor` of shape `(batch_size, num_frames, 1 + num_patches, heads, head_dim)`):
                The frozen CLIP layer's query and key projections, before the attention scaling.

        Returns:
            `torch.Tensor` of shape `(batch_size, num_frames, 1 + num_patches, hidden_size)`, zero at the class token.
        """
        queries, keys = queries[:, :, 1:], keys[:, :, 1:]
        batch_size, num_frames, num_patches = queries.shape[:3]
        if num_frames == 1:
            return queries.new_zeros(batch_size, 1, 1 + num_patches, self.w_fwd.shape[1])
        forward = self._attend(queries[:, 1:], keys[:, :-1], self.w_fwd)  # frames 1..T-1 look back
        backward = self._attend(queries[:, :-1], keys[:, 1:], self.w_bwd)  # frames 0..T-2 look ahead
        no_frame = forward.new_zeros(batch_size, 1, num_patches, forward.shape[-1])
        output = torch.cat([no_frame, forward], dim=1) + torch.cat([backward, no_frame], dim=1)
        return F.pad(output, (0, 0, 1, 0))  # the class token gets nothing


class EVLDecoderAttention(nn.Module):
    """
    Multi-head attention of a single query vector over many context tokens.

    With one query per clip, the key projection is folded into the query (`q · (W_k x + b_k) = (W_k^T q) · x` up to a
    constant that the softmax cancels) and the value projection is applied after pooling (the softmax weights sum to
    one). The `batch * num_frames * (1 + num_patches)` context tokens are therefore never projected; the parameters are
    still the usual `q_proj`, `k_proj`, `v_proj` and `out_proj`.
    """

    def __init__(self, config: EVLConfig):
        super().__init__()
        self.hidden_size = config.hidden_size
        self.num_heads = config.decoder_num_heads
        self.head_dim = self.hidden_size // self.num_heads
        self.q_proj = nn.Linear(self.hidden_size, self.hidden_size)
        self.k_proj = nn.Linear(self.hidden_size, self.hidden_size)
        self.v_proj = nn.Linear(self.hidden_size, self.hidden_size)
        self.out_proj = nn.Linear(self.hidden_size, self.hidden_size)
        for projection in (self.q_proj, self.k_proj, self.v_proj, self.out_proj):
            projection.bias_init_std = 0.0  # read by `EVLPreTrainedModel._init_weights`

    def forward(self, query: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """`query`: `(batch_size, hidden_size)`; `context`: `(batch_size, sequence_length, hidden_size)`."""
        batch_size = query.shape[0]
        heads, head_dim, width = self.num_heads, self.head_dim, self.hidden_size
        query = self.q_proj(query).view(batch_size, heads, head_dim)
        # (batch, heads, head_dim) -> (batch, heads, width): the key projection moves to the query side. The key bias
        # adds the same score to every token, which the softmax cancels; it is kept in the graph so that every
        # parameter takes part, as distributed training expects.
        folded_query = torch.einsum("bhd,hdc->bhc", query, self.k_proj.weight.view(heads, head_dim, width))
        key_bias_score = torch.einsum("bhd,hd->bh", query, self.k_proj.bias.view(heads, head_dim))
        # (batch, heads, width) x (batch, width, sequence) -> (batch, heads, sequence)
        scores = (folded_query @ context.transpose(1, 2) + key_bias_score[..., None]) * head_dim**-0.5
        pooled = scores.softmax(dim=-1) @ context  # (batch, heads, width)
        # each head's pooled context through that head's slice of the value projection -> (batch, width)
        values = torch.einsum("bhc,hdc->bhd", pooled, self.v_proj.weight.view(heads, head_dim, width))
        values = values.reshape(batch_size, width) + self.v_proj.bias
        return self.out_proj(values)


class EVLDecoderMLP(nn.Module):
    def __init__(self, config: EVLConfig):
        super().__init__()
        intermediate_size = round(config.decoder_mlp_ratio * config.hidden_size)
        self.fc1 = nn.Linear(config.hidden_size, intermediate_size)
        self.activation_fn = ACT2FN["quick_gelu"]
        self.dropout = nn.Dropout(config.decoder_mlp_dropout)
        self.fc2 = nn.Linear(intermediate_size, config.hidden_size)
        self.fc1.bias_init_std = self.fc2.bias_init_std = 1e-6  # read by `EVLPreTrainedModel._init_weights`

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(self.activation_fn(self.fc1(hidden_states))))


class EVLDecoderLayer(GradientCheckpointingLayer):
    """
    One decoder layer: the temporal modules turn one encoder layer's per-frame features into video features, then
    the query token reads them by cross attention (pre-norm, no self attention) and passes through an MLP.
    """

    def __init__(self, config: EVLConfig):
        super().__init__()
        width = config.hidden_size
        self.temporal_conv = (
            nn.Conv1d(width, width, kernel_size=3, padding=1, groups=width) if config.use_temporal_conv else None
        )
        self.temporal_pos_embed = (
            nn.Parameter(torch.zeros(config.num_frames, width)) if config.use_temporal_pos_embed else None
        )
        self.temporal_cross_attention = (
            EVLTemporalCrossAttention(config) if config.use_temporal_cross_attention else None
        )
        self.layer_norm1 = nn.LayerNorm(width, eps=config.vision_config.layer_norm_eps)
        self.layer_norm2 = nn.LayerNorm(width, eps=config.vision_config.layer_norm_eps)
        self.layer_norm3 = nn.LayerNorm(width, eps=config.vision_config.layer_norm_eps)
        self.attn = EVLDecoderAttention(config)
        self.mlp = EVLDecoderMLP(config)

    def _temporal_pos_embed(self, num_frames: int) -> torch.Tensor:
        table = self.temporal_pos_embed
        if num_frames != table.shape[0]:
            # (frames, width) -> (1, width, frames), stretched linearly to the clip length
            table = F.interpolate(table.T[None], size=num_frames, mode="linear", align_corners=False)[0].T
        return table

    def forward(
        self,
        query: torch.Tensor,
        hidden_states: torch.Tensor,
        attention_queries: torch.Tensor | None = None,
        attention_keys: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        Args:
            query (`torch.Tensor` of shape `(batch_size, hidden_size)`): the video query token.
            hidden_states (`torch.Tensor` of shape `(batch_size, num_frames, 1 + num_patches, hidden_size)`):
                the output of the encoder layer this decoder layer reads.
            attention_queries, attention_keys (`torch.Tensor` of shape
                `(batch_size, num_frames, 1 + num_patches, heads, head_dim)`, *optional*):
                that encoder layer's query and key projections, needed by the temporal cross attention.
        """
        batch_size, num_frames, num_tokens, width = hidden_states.shape
        features = hidden_states
        if self.temporal_conv is not None:
            # (batch, frames, tokens, width) -> (batch * tokens, width, frames): a depthwise convolution along time
            sequences = hidden_states.permute(0, 2, 3, 1).reshape(batch_size * num_tokens, width, num_frames)
            convolved = self.temporal_conv(sequences).view(batch_size, num_tokens, width, num_frames)
            features = features + convolved.permute(0, 3, 1, 2)
        if self.temporal_pos_embed is not None:
            features = features + self._temporal_pos_embed(num_frames)[:, None, :]
        if self.temporal_cross_attention is not None:
            features = features + self.temporal_cross_attention(attention_queries, attention_keys)
        features = features.reshape(batch_size, num_frames * num_tokens, width)

        query = query + self.attn(self.layer_norm1(query), self.layer_norm3(features))
        query = query + self.mlp(self.layer_norm2(query))
        return query


class EVLDecoder(nn.Module):
    def __init__(self, config: EVLConfig):
        super().__init__()
        self.query_token = nn.Parameter(torch.zeros(config.hidden_size))
        self.layers = nn.ModuleList([EVLDecoderLayer(config) for _ in range(config.decoder_num_layers)])


class EVLPreTrainedModel(PreTrainedModel):
    config: EVLConfig
    base_model_prefix = "evl"
    main_input_name = "pixel_values"
    input_modalities = ("video",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["CLIPEncoderLayer", "CLIPVisionEmbeddings", "EVLDecoderLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    # Loading in fp16 or bf16 halves the frozen backbone only: the decoder and head train in fp32, as in the paper.
    _keep_in_fp32_modules_strict = ["decoder", "fc_norm", "classifier"]

    def _init_weights(self, module):
        super()._init_weights(module)
        # Initialised leaf by leaf: for models outside the transformers tree, containers without parameters of their
        # own are skipped by the initialisation pass.
        if isinstance(module, nn.Linear) and hasattr(module, "bias_init_std"):
            # decoder attention and MLP projections: Xavier-uniform weights, zero or N(0, 1e-6) biases
            init.xavier_uniform_(module.weight)
            init.normal_(module.bias, std=module.bias_init_std) if module.bias_init_std else init.zeros_(module.bias)
        elif isinstance(module, nn.Conv1d):
            # PyTorch's own Conv1d initialisation, as the paper's temporal convolution uses
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            fan_in = module.weight.shape[1] * module.weight.shape[2]
            init.uniform_(module.bias, -(fan_in**-0.5), fan_in**-0.5)
        elif isinstance(module, EVLTemporalCrossAttention):
            init.zeros_(module.w_fwd)
            init.zeros_(module.w_bwd)
        elif isinstance(module, EVLDecoderLayer) and module.temporal_pos_embed is not None:
            init.zeros_(module.temporal_pos_embed)
        elif isinstance(module, EVLDecoder):
            init.zeros_(module.query_token)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        # Loading re-creates every parameter with requires_grad=True: restore the frozen backbone afterwards.
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        if model.config.freeze_backbone:
            model.freeze_backbone()
        return loaded

    @classmethod
    def from_clip_pretrained(cls, clip_name_or_path, **kwargs):
        r"""
        Build an EVL model around the vision tower of a CLIP checkpoint, with a freshly initialised decoder.

        Args:
            clip_name_or_path (`str` or `os.PathLike`):
                A Hub id or local folder of a `CLIPModel` (such as `openai/clip-vit-base-patch16`) or a
                `CLIPVisionModel` checkpoint.
            kwargs:
                Loading options (`cache_dir`, `revision`, `token`, `local_files_only`, `force_download`,
                `subfolder`, `attn_implementation`, and `dtype`, which applies to the backbone only) go to
                `CLIPVisionModel.from_pretrained`; everything else (`num_frames`, `id2label`, ...) to [`EVLConfig`].

        Example:

        ```python
        >>> from evl_hf import EVLForVideoClassification

        >>> model = EVLForVideoClassification.from_clip_pretrained(
        ...     "openai/clip-vit-base-patch16", num_frames=8, id2label={0: "walk", 1: "run"}, label2id={"walk": 0, "run": 1}
        ... )
        ```
        """
        loading_keys = {
            "cache_dir", "revision", "token", "local_files_only", "force_download", "subfolder",
            "attn_implementation", "dtype",
        }  # fmt: skip
        loading_kwargs = {key: kwargs.pop(key) for key in list(kwargs) if key in loading_keys}
        vision_model = CLIPVisionModel.from_pretrained(clip_name_or_path, **loading_kwargs)
        config = EVLConfig(vision_config=vision_model.config, **kwargs)
        model = cls(config)
        # Loaded in place: the modules of the backbone carry the query/key recorders.
        model.base_model.vision_model.load_state_dict(vision_model.state_dict())
        model.base_model.vision_model.to(vision_model.dtype)
        model.freeze_backbone() if config.freeze_backbone else model.unfreeze_backbone()
        return model

    def freeze_backbone(self):
        """Freeze the CLIP encoder: no gradients, and its forward pass keeps no activations."""
        self.base_model.vision_model.requires_grad_(False)
        self.config.freeze_backbone = True

    def unfreeze_backbone(self):
        """Make the CLIP encoder trainable (full fine-tuning)."""
        vision_model = self.base_model.vision_model
        vision_model.requires_grad_(True)
        # EVL reads the layer outputs before CLIP's final layer norm: left trainable, it would get no gradient, which
        # distributed data parallel treats as an error.
        vision_model.post_layernorm.requires_grad_(False)
        self.config.freeze_backbone = False


class EVLModel(EVLPreTrainedModel):
    """The CLIP encoder and the EVL decoder, without a classification head: one vector per clip."""

    def __init__(self, config: EVLConfig):
        super().__init__(config)
        self.vision_model = CLIPVisionModel(config.vision_config)
        for layer in self.vision_model.encoder.layers:
            if type(layer.mlp.activation_fn) is QuickGELUActivation:
                layer.mlp.activation_fn = EVLQuickGELUActivation()
        self.decoder = EVLDecoder(config)
        self._attention_records = {}
        if config.use_temporal_cross_attention:
            self._record_attention_projections()
        self.post_init()
        if config.freeze_backbone:
            self.freeze_backbone()

    def _check_pixel_values(self, pixel_values: torch.Tensor):
        vision = self.config.vision_config
        height = width = vision.image_size  # the config accepts square CLIP images only
        expected = f"(batch_size, num_frames, {vision.num_channels}, {height}, {width})"
        if not isinstance(pixel_values, torch.Tensor):
            raise TypeError(f"pixel_values must be a torch.Tensor of shape {expected}, got {type(pixel_values)}.")
        shape = tuple(pixel_values.shape)
        if pixel_values.ndim != 5:
            hint = " For a single clip, add a batch dimension: pixel_values[None]." if pixel_values.ndim == 4 else ""
            raise ValueError(f"pixel_values must have shape {expected}, got shape {shape}.{hint}")
        if shape[2] != vision.num_channels:
            hint = (
                " It looks like (batch_size, channels, num_frames, height, width): use pixel_values.transpose(1, 2)."
                if shape[1] == vision.num_channels
                else ""
            )
            raise ValueError(
                f"pixel_values must have {vision.num_channels} channels at dim 2, i.e. shape {expected}; got shape "
                f"{shape}.{hint}"
            )
        if shape[3:] != (height, width):
            raise ValueError(
                f"pixel_values frames must be {height}x{width} to fit the backbone's {self.config.spatial_size[0]}x"
                f"{self.config.spatial_size[1]} patch grid, i.e. shape {expected}; got shape {shape}. Resize and crop "
                "the frames with EVLVideoProcessor."
            )
        if shape[0] == 0 or shape[1] == 0:
            raise ValueError(f"pixel_values must hold at least one clip of at least one frame, got shape {shape}.")
        if not torch.compiler.is_compiling() and not torch.isfinite(pixel_values).all():
            raise ValueError("pixel_values contains NaN or infinite values; check the video decoding and normalisation.")

    def _record_attention_projections(self):
        """The temporal cross attention reads the queries and keys that the CLIP layers compute anyway: forward hooks on
        the stock `q_proj`/`k_proj` modules of the layers the decoder reads keep their outputs for one forward pass.
        They are registered once, so that `torch.compile` traces them."""
        layers = self.vision_model.encoder.layers
        for index, layer in enumerate(layers[len(layers) - self.config.decoder_num_layers :]):
            for name in ("q_proj", "k_proj"):
                getattr(layer.self_attn, name).register_forward_hook(partial(self._keep_projection, (index, name)))

    def _keep_projection(self, key, module, args, output):
        # keyed by device too, so that replicas of the model on several devices do not mix their records
        self._attention_records[(output.device, *key)] = output

    def _encode_frames(self, frames: torch.Tensor, decoder_dtype: torch.dtype):
        """Run the CLIP encoder on `(batch * frames, channels, height, width)` and return, for each encoder layer the
        decoder reads, its output `(batch * frames, tokens, width)` and its queries and keys (or `None`)."""
        vision = self.vision_model
        layers = vision.encoder.layers
        num_read = self.config.decoder_num_layers
        outputs = []
        device = frames.device
        for key in [key for key in self._attention_records if key[0] == device]:
            del self._attention_records[key]  # left over from a direct call of the vision model
        hidden_states = vision.pre_layrnorm(vision.embeddings(frames))
        for layer in layers:
            hidden_states = layer(hidden_states, None)
            outputs.append(hidden_states)
            if len(outputs) > num_read:
                outputs.pop(0)  # only the last decoder_num_layers outputs are kept alive
        queries, keys = [None] * num_read, [None] * num_read
        if self.config.use_temporal_cross_attention:
            records = self._attention_records
            if any((device, i, name) not in records for i in range(num_read) for name in ("q_proj", "k_proj")):
                raise RuntimeError(
                    "The query/key recorders of the CLIP layers did not fire. Replace backbone weights with "
                    "`model.evl.vision_model.load_state_dict(...)` rather than by assigning a new module."
                )
            queries = [records.pop((device, i, "q_proj")).to(decoder_dtype) for i in range(num_read)]
            keys = [records.pop((device, i, "k_proj")).to(decoder_dtype) for i in range(num_read)]
        return [output.to(decoder_dtype) for output in outputs], queries, keys

    def get_frame_features(self, frames: torch.Tensor) -> EVLFrameFeatures:
        r"""
        Run the CLIP encoder on frames, each on its own, and keep what the decoder reads from it.

        EVL's backbone sees every frame independently, so these features can be computed once per frame and shared by
        every clip that uses the frame (overlapping windows of a long video, say); [`decode_frame_features`] then
        gives exactly what `forward` gives for the clip made of those frames.

        Args:
            frames (`torch.FloatTensor` of shape `(num_images, num_channels, height, width)`):
                Normalised frames, from any number of clips.

        Returns:
            [`EVLFrameFeatures`] with, per encoder layer the decoder reads, tensors whose first dimension is
            `num_images`.
        """
        decoder_dtype = self.decoder.query_token.dtype
        backbone_trainable = any(p.requires_grad for p in self.vision_model.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and backbone_trainable):
            outputs, queries, keys = self._encode_frames(frames, decoder_dtype)
        heads = self.config.vision_config.num_attention_heads
        # queries and keys: (images, tokens, width) -> (images, tokens, heads, head_dim)
        split = lambda tensors: None if tensors[0] is None else tuple(t.unflatten(-1, (heads, -1)) for t in tensors)
        return EVLFrameFeatures(hidden_states=tuple(outputs), queries=split(queries), keys=split(keys))

    def decode_frame_features(self, features: EVLFrameFeatures, num_frames: int) -> tuple[torch.Tensor, tuple]:
        r"""
        Run the decoder on the frame features of whole clips.

        Args:
            features ([`EVLFrameFeatures`]):
                Features of `batch_size * num_frames` frames, clip after clip, as [`get_frame_features`] returns them.
            num_frames (`int`):
                Frames per clip.

        Returns:
            `tuple`: the query token after the last decoder layer, `(batch_size, hidden_size)`, and the query token
            before the first decoder layer and after each one.
        """
        # (B * T, ...) -> (B, T, ...)
        unfold = lambda tensors: [None] * len(features.hidden_states) if tensors is None else [
            t.unflatten(0, (-1, num_frames)) for t in tensors
        ]
        hidden_states, queries, keys = unfold(features.hidden_states), unfold(features.queries), unfold(features.keys)
        query = self.decoder.query_token.expand(hidden_states[0].shape[0], -1)
        decoder_hidden_states = [query]
        for layer, layer_hidden, layer_queries, layer_keys in zip(self.decoder.layers, hidden_states, queries, keys):
            query = layer(query, layer_hidden, layer_queries, layer_keys)
            decoder_hidden_states.append(query)
        return query, tuple(decoder_hidden_states)

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> EVLModelOutput:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, num_frames, num_channels, height, width)`):
            Normalised frames, as [`EVLVideoProcessor`] returns them.
        """
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        self._check_pixel_values(pixel_values)
        batch_size, num_frames = pixel_values.shape[:2]
        # Frames are folded into the batch: (B, T, 3, H, W) -> (B * T, 3, H, W).
        features = self.get_frame_features(pixel_values.flatten(0, 1))
        query, decoder_hidden_states = self.decode_frame_features(features, num_frames)
        return EVLModelOutput(
            pooler_output=query,
            hidden_states=(
                tuple(h.unflatten(0, (batch_size, num_frames)) for h in features.hidden_states)
                if output_hidden_states
                else None
            ),
            decoder_hidden_states=decoder_hidden_states if output_hidden_states else None,
        )


class EVLForVideoClassification(EVLPreTrainedModel):
    """EVL with its classification head (LayerNorm, dropout, linear) on the video query token."""

    def __init__(self, config: EVLConfig):
        super().__init__(config)
        self.evl = EVLModel(config)
        self.fc_norm = nn.LayerNorm(config.hidden_size, eps=config.vision_config.layer_norm_eps)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()
        if config.freeze_backbone:
            self.freeze_backbone()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> ImageClassifierOutput:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, num_frames, num_channels, height, width)`):
            Normalised frames, as [`EVLVideoProcessor`] returns them.
        labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            Class indices in `[0, config.num_labels - 1]` for the cross-entropy loss (or float targets for
            regression when `config.num_labels == 1`).

        Returns:
            [`ImageClassifierOutput`] with `logits` of shape `(batch_size, num_labels)`, the `loss` when `labels` are
            given, and as `hidden_states` the encoder layers the decoder reads.

        Example:

        ```python
        >>> import torch
        >>> from transformers import CLIPVisionConfig
        >>> from evl_hf import EVLConfig, EVLForVideoClassification

        >>> vision_config = CLIPVisionConfig(
        ...     hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8
        ... )
        >>> model = EVLForVideoClassification(EVLConfig(vision_config=vision_config, decoder_num_layers=2, num_labels=4))
        >>> outputs = model(torch.randn(1, 8, 3, 32, 32), labels=torch.tensor([2]))
        >>> outputs.logits.shape
        torch.Size([1, 4])
        ```
        """
        outputs = self.evl(pixel_values, output_hidden_states=output_hidden_states)
        logits = self.classifier(self.dropout(self.fc_norm(outputs.pooler_output)))

        loss = None
        if labels is not None:
            loss = self.loss_function(labels, logits, self.config, **kwargs)

        return ImageClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)


__all__ = ["EVLPreTrainedModel", "EVLModel", "EVLForVideoClassification"]
