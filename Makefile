# Two commands for a fresh machine (see README): `make train` and `make test`.
# Each creates .venv and installs the package when needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SHARED ?= ../shared
DATA_FILE ?= $(if $(wildcard $(SHARED)/data/sms_spam_collection/SMSSpamCollection),$(SHARED)/data/sms_spam_collection/SMSSpamCollection,)
CONFIG ?= configs/seed.yaml
OUTPUT_DIR ?= runs/seed

.PHONY: install train test lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# A known torch first (from a local wheel where the machine has one), so the looser requirement below
	# installs nothing more; where that version cannot be had, the newest torch.
	$(PY) -m pip install -q torch==2.13.0 || $(PY) -m pip install -q torch
	$(PY) -m pip install -q -e ".[dev,tf,onnx,serve,demo,search]"
	touch $@

install: $(VENV)/.installed

# --quiet: a failed run ends with our one-line error, without accelerate's traceback under it.
train: install
	$(VENV)/bin/accelerate launch --quiet --config_file configs/accelerate/one_process.yaml \
		scripts/train.py --config $(CONFIG) --output_dir $(OUTPUT_DIR) $(if $(DATA_FILE),--data_file $(DATA_FILE),)

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check hf_spam scripts tests benchmarks

clean:
	rm -rf $(VENV) runs
