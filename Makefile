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

.PHONY: demo test test-slow lint format venv chromium clean

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

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pipelines.demo --out runs/demo

test: $(STAMP) chromium
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -x --durations=15; rc=$$?; if [ $$rc -eq 5 ]; then exit 0; else exit $$rc; fi

test-slow: $(STAMP) chromium
	$(PY) -m pip install --quiet -e '.[dev,spark,ray]' && HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m slow --durations=15; rc=$$?; if [ $$rc -eq 5 ]; then exit 0; else exit $$rc; fi

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf runs .pytest_cache
