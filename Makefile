# Two entry points for a fresh machine (Python 3.10+): `make demo` and `make test`.
# Everything goes into $(VENV)/: run $(VENV)/bin/opt-compile and $(VENV)/bin/python afterwards, or
# `source $(VENV)/bin/activate` first. Each target installs only what it needs and says what.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# setuptools' editable install of a package whose folders are renamed (runtime/ -> optforge) ends with an
# informational "Editable installation" banner that pip >= 25 prints on every install; it asks for nothing.
PIP := PYTHONWARNINGS="ignore:Editable installation" $(BIN)/python -m pip

.PHONY: demo test install install-demo install-test install-torch install-reference compile check clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# optforge itself (numpy, lark, jinja2), editable.
install: $(BIN)/python
	@echo "make: installing optforge (editable) with numpy, lark and jinja2 into $(VENV)/"
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e .

# The demo's extra: scikit-learn (the 8x8 digits ship inside it) and matplotlib (the plot).
install-demo: install
	@echo "make: installing the demo extra (scikit-learn, matplotlib) into $(VENV)/"
	$(PIP) install -q -e ".[demo]"

# The tests' extra: pytest, hypothesis, prodigyopt (the reference Prodigy) and NVRTC (about 140 MB; it
# compiles the CUDA sources, no GPU needed).
install-test: install
	@echo "make: installing the test extra (pytest, hypothesis, prodigyopt, NVRTC: about 140 MB) into $(VENV)/"
	$(PIP) install -q -e ".[test]"

compile: install
	$(BIN)/opt-compile specs/ --docs docs/optimizers

# Compile the bundled specs, then train a small model with every optimizer (table + out/train_all.png).
demo: install-demo compile
	$(BIN)/python examples/train_all.py

# torch 2.13.0, CPU build, for tests/test_torch*.py (the extra optforge[torch]). The "+cpu" pin only ever
# matches a CPU wheel (a local file here), never PyPI's multi-GB CUDA build; where none can be
# installed, the torch tests skip and say why.
install-torch: install
	@$(BIN)/python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null \
	  || { echo "make: installing torch 2.13.0 CPU (about 750 MB) into $(VENV)/ for the torch tests"; \
	       $(PIP) install -q "torch==2.13.0+cpu"; } \
	  || echo "torch 2.13.0 (CPU) could not be installed: tests/test_torch.py will be skipped"

# bitsandbytes 0.50.2, the reference 8-bit Adam of tests/test_adam8bit_reference.py (it runs on the CPU).
# Without its dependencies: it depends on torch, which install-torch pins to the CPU build.
install-reference: install-torch
	@$(BIN)/python -c "import bitsandbytes" 2>/dev/null \
	  || { echo "make: installing bitsandbytes 0.50.2 (about 45 MB) into $(VENV)/ for the 8-bit Adam tests"; \
	       $(PIP) install -q --no-deps "bitsandbytes==0.50.2" "packaging>=20"; } \
	  || echo "bitsandbytes could not be installed: its comparisons in tests/test_adam8bit_reference.py will be skipped"

# The whole test suite (no GPU, no MXNet needed), after checking generated/ and docs/optimizers/ are up to date.
test: install-test install-torch install-reference
	$(BIN)/opt-compile specs/ --docs docs/optimizers --check
	$(BIN)/python -m pytest -q tests/

clean:
	rm -rf $(VENV) build *.egg-info out
