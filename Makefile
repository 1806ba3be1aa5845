# datacure: `make demo` runs the whole flow on bundled data, `make test` runs the tests.
# Both create ./.venv when it is missing.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LINKED := $(VENV)/.linked
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test test-slow bench bench-full lint format browser gpu clean

setup: $(LINKED)

# Dependencies: torch first, pinned: the CPU wheel on disk; anything else would pull a multi-GB
# CUDA build. The project's metadata only asks for a range, which this wheel satisfies.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "torch==2.13.0"
	$(BIN)/python -m pip install -q -e ".[test,bench,ray]" --config-settings editable_mode=strict
	touch $(STAMP)

# The editable install mirrors the wheel (a `datacure/` tree of links to the package's files):
# adding or removing a module re-links it, so a module missing from the wheel is missing here too.
$(LINKED): $(STAMP) . auditor engine engine/ray generators store
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e . --config-settings editable_mode=strict
	touch $(LINKED)

demo: setup
	$(BIN)/datacure demo

test: setup
	$(BIN)/pytest -q

test-slow: setup
	$(BIN)/pytest -q -m slow

bench: setup
	$(BIN)/python bench/knn.py --sizes 100000
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/embed.py

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff check --fix . && $(BIN)/ruff format .

# Headless Chromium for the browser tests (Debian's chromium and chromium-driver; needs root or
# sudo). CI runs this before `make test`; with CI or DATACURE_REQUIRE_BROWSER=1 set, a missing
# browser fails those tests instead of skipping them.
browser:
	@if command -v chromium >/dev/null 2>&1; then echo "chromium: $$(command -v chromium)"; else \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && $$SUDO apt-get install -y -q chromium chromium-driver; fi

# FAISS on the GPU: swap the CPU build for the CUDA one (both provide the `faiss` module).
gpu: setup
	$(BIN)/python -m pip uninstall -y -q faiss-cpu
	$(BIN)/python -m pip install -q faiss-gpu-cu12

clean:
	rm -rf $(VENV) build *.egg-info datacure.duckdb*
