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
"""Concurrent inference: many threads calling one model get exactly what sequential calls get."""

import threading

import torch

from evl_hf import EVLForVideoClassification
from evl_hf.testing_utils import random_clip as clip
from evl_hf.testing_utils import randomize_zero_initialised, tiny_config


def test_concurrent_calls_on_one_model_equal_sequential_calls():
    torch.manual_seed(0)
    model = randomize_zero_initialised(EVLForVideoClassification(tiny_config())).eval()
    num_threads, calls_per_thread = 8, 6
    # every call its own clip; even threads also ask for hidden states and attentions, which are recorded per call
    inputs = {
        (t, c): clip(batch_size=1 + (t + c) % 3, seed=100 * t + c)
        for t in range(num_threads)
        for c in range(calls_per_thread)
    }
    with_outputs = lambda t: t % 2 == 0
    with torch.no_grad():
        expected = {
            key: model(pixel_values, output_hidden_states=with_outputs(key[0]), output_attentions=with_outputs(key[0]))
            for key, pixel_values in inputs.items()
        }

    results, errors = {}, []
    start = threading.Barrier(num_threads)

    def work(t):
        try:
            start.wait()
            for c in range(calls_per_thread):
                with torch.no_grad():
                    results[t, c] = model(
                        inputs[t, c], output_hidden_states=with_outputs(t), output_attentions=with_outputs(t)
                    )
        except Exception as error:  # reported below with its thread
            errors.append((t, repr(error)))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(num_threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    for key, output in results.items():
        torch.testing.assert_close(output.logits, expected[key].logits, rtol=0, atol=0)
        if with_outputs(key[0]):
            assert len(output.hidden_states) == 2 and len(output.decoder_attentions) == 2
            for actual, wanted in zip(output.hidden_states, expected[key].hidden_states):
                torch.testing.assert_close(actual, wanted, rtol=0, atol=0)
        else:
            assert output.hidden_states is None and output.attentions is None
    assert len(results) == num_threads * calls_per_thread
