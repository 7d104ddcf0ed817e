# maskkit: `make demo` sets everything up and runs the notebook pipeline on the demo set; `make test` tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.maskkit-installed
DEMO := data/demo
PM := $(VENV)/bin/papermill --log-output --no-progress-bar -k python3
RUNS := reports/notebooks
# the demo's runs: offline ImageNet Lite0, 5 epochs (about a minute each on 2 cores; mask accuracy ~0.98 on the demo eval set)
DEMO_TRAIN := -p backbone tf_efficientnet_lite0 -p pretrained offline -p epochs 5 -p optimizer adamw -p scheduler cosine -p tta hflip
export PYTHONHASHSEED := 0

.PHONY: install demo demo-data crops pipeline test export clean-demo kfold readme

install: $(STAMP)

# A fresh venv with the CPU torch wheel; constraints.txt pins torch+torchvision so nothing pulls CUDA torch.
$(STAMP): setup.py settings.ini constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c constraints.txt torch==2.13.0 torchvision==0.28.0
	$(PIP) install --quiet -c constraints.txt -e ".[dev]"
	# facenet-pytorch pins torch<2.3, numpy<2, Pillow<10.3 but runs fine on the current ones
	$(PIP) install --quiet --no-deps facenet-pytorch==2.6.0
	# trackers (ByteTrack for maskkit.video) asks for the GUI opencv-python; the headless build already here serves it
	$(PIP) install --quiet --no-deps trackers==2.6.1
	# the torchvision hook for every interpreter of the venv (see nbs/00b_compat.ipynb)
	$(PY) -m maskkit.compat
	$(PY) -c "import torchvision, timm, facenet_pytorch, pytorch_grad_cam, onnxruntime, trackers, maskkit; print('imports ok')"
	touch $@

demo-data: $(STAMP)
	$(PY) -c "from maskkit.demo import ensure_demo_dataset; ensure_demo_dataset('$(DEMO)')"

crops: demo-data
	$(PY) -c "from maskkit.faces import build_crop_cache; build_crop_cache('$(DEMO)/train'); build_crop_cache('$(DEMO)/eval')"

# The whole pipeline, headless, on the demo set; executed notebooks land in reports/notebooks/.
pipeline: crops
	mkdir -p $(RUNS)
	$(PM) nbs/01_eda.ipynb $(RUNS)/01_eda.ipynb
	$(PM) nbs/02_preprocess.ipynb $(RUNS)/02_preprocess.ipynb
	$(PM) nbs/03_augment.ipynb $(RUNS)/03_augment.ipynb
	$(PM) nbs/04_train.ipynb $(RUNS)/04_train_single.ipynb -p fold 0 -p run_name demo_single_fold0 -p resume False $(DEMO_TRAIN)
	$(PM) nbs/04_train.ipynb $(RUNS)/04_train_multi.ipynb -p fold 0 -p run_name demo_multi_fold0 -p resume False -p head multi $(DEMO_TRAIN)
	$(PM) nbs/05_gradcam.ipynb $(RUNS)/05_gradcam.ipynb -y '{"runs": ["demo_single_fold0"]}'
	$(PM) nbs/06_ensemble.ipynb $(RUNS)/06_ensemble.ipynb -y '{"runs": ["demo_single_fold0", "demo_multi_fold0"]}'
	$(PM) nbs/08a_video.ipynb $(RUNS)/08a_video.ipynb -p run_name demo_single_fold0
	@echo "submission: reports/submission.csv; scored report: reports/ensemble/"

demo: pipeline
	@echo "demo done: see reports/"

export: $(STAMP)
	$(VENV)/bin/nbdev_export

# README.md is built from nbs/index.ipynb: executed (its run in a temporary folder), cleaned, converted to markdown.
# (nbdev_readme needs the quarto binary, which cannot be installed without internet beyond the package registries.)
readme: $(STAMP)
	cd nbs && MASKKIT_REPORTS=$$(mktemp -d) MASKKIT_CACHE=$$(mktemp -d) ../$(VENV)/bin/jupyter nbconvert --to notebook --execute --inplace index.ipynb
	$(PY) -c "import json; p = 'nbs/index.ipynb'; nb = json.load(open(p)); nb['metadata'].pop('widgets', None); json.dump(nb, open(p, 'w'))"
	$(VENV)/bin/nbdev_clean --fname nbs/index.ipynb
	$(VENV)/bin/jupyter nbconvert --to markdown nbs/index.ipynb --TagRemovePreprocessor.remove_cell_tags=hide --output-dir . --output README

# nbdev_test runs every notebook (cells flagged `slow` skipped), then pytest runs tests/; neither may touch reports/.
test: demo-data
	@before=$$(find reports -type f -print0 2>/dev/null | sort -z | xargs -0 -r md5sum); \
	$(VENV)/bin/nbdev_test --n_workers 2 --timing && $(PY) -m pytest -q tests; rc=$$?; \
	after=$$(find reports -type f -print0 2>/dev/null | sort -z | xargs -0 -r md5sum); \
	if [ "$$before" != "$$after" ]; then echo "make test changed files under reports/:"; diff <(echo "$$before") <(echo "$$after"); rc=1; fi; \
	exit $$rc

# K-fold cross-validation of one recipe (or the defaults) and the ensemble of its folds; resumable.
#   make kfold RECIPE=rank1_effb4_cutmix FOLDS=5 ARGS="--data-root ../shared/data/utkmask --epochs 3"
RECIPE ?=
FOLDS ?= 5
ARGS ?=
kfold: demo-data
	$(VENV)/bin/maskkit kfold $(if $(RECIPE),--recipe $(RECIPE)) --folds $(FOLDS) $(ARGS)

clean-demo:
	rm -rf $(DEMO) reports/notebooks reports/runs
