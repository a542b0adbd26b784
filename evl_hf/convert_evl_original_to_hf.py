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
"""Convert an official EVL checkpoint (decoder and head only) plus a CLIP checkpoint into an evl_hf model folder.

    python -m evl_hf.convert_evl_original_to_hf --checkpoint k400_vitb16_8f_dec4x768.pth \\
        --clip_model openai/clip-vit-base-patch16 --num_frames 8 --output_dir evl-vitb16-8f-k400 \\
        --labels_file k400_class_mappings.json

The official checkpoints hold the decoder and the head (keys such as `module.decoder.decoder_layers.0.attn.q_proj.
weight`); the backbone comes from a Transformers CLIP checkpoint. Decoder depth and temporal modules are read from the
keys, frames and classes from the shapes.
"""

import argparse
import json
import os
import re
from collections import Counter
from pathlib import Path

import torch
from transformers import AutoConfig

from .image_processing_evl import EVLImageProcessor
from .modeling_evl import EVLForVideoClassification
from .video_processing_evl import EVLVideoProcessor


# official key (after the `module.` prefix) -> evl_hf key; `{i}` is the decoder layer
KEY_MAPPING = {
    r"decoder\.cls_token": "evl.decoder.query_token",
    r"decoder\.decoder_layers\.(\d+)\.attn\.(q|k|v|out)_proj\.(weight|bias)": r"evl.decoder.layers.\1.attn.\2_proj.\3",
    r"decoder\.decoder_layers\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)": r"evl.decoder.layers.\1.mlp.\2.\3",
    r"decoder\.decoder_layers\.(\d+)\.norm([123])\.(weight|bias)": r"evl.decoder.layers.\1.layer_norm\2.\3",
    r"decoder\.temporal_conv\.(\d+)\.(weight|bias)": r"evl.decoder.layers.\1.temporal_conv.\2",
    r"decoder\.temporal_pos_embed\.(\d+)": r"evl.decoder.layers.\1.temporal_pos_embed",
    r"decoder\.cross_attention\.(\d+)\.w1": r"evl.decoder.layers.\1.temporal_cross_attention.w_fwd",
    r"decoder\.cross_attention\.(\d+)\.w2": r"evl.decoder.layers.\1.temporal_cross_attention.w_bwd",
    r"proj\.0\.(weight|bias)": r"fc_norm.\1",
    r"proj\.2\.(weight|bias)": r"classifier.\1",
}


class CheckpointMismatchError(ValueError):
    """The official checkpoint does not fit the CLIP backbone or the options given."""


def load_original_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict, without `module.`, of an official checkpoint (`{"model": state_dict, ...}` or a bare state
    dict) in a `.pth` (loaded with `weights_only=True`) or `.safetensors` file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {path} does not exist or is not a file.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        checkpoint = load_file(path)
    else:
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise CheckpointMismatchError(
                f"Could not read {path} as a PyTorch checkpoint with weights_only=True ({error}). Only tensors, "
                "dicts and plain values are accepted."
            ) from error
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("model"), dict):
        checkpoint = checkpoint["model"]
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise CheckpointMismatchError(
            f"{path} holds neither a state dict nor a dict with a 'model' state dict (found "
            f"{type(checkpoint).__name__})."
        )
    return {key.removeprefix("module."): value for key, value in checkpoint.items()}


def convert_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename every official key to its evl_hf name; raise listing the keys that have no counterpart."""
    converted, strays = {}, []
    for key, value in state_dict.items():
        for pattern, replacement in KEY_MAPPING.items():
            if re.fullmatch(pattern, key):
                converted[re.sub(pattern, replacement, key)] = value
                break
        else:
            strays.append(key)
    if strays:
        raise CheckpointMismatchError(
            f"{len(strays)} checkpoint key(s) have no counterpart in EVL: {', '.join(sorted(strays))}. Is this an "
            "official EVL checkpoint (decoder and head, keys like 'module.decoder.decoder_layers.0.attn.q_proj.weight')?"
        )
    return converted


def infer_config_kwargs(state_dict: dict[str, torch.Tensor]) -> dict:
    """Decoder depth, temporal-module switches, frames and classes, read from an official state dict."""
    layers = {int(m.group(1)) for key in state_dict if (m := re.match(r"decoder\.decoder_layers\.(\d+)\.", key))}
    if not layers:
        raise CheckpointMismatchError("The checkpoint has no 'decoder.decoder_layers.*' keys: no decoder to convert.")
    if "proj.2.weight" not in state_dict:
        raise CheckpointMismatchError("The checkpoint has no classification head ('proj.2.weight').")
    kwargs = {
        "decoder_num_layers": max(layers) + 1,
        "use_temporal_conv": any(key.startswith("decoder.temporal_conv.") for key in state_dict),
        "use_temporal_pos_embed": any(key.startswith("decoder.temporal_pos_embed.") for key in state_dict),
        "use_temporal_cross_attention": any(key.startswith("decoder.cross_attention.") for key in state_dict),
        "num_labels": state_dict["proj.2.weight"].shape[0],
    }
    if layers != set(range(kwargs["decoder_num_layers"])):
        raise CheckpointMismatchError(
            f"The checkpoint's decoder layers are {sorted(layers)}; expected consecutive layers from 0."
        )
    if (fc1 := state_dict.get("decoder.decoder_layers.0.mlp.fc1.weight")) is not None:
        kwargs["decoder_mlp_ratio"] = fc1.shape[0] / fc1.shape[1]  # without it, `convert` reports the missing key
    if kwargs["use_temporal_pos_embed"]:
        kwargs["num_frames"] = state_dict["decoder.temporal_pos_embed.0"].shape[0]
    return kwargs


def read_labels(labels_file: str | os.PathLike, num_labels: int) -> dict[int, str]:
    """
    The class names of `labels_file` by index. A `.json` file holds a list of names in index order (as the official
    `k400_class_mappings.json`) or an object mapping the indices `"0"`, `"1"`, ... to names; any other file is text
    with one name a line, line i naming index i (the `--label_names_file` of the training script).
    """
    text = Path(labels_file).read_text(encoding="utf-8")
    if Path(labels_file).suffix.lower() != ".json":
        labels = [name.strip() for name in text.strip().splitlines()]
        if "" in labels:
            raise CheckpointMismatchError(
                f"{labels_file} has a blank line between class names; write one name a line, line i naming index i."
            )
    else:
        try:
            labels = json.loads(text)
        except json.JSONDecodeError as error:
            raise CheckpointMismatchError(
                f"{labels_file} is not JSON ({error}); name it .txt if it holds one class name a line."
            ) from None
        if isinstance(labels, dict):
            if set(labels) != {str(index) for index in range(len(labels))}:
                raise CheckpointMismatchError(
                    f"{labels_file} must be a JSON list of class names in index order, or an object whose keys are "
                    f"the indices '0' to '{len(labels) - 1}'."
                )
            labels = [labels[str(index)] for index in range(len(labels))]
        if not isinstance(labels, list) or not all(isinstance(name, str) for name in labels):
            raise CheckpointMismatchError(
                f"{labels_file} must be a JSON list of class names (strings) in index order."
            )
    if len(labels) != num_labels:
        raise CheckpointMismatchError(
            f"{labels_file} names {len(labels)} classes but the checkpoint's head has {num_labels}."
        )
    if repeated := sorted(name for name, count in Counter(labels).items() if count > 1):
        raise CheckpointMismatchError(
            f"{labels_file} names {repeated[:5]} more than once; every class needs its name."
        )
    return dict(enumerate(labels))


def convert(
    checkpoint: str | os.PathLike,
    clip_model: str,
    num_frames: int | None = None,
    labels_file: str | os.PathLike | None = None,
    decoder_num_heads: int | None = None,
) -> tuple[EVLForVideoClassification, EVLVideoProcessor, EVLImageProcessor]:
    """Build the evl_hf model and its processors from an official checkpoint and a CLIP checkpoint."""
    original = load_original_state_dict(checkpoint)
    converted = convert_state_dict(original)  # stray keys are reported before any CLIP weights are loaded
    inferred = infer_config_kwargs(original)
    if num_frames is not None and inferred.setdefault("num_frames", num_frames) != num_frames:
        raise CheckpointMismatchError(
            f"--num_frames {num_frames} does not match the checkpoint's temporal position embedding, which was "
            f"trained for {inferred['num_frames']} frames."
        )
    if "num_frames" not in inferred:
        raise CheckpointMismatchError("The checkpoint has no temporal position embedding: pass --num_frames.")
    if labels_file:  # otherwise the config names the `num_labels` classes LABEL_0, LABEL_1, ...
        id2label = read_labels(labels_file, inferred.pop("num_labels"))
        inferred.update(id2label=id2label, label2id={name: i for i, name in id2label.items()})

    vision_config = AutoConfig.from_pretrained(clip_model)
    vision_config = getattr(vision_config, "vision_config", vision_config)  # a full CLIPModel, or its vision tower
    if inferred["decoder_num_layers"] > vision_config.num_hidden_layers:
        raise CheckpointMismatchError(
            f"The checkpoint has {inferred['decoder_num_layers']} decoder layers, each reading one encoder layer, but "
            f"{clip_model} has only {vision_config.num_hidden_layers} encoder layers. Check that --clip_model is the "
            "backbone the checkpoint was trained with."
        )
    model = EVLForVideoClassification.from_clip_pretrained(clip_model, decoder_num_heads=decoder_num_heads, **inferred)
    expected = {
        key: value.shape for key, value in model.state_dict().items() if not key.startswith("evl.vision_model.")
    }
    mismatched = [
        f"{key}: checkpoint {tuple(value.shape)}, model {tuple(expected[key])}"
        for key, value in converted.items()
        if key in expected and value.shape != expected[key]
    ]
    missing = sorted(set(expected) - set(converted))
    if mismatched or missing:
        raise CheckpointMismatchError(
            f"The checkpoint does not fit a decoder on {clip_model}"
            + (f"; shapes differ: {'; '.join(mismatched)}" if mismatched else "")
            + (f"; missing: {', '.join(missing)}" if missing else "")
            + ". Check that --clip_model is the backbone the checkpoint was trained with (ViT-B/16: "
            "openai/clip-vit-base-patch16, ViT-L/14: openai/clip-vit-large-patch14, ViT-L/14@336: "
            "openai/clip-vit-large-patch14-336)."
        )
    model.load_state_dict(converted, strict=False)
    model.eval()

    image_size = model.config.vision_config.image_size
    processor_kwargs = dict(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})
    num_frames = model.config.num_frames
    # the paper's sampling: 8 and 16 frames every 16th frame, 32 frames every 8th
    video_processor = EVLVideoProcessor(
        num_frames=num_frames, frame_stride=8 if num_frames >= 32 else 16, **processor_kwargs
    )
    return model, video_processor, EVLImageProcessor(**processor_kwargs)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="Official EVL checkpoint (.pth or .safetensors).")
    parser.add_argument("--clip_model", required=True, help="CLIP checkpoint (Hub id or folder) of the backbone.")
    parser.add_argument("--num_frames", type=int, help="Frames per clip the checkpoint was trained with.")
    parser.add_argument("--output_dir", required=True, help="Folder to write the model and processors to.")
    parser.add_argument(
        "--labels_file",
        help="Class names in index order: text with one name a line, or a JSON list (or object keyed by index).",
    )
    parser.add_argument("--decoder_num_heads", type=int, help="Decoder heads, when not the backbone's (rare).")
    parser.add_argument("--push_to_hub", metavar="REPO_ID", help="Also upload the folder to this Hub repository.")
    args = parser.parse_args(argv)

    try:
        model, video_processor, image_processor = convert(
            args.checkpoint, args.clip_model, args.num_frames, args.labels_file, args.decoder_num_heads
        )
    except (CheckpointMismatchError, FileNotFoundError) as error:
        parser.exit(2, f"error: {error}\n")
    for artefact in (model, video_processor, image_processor):
        artefact.save_pretrained(args.output_dir)
    print(
        f"Saved EVL ({model.config.decoder_num_layers} decoder layers, {model.config.num_frames} frames, "
        f"{model.config.num_labels} classes) to {args.output_dir}"
    )
    if args.push_to_hub:
        for artefact in (model, video_processor, image_processor):
            artefact.push_to_hub(args.push_to_hub)
        print(f"Uploaded to https://huggingface.co/{args.push_to_hub}")


if __name__ == "__main__":
    main()
