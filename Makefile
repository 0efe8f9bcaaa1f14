# rf-ray: the commands a new user needs.
#   make demo   installs everything into .venv and runs the main job (examples/sft_grid.py)
#   make check  the fast loop: lint, type checks and the tests that need no Ray cluster
#               (tests/conftest.py marks the others `ray`)
#   make test   installs everything into .venv (and Chromium for the dashboard test) and runs
#               lint, type checks and the whole suite (CI)
# Both work on a machine with only Python 3.10+ installed. Override PYTHON to pick the interpreter.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# torch first, pinned: on a CPU-only machine this is the CPU wheel; a CUDA machine gets PyPI's
# CUDA build of the same release. pyproject keeps an open range so your own torch also fits.
TORCH  ?= torch==2.13.0

.PHONY: install browser demo check test lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

# The dashboard's browser test drives the system Chromium through selenium (dev extra). CI runs
# as root; elsewhere apt-get goes through sudo. Skipped when a chromedriver is already on PATH.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@command -v chromedriver >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium chromium-driver; }

demo: install
	HF_HUB_OFFLINE=1 $(PY) examples/sft_grid.py

lint: install
	$(VENV)/bin/ruff check policies actors rf_ray tests examples bench scripts
	$(VENV)/bin/ruff format --check policies actors rf_ray tests examples bench scripts
	$(VENV)/bin/mypy

check: lint
	HF_HUB_OFFLINE=1 $(VENV)/bin/pytest -q -m "not ray and not slow"

test: lint browser
	HF_HUB_OFFLINE=1 $(VENV)/bin/pytest -q

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
