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
"""transformers' ConfigTester against EVLConfig (see conftest.py)."""

import unittest

from transformers_tests.test_configuration_common import ConfigTester

from evl_hf import EVLConfig


class EVLConfigConformanceTest(unittest.TestCase):
    def setUp(self):
        # the default CLIP backbone: the tester compares every given kwarg with the saved JSON, which for a sub-config
        # also holds fields transformers adds (version, architectures)
        self.config_tester = ConfigTester(
            self,
            config_class=EVLConfig,
            has_text_modality=False,
            common_properties=["hidden_size", "num_frames"],
            num_frames=4,
            decoder_num_layers=2,
        )

    def test_config(self):
        self.config_tester.run_common_tests()
