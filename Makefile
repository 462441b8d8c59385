# Two commands do everything: `make train` and `make test`. Both set up what is missing first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= configs/default.yaml
COMPETITION ?= commonlitreadabilityprize
LAUNCH_ARGS ?=
NAME ?=
ARGS ?=

.PHONY: setup venv data backbone train test test-fast lint

setup: venv data

venv: $(VENV)/.installed

# torch first and pinned, so that no other package pulls in another torch version; a torch 2.13.0 build already
# installed (CPU-only, or for your CUDA: README.md) is kept.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

data:
	@bash scripts/get_data.sh $(COMPETITION) input/$(COMPETITION)

# A backbone of configs/backbones.yaml into input/backbones/ (`make backbone` lists them); a second run does nothing.
backbone: venv
	$(BIN)/python src/get_backbone.py $(NAME)

train: setup
	$(BIN)/accelerate launch $(LAUNCH_ARGS) src/train.py --config $(CONFIG) $(ARGS)

# The tests make their own data and models; the competition data is fetched when it can be, not required.
# -n auto: one pytest worker per core (pytest-xdist); most tests wait on subprocesses of their own.
test: venv
	-@bash scripts/get_data.sh $(COMPETITION) input/$(COMPETITION)
	$(BIN)/python -m pytest -n auto $(ARGS)

# Everything but the tests marked slow (subprocesses, several processes, notebooks, compile): a few minutes.
test-fast: venv
	$(BIN)/python -m pytest -n auto -m "not slow" $(ARGS)

lint: venv
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
