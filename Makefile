# JointScan: `make run` serves the app, `make test` runs the tests. Both build .venv first.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000
WORKERS ?= 2

export TF_CPP_MIN_LOG_LEVEL ?= 2
export FLASK_APP := wsgi

.PHONY: run test venv prepare models benchmarks clean-instance

$(STAMP): requirements.txt
	@command -v $(PYTHON) >/dev/null || { echo "Python 3.11 is required ($(PYTHON) not found)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $(STAMP)

venv: $(STAMP)

prepare: $(STAMP)
	$(VENV)/bin/flask prepare

run: prepare
	$(VENV)/bin/gunicorn --bind $(HOST):$(PORT) --workers $(WORKERS) --timeout 120 --access-logfile - wsgi:app

test: $(STAMP)
	$(PY) -m pytest -q

# Regenerate the committed models from their training commands (each also has a notebook).
models: $(STAMP)
	$(PY) -m training.sacroiliac --out models
	$(PY) -m training.hand --out models
	$(PY) -m training.knee --size 160 --budget-min 55 --stage train --work /tmp/jointscan_knee_work/stage1
	$(PY) -m training.knee --size 224 --budget-min 65 --lr 0.001 \
		--init /tmp/jointscan_knee_work/stage1/knee-kl-grader.ckpt.keras --out models
	$(PY) -m training.spine --out models

benchmarks: $(STAMP)
	$(PY) benchmarks/sacroiliac_figures.py
	$(PY) benchmarks/hand_figures.py
	$(PY) benchmarks/hand_speed.py
	$(PY) benchmarks/knee_figures.py
	$(PY) benchmarks/knee_phenotypes.py
	$(PY) benchmarks/knee_speed.py
	$(PY) benchmarks/spine_figures.py
