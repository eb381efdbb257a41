# Two entry points for a fresh machine (Python 3.11+): `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test install install-torch compile check clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

install: $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[test]"

compile: install
	$(BIN)/opt-compile specs/ --docs docs/optimizers

# Compile the bundled specs, then train a small model with every optimizer (table + out/train_all.png).
demo: compile
	$(BIN)/python -m pip install -q -e ".[demo]"
	$(BIN)/python examples/train_all.py

# torch 2.13.0, CPU build, for tests/test_torch.py (the extra optforge[torch]). The "+cpu" pin only ever
# matches a CPU wheel (a local file here), never PyPI's multi-GB CUDA build; where none can be
# installed, the torch tests skip and say why.
install-torch: install
	@$(BIN)/python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null \
	  || $(BIN)/python -m pip install -q "torch==2.13.0+cpu" \
	  || echo "torch 2.13.0 (CPU) could not be installed: tests/test_torch.py will be skipped"

# The whole test suite (no GPU, no MXNet needed), after checking generated/ and docs/optimizers/ are up to date.
test: install install-torch
	$(BIN)/opt-compile specs/ --docs docs/optimizers --check
	$(BIN)/python -m pytest -q tests/

clean:
	rm -rf $(VENV) build *.egg-info out
