"""The backbone's in-place QuickGELU: CLIP's activation bit for bit, in place only where autograd is not recording."""

import pytest
import torch
from transformers import CLIPVisionModel
from transformers.activations import QuickGELUActivation

from evl_hf import EVLForVideoClassification
from evl_hf.modeling_evl import EVLQuickGELUActivation
from evl_hf.testing_utils import random_clip as clip
from evl_hf.testing_utils import tiny_config


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_in_place_quick_gelu_equals_the_stock_one_bit_for_bit(dtype):
    hidden = torch.randn(3, 50, 256, generator=torch.Generator().manual_seed(0)).to(dtype) * 4
    expected = QuickGELUActivation()(hidden)
    with torch.no_grad():
        result = EVLQuickGELUActivation()(hidden.clone())
    assert torch.equal(result, expected)


def test_in_place_quick_gelu_leaves_its_input_alone_while_autograd_records():
    hidden = torch.randn(4, 8, requires_grad=True)
    before = hidden.detach().clone()
    output = EVLQuickGELUActivation()(hidden)
    output.sum().backward()
    assert torch.equal(hidden.detach(), before)
    reference = before.clone().requires_grad_(True)
    QuickGELUActivation()(reference).sum().backward()
    assert torch.equal(hidden.grad, reference.grad)


def test_backbone_features_equal_the_stock_clip_encoder_outputs():
    torch.manual_seed(0)
    model = EVLForVideoClassification(tiny_config()).eval()
    assert all(
        isinstance(layer.mlp.activation_fn, EVLQuickGELUActivation) for layer in model.evl.vision_model.encoder.layers
    )
    stock = CLIPVisionModel(model.config.vision_config).eval()
    stock.load_state_dict(model.evl.vision_model.state_dict())
    frames = clip().flatten(0, 1)
    with torch.no_grad():
        expected = stock(pixel_values=frames, output_hidden_states=True).hidden_states
        features = model.evl.get_frame_features(frames)
    for read, layer_output in zip(features.hidden_states, expected[-model.config.decoder_num_layers :]):
        assert torch.equal(read, layer_output)
