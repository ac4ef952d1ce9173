# d2lbn: `make book` builds the rendered book, `make test` runs every test. Both start from nothing:
# they create .venv with Python 3.11 (mxnet 1.9.1 needs numpy<1.24, which needs Python <= 3.11).
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: book test unit notebooks build-book lab bench clean

$(STAMP): requirements.txt pyproject.toml
	@$(PYTHON) -c 'import sys; v = sys.version_info; sys.exit(0 if (3, 8) <= v[:2] <= (3, 11) else \
	  "d2lbn needs Python 3.8-3.11 (mxnet 1.9.1 needs numpy<1.24); got %d.%d. Try: make PYTHON=python3.11" % v[:2])'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

# Build the rendered book (HTML, warnings as errors) from the notebooks' stored outputs.
book: $(STAMP)
	$(BIN)/jupyter-book build . --warningiserror --keep-going
	@echo "Open _build/html/index.html"

# Every test: d2lbn's unit tests, nbval over every notebook, then the strict book build.
# D2LBN_QUICK=1 makes the training chapters run short (see README); the rendered book keeps full runs.
test: $(STAMP)
	$(BIN)/python -m pytest tests -q
	D2LBN_QUICK=1 $(BIN)/python -m pytest --nbval-lax book -q
	$(MAKE) book

lab: $(STAMP)
	$(BIN)/jupyter lab book

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_norm.py

clean:
	rm -rf _build .pytest_cache
