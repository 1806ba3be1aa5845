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
$(LINKED): $(STAMP) . auditor auditor/contamination auditor/spurious demo/ engine engine/ray generators repair report serve store
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e . --config-settings editable_mode=strict
	touch $(LINKED)

demo: setup
	$(BIN)/datacure demo

test: setup
	$(BIN)/pytest -q

test-slow: setup
	$(BIN)/pytest -q -m slow

# Benchmarks: bench/run.py holds the job lists (one script and its arguments per job, each in a
# process of its own), records each job's wall time in bench/results/bench_run_<mode>.json and
# renders bench/RESULTS.md. `make bench`: the quick versions (100k rows, one seed; their files
# are named <name>_quick.json and never overwrite a full run's); `make bench-full`: everything
# (1M rows, seeds, sweeps; hours on 2 cores). A failing job is reported at the end; the others
# still run.
bench: setup
	$(BIN)/python bench/run.py quick

bench-full: setup
	$(BIN)/python bench/run.py full

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff check --fix . && $(BIN)/ruff format .

# Headless Chromium and its driver for the browser tests (Debian's chromium and chromium-driver:
# the report's test runs Chromium, the app's test drives it through chromedriver; needs root or
# sudo). CI runs this before `make test`; with CI or DATACURE_REQUIRE_BROWSER=1 set, a missing
# browser fails those tests instead of skipping them.
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then \
	  echo "chromium: $$(command -v chromium), chromedriver: $$(command -v chromedriver)"; else \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && $$SUDO apt-get install -y -q chromium chromium-driver; fi

# FAISS on the GPU: swap the CPU build for the CUDA one (both provide the `faiss` module).
gpu: setup
	$(BIN)/python -m pip uninstall -y -q faiss-cpu
	$(BIN)/python -m pip install -q faiss-gpu-cu12

clean:
	rm -rf $(VENV) build *.egg-info datacure.duckdb*
