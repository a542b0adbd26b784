"""The command tests share the tiny model and videos of `evl_hf.testing_utils` and the fixtures of tests/conftest.py."""

from evl_hf.testing_utils import LABELS, encode_video, save_tiny_model  # noqa: F401
