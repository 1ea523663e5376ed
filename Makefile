# The two entry points of the README. Each creates .venv on first use and installs what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo demo-detection demo-segmentation test test-avx2 lint format clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.demo-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[demo]"
	touch $@

$(VENV)/.detection-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[detection]"
	touch $@

$(VENV)/.segmentation-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[segmentation]"
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
	@echo "serve the model over HTTP, then open http://127.0.0.1:8000 in a browser: $(BIN)/focalnet serve runs/demo/model"

# Detection: synthetic shapes in COCO layout, a small Mask R-CNN on FocalNet from scratch, COCO mAP
# (pycocotools), and drawings of its detections on held-out images.
demo-detection: $(VENV)/.detection-installed
	$(BIN)/focalnet make-shapes runs/shapes --train-images 160 --val-images 40
	$(BIN)/focalnet train --config configs/detection-shapes.yaml --overwrite
	$(BIN)/focalnet evaluate --model runs/detection-demo/model --data runs/shapes --task instance-segmentation --output-dir runs/detection-demo/eval
	$(BIN)/focalnet predict runs/shapes/val/000001.png runs/shapes/val/000002.png runs/shapes/val/000003.png runs/shapes/val/000004.png --model runs/detection-demo/model --output-dir runs/detection-demo/predictions
	@echo "detections drawn on held-out images: runs/detection-demo/predictions/*.png"

# Semantic segmentation: the same shapes in ADE20K layout, a small UperNet on FocalNet from scratch,
# whole-set mIoU with a per-class table, and label maps with colour overlays of held-out images.
demo-segmentation: $(VENV)/.segmentation-installed
	$(BIN)/focalnet make-shapes runs/shapes-ade20k --layout ade20k --train-images 160 --val-images 40
	$(BIN)/focalnet train --config configs/segmentation-shapes.yaml --overwrite
	$(BIN)/focalnet evaluate --model runs/segmentation-demo/model --data runs/shapes-ade20k --output-dir runs/segmentation-demo/eval
	$(BIN)/focalnet predict runs/shapes-ade20k/images/validation --model runs/segmentation-demo/model --output-dir runs/segmentation-demo/predictions
	@echo "label maps and overlays of held-out images: runs/segmentation-demo/predictions/*.png"

test: $(VENV)/.test-installed
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/pytest

# The numerically sensitive tests again, on the kernels a CPU without AVX-512 or AMX gets: CI runs this
# after `test`, so a machine with AMX also checks what an AMD EPYC or an older Intel CPU computes.
test-avx2: $(VENV)/.test-installed
	ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 $(BIN)/pytest -m numerics

lint: $(VENV)/.test-installed
	$(BIN)/ruff check src tests

format: $(VENV)/.test-installed
	$(BIN)/ruff check --fix src tests
	$(BIN)/ruff format src tests

clean:
	rm -rf $(VENV) runs build dist src/*.egg-info .pytest_cache .ruff_cache
