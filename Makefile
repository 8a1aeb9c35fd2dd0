# make demo: set up .venv and run the whole pipeline on the built-in synthetic demo (about 2.5 min on 2 CPU cores)
# make test: set up .venv and node_modules and run the test suite (the browser test needs Debian's chromium)
# make web:  build the in-browser classifier for skin_model.onnx into site/ and serve it at http://127.0.0.1:8000/
#            (this computer only)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test web clean

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -r requirements.txt
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci
	touch $@

demo: setup
	$(PY) make_demo_data.py
	$(PY) prepare_dataset.py --metadata-csv demo_data/metadata.csv --images-dir demo_data
	$(PY) AItraining.py --epochs 12 --image-size 128
	$(PY) evaluate.py
	$(PY) export_onnx.py
	$(PY) predict.py demo_data/unseen/ --model skin_model.onnx
	$(PY) predict.py demo_data/unseen/malignant_1.jpg --explain

test: setup node_modules/.installed
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q tests

web: setup node_modules/.installed
	$(PY) serve_web.py

# site/ (the page serve_web.py built) only if serve_web.py made it; web/vendor etc. were written by older versions
clean:
	rm -rf dataset demo_data runs skin_model.pth skin_model_last.pth skin_model.onnx *.png evaluation.json \
		web/vendor web/model.onnx web/model.json
	if [ -f site/.skin-lesion-classifier ] && [ ! -L site ]; then rm -rf site; fi
