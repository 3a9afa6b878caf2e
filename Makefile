# DeepLab Trainer. `make demo` and `make test` each set up a fresh machine by themselves.
PYTHON_BOOTSTRAP ?= python3
VENV ?= .venv
PYTHON := $(VENV)/bin/python
INSTALL_STAMP := $(VENV)/.installed
DEMO_DIR ?= runs/quickstart
PYTEST_ARGS ?=
BENCH_CONFIG ?= configs/bench_resnet50_os16.gin
BENCH_ARGS ?= --crop=128 --crop=256 --crop=513
# The TF.js converter pins an older TensorFlow, and TFX does not resolve with pip: each gets its own environment.
TFJS_VENV ?= .venv-tfjs
TFX_VENV ?= .venv-tfx
WEB_DIR := deploy/web

.PHONY: install constraints demo test test-fast lint fmt bench bench-input bench-e2e bench-compare bench-scaling clean tfjs-env web tfx-env test-tfx

install: $(INSTALL_STAMP)

# Re-installs only when the packaging changes, so repeated `make test` is quick.
# constraints.txt is the tested environment, every package at its version: installed as it is (--no-deps, no
# resolver), so a fresh clone gets exactly what the tests passed with; `make constraints` after a change.
$(INSTALL_STAMP): setup.py pyproject.toml constraints.txt
	test -x $(PYTHON) || $(PYTHON_BOOTSTRAP) -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet --no-deps -r constraints.txt
	$(PYTHON) -m pip install --quiet --no-deps -e '.[dev,export]'
	touch $(INSTALL_STAMP)

# Re-pins constraints.txt to what the venv holds now (after the tests pass with it).
constraints: install
	{ sed -n '1,3p' constraints.txt; $(PYTHON) -m pip freeze --all --exclude-editable | grep -v -E '^(pip|setuptools)=='; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

demo: install
	rm -rf $(DEMO_DIR)
	$(PYTHON) -m trainer --gin_file=configs/quickstart.gin --model_dir=$(DEMO_DIR) --mode=train_and_eval

test: install
	$(PYTHON) -m pytest -q $(PYTEST_ARGS)

# The unit tests only (no end-to-end runs, no child processes): a few minutes.
test-fast: install
	$(PYTHON) -m pytest -q -m "not slow and not subprocess" $(PYTEST_ARGS)

# Training throughput, MFU and trainer overhead of the reference config (minutes on a CPU; quiet machine wanted).
bench: install
	$(PYTHON) -m devtools.bench train --config=$(BENCH_CONFIG) $(BENCH_ARGS)

# Decoded + augmented training examples/sec of VOC-like JPEGs at crop 513, with 1 and 2 input threads.
bench-input: install
	$(PYTHON) -m devtools.bench input

# The real trainer (run(), on generated TFRecords, through the input pipeline) beside the in-memory and bare steps.
bench-e2e: install
	$(PYTHON) -m devtools.bench e2e --config=$(BENCH_CONFIG) --crop=128 --crop=256

# This trainer against TF Model Garden's on the same TFRecords, alternating processes (installs Model Garden into
# .venv-model-garden once).
bench-compare: install
	$(PYTHON) -m devtools.bench compare --crop=128 --crop=256

# Examples/s against crop, global batch and replicas (one device, Mirrored over 2 logical CPUs, 2 local workers).
bench-scaling: install
	$(PYTHON) -m devtools.bench scaling --config=$(BENCH_CONFIG)

# tensorflowjs_converter (TF 2.19 inside; reads this project's SavedModels). ydf 0.11: newer ydf wheels need a
# protobuf newer than TF 2.19 allows.
tfjs-env: $(TFJS_VENV)/bin/tensorflowjs_converter

$(TFJS_VENV)/bin/tensorflowjs_converter:
	test -x $(TFJS_VENV)/bin/python || $(PYTHON_BOOTSTRAP) -m venv $(TFJS_VENV)
	$(TFJS_VENV)/bin/python -m pip install --quiet tensorflowjs==4.22.0 ydf==0.11.0

# @tensorflow/tfjs from the npm registry, vendored into deploy/web/vendor for the page (no CDN).
web: $(WEB_DIR)/vendor/tf.min.js

$(WEB_DIR)/vendor/tf.min.js: $(WEB_DIR)/package.json $(WEB_DIR)/package-lock.json
	npm ci --prefix $(WEB_DIR) --no-audit --no-fund
	npm run --prefix $(WEB_DIR) build

tfx-env: $(TFX_VENV)/.installed

$(TFX_VENV)/.installed: setup.py scripts/install_tfx_env.sh
	scripts/install_tfx_env.sh $(TFX_VENV) $(PYTHON_BOOTSTRAP)
	touch $@

# The TFX pipeline end to end (minutes).
test-tfx: tfx-env
	$(TFX_VENV)/bin/python -m pytest -q tests/pipeline $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

fmt: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) .venv-model-garden $(TFJS_VENV) $(TFX_VENV) $(WEB_DIR)/node_modules $(WEB_DIR)/vendor runs build dist *.egg-info .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
