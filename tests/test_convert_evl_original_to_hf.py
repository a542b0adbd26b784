"""Conversion of official EVL checkpoints, laid out here with the official key names and shapes."""

import json

import pytest
import torch
from transformers import CLIPVisionConfig, CLIPVisionModel

from evl_hf import EVLForVideoClassification, EVLVideoProcessor
from evl_hf.convert_evl_original_to_hf import CheckpointMismatchError, convert, main, read_labels


WIDTH, GRID, LAYERS, FRAMES, CLASSES = 32, 4, 2, 4, 5


def official_state_dict(layers=LAYERS, frames=FRAMES, classes=CLASSES, width=WIDTH, grid=GRID, cross_attention=True):
    """What the official training script saves for a decoder on a `width`-wide backbone with a `grid`x`grid` patch grid."""
    generator = torch.Generator().manual_seed(0)

    def tensor(*shape):
        return torch.randn(shape, generator=generator)

    state = {"module.decoder.cls_token": tensor(width)}
    for i in range(layers):
        prefix = f"module.decoder.decoder_layers.{i}."
        for name in ("q", "k", "v", "out"):
            state[prefix + f"attn.{name}_proj.weight"] = tensor(width, width)
            state[prefix + f"attn.{name}_proj.bias"] = tensor(width)
        state[prefix + "mlp.fc1.weight"], state[prefix + "mlp.fc1.bias"] = tensor(4 * width, width), tensor(4 * width)
        state[prefix + "mlp.fc2.weight"], state[prefix + "mlp.fc2.bias"] = tensor(width, 4 * width), tensor(width)
        for norm in ("norm1", "norm2", "norm3"):
            state[prefix + f"{norm}.weight"], state[prefix + f"{norm}.bias"] = tensor(width), tensor(width)
        state[f"module.decoder.temporal_conv.{i}.weight"] = tensor(width, 1, 3)
        state[f"module.decoder.temporal_conv.{i}.bias"] = tensor(width)
        state[f"module.decoder.temporal_pos_embed.{i}"] = tensor(frames, width)
        if cross_attention:
            state[f"module.decoder.cross_attention.{i}.w1"] = tensor((2 * grid - 1) ** 2, width)
            state[f"module.decoder.cross_attention.{i}.w2"] = tensor((2 * grid - 1) ** 2, width)
    state["module.proj.0.weight"], state["module.proj.0.bias"] = tensor(width), tensor(width)
    state["module.proj.2.weight"], state["module.proj.2.bias"] = tensor(classes, width), tensor(classes)
    return state


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip")
    config = CLIPVisionConfig(
        hidden_size=WIDTH,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=2,
        image_size=8 * GRID,
        patch_size=8,
    )
    CLIPVisionModel(config).save_pretrained(folder)
    return folder


def save_checkpoint(path, state, wrapped=True):
    torch.save({"model": state, "optimizer": {"state": {}}, "next_step": 50000} if wrapped else state, path)
    return path


@pytest.mark.parametrize("wrapped", [True, False])
def test_every_official_tensor_lands_in_its_evl_parameter(tmp_path, clip_folder, wrapped):
    state = official_state_dict()
    model, _, _ = convert(save_checkpoint(tmp_path / "ckpt.pth", state, wrapped), str(clip_folder), num_frames=FRAMES)
    converted = model.state_dict()
    expected_pairs = {
        "module.decoder.cls_token": "evl.decoder.query_token",
        "module.decoder.decoder_layers.1.attn.k_proj.weight": "evl.decoder.layers.1.attn.k_proj.weight",
        "module.decoder.decoder_layers.0.attn.out_proj.bias": "evl.decoder.layers.0.attn.out_proj.bias",
        "module.decoder.decoder_layers.1.mlp.fc2.weight": "evl.decoder.layers.1.mlp.fc2.weight",
        "module.decoder.decoder_layers.0.norm3.weight": "evl.decoder.layers.0.layer_norm3.weight",
        "module.decoder.temporal_conv.1.weight": "evl.decoder.layers.1.temporal_conv.weight",
        "module.decoder.temporal_pos_embed.0": "evl.decoder.layers.0.temporal_pos_embed",
        "module.decoder.cross_attention.1.w1": "evl.decoder.layers.1.temporal_cross_attention.w_fwd",
        "module.decoder.cross_attention.0.w2": "evl.decoder.layers.0.temporal_cross_attention.w_bwd",
        "module.proj.0.bias": "fc_norm.bias",
        "module.proj.2.weight": "classifier.weight",
    }
    for official, ours in expected_pairs.items():
        assert torch.equal(converted[ours], state[official]), official
    assert model.config.decoder_num_layers == LAYERS and model.config.num_labels == CLASSES
    backbone = CLIPVisionModel.from_pretrained(clip_folder).state_dict()
    assert torch.equal(
        converted["evl.vision_model.encoder.layers.2.mlp.fc1.weight"], backbone["encoder.layers.2.mlp.fc1.weight"]
    )


def test_temporal_switches_are_inferred_from_the_keys(tmp_path, clip_folder):
    path = save_checkpoint(tmp_path / "ckpt.pth", official_state_dict(cross_attention=False))
    model, _, _ = convert(path, str(clip_folder), num_frames=FRAMES)
    assert model.config.use_temporal_cross_attention is False and model.config.use_temporal_conv is True


def test_stray_keys_are_listed(tmp_path, clip_folder):
    state = official_state_dict()
    state["module.decoder.extra_gate"] = torch.zeros(3)
    with pytest.raises(CheckpointMismatchError, match="decoder.extra_gate"):
        convert(save_checkpoint(tmp_path / "ckpt.pth", state), str(clip_folder), num_frames=FRAMES)


def test_a_checkpoint_for_another_backbone_lists_the_shapes_that_differ(tmp_path, clip_folder):
    path = save_checkpoint(tmp_path / "ckpt.pth", official_state_dict(grid=GRID + 1))
    with pytest.raises(CheckpointMismatchError, match="temporal_cross_attention.w_fwd: checkpoint"):
        convert(path, str(clip_folder), num_frames=FRAMES)


def test_wrong_frame_count_is_refused(tmp_path, clip_folder):
    with pytest.raises(CheckpointMismatchError, match="trained for 4 frames"):
        convert(save_checkpoint(tmp_path / "ckpt.pth", official_state_dict()), str(clip_folder), num_frames=16)


def test_labels_file_must_match_the_head(tmp_path, clip_folder):
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps(["a", "b"]))
    with pytest.raises(CheckpointMismatchError, match="names 2 classes but the checkpoint's head has 5"):
        convert(save_checkpoint(tmp_path / "ckpt.pth", official_state_dict()), str(clip_folder), FRAMES, labels)


def test_command_line_writes_a_loadable_folder_with_labels_and_processors(tmp_path, clip_folder):
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps(["abseiling", "air drumming", "applauding", "archery", "bartending"]))
    checkpoint = save_checkpoint(tmp_path / "ckpt.pth", official_state_dict())
    output = tmp_path / "converted"
    main(
        [
            "--checkpoint",
            str(checkpoint),
            "--clip_model",
            str(clip_folder),
            "--num_frames",
            str(FRAMES),
            "--output_dir",
            str(output),
            "--labels_file",
            str(labels),
        ]
    )
    assert {"model.safetensors", "config.json", "video_preprocessor_config.json", "preprocessor_config.json"} <= {
        path.name for path in output.iterdir()
    }
    model = EVLForVideoClassification.from_pretrained(output)
    assert model.config.id2label[1] == "air drumming" and model.config.label2id["archery"] == 3
    processor = EVLVideoProcessor.from_pretrained(output)
    assert processor.num_frames == FRAMES and processor.crop_size["height"] == 8 * GRID


def test_a_file_that_is_not_a_state_dict_is_refused(tmp_path, clip_folder):
    path = tmp_path / "not_a_checkpoint.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointMismatchError, match="neither a state dict"):
        convert(path, str(clip_folder), num_frames=FRAMES)


def test_a_missing_checkpoint_raises_file_not_found(tmp_path, clip_folder):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        convert(tmp_path / "nowhere.pth", str(clip_folder), num_frames=FRAMES)


def test_command_line_reports_a_mismatch_without_a_traceback(tmp_path, clip_folder, capsys):
    checkpoint = save_checkpoint(tmp_path / "ckpt.pth", official_state_dict())
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "--checkpoint",
                str(checkpoint),
                "--clip_model",
                str(clip_folder),
                "--num_frames",
                "16",
                "--output_dir",
                str(tmp_path / "out"),
            ]
        )
    assert exit_info.value.code == 2
    assert "trained for 4 frames" in capsys.readouterr().err


def test_decoder_layers_must_be_consecutive(tmp_path, clip_folder):
    state = {k.replace("decoder_layers.0.", "decoder_layers.2."): v for k, v in official_state_dict().items()}
    with pytest.raises(CheckpointMismatchError, match=r"decoder layers are \[1, 2\]"):
        convert(save_checkpoint(tmp_path / "ckpt.pth", state), str(clip_folder), num_frames=FRAMES)


def test_labels_object_must_be_keyed_by_index(tmp_path, clip_folder):
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({name: i for i, name in enumerate("abcde")}))
    with pytest.raises(CheckpointMismatchError, match="JSON list of class names"):
        convert(save_checkpoint(tmp_path / "ckpt.pth", official_state_dict()), str(clip_folder), FRAMES, labels)


def test_a_text_labels_file_names_one_class_a_line_as_training_reads_it(tmp_path):
    names = ["abseiling", "air drumming", "applauding", "archery", "bartending"]
    text = tmp_path / "names.txt"
    text.write_text("abseiling\nair drumming\n applauding \narchery\nbartending\n\n")
    official = tmp_path / "k400_class_mappings.json"
    official.write_text(json.dumps(names))
    assert read_labels(text, CLASSES) == read_labels(official, CLASSES) == dict(enumerate(names))


def test_a_blank_line_between_text_labels_is_refused(tmp_path):
    text = tmp_path / "names.txt"
    text.write_text("a\nb\n\nc\nd\ne\n")
    with pytest.raises(CheckpointMismatchError, match="names.txt has a blank line between class names"):
        read_labels(text, CLASSES)


@pytest.mark.parametrize("suffix", [".txt", ".json"])
def test_a_class_named_twice_is_refused(tmp_path, suffix):
    labels = tmp_path / f"labels{suffix}"
    names = ["a", "b", "a", "c", "d"]
    labels.write_text(json.dumps(names) if suffix == ".json" else "\n".join(names))
    with pytest.raises(CheckpointMismatchError, match=r"names \['a'\] more than once"):
        read_labels(labels, CLASSES)


def test_a_labels_file_that_is_not_json_says_to_name_a_text_one_txt(tmp_path):
    labels = tmp_path / "labels.json"
    labels.write_text("a\nb\nc\nd\ne\n")
    with pytest.raises(CheckpointMismatchError, match=r"labels.json is not JSON .*name it .txt"):
        read_labels(labels, CLASSES)


def test_command_line_reports_a_backbone_with_too_few_layers_without_a_traceback(tmp_path, clip_folder, capsys):
    # four decoder layers cannot each read one of the three encoder layers
    checkpoint = save_checkpoint(tmp_path / "ckpt.pth", official_state_dict(layers=4))
    with pytest.raises(SystemExit) as exit_info:
        main(
            ["--checkpoint", str(checkpoint), "--clip_model", str(clip_folder), "--output_dir", str(tmp_path / "out")]
        )
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("error: The checkpoint has 4 decoder layers") and "only 3 encoder layers" in error
    assert "Traceback" not in error
