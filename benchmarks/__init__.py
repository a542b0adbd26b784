"""The benchmarks of evl_hf, one harness for every suite: `python -m benchmarks --list`."""
