# Two commands do all the set-up on a fresh machine with only Python 3:
#   make quickstart   -> .venv, install, convert the bundled CVAT sample, train the tiny model offline
#   make test         -> .venv, install, the whole test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
OUT ?= outputs

.PHONY: install quickstart convert-sample train-quickstart test lint clean

$(STAMP): pyproject.toml requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# The project itself, editable, with the test tools (dev extras: pytest, ruff, hypothesis, gradio, playwright).
	$(PY) -m pip install --quiet -e ".[dev]"
	# The reference panopticapi (PQ cross-checks); its numpy<2 pin is spurious, hence --no-deps.
	$(PY) -m pip install --quiet --no-deps panopticapi-lite
	touch $(STAMP)

install: $(STAMP)

convert-sample: install
	$(PY) dataset_scripts/cvat_to_panoptic.py \
		--cvat sample_data/cvat_task_materials --cvat sample_data/cvat_task_machines \
		--stuff-labels floor wall sky ground \
		--val-ratio 0.25 --seed 0 --preview 4 --overwrite --output-dir $(OUT)/sample_panoptic

# Trains on the folder convert-sample wrote (same split as its report and previews).
# `-q`: a failing run ends on its one-line error, without accelerate's CalledProcessError traceback.
train-quickstart: convert-sample
	HF_HUB_OFFLINE=1 $(VENV)/bin/accelerate launch -q --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
		finetune/train.py --config finetune/configs/quickstart.yaml \
		--dataset $(OUT)/sample_panoptic --output-dir $(OUT)/quickstart

quickstart: train-quickstart

test: install
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(OUT) .pytest_cache .ruff_cache
