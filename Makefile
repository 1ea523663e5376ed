# The two entry points of the README. Each creates .venv on first use and installs what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint format clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.demo-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[demo]"
	touch $@

$(VENV)/.test-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[test]"
	touch $@

# The main job: train a small FocalNet on scikit-learn's digits (offline, ~2 min on 2 cores),
# evaluate it, classify held-out digit images with it, and draw what its modulators look at.
demo: $(VENV)/.demo-installed
	$(BIN)/focalnet train --config configs/demo-digits.yaml --output-dir runs/demo --overwrite
	$(BIN)/focalnet evaluate --model runs/demo/model --data digits --output-dir runs/demo/eval
	$(BIN)/focalnet export-digits runs/demo/samples --count 6
	$(BIN)/focalnet predict runs/demo/samples --model runs/demo/model --top-k 3
	$(BIN)/focalnet visualize runs/demo/samples --model runs/demo/model --output-dir runs/demo/visualize --top-k 3
	@echo "modulator maps of the demo model: runs/demo/visualize/*.png"

test: $(VENV)/.test-installed
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/pytest

lint: $(VENV)/.test-installed
	$(BIN)/ruff check src tests

format: $(VENV)/.test-installed
	$(BIN)/ruff check --fix src tests
	$(BIN)/ruff format src tests

clean:
	rm -rf $(VENV) runs build dist src/*.egg-info .pytest_cache .ruff_cache
