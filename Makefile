# Two commands do all the set-up on a fresh machine with only Python 3:
#   make quickstart   -> .venv, install, convert the bundled CVAT sample, train the tiny model offline
#   make test         -> .venv, install, the whole test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
OUT ?= outputs
# Every runtime and dev dependency, transitive ones included, pinned and hashed (`make lock` writes it).
LOCK := requirements-lock.txt

.PHONY: install lock test-latest quickstart convert-sample train-quickstart test lint clean

$(STAMP): pyproject.toml $(LOCK)
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "detr-panoptic needs Python 3.11 or newer: make PYTHON=python3.11 ..." >&2; exit 2; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# Exactly the locked versions, each file checked against its hash (pip, setuptools and the test tools too).
	$(PY) -m pip install --quiet --require-hashes --no-deps -r $(LOCK)
	# The project itself, editable, built by the locked setuptools (no build isolation: nothing unlocked).
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) .ci/check_lock.py $(LOCK)
	touch $(STAMP)

install: $(STAMP)

# Re-resolve the ranges of requirements*.txt to today's newest releases (Python 3.11+, every platform).
# Then `make install test` on the new lock before committing it.
lock: install
	$(VENV)/bin/uv pip compile --quiet --universal --python-version 3.11 --generate-hashes \
		--custom-compile-command "make lock" --output-file $(LOCK).tmp \
		requirements.txt requirements-dev.txt requirements-demo.txt requirements-export.txt
	# The reference panopticapi (PQ cross-checks in the tests) without its dependencies: its numpy<2 pin is spurious.
	echo "# The reference panopticapi (dev), installed without its dependencies: its numpy<2 pin is spurious." >> $(LOCK).tmp
	echo panopticapi-lite | $(VENV)/bin/uv pip compile --quiet --no-deps --no-header --no-annotate \
		--generate-hashes - >> $(LOCK).tmp
	mv $(LOCK).tmp $(LOCK)

# The suite against the newest releases the ranges allow, in a throw-away venv (not the lock):
# run it before `make lock` to see whether a new release of a dependency breaks anything.
LATEST_VENV ?= $(or $(TMPDIR),/tmp)/detr-panoptic-latest-venv
test-latest:
	rm -rf $(LATEST_VENV)
	$(PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LATEST_VENV)/bin/python -m pip install --quiet --upgrade --upgrade-strategy eager -e ".[dev]"
	$(LATEST_VENV)/bin/python -m pip install --quiet --no-deps panopticapi-lite
	@echo "newest releases installed; differences from the lock:"
	@$(LATEST_VENV)/bin/python .ci/check_lock.py --report $(LOCK) || true
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PATH=$(LATEST_VENV)/bin:$$PATH $(LATEST_VENV)/bin/python -m pytest; \
		status=$$?; rm -rf $(LATEST_VENV); exit $$status

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
