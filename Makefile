# Two entry points for a fresh machine (Python 3.11+): `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test install compile check clean

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

# The whole test suite (no GPU, no MXNet needed), after checking generated/ and docs/optimizers/ are up to date.
test: install
	$(BIN)/opt-compile specs/ --docs docs/optimizers --check
	$(BIN)/python -m pytest -q tests/

clean:
	rm -rf $(VENV) build *.egg-info out
