# d2lbn: `make book` builds the rendered book, `make test` runs every test. Both start from nothing:
# they create .venv with Python 3.8-3.11 (mxnet 1.9.1 needs numpy<1.24, which needs Python <= 3.11).
# tools/make_venv.sh picks $(PYTHON) if given, else the first 3.8-3.11 on PATH, else provisions
# Python 3.11 with uv (where python3 is 3.12 or 3.13); see README, "Which Python".
SHELL := /bin/bash
PYTHON ?=
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: book test site-test unit notebooks build-book lab bench clean test-numpy126
.PHONY: test-gpu test-frameworks

$(STAMP): requirements.txt pyproject.toml
	PYTHON='$(PYTHON)' tools/make_venv.sh $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

# Build the rendered book (HTML, warnings as errors) from the notebooks' stored outputs. --all: every
# page is re-read, so no warning hides in a cached page and numbering follows the current _toc.yml.
book: $(STAMP)
	$(BIN)/jupyter-book build . --all --warningiserror --keep-going
	@echo "Open _build/html/index.html"

# Every test: d2lbn's unit tests, nbval over every notebook, the strict book build, then the built
# site's tests. D2LBN_QUICK=1 makes the training chapters run short (see README); the book keeps full runs.
# First the data: tools/ensure_data.sh finds Fashion-MNIST, or installs Debian's dataset-fashion-mnist
# (root or passwordless sudo), or downloads it with d2lbn, or stops with a message saying how.
test: $(STAMP)
	tools/ensure_data.sh $(BIN)/python
	$(BIN)/python -m pytest tests -q --ignore=tests/site
	D2LBN_QUICK=1 $(BIN)/python -m pytest --nbval-lax book -q
	$(MAKE) book
	$(MAKE) site-test

# The built book (_build/html): internal links and anchors, launch buttons, chapter structure, and a
# headless-Chromium pass over every page (console, figures, math, navigation; screenshots in
# _build/screenshots). Installs Debian's chromium when it is missing (tools/ensure_chromium.sh).
site-test: $(STAMP)
	tools/ensure_chromium.sh
	D2LBN_REQUIRE_SITE=1 $(BIN)/python -m pytest tests/site -q

lab: $(STAMP)
	$(BIN)/jupyter lab book

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_norm.py

# The unit tests again under NumPy 1.26, the NumPy of the Colab route (README, "Which Python"): same
# requirements with numpy>=1.26,<2, in their own venv (kept and reused; CI runs this after make test).
# This tier also has ONNX Runtime (ch12): every onnxruntime wheel for Python 3.11 needs numpy>=1.24.2,
# so it cannot join .venv; tests/test_onnx_runtime.py runs here and skips in .venv.
VENV126 ?= .venv-numpy126
$(VENV126)/.installed: requirements.txt pyproject.toml
	PYTHON='$(PYTHON)' tools/make_venv.sh $(VENV126)
	sed -E 's/^numpy([<>=!~ ].*)?$$/numpy>=1.26,<2/' requirements.txt > $(VENV126)/requirements.txt
	echo 'onnxruntime==1.16.3' >> $(VENV126)/requirements.txt
	$(VENV126)/bin/pip install -q -r $(VENV126)/requirements.txt
	$(VENV126)/bin/pip install -q --no-deps -e .
	touch $@

test-numpy126: $(VENV126)/.installed
	tools/ensure_data.sh $(VENV126)/bin/python
	$(VENV126)/bin/python -c 'import numpy; assert numpy.__version__.startswith("1.26"), numpy.__version__'
	$(VENV126)/bin/python -m pytest tests -q --ignore=tests/site --ignore=tests/test_python_choice.py -p no:cacheprovider

# The frameworks tier (issue 27; not part of make test or make book, whose .venv it never touches):
# the real PyTorch and TensorFlow/Keras, CPU builds, beside mxnet 1.9.1 and numpy 1.23 in their own
# venv (.venv-frameworks, kept and reused; requirements-frameworks.txt says which versions and why),
# then tests/frameworks/: d2lbn's layers against torch.nn.BatchNorm1d/2d, Keras's BatchNormalization
# and TF1's tf.compat.v1.layers, the three non-MXNet seeds, and the MXNet -> PyTorch -> MXNet porting.
# Measured here (2 shared cores): the venv is 2.7 GB; a fresh build took 2 min 21 s (load ~2)
# and 12 min 39 s with other developers' notebooks running (load ~12; 103 s of CPU time either way);
# make test-frameworks from a fresh clone, build and 52 tests, 5 min 17 s (load ~8, pip cache warm).
# (TensorFlow 0.9 GB of it, PyTorch 0.75 GB, the book's own requirements 0.74 GB as in .venv, the rest
# TensorFlow's dependencies).
# FRAMEWORKS_PIP_ARGS: extra pip arguments (where PyTorch's CPU wheel is not on disk, its index).
# FRAMEWORKS_NOTEBOOK: the appendix run by nbval in this venv once it exists (skipped until then).
VENVFW ?= .venv-frameworks
FRAMEWORKS_PIP_ARGS ?=
FRAMEWORKS_NOTEBOOK ?= book/appendix_frameworks.ipynb
$(VENVFW)/.installed: requirements-frameworks.txt requirements.txt pyproject.toml
	PYTHON='$(PYTHON)' tools/make_venv.sh $(VENVFW)
	$(VENVFW)/bin/pip install -q -r requirements-frameworks.txt $(FRAMEWORKS_PIP_ARGS)
	$(VENVFW)/bin/pip install -q --no-deps -e .
	touch $@

test-frameworks: $(VENVFW)/.installed
	tools/ensure_data.sh $(VENVFW)/bin/python
	$(VENVFW)/bin/python -m pytest tests/frameworks -q -p no:cacheprovider
	@if [ -f $(FRAMEWORKS_NOTEBOOK) ]; then \
	  echo "D2LBN_QUICK=1 nbval $(FRAMEWORKS_NOTEBOOK)"; \
	  D2LBN_QUICK=1 $(VENVFW)/bin/python -m pytest --nbval-lax $(FRAMEWORKS_NOTEBOOK) -q -p no:cacheprovider; \
	else \
	  echo "nbval skipped: $(FRAMEWORKS_NOTEBOOK) does not exist yet"; \
	fi

# The GPU tier (not part of make test): when nvidia-smi shows a GPU, builds .venv-gpu with the CUDA
# build of mxnet 1.9.1 for the driver and runs the tests marked gpu (tests/gpu); without a GPU it says
# why it skipped and exits 0. Any python3 runs tools/gpu_tier.py (standard library only).
test-gpu:
	python3 tools/gpu_tier.py

clean:
	rm -rf _build .pytest_cache
