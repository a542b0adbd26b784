# The README's commands. `make train` and `make test` install everything they need first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.evl-hf-installed
DOCS_STAMP := $(VENV)/.evl-hf-docs-installed

.PHONY: install browser train test style quality test-slow test-all test-gpu test-conformance test-docs docs benchmark benchmark-docs clean

install: $(STAMP)

# FFmpeg's shared libraries are needed by torchcodec; the Python stack comes from setup.cfg.
$(STAMP): setup.cfg pyproject.toml
	@command -v ffmpeg >/dev/null 2>&1 || { \
		echo "FFmpeg not found: installing it with apt-get (torchcodec needs its libraries)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"  # the library, the `train` extra and the test tools
	touch $(STAMP)

# The main job on its embedded default: a generated video dataset and a small CLIP built from a config.
train: $(STAMP)
	$(BIN)/accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
		examples/run_video_classification.py $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" $(ARGS)

# The formatter and linter, configured in pyproject.toml as transformers configures them (119 columns).
style: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

quality: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Chromium and its driver, for the browser test of `evl-hf demo` (tests/commands/test_demo.py).
browser:
	@command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || { \
		echo "Chromium or chromedriver not found: installing them with apt-get (the demo's browser test needs them)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; }

# pytest exits 5 when nothing is marked slow: that is not a failure.
test-slow: $(STAMP) browser
	$(BIN)/python -m pytest -m slow $(ARGS) || [ $$? -eq 5 ]

test-all: $(STAMP) browser
	$(BIN)/python -m pytest $(ARGS)

# The checks that need a CUDA device (tests marked `gpu`, tests/test_gpu.py); on a machine without one, a clear skip.
test-gpu: $(STAMP)
	@if $(BIN)/python -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then \
		$(BIN)/python -m pytest -m gpu tests/test_gpu.py -v -rs $(ARGS); \
	else \
		echo "no GPU found, skipped: make test-gpu needs a CUDA device (torch.cuda.is_available() is False here)"; \
	fi

# transformers' own common suites (model, config, video and image processors) run against EVL. They come from the
# source distribution of the installed transformers, fetched with pip into ~/.cache/evl_hf/conformance (or
# $$EVL_HF_CONFORMANCE_CACHE), never into the repository.
test-conformance: $(STAMP)
	EVL_HF_CONFORMANCE=1 $(BIN)/python -m pytest tests/conformance $(ARGS)

# The `docs` extra (mkdocs, mkdocstrings, pytest-markdown-docs) on top of `make install`'s venv.
$(DOCS_STAMP): $(STAMP) setup.cfg
	$(BIN)/python -m pip install --quiet -e ".[dev,docs]"
	touch $(DOCS_STAMP)

# Every ```python block of README.md, DEVELOPMENT.md and docs/*.md, run in page order against a tiny CLIP saved under
# the Hub ids the pages use (conftest.py), then the pages' other checks: figures quoted once, shell commands that parse.
test-docs: $(DOCS_STAMP)
	$(BIN)/python -m pytest --markdown-docs README.md DEVELOPMENT.md docs/ $(ARGS)
	$(BIN)/python -m pytest tests/test_docs.py $(ARGS)

# The guides and the API reference generated from the docstrings, into site/; any warning fails the build.
docs: $(DOCS_STAMP)
	$(BIN)/mkdocs build --strict

# One suite of `python -m benchmarks --list` into docs/benchmark_results, e.g. `make benchmark SUITE=cpu_models
# ARGS="--repeats 3"`; without SUITE, the list. Then `make benchmark-docs` renders docs/benchmarks.md from the JSON.
benchmark: $(STAMP)
	$(BIN)/python -m benchmarks $(if $(SUITE),$(SUITE) --output docs/benchmark_results $(ARGS),--list)

benchmark-docs: $(STAMP)
	$(BIN)/python -m benchmarks.docs

clean:
	rm -rf $(VENV) build dist site *.egg-info .pytest_cache
