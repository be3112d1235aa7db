# The two commands of the README's quick start: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: run test test-fast bench serve clean

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

## The test suite (real Omniglot from ../shared/data/omniglot), in two processes
## (pytest-xdist), each test file in one of them so that its fixtures are made once.
test: $(VENV)/.installed
	$(PY) -m pytest -n 2 --dist loadfile $(ARGS)

## The suite without the end-to-end tests (marked slow): the development loop. It keeps
## the prepared dataset in .cache/ between runs unless KERAS_SIAMESE_TEST_TFDS_DIR says where.
test-fast: $(VENV)/.installed
	KERAS_SIAMESE_TEST_TFDS_DIR="$${KERAS_SIAMESE_TEST_TFDS_DIR:-$(CURDIR)/.cache/tensorflow_datasets}" \
		$(PY) -m pytest -m "not slow" $(ARGS)

## The speed benchmarks (figures and ratios; see bench/).
bench: $(VENV)/.installed
	$(PY) bench/pipeline.py
	$(PY) bench/one_shot.py
	$(PY) bench/one_shot.py --preset koch2015 --repeats 5
	$(PY) bench/training.py
	$(PY) bench/convolutions.py
	$(PY) bench/batch_norm.py
	$(PY) bench/memory.py
	$(PY) bench/serving_load.py
	$(PY) bench/warmup.py
	$(PY) bench/gallery.py
	$(PY) bench/multi_worker.py

## The local TF-Serving-compatible server on saved_models/siamese.
serve: $(VENV)/.installed
	$(PY) -m keras_siamese.serve $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
