# Two entry points: `make demo` sets everything up and runs the main job on a
# bundled sample; `make test` sets everything up and runs the whole test suite.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: demo test setup system-deps clean bench

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

setup: system-deps $(STAMP)

# Graphviz's `dot` binary renders graphs; it is a system package.
system-deps:
	@command -v dot >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq graphviz python3-venv >/dev/null; }

demo: setup
	$(BIN)/graphc check samples/mlp_digits.gc
	$(BIN)/graphc train samples/mlp_digits.gc --data digits --epochs 20 -o build/mlp_digits.onnx --report build/mlp_digits.json
	$(BIN)/graphc render samples/mlp_digits.gc --backward -o build/mlp_digits_backward.svg

test: setup
	$(BIN)/python -m pytest -q tests

bench: setup
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) build .pytest_cache .hypothesis
