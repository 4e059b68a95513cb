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
	HOST=$(HOST) PORT=$(PORT) WORKERS=$(WORKERS) $(VENV)/bin/gunicorn -c gunicorn.conf.py wsgi:app

# The whole suite on the embedded SQLite, then the tests that need real servers again on a throw-away
# PostgreSQL and Redis on loopback (ops/services.py starts what is installed, stops it after).
test: $(STAMP)
	$(PY) -m pytest -q
	$(PY) -m ops.services -- $(PY) -m pytest -q -m services

# Regenerate the committed models from their training commands (each also has a notebook).
# The knee grader is an ensemble of three graders, each trained in two stages (160 px, then 224 px).
# Calibration comes last: its temperatures are fitted to the shipped files of the models it calibrates.
KNEE_WORK = /tmp/jointscan_knee_work
SIJ_WORK = /tmp/jointscan_sij_region
models: $(STAMP)
	$(PY) -m training.sacroiliac --out models
	$(PY) -m training.sacroiliac.ood --out models
	$(PY) -m training.sacroiliac.region --architecture attention_unet --epochs 60 --folds 0,1,2 --final --work $(SIJ_WORK)
	$(PY) -m training.sacroiliac.region --architecture attention_unet --folds none --export models --work $(SIJ_WORK)
	$(PY) -m training.sacroiliac.region --architecture unet --epochs 30 --folds 0,1,2 --final --work $(SIJ_WORK)
	$(PY) -m training.sacroiliac.region --architecture unet --folds none --export models --work $(SIJ_WORK)
	$(PY) -m training.sacroiliac.oedema --folds all --final --work $(SIJ_WORK)/oedema
	$(PY) -m training.sacroiliac.oedema --folds none --export models --work $(SIJ_WORK)/oedema
	$(PY) -m training.hand --out models
	$(PY) -m training.knee --size 160 --budget-min 55 --seed 0 --stage train --work $(KNEE_WORK)/m0_stage1
	$(PY) -m training.knee --size 224 --budget-min 65 --lr 0.001 --seed 0 --stage train --work $(KNEE_WORK)/m0_stage2 \
		--init $(KNEE_WORK)/m0_stage1/knee-kl-grader.ckpt.keras
	$(PY) -m training.knee --size 160 --budget-min 45 --seed 1 --stage train --work $(KNEE_WORK)/m1_stage1
	$(PY) -m training.knee --size 224 --budget-min 50 --lr 0.001 --seed 1 --stage train --work $(KNEE_WORK)/m1_stage2 \
		--init $(KNEE_WORK)/m1_stage1/knee-kl-grader.ckpt.keras
	$(PY) -m training.knee --size 160 --budget-min 30 --seed 2 --stage train --work $(KNEE_WORK)/m2_stage1
	$(PY) -m training.knee --size 224 --budget-min 40 --lr 0.001 --seed 2 --stage train --work $(KNEE_WORK)/m2_stage2 \
		--init $(KNEE_WORK)/m2_stage1/knee-kl-grader.ckpt.keras
	$(PY) -m training.knee --stage export --members $(KNEE_WORK)/m0_stage2 $(KNEE_WORK)/m1_stage2 $(KNEE_WORK)/m2_stage2 \
		--out models
	$(PY) -m training.knee.ood --out models
	$(PY) -m training.spine --out models
	$(PY) -m training.spine.ood --out models
	$(PY) -m training.recogniser --out models
	$(PY) -m training.calibration --out models

benchmarks: $(STAMP)
	$(PY) benchmarks/sacroiliac_figures.py
	$(PY) benchmarks/sacroiliac_oedema.py
	$(PY) benchmarks/sacroiliac_study_speed.py
	$(PY) benchmarks/hand_figures.py
	$(PY) benchmarks/hand_speed.py
	$(PY) benchmarks/knee_figures.py
	$(PY) benchmarks/knee_phenotypes.py
	$(PY) benchmarks/knee_phenotype_seeds.py
	$(PY) benchmarks/knee_speed.py
	$(PY) benchmarks/spine_figures.py
	$(PY) benchmarks/trust_figures.py
