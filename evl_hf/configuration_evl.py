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
"""EVL model configuration."""

import math

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec


@strict
class EVLConfig(PreTrainedConfig):
    r"""
    Configuration of an EVL video classifier ("Frozen CLIP Models are Efficient Video Learners", Lin et al., ECCV
    2022): a frozen CLIP image encoder looks at every frame, and a small transformer decoder with one learnable query
    token reads the last `decoder_num_layers` encoder layers of all frames.

    Args:
        vision_config (`dict` or `CLIPVisionConfig`, *optional*):
            The CLIP vision tower. Defaults to ViT-B/16 at 224 px (`openai/clip-vit-base-patch16`).
        num_frames (`int`, *optional*, defaults to 8):
            Frames per clip. Sets the length of the temporal position embedding; clips of another length are
            accepted and the embedding is linearly interpolated.
        decoder_num_layers (`int`, *optional*, defaults to 4):
            Decoder layers M. Decoder layer `i` reads encoder layer `N - M + i` (shallow to deep).
        decoder_num_heads (`int`, *optional*):
            Attention heads of the decoder; defaults to the backbone's.
        decoder_mlp_ratio (`float`, *optional*, defaults to 4.0):
            Hidden size of the decoder MLP relative to the backbone width.
        decoder_mlp_dropout (`float`, *optional*, defaults to 0.5):
            Dropout inside the decoder MLP.
        classifier_dropout (`float`, *optional*, defaults to 0.5):
            Dropout before the classification layer.
        use_temporal_conv (`bool`, *optional*, defaults to `True`):
            Depthwise temporal convolution over the frame features of each decoder layer.
        use_temporal_pos_embed (`bool`, *optional*, defaults to `True`):
            Learned temporal position embedding added to the frame features.
        use_temporal_cross_attention (`bool`, *optional*, defaults to `True`):
            Temporal cross attention between adjacent frames, built from the frozen CLIP queries and keys.
        freeze_backbone (`bool`, *optional*, defaults to `True`):
            Keep the CLIP encoder frozen (no gradients, no activations kept). Also restored after `from_pretrained`.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation for weights without a specific initialisation.

    Example:

    ```python
    >>> from transformers import CLIPVisionConfig
    >>> from evl_hf import EVLConfig, EVLForVideoClassification

    >>> config = EVLConfig(vision_config=CLIPVisionConfig(patch_size=16), num_frames=8)
    >>> model = EVLForVideoClassification(config)
    ```"""

    model_type = "evl"
    # The classifier returns the pooled vector with the logits; the Trainer's predictions are the logits alone.
    keys_to_ignore_at_inference = ["pooler_output"]
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(
            config_class=AutoConfig,
            model_type="clip_vision_model",
            init_kwargs={"patch_size": 16, "image_size": 224},
        ),
    }

    vision_config: dict | PreTrainedConfig | None = None
    num_frames: int = 8
    decoder_num_layers: int = 4
    decoder_num_heads: int | None = None
    decoder_mlp_ratio: int | float = 4.0
    decoder_mlp_dropout: int | float = 0.5
    classifier_dropout: int | float = 0.5
    use_temporal_conv: bool = True
    use_temporal_pos_embed: bool = True
    use_temporal_cross_attention: bool = True
    freeze_backbone: bool = True
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.decoder_num_heads is None:
            self.decoder_num_heads = self.vision_config.num_attention_heads

    @property
    def hidden_size(self) -> int:
        """Width of the decoder, which is the width of the backbone."""
        return self.vision_config.hidden_size

    @property
    def spatial_size(self) -> tuple[int, int]:
        """Patch grid (height, width) of the backbone; CLIP images and patches are square."""
        return (self.vision_config.image_size // self.vision_config.patch_size,) * 2

    def validate_architecture(self):
        """Reject configurations that cannot build a model, saying which value to change."""
        vision = self.vision_config
        if vision.model_type != "clip_vision_model":
            raise ValueError(
                f"EVL needs a CLIP vision backbone, got a `{vision.model_type}` vision_config. Pass a CLIPVisionConfig "
                "(or build the model with `EVLForVideoClassification.from_clip_pretrained`)."
            )
        if not 1 <= self.decoder_num_layers <= vision.num_hidden_layers:
            raise ValueError(
                f"decoder_num_layers={self.decoder_num_layers} must be between 1 and the backbone's "
                f"num_hidden_layers={vision.num_hidden_layers}: each decoder layer reads one encoder layer."
            )
        if self.decoder_num_heads < 1 or vision.hidden_size % self.decoder_num_heads != 0:
            raise ValueError(
                f"decoder_num_heads={self.decoder_num_heads} must divide the backbone width "
                f"hidden_size={vision.hidden_size}; choose a divisor such as {vision.num_attention_heads}."
            )
        if self.num_frames < 1:
            raise ValueError(f"num_frames={self.num_frames} must be at least 1.")
        if not math.isfinite(self.decoder_mlp_ratio) or round(self.decoder_mlp_ratio * vision.hidden_size) < 1:
            raise ValueError(
                f"decoder_mlp_ratio={self.decoder_mlp_ratio} must be a finite positive number that leaves the decoder "
                f"MLP at least one unit wide (hidden_size={vision.hidden_size})."
            )
        for name in ("decoder_mlp_dropout", "classifier_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name}={getattr(self, name)} must be in [0, 1).")
        if not (math.isfinite(self.initializer_range) and self.initializer_range >= 0):
            raise ValueError(f"initializer_range={self.initializer_range} must be a finite number >= 0.")
        for name in ("image_size", "patch_size"):
            value = getattr(vision, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"The backbone's {name}={value!r} must be a positive int: CLIP vision models take square images "
                    "and patches."
                )
        if vision.image_size % vision.patch_size:
            raise ValueError(
                f"The backbone's image_size={vision.image_size} is not a multiple of its patch_size="
                f"{vision.patch_size}; the patch grid must tile the image exactly."
            )


__all__ = ["EVLConfig"]
