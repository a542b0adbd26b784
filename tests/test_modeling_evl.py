"""Specification of EVLForVideoClassification: shapes, loss, freezing, loading, the temporal modules, bad inputs."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import AutoModelForVideoClassification, CLIPConfig, CLIPModel, CLIPVisionConfig

from evl_hf import EVLForVideoClassification, EVLModel
from evl_hf.modeling_evl import EVLDecoderAttention, EVLTemporalCrossAttention
from evl_hf.testing_utils import random_clip as clip
from evl_hf.testing_utils import randomize_zero_initialised, tiny_config, tiny_vision_config


@pytest.fixture
def model():
    torch.manual_seed(0)
    return randomize_zero_initialised(EVLForVideoClassification(tiny_config())).eval()


def test_logits_have_one_row_per_clip_and_one_column_per_label(model):
    assert model(clip()).logits.shape == (2, 3)


def test_loss_is_cross_entropy_of_the_logits(model):
    labels = torch.tensor([0, 2])
    outputs = model(clip(), labels=labels)
    assert torch.allclose(outputs.loss, torch.nn.functional.cross_entropy(outputs.logits, labels))


def test_gradients_reach_only_the_decoder_and_head(model):
    model.train()
    model(clip(), labels=torch.tensor([0, 1])).loss.backward()
    for name, parameter in model.named_parameters():
        if name.startswith("evl.vision_model."):
            assert parameter.grad is None and not parameter.requires_grad, name
        else:
            assert parameter.grad is not None, name


def test_frozen_backbone_keeps_no_autograd_graph(model):
    outputs = model.evl(clip(), output_hidden_states=True)
    # the features start the graph: nothing of the backbone is recorded behind them
    assert all(hidden.grad_fn is None for hidden in outputs.hidden_states)
    assert outputs.pooler_output.requires_grad


def test_hidden_states_carry_the_gradient_of_the_features_the_decoder_consumes_with_a_frozen_backbone(model):
    outputs = model(clip(), output_hidden_states=True)
    for hidden in outputs.hidden_states:
        hidden.retain_grad()
    outputs.logits[:, 1].sum().backward()
    assert all(hidden.grad is not None and hidden.grad.abs().sum() > 0 for hidden in outputs.hidden_states)
    # the gradient at the features equals the one through the decoder alone, given the same features as inputs
    features = [hidden.detach().clone().requires_grad_() for hidden in outputs.hidden_states]
    with torch.no_grad():
        frame_features = model.evl.get_frame_features(clip().flatten(0, 1))
    unfold = lambda tensors: [t.unflatten(0, (2, 4)) for t in tensors]
    query = model.evl.decoder(features, unfold(frame_features.queries), unfold(frame_features.keys)).last_hidden_state
    model.classifier(model.dropout(model.fc_norm(query)))[:, 1].sum().backward()
    for hidden, feature in zip(outputs.hidden_states, features):
        assert torch.allclose(hidden.grad, feature.grad, atol=1e-6)


def test_unfreeze_backbone_trains_it_and_freeze_restores(model):
    model.unfreeze_backbone()
    model(clip(), labels=torch.tensor([0, 1])).loss.backward()
    assert model.evl.vision_model.encoder.layers[0].mlp.fc1.weight.grad is not None
    assert model.config.freeze_backbone is False
    model.freeze_backbone()
    assert not any(p.requires_grad for p in model.evl.vision_model.parameters())


def test_save_and_reload_gives_equal_logits_and_a_frozen_backbone(model, tmp_path):
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    reloaded = EVLForVideoClassification.from_pretrained(tmp_path).eval()
    assert torch.allclose(model(clip()).logits, reloaded(clip()).logits, atol=1e-6)
    assert not any(p.requires_grad for p in reloaded.evl.vision_model.parameters())
    assert all(p.requires_grad for p in reloaded.evl.decoder.parameters())
    assert reloaded.config.id2label == {0: "left", 1: "right", 2: "up"}


def test_unfrozen_model_reloads_unfrozen(model, tmp_path):
    model.unfreeze_backbone()
    model.save_pretrained(tmp_path)
    reloaded = EVLForVideoClassification.from_pretrained(tmp_path)
    assert reloaded.evl.vision_model.encoder.layers[0].self_attn.q_proj.weight.requires_grad


def test_every_trainable_parameter_gets_a_gradient_when_the_backbone_is_unfrozen(model):
    # distributed data parallel fails on trainable parameters that take no part in the loss
    model.unfreeze_backbone()
    model.train()
    model(clip(), labels=torch.tensor([0, 1])).loss.backward()
    unused = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert unused == []


def test_half_precision_loading_keeps_the_decoder_and_head_in_fp32(model, tmp_path):
    model.save_pretrained(tmp_path)
    loaded = EVLForVideoClassification.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert loaded.evl.vision_model.encoder.layers[0].mlp.fc1.weight.dtype == torch.bfloat16
    assert loaded.evl.decoder.layers[0].attn.q_proj.weight.dtype == torch.float32
    assert loaded.classifier.weight.dtype == torch.float32
    logits = loaded.eval()(clip()).logits
    assert logits.dtype == torch.float32
    assert torch.allclose(logits, model(clip()).logits, atol=0.1)


def test_auto_class_loads_a_saved_model(model, tmp_path):
    model.save_pretrained(tmp_path)
    loaded = AutoModelForVideoClassification.from_pretrained(tmp_path)
    assert isinstance(loaded, EVLForVideoClassification)


def test_new_model_starts_with_zero_temporal_tables_and_query():
    model = EVLForVideoClassification(tiny_config())
    layer = model.evl.decoder.layers[0]
    assert torch.count_nonzero(layer.temporal_cross_attention.w_fwd) == 0
    assert torch.count_nonzero(layer.temporal_pos_embed) == 0
    assert torch.count_nonzero(model.evl.decoder.query_token) == 0
    assert layer.mlp.fc1.bias.abs().max() < 1e-4 and layer.mlp.fc1.bias.abs().max() > 0
    assert torch.count_nonzero(layer.attn.q_proj.bias) == 0


def direct_temporal_cross_attention(queries, keys, w_fwd, w_bwd, spatial_size):
    """The formulation of the paper, one patch pair at a time: slow and obviously right."""
    height, width = spatial_size
    batch_size, num_frames, num_tokens, heads, head_dim = queries.shape
    output = torch.zeros(batch_size, num_frames, num_tokens, w_fwd.shape[1], dtype=w_fwd.dtype)

    def half(query_frame, key_frame, table):
        q, k = query_frame[:, 1:], key_frame[:, 1:]  # (batch, patches, heads, head_dim)
        scores = torch.einsum("bphd,brhd->bhpr", q, k) / head_dim**0.5
        attention = scores.softmax(dim=-1).mean(dim=1)  # (batch, patches, patches)
        result = torch.zeros(batch_size, height * width, table.shape[1], dtype=table.dtype)
        for p in range(height * width):
            for r in range(height * width):
                row, col = p // width - r // width + height - 1, p % width - r % width + width - 1
                result[:, p] += attention[:, p, r, None] * table[row * (2 * width - 1) + col]
        return result

    for t in range(num_frames):
        if t > 0:
            output[:, t, 1:] += half(queries[:, t], keys[:, t - 1], w_fwd)
        if t < num_frames - 1:
            output[:, t, 1:] += half(queries[:, t], keys[:, t + 1], w_bwd)
    return output


@pytest.mark.parametrize("spatial_size", [(3, 3), (2, 4)])
def test_temporal_cross_attention_matches_the_direct_formulation_forward_and_backward(spatial_size):
    height, width = spatial_size
    module = EVLTemporalCrossAttention(tiny_config())
    # CLIP grids are square; the module itself takes any grid, and a rectangular one tells rows from columns.
    module.spatial_size = spatial_size
    generator = torch.Generator().manual_seed(1)
    num_offsets = (2 * height - 1) * (2 * width - 1)
    module.w_fwd = torch.nn.Parameter(torch.randn(num_offsets, 32, generator=generator))
    module.w_bwd = torch.nn.Parameter(torch.randn(num_offsets, 32, generator=generator))
    shape = (2, 3, 1 + height * width, 2, 16)
    queries = torch.randn(shape, generator=generator, requires_grad=True)
    keys = torch.randn(shape, generator=generator, requires_grad=True)
    weight = torch.randn(2, 3, 1 + height * width, 32, generator=generator)

    fast = module(queries, keys)
    (fast * weight).sum().backward()
    fast_grads = [module.w_fwd.grad, module.w_bwd.grad, queries.grad, keys.grad]

    w_fwd = module.w_fwd.detach().clone().requires_grad_()
    w_bwd = module.w_bwd.detach().clone().requires_grad_()
    queries2, keys2 = queries.detach().clone().requires_grad_(), keys.detach().clone().requires_grad_()
    slow = direct_temporal_cross_attention(queries2, keys2, w_fwd, w_bwd, spatial_size)
    (slow * weight).sum().backward()

    assert torch.allclose(fast, slow, atol=1e-5)
    for fast_grad, slow_grad in zip(fast_grads, [w_fwd.grad, w_bwd.grad, queries2.grad, keys2.grad]):
        assert torch.allclose(fast_grad, slow_grad, atol=1e-5)
    assert torch.count_nonzero(fast[:, :, 0]) == 0  # the class token gets nothing


def test_temporal_cross_attention_is_an_identity_at_initialisation():
    config = tiny_config()
    model = EVLForVideoClassification(config).eval()
    switched_off = EVLForVideoClassification(tiny_config(use_temporal_cross_attention=False)).eval()
    state = {k: v for k, v in model.state_dict().items() if "temporal_cross_attention" not in k}
    switched_off.load_state_dict(state)
    assert torch.allclose(model(clip()).logits, switched_off(clip()).logits, atol=1e-6)


def test_decoder_attention_equals_standard_multi_head_attention():
    config = tiny_config()
    attention = EVLDecoderAttention(config)
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for parameter in attention.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    reference = torch.nn.MultiheadAttention(32, 2, batch_first=True)
    with torch.no_grad():
        reference.in_proj_weight.copy_(
            torch.cat([attention.q_proj.weight, attention.k_proj.weight, attention.v_proj.weight])
        )
        reference.in_proj_bias.copy_(torch.cat([attention.q_proj.bias, attention.k_proj.bias, attention.v_proj.bias]))
        reference.out_proj.load_state_dict(attention.out_proj.state_dict())
    query, context = torch.randn(3, 32, generator=generator), torch.randn(3, 50, 32, generator=generator)
    expected, expected_weights = reference(query[:, None], context, context, average_attn_weights=False)
    output, weights = attention(query, context)
    assert torch.allclose(output, expected[:, 0], atol=1e-5)
    assert torch.allclose(weights, expected_weights, atol=1e-6)  # (batch, heads, 1, sequence)


def test_every_decoder_parameter_gets_a_gradient_for_distributed_training(model):
    model.train()
    model(clip(), labels=torch.tensor([0, 1])).loss.backward()
    assert model.evl.decoder.layers[0].attn.k_proj.bias.grad is not None


@pytest.mark.parametrize("num_frames", [1, 3, 8])
def test_clips_of_another_length_use_an_interpolated_position_embedding(model, num_frames):
    logits = model(clip(num_frames=num_frames)).logits
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()


def test_interpolated_position_embedding_keeps_a_constant_table_constant(model):
    layer = model.evl.decoder.layers[0]
    with torch.no_grad():
        layer.temporal_pos_embed.copy_(torch.arange(32.0).expand(4, 32))
    assert torch.allclose(layer._temporal_pos_embed(7), torch.arange(32.0).expand(7, 32))


def test_position_embedding_at_the_trained_length_is_the_table_exactly(model):
    layer = model.evl.decoder.layers[0]
    with torch.no_grad():
        layer.temporal_pos_embed.normal_()
    assert torch.equal(layer._temporal_pos_embed(layer.temporal_pos_embed.shape[0]), layer.temporal_pos_embed)


def test_hidden_states_are_the_encoder_layers_the_decoder_reads(model):
    outputs = model(clip(), output_hidden_states=True)
    assert len(outputs.hidden_states) == 2
    assert outputs.hidden_states[0].shape == (2, 4, 17, 32)
    frames = clip().flatten(0, 1)
    expected = model.evl.vision_model(frames, output_hidden_states=True).hidden_states[-1]
    assert torch.allclose(outputs.hidden_states[-1].flatten(0, 1), expected, atol=1e-5)


def test_classifier_output_carries_the_base_models_pooled_vector_and_the_logits_of_it(model):
    outputs = model(clip())
    assert outputs.pooler_output.shape == (2, 32)
    assert torch.equal(outputs.pooler_output, model.evl(clip()).pooler_output)
    assert torch.equal(outputs.logits, model.compute_logits(outputs.pooler_output))


def test_return_dict_false_gives_the_fields_in_order_loss_logits_pooler_output_then_the_recorded_ones(model):
    labels = torch.tensor([0, 1])
    outputs = model(clip(), labels=labels, output_hidden_states=True)
    assert list(outputs.keys()) == ["loss", "logits", "pooler_output", "hidden_states", "decoder_hidden_states"]
    as_tuple = model(clip(), labels=labels, output_hidden_states=True, return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 5
    for value, expected in zip(as_tuple, outputs.values()):
        torch.testing.assert_close(value, expected, rtol=0, atol=0)
    # without labels the logits come first, as in transformers' classifier outputs
    logits, pooler_output = model(clip(), return_dict=False)
    assert logits.shape == (2, 3) and torch.equal(pooler_output, outputs.pooler_output)


def test_config_return_dict_false_gives_tuples_and_leaves_the_inner_calls_working(model):
    model.config.return_dict = False
    logits, pooler_output = model(clip())
    assert torch.equal(pooler_output, model.evl(clip(), return_dict=True).pooler_output)
    features = model.evl.get_frame_features(clip().flatten(0, 1))
    pooled, decoder_hidden_states = model.evl.decode_frame_features(features, num_frames=4)
    assert torch.equal(pooled, pooler_output) and len(decoder_hidden_states) == 3


def test_models_loaded_with_eager_and_sdpa_attention_agree(tmp_path, model):
    model.save_pretrained(tmp_path)
    loaded = {
        implementation: EVLForVideoClassification.from_pretrained(tmp_path, attn_implementation=implementation).eval()
        for implementation in ("eager", "sdpa")
    }
    for implementation, other in loaded.items():
        assert other.evl.vision_model.config._attn_implementation == implementation
    assert torch.allclose(loaded["eager"](clip()).logits, loaded["sdpa"](clip()).logits, atol=1e-5)


@pytest.mark.parametrize("patch_size,image_size", [(8, 32), (4, 28), (16, 48)])
def test_any_patch_grid_works(patch_size, image_size):
    config = tiny_config(vision_config=tiny_vision_config(patch_size=patch_size, image_size=image_size))
    model = EVLForVideoClassification(config)
    assert model(clip(size=image_size)).logits.shape == (2, 3)


def test_activation_checkpointing_gives_the_same_gradients(model):
    model.train()
    model.config.decoder_mlp_dropout = 0.0
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    model(clip(), labels=torch.tensor([0, 1])).loss.backward()
    expected = model.evl.decoder.layers[0].temporal_cross_attention.w_fwd.grad.clone()
    model.zero_grad()
    model.activation_checkpointing_enable()
    model(clip(), labels=torch.tensor([0, 1])).loss.backward()
    assert torch.allclose(model.evl.decoder.layers[0].temporal_cross_attention.w_fwd.grad, expected, atol=1e-6)


def test_torch_compile_gives_the_same_logits(model):
    compiled = torch.compile(model, backend="eager")
    assert torch.allclose(compiled(clip()).logits, model(clip()).logits, atol=1e-5)


def test_base_model_returns_one_vector_per_clip():
    model = EVLModel(tiny_config())
    assert model(clip()).pooler_output.shape == (2, 32)


@pytest.mark.parametrize(
    "shape,message",
    [
        ((4, 3, 32, 32), "add a batch dimension"),
        ((2, 3, 4, 32, 32), "transpose"),
        ((2, 4, 1, 32, 32), "3 channels"),
        ((2, 4, 3, 30, 32), "patch grid"),
    ],
)
def test_wrong_pixel_values_shape_raises_a_value_error_stating_the_expected_shape(model, shape, message):
    with pytest.raises(ValueError, match=message) as error:
        model(torch.zeros(shape))
    assert "(batch_size, num_frames, 3, 32, 32)" in str(error.value)


@pytest.mark.parametrize(
    "overrides,message",
    [
        (dict(decoder_num_layers=4), "decoder_num_layers=4 must be between 1 and"),
        (dict(decoder_num_heads=3), "must divide the backbone width"),
        (dict(num_frames=0), "num_frames=0"),
        (dict(classifier_dropout=1.0), r"classifier_dropout=1.0 must be in \[0, 1\)"),
        (dict(vision_config=tiny_vision_config(image_size=30)), "not a multiple of its patch_size"),
        (dict(vision_config=tiny_vision_config(patch_size=0)), "patch_size=0 must be a positive int"),
        (dict(decoder_mlp_ratio=float("nan")), "decoder_mlp_ratio=nan must be a finite positive number"),
        (dict(decoder_mlp_ratio=0.01), "at least one unit wide"),
        (dict(initializer_range=-1.0), "initializer_range=-1.0"),
    ],
)
def test_impossible_configs_fail_at_construction_saying_what_to_change(overrides, message):
    with pytest.raises(Exception, match=message):
        tiny_config(**overrides)


def test_decoder_heads_default_to_the_backbones():
    assert tiny_config().decoder_num_heads == 2


def write_clip_checkpoint(folder, full_clip):
    vision = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2, image_size=32, patch_size=8
    )
    torch.manual_seed(3)
    if full_clip:
        text = dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            vocab_size=99,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
        model = CLIPModel(CLIPConfig(vision_config=vision, text_config=text))
        vision_model = model.vision_model
    else:
        from transformers import CLIPVisionModel

        model = vision_model = CLIPVisionModel(CLIPVisionConfig(**vision))
    model.save_pretrained(folder)
    return vision_model


@pytest.mark.parametrize("full_clip", [True, False])
def test_from_clip_pretrained_takes_the_vision_tower_of_clip_checkpoints(tmp_path, full_clip):
    vision_model = write_clip_checkpoint(tmp_path, full_clip)
    model = EVLForVideoClassification.from_clip_pretrained(tmp_path, num_frames=2, decoder_num_layers=2, num_labels=5)
    for name, parameter in vision_model.state_dict().items():
        assert torch.equal(model.evl.vision_model.state_dict()[name], parameter), name
    assert model.config.num_frames == 2 and model.config.num_labels == 5
    assert not any(p.requires_grad for p in model.evl.vision_model.parameters())
    assert model(clip(num_frames=2)).logits.shape == (2, 5)


def test_from_clip_pretrained_applies_dtype_to_the_backbone_only(tmp_path):
    write_clip_checkpoint(tmp_path, full_clip=False)
    model = EVLForVideoClassification.from_clip_pretrained(tmp_path, dtype=torch.bfloat16, decoder_num_layers=2)
    assert model.evl.vision_model.embeddings.patch_embedding.weight.dtype == torch.bfloat16
    assert model.classifier.weight.dtype == torch.float32
    assert model(clip()).logits.dtype == torch.float32


def test_saved_folder_loads_with_trust_remote_code_where_evl_hf_is_missing(model, tmp_path):
    model.save_pretrained(tmp_path / "model")
    assert (tmp_path / "model" / "modeling_evl.py").exists()
    expected = model(clip()).logits
    torch.save(expected, tmp_path / "expected.pt")
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["evl_hf"] = None  # any `import evl_hf` now fails
        try:
            import evl_hf
        except ImportError:
            pass
        else:
            raise SystemExit("evl_hf is importable")
        import torch
        from transformers import AutoModelForVideoClassification
        model = AutoModelForVideoClassification.from_pretrained({str(tmp_path / "model")!r}, trust_remote_code=True)
        model.eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        assert not any(p.requires_grad for p in model.evl.vision_model.parameters())
        pixel_values = torch.randn(2, 4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        expected = torch.load({str(tmp_path / "expected.pt")!r}, weights_only=True)
        assert torch.allclose(model(pixel_values).logits, expected, atol=1e-6)
        print("remote code ok")
        """
    )
    env = dict(os.environ, HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "remote code ok" in result.stdout


def clip_initialisation_stds(vision_model):
    """The standard deviations CLIP's own initialisation gives a layer's attention and MLP weights."""
    config = vision_model.config
    width, layers, factor = config.hidden_size, config.num_hidden_layers, config.initializer_factor
    return {
        "self_attn.q_proj": width**-0.5 * (2 * layers) ** -0.5 * factor,
        "self_attn.out_proj": width**-0.5 * factor,
        "mlp.fc1": (2 * width) ** -0.5 * factor,
        "mlp.fc2": width**-0.5 * (2 * layers) ** -0.5 * factor,
    }


def assert_clip_initialisation(model):
    vision_model = model.evl.vision_model
    # wide enough that the sample standard deviation tells N(0, 0.02) from CLIP's rules
    for name, std in clip_initialisation_stds(vision_model).items():
        weights = torch.cat([layer.get_submodule(name).weight.flatten() for layer in vision_model.encoder.layers])
        assert abs(weights.std().item() - std) < 0.1 * std, (name, weights.std().item(), std)


def wide_config():
    return tiny_config(vision_config=tiny_vision_config(hidden_size=256, intermediate_size=512, num_attention_heads=4))


def test_backbone_gets_clip_initialisation_when_built_directly():
    torch.manual_seed(0)
    assert_clip_initialisation(EVLForVideoClassification(wide_config()))


def test_backbone_gets_clip_initialisation_when_loaded_without_backbone_weights(tmp_path):
    torch.manual_seed(0)
    model = EVLForVideoClassification(wide_config())
    # a decoder-only checkpoint, like the official ones
    decoder_only = {k: v for k, v in model.state_dict().items() if not k.startswith("evl.vision_model.")}
    model.save_pretrained(tmp_path, state_dict=decoder_only)
    assert_clip_initialisation(EVLForVideoClassification.from_pretrained(tmp_path))
    assert_clip_initialisation(EVLForVideoClassification.from_pretrained(None, config=model.config, state_dict={}))


@pytest.mark.parametrize("attn_implementation,start", [("eager", "sdpa"), ("sdpa", "eager")])
def test_set_attn_implementation_reaches_the_backbone_and_keeps_the_logits(model, attn_implementation, start):
    model.set_attn_implementation(start)
    assert model.evl.vision_model.config._attn_implementation == start
    expected = model(clip()).logits
    model.set_attn_implementation(attn_implementation)
    assert model.config._attn_implementation == attn_implementation
    assert model.evl.vision_model.config._attn_implementation == attn_implementation
    assert torch.allclose(model(clip()).logits, expected, atol=1e-5)


def test_eager_and_sdpa_give_equal_logits(model):
    model.set_attn_implementation("eager")
    eager = model(clip()).logits
    model.set_attn_implementation("sdpa")
    assert torch.allclose(model(clip()).logits, eager, atol=1e-5)


def test_input_embeddings_are_the_backbone_patch_embedding(model):
    assert model.get_input_embeddings() is model.evl.vision_model.embeddings.patch_embedding
    assert model.evl.get_input_embeddings() is model.evl.vision_model.embeddings.patch_embedding


def test_decoder_and_head_are_created_in_fp32_under_a_half_precision_default_dtype():
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float16)
    try:
        model = EVLForVideoClassification(tiny_config())
    finally:
        torch.set_default_dtype(default)
    assert model.evl.vision_model.encoder.layers[0].mlp.fc1.weight.dtype == torch.float16
    head_and_decoder = [p for n, p in model.named_parameters() if not n.startswith("evl.vision_model.")]
    assert {p.dtype for p in head_and_decoder} == {torch.float32}


def test_output_attentions_gives_the_backbone_maps_and_the_decoder_weights(model):
    model.set_attn_implementation("eager")
    outputs = model(clip(), output_attentions=True)
    assert len(outputs.attentions) == 2 and outputs.attentions[0].shape == (2 * 4, 2, 17, 17)
    assert len(outputs.decoder_attentions) == 2 and outputs.decoder_attentions[0].shape == (2, 2, 1, 4 * 17)
    assert torch.allclose(outputs.decoder_attentions[0].sum(-1), torch.ones(2, 2, 1))
    # the maps are those of the encoder layers the decoder reads (the last two of three)
    frames = clip().flatten(0, 1)
    expected = model.evl.vision_model(frames, output_attentions=True).attentions[-1]
    assert torch.allclose(outputs.attentions[-1], expected, atol=1e-6)


def test_unfreeze_backbone_leaves_the_unused_final_layer_norm_frozen(model, tmp_path):
    model.unfreeze_backbone()
    assert not model.evl.vision_model.post_layernorm.weight.requires_grad
    model.save_pretrained(tmp_path)
    reloaded = EVLForVideoClassification.from_pretrained(tmp_path)
    assert reloaded.evl.vision_model.encoder.layers[-1].mlp.fc2.weight.requires_grad
    assert not reloaded.evl.vision_model.post_layernorm.weight.requires_grad


@pytest.mark.parametrize("num_frames", [2, 8])
def test_from_pretrained_with_another_num_frames_interpolates_the_trained_position_embedding(
    model, tmp_path, num_frames
):
    model.save_pretrained(tmp_path)
    loaded = EVLForVideoClassification.from_pretrained(tmp_path, num_frames=num_frames).eval()
    assert loaded.config.num_frames == num_frames
    for trained, layer in zip(model.evl.decoder.layers, loaded.evl.decoder.layers):
        assert layer.temporal_pos_embed.shape == (num_frames, 32)
        assert torch.equal(layer.temporal_pos_embed, trained._temporal_pos_embed(num_frames))
        assert layer.temporal_pos_embed.abs().sum() > 0
    # on a clip of the new length, the loaded model equals the original one interpolating on the fly
    pixel_values = clip(num_frames=num_frames)
    assert torch.allclose(loaded(pixel_values).logits, model(pixel_values).logits, atol=1e-6)
    # and it saves and reloads at its new length
    loaded.save_pretrained(tmp_path / "again")
    assert EVLForVideoClassification.from_pretrained(tmp_path / "again").config.num_frames == num_frames


def test_decoder_hidden_states_are_the_query_before_and_after_each_decoder_layer(model):
    outputs = model(clip(), output_hidden_states=True)
    states = outputs.decoder_hidden_states
    assert len(states) == 3 and all(state.shape == (2, 32) for state in states)
    assert torch.equal(states[0], model.evl.decoder.query_token.expand(2, -1))
    assert torch.equal(states[-1], outputs.pooler_output)
    features = model.evl.get_frame_features(clip().flatten(0, 1))
    for index, layer in enumerate(model.evl.decoder.layers):
        queries, keys = (tensors[index].unflatten(0, (2, 4)) for tensors in (features.queries, features.keys))
        expected = layer(states[index], outputs.hidden_states[index], queries, keys)
        torch.testing.assert_close(states[index + 1], expected, rtol=0, atol=1e-6)


def test_decoder_attentions_are_the_weights_each_decoder_attention_computed(model):
    computed = []
    for layer in model.evl.decoder.layers:
        layer.attn.register_forward_hook(lambda module, args, output: computed.append(output[1]))
    outputs = model(clip(), output_attentions=True)
    assert len(outputs.decoder_attentions) == 2
    assert all(recorded is weights for recorded, weights in zip(outputs.decoder_attentions, computed))


def test_config_output_flags_turn_every_output_on_and_an_explicit_flag_wins(model):
    model.set_attn_implementation("eager")
    model.config.output_attentions = model.config.output_hidden_states = True
    outputs = model(clip())
    recorded = ("hidden_states", "attentions", "decoder_hidden_states", "decoder_attentions")
    lengths = {name: len(outputs[name]) for name in recorded}
    assert lengths == {"hidden_states": 2, "attentions": 2, "decoder_hidden_states": 3, "decoder_attentions": 2}
    outputs = model(clip(), output_attentions=False, output_hidden_states=False)
    assert all(outputs.get(name) is None for name in recorded)


def test_recorded_outputs_are_per_call_and_absent_when_not_asked_for(model):
    assert model(clip(), output_hidden_states=True, output_attentions=True).decoder_attentions is not None
    outputs = model(clip())
    assert list(outputs.keys()) == ["logits", "pooler_output"]
