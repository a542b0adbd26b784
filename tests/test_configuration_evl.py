"""Specification of EVLConfig: a configuration builds a working model, or is refused at once naming the field."""

import json

import pytest
import torch
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from transformers import AutoConfig, CLIPVisionConfig

from evl_hf import EVLConfig, EVLForVideoClassification


TINY_VISION = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8
)

# A model is built and run for every valid draw: few examples, tiny shapes.
FAST = settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


BREAKABLE = (
    "hidden_size",
    "image_size",
    "decoder_num_layers",
    "decoder_num_heads",
    "num_frames",
    "decoder_mlp_ratio",
    "decoder_mlp_dropout",
    "classifier_dropout",
)
# Finite numbers only: non-finite ones are covered by `test_non_finite_decoder_mlp_ratio_is_refused_at_construction`.
finite = dict(allow_nan=False, allow_infinity=False)


@st.composite
def config_settings(draw):
    """
    Backbone and decoder settings around the tiny test backbone. Up to two fields are drawn from their impossible
    values (a width that the heads do not divide, an image that the patches do not tile, more decoder layers than
    encoder layers, ...), so that most draws are valid ones, which build and run a model.

    Returns:
        `tuple[dict, dict]`: `CLIPVisionConfig` arguments and `EVLConfig` arguments.
    """
    broken = set(draw(st.lists(st.sampled_from(BREAKABLE), max_size=2, unique=True)))

    num_attention_heads = draw(st.integers(1, 4))
    hidden_size = num_attention_heads * draw(st.integers(1, 8))
    if "hidden_size" in broken and num_attention_heads > 1:
        hidden_size += draw(st.integers(1, num_attention_heads - 1))
    patch_size = draw(st.sampled_from([4, 8]))
    image_size = patch_size * draw(st.integers(1, 4))
    if "image_size" in broken:
        image_size += draw(st.integers(1, patch_size - 1))
    num_hidden_layers = draw(st.integers(1, 3))
    vision = dict(
        hidden_size=hidden_size,
        intermediate_size=draw(st.integers(1, 64)),
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        image_size=image_size,
        patch_size=patch_size,
    )

    def pick(name, valid, invalid):
        return draw(invalid if name in broken else valid)

    divisors = [k for k in range(1, hidden_size + 1) if hidden_size % k == 0]
    non_divisors = [k for k in range(-1, hidden_size + 2) if k < 1 or hidden_size % k]
    probability = st.floats(0.0, 1.0, exclude_max=True)
    not_a_probability = st.floats(-0.5, 0.0, exclude_max=True, **finite) | st.floats(1.0, 1.5, **finite)
    decoder = dict(
        num_frames=pick("num_frames", st.integers(1, 4), st.integers(-1, 0)),
        decoder_num_layers=pick(
            "decoder_num_layers",
            st.integers(1, num_hidden_layers),
            st.sampled_from([0, num_hidden_layers + 1, num_hidden_layers + 2]),
        ),
        decoder_num_heads=pick(
            "decoder_num_heads", st.none() | st.sampled_from(divisors), st.sampled_from(non_divisors)
        ),
        decoder_mlp_ratio=pick(
            "decoder_mlp_ratio",
            st.floats(0.05, 4.0) | st.integers(1, 4),
            st.floats(-1.0, 0.0, **finite) | st.integers(-1, 0),
        ),
        decoder_mlp_dropout=pick("decoder_mlp_dropout", probability, not_a_probability),
        classifier_dropout=pick("classifier_dropout", probability, not_a_probability),
        use_temporal_conv=draw(st.booleans()),
        use_temporal_pos_embed=draw(st.booleans()),
        use_temporal_cross_attention=draw(st.booleans()),
    )
    return vision, decoder


def offending_fields(vision: dict, decoder: dict) -> set[str]:
    """The fields that make a configuration impossible, worked out independently of the library."""
    fields = set()
    if vision["hidden_size"] % vision["num_attention_heads"]:
        fields |= {"hidden_size", "num_attention_heads"}
    if vision["image_size"] % vision["patch_size"]:
        fields |= {"image_size", "patch_size"}
    if not 1 <= decoder["decoder_num_layers"] <= vision["num_hidden_layers"]:
        fields.add("decoder_num_layers")
    heads = decoder["decoder_num_heads"]
    if heads is not None and (heads < 1 or vision["hidden_size"] % heads):
        fields.add("decoder_num_heads")
    if decoder["num_frames"] < 1:
        fields.add("num_frames")
    if round(decoder["decoder_mlp_ratio"] * vision["hidden_size"]) < 1:
        fields.add("decoder_mlp_ratio")  # the decoder MLP would have no hidden unit
    for name in ("decoder_mlp_dropout", "classifier_dropout"):
        if not 0 <= decoder[name] < 1:
            fields.add(name)
    return fields


def names_a_field(message: str, fields: set[str]) -> bool:
    """Whether `message` names one of `fields`, as `hidden_size` or as `hidden size`."""
    message = message.lower()
    return any(field in message or field.replace("_", " ") in message for field in fields)


@FAST
@given(drawn=config_settings(), clip_length=st.integers(1, 3))
def test_a_config_either_builds_a_model_that_runs_or_is_refused_naming_the_field(drawn, clip_length):
    vision, decoder = drawn
    offending = offending_fields(vision, decoder)
    try:
        config = EVLConfig(vision_config=CLIPVisionConfig(**vision), num_labels=3, **decoder)
    except Exception as error:  # noqa: BLE001 - which exception type is part of what is being checked below
        event("refused")
        assert offending, f"a valid configuration was refused: {error}"
        assert names_a_field(str(error), offending), f"{error!r} names none of {sorted(offending)}"
        return
    assert not offending, f"accepted a configuration with impossible {sorted(offending)}"
    event("built and ran")

    model = EVLForVideoClassification(config).eval()  # must not fail once the config exists
    size = vision["image_size"]
    with torch.no_grad():
        logits = model(torch.randn(2, clip_length, 3, size, size)).logits
    assert logits.shape == (2, 3)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("ratio", [float("nan"), float("inf")])
def test_non_finite_decoder_mlp_ratio_is_refused_at_construction(ratio):
    with pytest.raises(Exception, match="decoder_mlp_ratio"):
        EVLConfig(vision_config=TINY_VISION, decoder_num_layers=2, decoder_mlp_ratio=ratio)


def test_negative_initializer_range_is_refused_at_construction():
    with pytest.raises(Exception, match="initializer_range"):
        EVLConfig(vision_config=TINY_VISION, decoder_num_layers=2, initializer_range=-1.0)


def test_non_square_image_size_builds_a_model_or_is_refused_at_construction():
    try:
        config = EVLConfig(vision_config={**TINY_VISION, "image_size": [32, 16]}, decoder_num_layers=2)
    except Exception as error:  # noqa: BLE001 - any exception naming the field is a refusal
        assert "image_size" in str(error)
        return
    EVLForVideoClassification(config)


@settings(max_examples=15, deadline=None, derandomize=True)
@given(drawn=config_settings())
def test_valid_configs_survive_a_dict_round_trip_unchanged(drawn):
    vision, decoder = drawn
    assume(not offending_fields(vision, decoder))
    config = EVLConfig(vision_config=CLIPVisionConfig(**vision), **decoder)
    restored = EVLConfig.from_dict(json.loads(config.to_json_string()))
    assert restored.to_dict() == config.to_dict()
    assert isinstance(restored.vision_config, CLIPVisionConfig)


def tiny_config(**overrides):
    values = dict(
        vision_config=CLIPVisionConfig(**TINY_VISION),
        num_frames=4,
        decoder_num_layers=2,
        id2label={0: "left", 1: "right", 2: "up"},
        label2id={"left": 0, "right": 1, "up": 2},
    )
    return EVLConfig(**{**values, **overrides})


def test_save_and_load_round_trip_keeps_every_value(tmp_path):
    config = tiny_config(decoder_mlp_ratio=2.0, classifier_dropout=0.1, use_temporal_conv=False, freeze_backbone=False)
    config.save_pretrained(tmp_path)
    loaded = EVLConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    assert loaded.id2label == {0: "left", 1: "right", 2: "up"}  # integer keys again after JSON
    assert loaded.vision_config.hidden_size == 32 and loaded.vision_config.patch_size == 8


def test_auto_config_loads_a_saved_evl_config(tmp_path):
    tiny_config().save_pretrained(tmp_path)
    assert type(AutoConfig.from_pretrained(tmp_path)) is EVLConfig


@pytest.mark.parametrize("vision_config", [CLIPVisionConfig(**TINY_VISION), TINY_VISION], ids=["config", "dict"])
def test_vision_config_is_a_clip_vision_config_whether_given_as_object_or_dict(vision_config):
    config = EVLConfig(vision_config=vision_config, decoder_num_layers=2)
    assert type(config.vision_config) is CLIPVisionConfig
    assert config.vision_config.hidden_size == 32


def test_vision_config_stays_a_clip_vision_config_after_loading(tmp_path):
    tiny_config().save_pretrained(tmp_path)
    assert type(EVLConfig.from_pretrained(tmp_path).vision_config) is CLIPVisionConfig


def test_default_backbone_is_clip_vit_b16_at_224():
    vision = EVLConfig().vision_config
    assert type(vision) is CLIPVisionConfig
    assert (vision.hidden_size, vision.num_hidden_layers, vision.num_attention_heads) == (768, 12, 12)
    assert (vision.patch_size, vision.image_size) == (16, 224)


def test_decoder_num_heads_defaults_to_the_backbones():
    assert tiny_config().decoder_num_heads == 2
    four_heads = EVLConfig(vision_config={**TINY_VISION, "num_attention_heads": 4}, decoder_num_layers=2)
    assert four_heads.decoder_num_heads == 4
    assert EVLConfig().decoder_num_heads == 12


def test_explicit_decoder_num_heads_is_kept_through_saving(tmp_path):
    config = tiny_config(decoder_num_heads=8)
    config.save_pretrained(tmp_path)
    assert EVLConfig.from_pretrained(tmp_path).decoder_num_heads == 8


def test_decoder_width_and_patch_grid_follow_the_backbone():
    config = tiny_config()
    assert config.hidden_size == 32
    assert config.spatial_size == (4, 4)


def test_an_impossible_config_json_is_refused_on_loading_naming_the_field(tmp_path):
    tiny_config().save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    values = json.loads(path.read_text())
    values["decoder_num_layers"] = 5  # the backbone has 2 layers
    path.write_text(json.dumps(values))
    with pytest.raises(Exception, match="decoder_num_layers=5"):
        EVLConfig.from_pretrained(tmp_path)


def test_a_non_clip_backbone_is_refused_asking_for_a_clip_vision_config():
    with pytest.raises(Exception, match="CLIPVisionConfig"):
        EVLConfig(vision_config={"model_type": "siglip_vision_model"})
