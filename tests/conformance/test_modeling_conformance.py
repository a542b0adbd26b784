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
"""transformers' ModelTesterMixin against EVLModel and EVLForVideoClassification (see conftest.py)."""

import copy
import unittest
from unittest import mock

import torch
from torch import nn
from transformers import CLIPVisionConfig
from transformers.models.auto.modeling_auto import MODEL_FOR_VIDEO_CLASSIFICATION_MAPPING_NAMES, MODEL_MAPPING_NAMES
from transformers.testing_utils import torch_device
from transformers_tests.test_modeling_common import ModelTesterMixin, floats_tensor, ids_tensor

from evl_hf import EVLConfig, EVLForVideoClassification, EVLModel


class EVLModelTester:
    """A tiny EVL: CLIP of width 32, 2 layers, 32 px images in 8 px patches (4x4 grid), 4-frame clips, the decoder
    reading both layers."""

    def __init__(
        self, parent, batch_size=3, num_frames=4, image_size=32, patch_size=8, num_channels=3, freeze_backbone=True
    ):
        self.parent = parent
        self.freeze_backbone = freeze_backbone
        self.batch_size = batch_size
        self.num_frames = num_frames
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_channels = num_channels
        self.hidden_size = 32
        self.intermediate_size = 37
        self.num_hidden_layers = 2
        self.num_attention_heads = 4
        self.num_labels = 5
        self.is_training = True
        # Per frame: the class token and the patches. `hidden_states` and `attentions` are per frame of the encoder
        # layers the decoder reads, which here are all of them.
        self.seq_length = 1 + (image_size // patch_size) ** 2
        self.expected_num_hidden_layers = self.num_hidden_layers
        # `output_hidden_states` adds the encoder layers read and the decoder's query states
        self.num_hidden_states_types = 2

    def get_config(self):
        vision_config = CLIPVisionConfig(
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            image_size=self.image_size,
            patch_size=self.patch_size,
            num_channels=self.num_channels,
        )
        return EVLConfig(
            vision_config=vision_config,
            num_frames=self.num_frames,
            decoder_num_layers=self.num_hidden_layers,
            freeze_backbone=self.freeze_backbone,
            decoder_mlp_dropout=0.1,
            classifier_dropout=0.1,
            id2label={i: f"label_{i}" for i in range(self.num_labels)},
            label2id={f"label_{i}": i for i in range(self.num_labels)},
        )

    def prepare_config_and_inputs(self):
        shape = [self.batch_size, self.num_frames, self.num_channels, self.image_size, self.image_size]
        pixel_values = floats_tensor(shape)
        labels = ids_tensor([self.batch_size], self.num_labels)
        return self.get_config(), pixel_values, labels

    def prepare_config_and_inputs_for_common(self):
        config, pixel_values, _ = self.prepare_config_and_inputs()
        return config, {"pixel_values": pixel_values}

    def create_and_check_model(self, config, pixel_values, labels):
        model = EVLModel(config).to(torch_device).eval()
        with torch.no_grad():
            result = model(pixel_values)
        self.parent.assertEqual(result.pooler_output.shape, (self.batch_size, self.hidden_size))

    def create_and_check_for_video_classification(self, config, pixel_values, labels):
        model = EVLForVideoClassification(config).to(torch_device).eval()
        with torch.no_grad():
            result = model(pixel_values, labels=labels)
        self.parent.assertEqual(result.logits.shape, (self.batch_size, self.num_labels))
        self.parent.assertEqual(result.loss.shape, ())


class EVLModelConformanceTest(ModelTesterMixin, unittest.TestCase):
    """EVL as it is used by default: the CLIP backbone frozen."""

    all_model_classes = (EVLModel, EVLForVideoClassification)
    # Video models have no token embeddings to resize.
    test_resize_embeddings = False
    # A composite model: a CLIP vision sub-model with its own sub-config
    _is_composite = True
    freeze_backbone = True

    def setUp(self):
        self.model_tester = EVLModelTester(self, freeze_backbone=self.freeze_backbone)
        # The suite tells base models from task heads (which take labels, and train) by transformers' own name
        # mappings; an in-tree EVL would be listed there, as it is here for the duration of each test.
        self.enterContext(mock.patch.dict(MODEL_MAPPING_NAMES, {"evl": "EVLModel"}))
        self.enterContext(
            mock.patch.dict(MODEL_FOR_VIDEO_CLASSIFICATION_MAPPING_NAMES, {"evl": "EVLForVideoClassification"})
        )

    def _prepare_config_and_inputs_for_retain_grad_hidden_states_attentions(self):
        # The attention maps are the frozen backbone's: they take part in the loss only when the backbone trains
        # (EVLUnfrozenModelConformanceTest). The hidden states carry gradients either way (tests/test_modeling_evl.py).
        config, inputs_dict = self.model_tester.prepare_config_and_inputs_for_common()
        config.freeze_backbone = False
        return config, inputs_dict

    def test_model(self):
        self.model_tester.create_and_check_model(*self.model_tester.prepare_config_and_inputs())

    def test_for_video_classification(self):
        self.model_tester.create_and_check_for_video_classification(*self.model_tester.prepare_config_and_inputs())

    def test_model_get_set_embeddings(self):
        # a vision model: its input embedding is the backbone's patch embedding, and it has no output embedding
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            model = model_class(copy.deepcopy(config))
            self.assertIsInstance(model.get_input_embeddings(), nn.Conv2d)
            self.assertIs(model.get_input_embeddings(), model.base_model.vision_model.embeddings.patch_embedding)
            self.assertIsNone(model.get_output_embeddings())


class EVLUnfrozenModelConformanceTest(EVLModelConformanceTest):
    """EVL fine-tuned end to end (`freeze_backbone=False`): gradients reach the backbone, its input embeddings included."""

    freeze_backbone = False
