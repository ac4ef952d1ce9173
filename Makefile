# d2lbn: `make book` builds the rendered book, `make test` runs every test. Both start from nothing:
# they create .venv with Python 3.11 (mxnet 1.9.1 needs numpy<1.24, which needs Python <= 3.11).
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: book test site-test unit notebooks build-book lab bench clean

$(STAMP): requirements.txt pyproject.toml
	@$(PYTHON) -c 'import sys; v = sys.version_info; sys.exit(0 if (3, 8) <= v[:2] <= (3, 11) else \
	  "d2lbn needs Python 3.8-3.11 (mxnet 1.9.1 needs numpy<1.24); got %d.%d. Try: make PYTHON=python3.11" % v[:2])'
	$(PYTHON) -m venv $(VENV)
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
test: $(STAMP)
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

clean:
	rm -rf _build .pytest_cache
