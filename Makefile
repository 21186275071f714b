# The two commands: `make demo` and `make test`. Both create .venv when it is
# missing or when pyproject.toml changed (the stamp file records the install).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export NO_ALBUMENTATIONS_UPDATE := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 90
export WANDB_MODE := disabled
export TOKENIZERS_PARALLELISM := false

.PHONY: demo demo-corpus demo-shapes test test-slow lint format venv chromium clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@# img2dataset pulls the `dataclasses` 0.6 backport, which shadows the stdlib and breaks Prefect's server.
	$(PY) -m pip uninstall --quiet -y dataclasses || true
	@touch $(STAMP)
	@echo "venv ready: $(VENV)"

# The browser tests drive Debian's Chromium (never a downloaded one): install it when it is missing.
chromium:
	@test -x /usr/bin/chromium || { echo "installing Debian's chromium for the browser tests"; \
		$$([ "$$(id -u)" -eq 0 ] || echo sudo) sh -c 'apt-get update -qq && apt-get install -y -qq chromium chromium-driver'; }

# The whole chain on the real emoji and icon corpus (fetched from the npm registry into the cache the first
# time, ~45 s; offline after that): pipelines/params/demo_corpus.toml.
demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pipelines.demo --world corpus --out runs/demo

demo-corpus: demo

# The same chain on the generated shapes world (nothing to fetch), with the CoOp and ActionCLIP steps.
demo-shapes: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pipelines.demo --world shapes --out runs/demo-shapes

# PYTEST_ARGS narrows a run (e.g. PYTEST_ARGS="tests/test_train.py"). A run that collects no test fails
# (pytest's exit status 5): a typo in a path or marker must not pass as a green suite.
PYTEST_ARGS ?=
NO_TESTS = if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests (check PYTEST_ARGS and markers)" >&2; fi; exit $$rc

test: $(STAMP) chromium
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -x --durations=15 $(PYTEST_ARGS); rc=$$?; $(NO_TESTS)

# The long tests; each builds or trains what it needs (no `make demo` first).
test-slow: $(STAMP) chromium
	$(PY) -m pip install --quiet -e '.[dev,spark,ray]'
	@# the extras' install brings img2dataset's `dataclasses` backport back: it breaks Prefect's server
	$(PY) -m pip uninstall --quiet -y dataclasses || true
	@# REQUIRE_ENGINES=1: the engine tests (pyspark, ray, dask, torchrun) fail rather than skip when an engine is missing
	REQUIRE_ENGINES=1 HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m slow --durations=15 $(PYTEST_ARGS); rc=$$?; $(NO_TESTS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf runs .pytest_cache
