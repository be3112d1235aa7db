# The two commands of the README's quick start: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: run test bench clean

# A virtual environment with the package (editable) and its dev extras;
# rebuilt when setup.cfg changes.
$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

## Train with the default (CPU) preset, evaluate on Lake's runs, export a SavedModel.
run: $(VENV)/.installed
	$(PY) -m keras_siamese.fit $(ARGS)

## The test suite (real Omniglot from ../shared/data/omniglot).
test: $(VENV)/.installed
	$(PY) -m pytest $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
