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

import copy
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
from transformers.modeling_outputs import BaseModelOutput
from transformers.processing_utils import Unpack
from transformers.utils import ModelOutput, TransformersKwargs, can_return_tuple
from transformers.utils.output_capturing import CompileableContextVar, OutputRecorder, capture_outputs

from .configuration_evl import EVLConfig


@dataclass
class EVLModelOutput(ModelOutput):
    r"""
    pooler_output (`torch.FloatTensor` of shape `(batch_size, hidden_size)`):
        The video query token after the last decoder layer: one vector per clip.
    hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned when `output_hidden_states=True`):
        The encoder layers the decoder reads, shallow to deep, each `(batch_size, num_frames, 1 + num_patches,
        hidden_size)`: what the decoder consumes, so they carry gradients even when the backbone is frozen.
    attentions (`tuple(torch.FloatTensor)`, *optional*, returned when `output_attentions=True`):
        Those layers' self-attention maps, each `(batch_size * num_frames, num_heads, 1 + num_patches, 1 +
        num_patches)`; eager attention only, and without gradient when the backbone is frozen.
    decoder_hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned when `output_hidden_states=True`):
        The query token before the first decoder layer and after each one, each `(batch_size, hidden_size)`.
    decoder_attentions (`tuple(torch.FloatTensor)`, *optional*, returned when `output_attentions=True`):
        Each decoder layer's attention of the query over the video tokens, frame after frame, each
        `(batch_size, decoder_num_heads, 1, num_frames * (1 + num_patches))`.
    """

    pooler_output: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    decoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    decoder_attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class EVLVideoClassifierOutput(ModelOutput):
    r"""
    `loss` (when `labels` are given) and `logits` `(batch_size, num_labels)` as in [`ImageClassifierOutput`], then:
    pooler_output (`torch.FloatTensor` of shape `(batch_size, hidden_size)`):
        The query token the head reads ([`EVLModel`]'s `pooler_output`): the clip's embedding. The rest as in
        [`EVLModelOutput`].
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    decoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    decoder_attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class EVLFrameFeatures(ModelOutput):
    r"""
    What the EVL decoder reads from the CLIP encoder, per frame (see [`EVLModel.get_frame_features`]).

    hidden_states (`tuple(torch.FloatTensor)`):
        The encoder layers the decoder reads, shallow to deep, each `(num_images, 1 + num_patches, hidden_size)`.
    queries, keys (`tuple(torch.FloatTensor)`, *optional*):
        Those layers' attention queries and keys before scaling, each `(num_images, 1 + num_patches, num_heads,
        head_dim)`; `None` without temporal cross attention.
    attentions (`tuple(torch.FloatTensor)`, *optional*):
        Those layers' self-attention maps, each `(num_images, num_heads, 1 + num_patches, 1 + num_patches)`.
    """

    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    queries: tuple[torch.FloatTensor, ...] | None = None
    keys: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


# The queries and keys of the CLIP layers the decoder reads, recorded by forward hooks on their stock `q_proj`/`k_proj`
# modules into a dict that exists for one call only. A context variable keeps concurrent calls (threads, asyncio
# tasks) apart; transformers' compile-aware variant lets torch.compile trace it, as its own output capturing does.
_projection_record = CompileableContextVar("evl_attention_projections")


def _record_projection(key: tuple[int, str], module: nn.Module, args, output: torch.Tensor):
    record = _projection_record.get()
    if record is not None:
        record[key] = output


def _unfold_clips(tensors: tuple[torch.Tensor, ...] | None, num_frames: int) -> list[torch.Tensor] | None:
    """`(batch_size * num_frames, ...)` tensors -> `(batch_size, num_frames, ...)`."""
    return None if tensors is None else [tensor.unflatten(0, (-1, num_frames)) for tensor in tensors]


class EVLQuickGELUActivation(QuickGELUActivation):
    """
    CLIP's QuickGELU, `x * sigmoid(1.702 * x)`, bit for bit. Without autograd (the frozen backbone) it makes one fresh
    `(images, tokens, 4 * width)` tensor, not the stock module's three (faulting in their pages costs more than the
    arithmetic), and overwrites its input, `fc1`'s output, which nothing else reads; with autograd or under
    `torch.compile` (which fuses the stock formula) it is the stock module.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or torch.compiler.is_compiling():
            return super().forward(input)
        return input.mul_((1.702 * input).sigmoid_())


class EVLTemporalCrossAttention(nn.Module):
    """
    Temporal cross attention: every patch of frame t looks at the patches of frame t-1 (and, with a second table,
    of frame t+1) through the frozen CLIP attention map, and collects a learned vector for each 2-D displacement.
    The head-averaged attention is summed into the `(2h-1) * (2w-1)` displacement bins, then multiplied by the table:
    the reference's gathered `(num_patches, num_patches, hidden_size)` table is never materialised.
    """

    def __init__(self, config: EVLConfig):
        super().__init__()
        height, width = config.spatial_size
        self.spatial_size = (height, width)
        num_offsets = (2 * height - 1) * (2 * width - 1)
        self.w_fwd = nn.Parameter(torch.zeros(num_offsets, config.hidden_size, dtype=torch.float32))
        self.w_bwd = nn.Parameter(torch.zeros(num_offsets, config.hidden_size, dtype=torch.float32))

    def offset_index(self, device: torch.device) -> torch.LongTensor:
        """`(num_patches, num_patches)` index of the displacement bin between query patch p and key patch r."""
        # Computed per call, not a buffer: nothing is assigned while torch.export or torch.compile trace, and nothing
        # comes back uninitialised from the meta device.
        height, width = self.spatial_size
        rows = torch.arange(height, device=device).repeat_interleave(width)
        cols = torch.arange(width, device=device).repeat(height)
        row_offset = rows[:, None] - rows[None, :] + height - 1
        col_offset = cols[:, None] - cols[None, :] + width - 1
        return row_offset * (2 * width - 1) + col_offset

    def _attend(self, queries, keys, table: torch.Tensor, offset_index: torch.LongTensor) -> torch.Tensor:
        # queries, keys: (batch, pairs, num_patches, heads, head_dim) -> (batch, pairs, heads, num_patches, head_dim)
        queries, keys = queries.transpose(2, 3), keys.transpose(2, 3)
        scores = queries @ keys.transpose(-1, -2) * queries.shape[-1] ** -0.5
        attention = scores.softmax(dim=-1).mean(dim=2)  # (batch, pairs, num_patches, num_patches)
        index = offset_index.expand_as(attention)
        bins = attention.new_zeros(*attention.shape[:-1], table.shape[0]).scatter(-1, index, attention)
        return bins @ table.to(bins.dtype)  # (batch, pairs, num_patches, hidden_size)

    def forward(self, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """`queries`, `keys`: the CLIP layer's projections before scaling, `(batch_size, num_frames, 1 + num_patches,
        heads, head_dim)`. Returns `(batch_size, num_frames, 1 + num_patches, hidden_size)`,
        zero at the class token."""
        queries, keys = queries[:, :, 1:], keys[:, :, 1:]
        # a single frame has no neighbour: both directions are empty and it gets zeros
        offset_index = self.offset_index(queries.device)
        looking_back = self._attend(queries[:, 1:], keys[:, :-1], self.w_fwd, offset_index)  # frames 1..T-1
        looking_ahead = self._attend(queries[:, :-1], keys[:, 1:], self.w_bwd, offset_index)  # frames 0..T-2
        return F.pad(self.combine(looking_ahead, looking_back), (0, 0, 1, 0))  # the class token gets nothing

    @staticmethod
    def combine(looking_ahead: torch.Tensor, looking_back: torch.Tensor) -> torch.Tensor:
        """What every frame of a clip gets: `looking_ahead` (frames 0..T-2, from their next frame) and `looking_back`
        (frames 1..T-1, from their previous frame), each `(batch_size, num_frames - 1, tokens, hidden_size)`, summed
        frame by frame into `(batch_size, num_frames, tokens, hidden_size)`."""
        no_frame = looking_back.new_zeros(looking_back.shape[0], 1, *looking_back.shape[2:])
        return torch.cat([no_frame, looking_back], dim=1) + torch.cat([looking_ahead, no_frame], dim=1)


class EVLDecoderAttention(nn.Module):
    """
    Multi-head attention of one query vector over many context tokens. The key projection is folded into the query
    (`q · (W_k x + b_k) = (W_k^T q) · x` up to a constant the softmax cancels) and the value projection applied after
    pooling (the weights sum to one), so the context tokens are never projected; the parameters stay the usual ones.
    """

    def __init__(self, config: EVLConfig):
        super().__init__()
        self.hidden_size = config.hidden_size
        self.num_heads = config.decoder_num_heads
        self.head_dim = self.hidden_size // self.num_heads
        self.q_proj = nn.Linear(self.hidden_size, self.hidden_size, dtype=torch.float32)
        self.k_proj = nn.Linear(self.hidden_size, self.hidden_size, dtype=torch.float32)
        self.v_proj = nn.Linear(self.hidden_size, self.hidden_size, dtype=torch.float32)
        self.out_proj = nn.Linear(self.hidden_size, self.hidden_size, dtype=torch.float32)
        for projection in (self.q_proj, self.k_proj, self.v_proj, self.out_proj):
            projection.bias_init_std = 0.0  # read by `EVLPreTrainedModel._init_weights`

    def forward(self, query: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`query` `(batch_size, hidden_size)` reads `context` `(batch_size, sequence_length, hidden_size)`. Returns
        the output `(batch_size, hidden_size)` and the weights `(batch_size, num_heads, 1, sequence_length)`."""
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
        weights = scores.softmax(dim=-1)
        pooled = weights @ context  # (batch, heads, width)
        # each head's pooled context through that head's slice of the value projection -> (batch, width)
        values = torch.einsum("bhc,hdc->bhd", pooled, self.v_proj.weight.view(heads, head_dim, width))
        values = values.reshape(batch_size, width) + self.v_proj.bias
        return self.out_proj(values), weights[:, :, None]


class EVLDecoderMLP(nn.Module):
    def __init__(self, config: EVLConfig):
        super().__init__()
        intermediate_size = round(config.decoder_mlp_ratio * config.hidden_size)
        self.fc1 = nn.Linear(config.hidden_size, intermediate_size, dtype=torch.float32)
        self.activation_fn = ACT2FN["quick_gelu"]
        self.dropout = nn.Dropout(config.decoder_mlp_dropout)
        self.fc2 = nn.Linear(intermediate_size, config.hidden_size, dtype=torch.float32)
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
        width, eps = config.hidden_size, config.vision_config.layer_norm_eps
        self.temporal_conv = self.temporal_pos_embed = self.temporal_cross_attention = None  # each one optional
        if config.use_temporal_conv:
            self.temporal_conv = nn.Conv1d(width, width, kernel_size=3, padding=1, groups=width, dtype=torch.float32)
        if config.use_temporal_pos_embed:
            self.temporal_pos_embed = nn.Parameter(torch.zeros(config.num_frames, width, dtype=torch.float32))
        if config.use_temporal_cross_attention:
            self.temporal_cross_attention = EVLTemporalCrossAttention(config)
        self.layer_norm1 = nn.LayerNorm(width, eps=eps, dtype=torch.float32)
        self.layer_norm2 = nn.LayerNorm(width, eps=eps, dtype=torch.float32)
        self.layer_norm3 = nn.LayerNorm(width, eps=eps, dtype=torch.float32)
        self.attn = EVLDecoderAttention(config)
        self.mlp = EVLDecoderMLP(config)

    def _temporal_pos_embed(self, num_frames: int) -> torch.Tensor:
        # (frames, width) -> (1, width, frames), stretched linearly to the clip length: at the trained length this is
        # the table itself, exactly, and having no branch on the length lets torch.export keep it dynamic
        table = self.temporal_pos_embed.T[None]
        return F.interpolate(table, size=num_frames, mode="linear", align_corners=False)[0].T

    def forward(
        self,
        query: torch.Tensor,
        hidden_states: torch.Tensor,
        attention_queries: torch.Tensor | None = None,
        attention_keys: torch.Tensor | None = None,
        temporal_cross_attention_output: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        The video query token `(batch_size, hidden_size)` reads `hidden_states` `(batch_size, num_frames, 1 +
        num_patches, hidden_size)`, one encoder layer's output. The temporal cross attention takes that layer's
        `attention_queries` and `attention_keys` `(batch_size, num_frames, 1 + num_patches, heads, head_dim)`, or its
        `temporal_cross_attention_output`, shaped as `hidden_states`, when already known (overlapping clips share it).
        Returns the query after this layer.
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
            if temporal_cross_attention_output is None:
                temporal_cross_attention_output = self.temporal_cross_attention(attention_queries, attention_keys)
            features = features + temporal_cross_attention_output
        features = features.reshape(batch_size, num_frames * num_tokens, width)

        attention_output, _ = self.attn(self.layer_norm1(query), self.layer_norm3(features))
        query = query + attention_output
        return query + self.mlp(self.layer_norm2(query))


class EVLPreTrainedModel(PreTrainedModel):
    config: EVLConfig
    base_model_prefix = "evl"
    main_input_name = "pixel_values"
    input_modalities = ("video",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["CLIPEncoderLayer", "CLIPVisionEmbeddings", "EVLDecoderLayer"]
    # The attention implementation is the CLIP backbone's; EVL's own attention modules are fixed formulas.
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    # what `from_pretrained` keeps out of quantization by default (parameter-name prefixes): all but the backbone
    _modules_not_to_quantize: tuple[str, ...] = ()

    @classmethod
    def _can_set_attn_implementation(cls) -> bool:
        # transformers guesses this from the module source; switching reaches the CLIP backbone's attention.
        return True

    @classmethod
    def is_custom_code(cls) -> bool:
        # `_init_weights` respects loaded weights as in-tree models do, so the pass may visit every module, and the
        # CLIP backbone gets CLIP's own initialisation (set on container modules the custom-code pass would skip).
        return False

    def _init_weights(self, module):
        super()._init_weights(module)
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

    def _apply_backbone_freezing(self):
        """Set the backbone's `requires_grad` from `config.freeze_backbone`. `post_layernorm` never trains: EVL reads
        the layers before it, and a trainable parameter without gradient is an error for distributed data parallel."""
        vision_model = self.base_model.vision_model
        vision_model.requires_grad_(not self.config.freeze_backbone)
        vision_model.post_layernorm.requires_grad_(False)

    def freeze_backbone(self):
        """Freeze the CLIP encoder: no gradients, and its forward pass keeps no activations. Saved with the config."""
        self.config.freeze_backbone = True
        self._apply_backbone_freezing()

    def unfreeze_backbone(self):
        """Make the CLIP encoder trainable (full fine-tuning), all but its final layer norm, which EVL never uses."""
        self.config.freeze_backbone = False
        self._apply_backbone_freezing()

    def get_input_embeddings(self) -> nn.Module:
        """The backbone's patch embedding (a `Conv2d`), as for CLIP."""
        return self.base_model.vision_model.get_input_embeddings()

    def get_decoder(self):
        """`None`: EVL's `decoder` is no language decoder, and generic utilities (export) must not take it for one."""
        return None

    def resize_temporal_position_embeddings(self, num_frames: int):
        """Make the clip length `num_frames`: each decoder layer's `(frames, hidden_size)` temporal position table is
        interpolated to it, as the forward pass does for clips of another length, and `config.num_frames` is set."""
        if num_frames < 1:
            raise ValueError(f"num_frames={num_frames} must be at least 1.")
        for layer in self.base_model.decoder.layers:
            if layer.temporal_pos_embed is not None:
                with torch.no_grad():
                    table = layer._temporal_pos_embed(num_frames).clone()
                layer.temporal_pos_embed = nn.Parameter(table, requires_grad=layer.temporal_pos_embed.requires_grad)
        self.config.num_frames = num_frames

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        r"""As [`~PreTrainedModel.from_pretrained`]; the backbone comes back frozen as saved, `num_frames=N`
        interpolates the trained temporal position embeddings to `N` frames, and a `quantization_config` without
        `modules_to_not_convert` quantizes the frozen backbone only (the decoder and head stay float32)."""
        num_frames = kwargs.pop("num_frames", None)
        quantization_config = kwargs.get("quantization_config")
        if quantization_config is not None and getattr(quantization_config, "modules_to_not_convert", 0) is None:
            # transformers' quantizers skip `modules_to_not_convert` (and `_keep_in_fp32_modules`, which only acts on
            # float16 loading and may not repeat `_keep_in_fp32_modules_strict`): the default is to skip the decoder
            kwargs["quantization_config"] = quantization_config = copy.copy(quantization_config)  # not the caller's
            quantization_config.modules_to_not_convert = list(cls._modules_not_to_quantize)
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        # Loading re-creates every parameter with requires_grad=True.
        model._apply_backbone_freezing()
        if num_frames is not None and num_frames != model.config.num_frames:
            model.resize_temporal_position_embeddings(num_frames)
        return loaded

    @classmethod
    def from_clip_pretrained(cls, clip_name_or_path, **kwargs):
        r"""
        Build an EVL model, with a fresh decoder, around the vision tower of `clip_name_or_path`, a Hub id or folder of
        a `CLIPModel` (such as `openai/clip-vit-base-patch16`) or `CLIPVisionModel`. The loading options in `kwargs`
        (`cache_dir`, `revision`, `token`, `local_files_only`, `force_download`, `subfolder`, `attn_implementation`,
        and `dtype`, for the backbone only) go to its `from_pretrained`; the rest (`num_frames`, ...) to [`EVLConfig`].

        Example:

        ```python
        >>> from evl_hf import EVLForVideoClassification

        >>> model = EVLForVideoClassification.from_clip_pretrained(
        ...     "openai/clip-vit-base-patch16", num_frames=8, id2label={0: "walk", 1: "run"}, label2id={"walk": 0, "run": 1}
        ... )
        ```
        """
        loading_keys = "cache_dir revision token local_files_only force_download subfolder attn_implementation dtype"
        loading_kwargs = {key: kwargs.pop(key) for key in list(kwargs) if key in loading_keys.split()}
        vision_model = CLIPVisionModel.from_pretrained(clip_name_or_path, **loading_kwargs)
        config = EVLConfig(vision_config=vision_model.config, **kwargs)
        model = cls(config)
        # Copied in place: the backbone's modules carry the query/key recorders, and keep their requires_grad flags.
        model.base_model.vision_model.load_state_dict(vision_model.state_dict())
        model.base_model.vision_model.to(vision_model.dtype)
        return model


class EVLDecoder(EVLPreTrainedModel):
    """The query token and the decoder layers, shallow to deep: a sub-model, as BART's decoder, so that transformers
    records its hidden states (the query before the first layer and after each) and attention weights."""

    _can_record_outputs = {
        "hidden_states": OutputRecorder(EVLDecoderLayer, num_hidden_layers_key="decoder_num_layers"),
        "attentions": EVLDecoderAttention,
    }

    def __init__(self, config: EVLConfig):
        super().__init__(config)
        self.query_token = nn.Parameter(torch.zeros(config.hidden_size, dtype=torch.float32))
        self.layers = nn.ModuleList([EVLDecoderLayer(config) for _ in range(config.decoder_num_layers)])
        self.post_init()

    def get_input_embeddings(self) -> None:
        """`None`: the decoder reads the backbone's features; it embeds no input of its own."""
        return None

    @capture_outputs
    def forward(
        self,
        hidden_states: list[torch.Tensor],
        queries: list[torch.Tensor] | None = None,
        keys: list[torch.Tensor] | None = None,
        temporal_cross_attention_outputs: list[torch.Tensor] | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutput:
        """The [`EVLDecoderLayer`] inputs, one per layer read (shallow to deep), per clip. Returns the query after the
        last layer as `last_hidden_state`, `(batch_size, hidden_size)`."""
        query = self.query_token.expand(hidden_states[0].shape[0], -1)
        pick = lambda tensors, index: None if tensors is None else tensors[index]
        for index, layer in enumerate(self.layers):
            layer_inputs = (pick(tensors, index) for tensors in (queries, keys, temporal_cross_attention_outputs))
            query = layer(query, hidden_states[index], *layer_inputs)
        return BaseModelOutput(last_hidden_state=query)


class EVLModel(EVLPreTrainedModel):
    """The CLIP encoder and the EVL decoder, without a classification head: one vector per clip."""

    _keep_in_fp32_modules_strict = ["decoder"]
    # Quantizers (`TorchAoConfig`, ...) leave these alone: only the frozen backbone's Linear layers are quantized.
    _modules_not_to_quantize = ("decoder",)

    def __init__(self, config: EVLConfig):
        super().__init__(config)
        self.vision_model = CLIPVisionModel(config.vision_config)
        for layer in self.vision_model.encoder.layers:
            if type(layer.mlp.activation_fn) is QuickGELUActivation:
                layer.mlp.activation_fn = EVLQuickGELUActivation()
        self.decoder = EVLDecoder(config)
        if config.use_temporal_cross_attention:
            # The temporal cross attention reads the queries and keys the CLIP layers compute anyway: hooks on the
            # stock `q_proj`/`k_proj` of the layers the decoder reads put them in the record of the current call.
            # Registered once, so that torch.compile and torch.export trace them.
            layers = self.vision_model.encoder.layers
            for index, layer in enumerate(layers[len(layers) - config.decoder_num_layers :]):
                for name in ("q_proj", "k_proj"):
                    getattr(layer.self_attn, name).register_forward_hook(partial(_record_projection, (index, name)))
        self.post_init()
        self._apply_backbone_freezing()

    def _check_pixel_values(self, pixel_values: torch.Tensor):
        # Shapes only: a value check would cost a device-to-host synchronisation on every forward pass.
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
            hint = " It looks like (batch_size, channels, num_frames, ...): use pixel_values.transpose(1, 2)."
            raise ValueError(
                f"pixel_values must have {vision.num_channels} channels at dim 2, i.e. shape {expected}; got shape "
                f"{shape}.{hint if shape[1] == vision.num_channels else ''}"
            )
        if shape[3:] != (height, width):
            raise ValueError(
                f"pixel_values frames must be {height}x{width} to fit the backbone's {self.config.spatial_size[0]}x"
                f"{self.config.spatial_size[1]} patch grid, i.e. shape {expected}; got shape {shape}. Resize and crop "
                "the frames with EVLVideoProcessor."
            )
        if 0 in shape[:2]:
            raise ValueError(f"pixel_values must hold at least one clip of at least one frame, got shape {shape}.")

    def get_frame_features(self, frames: torch.Tensor, output_attentions: bool = False) -> EVLFrameFeatures:
        r"""
        Run the CLIP encoder on each of the normalised `frames` `(num_images, num_channels, height, width)`, from any
        number of clips, on its own and keep what the decoder reads, with the self-attention maps of the layers read
        if `output_attentions` (eager attention only). A frame's features can thus be shared by every clip that uses it
        (overlapping windows of a long video); [`decode_frame_features`] then gives what `forward` gives for the clip
        made of those frames.
        """
        num_layers, num_read = self.config.vision_config.num_hidden_layers, self.config.decoder_num_layers
        # hidden state i is the output of encoder layer i - 1 (0 is the embeddings): the last num_read layers
        read = list(range(num_layers - num_read + 1, num_layers + 1))
        record = {} if self.config.use_temporal_cross_attention else None
        token = _projection_record.set(record)
        try:
            # The backbone records a graph only if some of its parameters train; frozen, it keeps no activations.
            backbone_trains = torch.is_grad_enabled() and any(p.requires_grad for p in self.vision_model.parameters())
            with torch.set_grad_enabled(backbone_trains):
                # CLIP's own output capturing keeps the selected hidden states (and attention maps) of this call
                outputs = self.vision_model(frames, output_hidden_states=read, output_attentions=output_attentions)
        finally:
            _projection_record.reset(token)

        decoder_dtype = self.decoder.query_token.dtype
        hidden_states = tuple(outputs.hidden_states[index].to(decoder_dtype) for index in read)
        queries = keys = None
        if record is not None:
            if len(record) != 2 * num_read:
                raise RuntimeError(
                    "The query/key recorders of the CLIP layers did not fire. Replace backbone weights with "
                    "`model.evl.vision_model.load_state_dict(...)` rather than by assigning a new module."
                )
            heads = self.config.vision_config.num_attention_heads
            # (images, tokens, width) -> (images, tokens, heads, head_dim)
            queries, keys = (
                tuple(record[index, name].to(decoder_dtype).unflatten(-1, (heads, -1)) for index in range(num_read))
                for name in ("q_proj", "k_proj")
            )
        # kept as the backbone made them, (images, heads, tokens, tokens): a reshaped view would not be on the path to
        # the loss, and `retain_grad()` on it would see no gradient
        attentions = tuple(outputs.attentions[-num_read:]) if output_attentions and outputs.attentions else None
        return EVLFrameFeatures(hidden_states=hidden_states, queries=queries, keys=keys, attentions=attentions)

    def get_neighbour_cross_attention(self, queries: tuple, keys: tuple) -> tuple[torch.Tensor, ...]:
        r"""
        The temporal cross attention between pairs of neighbouring frames, which depends on those two frames only: a
        long video's overlapping clips can share it (see [`decode_frame_features`]). `queries` and `keys` hold, per
        layer read, the [`get_frame_features`] queries and keys of `num_pairs` pairs of frames, a frame and the next
        one, `(num_pairs, 2, 1 + num_patches, num_heads, head_dim)`. Returns per decoder layer `(num_pairs, 2, 1 +
        num_patches, hidden_size)`: at index 0 what the first frame of a pair collects looking ahead, at index 1 what
        the second collects looking back.
        """
        if not self.config.use_temporal_cross_attention:
            raise ValueError("This model has no temporal cross attention (config.use_temporal_cross_attention=False).")
        return tuple(
            layer.temporal_cross_attention(layer_queries, layer_keys)
            for layer, layer_queries, layer_keys in zip(self.decoder.layers, queries, keys)
        )

    def decode_frame_features(
        self, features: EVLFrameFeatures, num_frames: int, neighbour_cross_attention: tuple | None = None
    ) -> tuple[torch.Tensor, tuple]:
        r"""
        Run the decoder on the [`get_frame_features`] of `batch_size` clips of `num_frames` frames, clip after clip.
        Returns the query after the last layer, `(batch_size, hidden_size)`, and the query before and after each layer.

        Args:
            features ([`EVLFrameFeatures`]):
                Features of `batch_size * num_frames` images; queries and keys may be left out when
                `neighbour_cross_attention` is given.
            num_frames (`int`):
                Frames per clip.
            neighbour_cross_attention (`tuple(torch.FloatTensor)`, *optional*):
                Per decoder layer, the [`get_neighbour_cross_attention`] of each clip's pairs of neighbouring frames, in
                order, `(batch_size, num_frames - 1, 2, 1 + num_patches, hidden_size)`: it stands for the temporal
                cross attention, whose output at a frame is what it collects from both neighbours.
        """
        cross_attention_outputs = None
        if neighbour_cross_attention is not None:
            combine = EVLTemporalCrossAttention.combine
            cross_attention_outputs = [combine(pairs[:, :, 0], pairs[:, :, 1]) for pairs in neighbour_cross_attention]
        tensors = (features.hidden_states, features.queries, features.keys)
        clips = (_unfold_clips(t, num_frames) for t in tensors)
        outputs = self.decoder(*clips, cross_attention_outputs, output_hidden_states=True, return_dict=True)
        return outputs.last_hidden_state, outputs.hidden_states

    @can_return_tuple
    def forward(self, pixel_values: torch.Tensor, **kwargs: Unpack[TransformersKwargs]) -> EVLModelOutput:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, num_frames, num_channels, height, width)`):
            Normalised frames, as [`EVLVideoProcessor`] returns them.
        output_attentions (`bool`, *optional*):
            Return the self-attention maps of the encoder layers read, and the decoder's attention weights.
        output_hidden_states (`bool`, *optional*):
            Return the encoder layers read (the tensors the decoder consumes) and the decoder's query states.
        """
        # Read as transformers' output capturing reads them (the argument, else EVL's config, for the backbone too: its
        # own config is not consulted); a list of indices (a selection in transformers) returns every layer read.
        output_attentions = kwargs.get("output_attentions", self.config.output_attentions)
        output_hidden_states = bool(kwargs.get("output_hidden_states", self.config.output_hidden_states))
        self._check_pixel_values(pixel_values)
        num_frames = pixel_values.shape[1]
        # Frames are folded into the batch: (B, T, 3, H, W) -> (B * T, 3, H, W).
        features = self.get_frame_features(pixel_values.flatten(0, 1), output_attentions=output_attentions)
        hidden_states = _unfold_clips(features.hidden_states, num_frames)
        if output_hidden_states and torch.is_grad_enabled() and not hidden_states[0].requires_grad:
            # A frozen backbone hands over features without autograd history. Returned, they are made leaves of the
            # decoder's graph, so that gradients at what the decoder consumes can be read (saliency, attribution).
            hidden_states = [hidden.detach().requires_grad_() for hidden in hidden_states]
        queries, keys = (_unfold_clips(tensors, num_frames) for tensors in (features.queries, features.keys))
        flags = {"output_attentions": output_attentions, "output_hidden_states": output_hidden_states}
        decoder_outputs = self.decoder(hidden_states, queries, keys, return_dict=True, **flags)
        return EVLModelOutput(
            pooler_output=decoder_outputs.last_hidden_state,
            hidden_states=tuple(hidden_states) if output_hidden_states else None,
            attentions=features.attentions,
            decoder_hidden_states=decoder_outputs.hidden_states,
            decoder_attentions=decoder_outputs.attentions,
        )


class EVLForVideoClassification(EVLPreTrainedModel):
    """EVL with its classification head (LayerNorm, dropout, linear) on the video query token."""

    # Loading in fp16 or bf16 halves the frozen backbone only: the decoder and head stay in fp32, as in the paper.
    _keep_in_fp32_modules_strict = ["decoder", "fc_norm", "classifier"]
    # Quantizers match these from the start of a parameter name, so the decoder is named with the base model prefix.
    _modules_not_to_quantize = ("evl.decoder", "fc_norm", "classifier")

    def __init__(self, config: EVLConfig):
        super().__init__(config)
        self.evl = EVLModel(config)
        self.fc_norm = nn.LayerNorm(config.hidden_size, eps=config.vision_config.layer_norm_eps, dtype=torch.float32)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels, dtype=torch.float32)
        self.post_init()

    def compute_logits(self, pooler_output: torch.Tensor) -> torch.Tensor:
        """The head: [`EVLModel`]'s `pooler_output` `(batch_size, hidden_size)` to logits `(batch_size, num_labels)`.
        Scores by head type come from [`~evl_hf.inference.postprocess_logits`]."""
        return self.classifier(self.dropout(self.fc_norm(pooler_output)))

    @can_return_tuple
    def forward(
        self, pixel_values: torch.Tensor, labels: torch.LongTensor | None = None, **kwargs: Unpack[TransformersKwargs]
    ) -> EVLVideoClassifierOutput:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, num_frames, num_channels, height, width)`):
            Normalised frames, as [`EVLVideoProcessor`] returns them.
        labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            Class indices in `[0, config.num_labels - 1]` for the cross-entropy loss (or float targets for
            regression when `config.num_labels == 1`).
        output_attentions, output_hidden_states (`bool`, *optional*):
            As in [`EVLModel.forward`].

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
        outputs = self.evl(pixel_values, return_dict=True, **kwargs)
        logits = self.compute_logits(outputs.pooler_output)
        loss = None if labels is None else self.loss_function(labels, logits, self.config, **kwargs)
        return EVLVideoClassifierOutput(loss=loss, logits=logits, **outputs)


__all__ = ["EVLPreTrainedModel", "EVLModel", "EVLForVideoClassification"]
