# make demo: set up .venv and run the whole pipeline on the built-in synthetic demo (~5 min, 2 CPU cores)
# make test: set up .venv and run the test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test clean

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -r requirements.txt
	touch $@

demo: setup
	$(PY) prepare_dataset.py --demo
	$(PY) AItraining.py --epochs 12 --image-size 128
	$(PY) evaluate.py
	$(PY) export_onnx.py
	$(PY) predict.py demo_data/unseen/ --model skin_model.onnx
	$(PY) predict.py demo_data/unseen/malignant_1.jpg

test: setup
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q tests

clean:
	rm -rf dataset demo_data runs skin_model.pth skin_model_last.pth skin_model.onnx *.png evaluation.json
