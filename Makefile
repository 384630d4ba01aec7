# Two commands on a fresh machine:
#   make train   set up .venv and train with the config that fits the machine
#   make test    set up .venv, lint, and run the test suite
# and, with no training first:
#   make sample  set up .venv and draw samples.png from the released model
# Extra flags: make train ARGS="--preset smoke --manual-dir ../shared/data/fashion-mnist"
# With PyTorch for the parity tests (otherwise skipped): make test EXTRAS=test,bench

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?=
PYTEST_ARGS ?=
# Test processes (pytest-xdist); "auto" is one per CPU core. TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= auto
EXTRAS ?= test

.PHONY: install train sample test lint format clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e ".[$(EXTRAS)]"
	touch $@

train: install
	$(BIN)/python scripts/train.py $(ARGS)

# Without ARGS: the released Fashion-MNIST model (ddpm_keras/assets/pretrained).
SAMPLE_ARGS ?= --pretrained fashion-mnist --seed 0

sample: install
	$(BIN)/python scripts/sample.py $(if $(ARGS),$(ARGS),$(SAMPLE_ARGS))

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest -n $(TEST_WORKERS) $(PYTEST_ARGS)

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
