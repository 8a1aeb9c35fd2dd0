# make setup: make .venv, install requirements.txt and this project (skinlesion/, model.py) into it, editable
# make demo: set up .venv and run the whole pipeline on the built-in synthetic demo (a few minutes on 2 CPU cores)
# make test: set up .venv and node_modules, check the style (ruff) and run the test suite (the browser test needs
#            Debian's chromium)
# make check: check the style and run the fast tier of the tests (no script started, no training, no browser;
#             under a minute): the tests marked slow are left to make test
# make web:  build the in-browser classifier for skin_model.onnx into site/ and serve it at http://127.0.0.1:8000/
#            (this computer only)
# make docs: run the demo, then regenerate the README's pictures in docs/, docs/flags.md and docs/model_card.md
# make clean: remove what the scripts made here, as their records prove it (cleaning.remove_ours); nothing else
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup dev demo test check lint web docs clean

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install --no-deps -e .
	touch $@

dev: $(VENV)/.dev-installed

$(VENV)/.dev-installed: $(VENV)/.installed requirements-dev.txt
	$(PY) -m pip install -r requirements-dev.txt
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci
	touch $@

demo: setup
	$(PY) make_demo_data.py
	$(PY) prepare_dataset.py --metadata-csv demo_data/metadata.csv --images-dir demo_data
	$(PY) AItraining.py --epochs 6 --image-size 96 --folds 3
	$(PY) evaluate.py
	$(PY) export_onnx.py
	$(PY) predict.py demo_data/unseen/ --model skin_model.onnx
	$(PY) predict.py demo_data/unseen/malignant_1.jpg --explain

lint: dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint node_modules/.installed
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -n auto --maxprocesses 4 --dist loadfile tests

check: lint
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -n auto --maxprocesses 4 --dist worksteal -m "not slow" tests

web: setup node_modules/.installed
	$(PY) serve_web.py

docs: demo dev node_modules/.installed
	$(PY) docs/make_docs.py

clean:
	$(PY) -c "import glob; from skinlesion import cleaning; cleaning.remove_ours(['dataset', 'demo_data', \
		'site', 'runs', 'gradcam', 'skin_model.pth', 'skin_model_last.pth', 'skin_model.md', 'skin_model.onnx', \
		'skin_model.int8.onnx', 'training_curves.png', 'evaluation.json', 'confusion_matrix.png', 'roc_curve.png', \
		'calibration.png', 'mistakes.png', 'types_confusion.png'] + sorted(glob.glob('evaluation_*.json') + \
		glob.glob('confusion_matrix_*.png') + glob.glob('roc_curve_*.png') + glob.glob('calibration_*.png') + \
		glob.glob('mistakes_*.png') + glob.glob('types_confusion_*.png')))"
