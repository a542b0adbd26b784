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
"""torch.export of EVLForVideoClassification: the whole model is captured and gives the eager outputs."""

import warnings

import pytest
import torch

from evl_hf import EVLForVideoClassification
from evl_hf.testing_utils import random_clip as clip
from evl_hf.testing_utils import randomize_zero_initialised, tiny_config


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return randomize_zero_initialised(EVLForVideoClassification(tiny_config())).eval()


def export(model, dynamic):
    dimensions = {0: torch.export.Dim("batch_size", min=1, max=64), 1: torch.export.Dim("num_frames", min=3, max=64)}
    dynamic_shapes = {"pixel_values": dimensions} if dynamic else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        program = torch.export.export(model, (clip(),), dynamic_shapes=dynamic_shapes)
    return program, [str(warning.message) for warning in caught]


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic-batch-and-frames"])
def test_exported_program_gives_the_eager_logits_without_warnings(model, dynamic):
    program, messages = export(model, dynamic)
    assert messages == []
    # the program holds the whole model: backbone, decoder (temporal tables included) and head
    targets = {spec.target for spec in program.graph_signature.input_specs if spec.target}
    assert {"evl.vision_model.embeddings.patch_embedding.weight", "classifier.weight"} <= targets
    assert "evl.decoder.layers.1.temporal_cross_attention.w_bwd" in targets
    exported = program.module()
    shapes = [(2, 4), (3, 4), (1, 4), (2, 3), (1, 16)] if dynamic else [(2, 4)]
    for batch_size, num_frames in shapes:
        pixel_values = clip(batch_size=batch_size, num_frames=num_frames, seed=batch_size)
        with torch.no_grad():
            expected = model(pixel_values).logits
            actual = exported(pixel_values).logits
        torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5)


def test_export_is_not_taken_for_a_multimodal_language_model(model):
    # transformers' export helpers split encoder + language-model pairs into separate programs; EVL is one model
    from transformers.exporters.utils import is_multimodal

    assert model.get_decoder() is None and model.evl.get_decoder() is None
    assert not is_multimodal(model) and not is_multimodal(model.evl)
