# Two commands do all the set-up on a fresh machine:
#   make demo   - the main job: lite bundle, product from normal shots, daemon on the synthetic line, subscriber
#   make test   - the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
FRAMES ?= 0
CONFIG ?= configs/demo.yaml

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch 2.13.0 CPU first, so nothing below pulls a CUDA build
	$(PY) -m pip install -q torch==2.13.0
	CMAKE_ARGS="-DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF" $(PY) -m pip install -q -e '.[export,test]'
	touch $@

install: $(VENV)/.installed

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PY) -m pytest -q

test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -m "not slow"

demo: $(VENV)/.installed
	$(VENV)/bin/agpt demo --config $(CONFIG) --frames $(FRAMES)

.PHONY: install lint test test-fast demo
