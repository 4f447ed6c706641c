#!/usr/bin/env bash
# One lit-finetune job on NNODES nodes of GPUS_PER_NODE GPUs with torchrun: run this same script on every node,
# with NODE_RANK set to 0 on the first node, 1 on the next, ... and MASTER_ADDR to the first node's address.
#   NNODES=2 GPUS_PER_NODE=8 NODE_RANK=0 MASTER_ADDR=10.0.0.1 launch/torchrun.sh \
#     --config configs/sft/smollm2_instructions.yaml --config configs/strategies/fsdp2.yaml
# trainer.default_root_dir must be a folder every node sees (a shared file system): the job's first process writes
# the run there; rerunning the same command resumes it. On node-local cache disks add
# --data.init_args.cache_shared=false, so each node tokenizes into its own.
set -euo pipefail
: "${NNODES:?}" "${GPUS_PER_NODE:?}" "${NODE_RANK:?}" "${MASTER_ADDR:?}"
MASTER_PORT="${MASTER_PORT:-29500}"
RUN_DIR="${RUN_DIR:-runs/multinode}"
exec torchrun --nnodes="$NNODES" --nproc_per_node="$GPUS_PER_NODE" --node_rank="$NODE_RANK" \
  --master_addr="$MASTER_ADDR" --master_port="$MASTER_PORT" -m lit_finetune fit \
  --trainer.num_nodes="$NNODES" --trainer.devices="$GPUS_PER_NODE" --trainer.default_root_dir="$RUN_DIR" \
  --ckpt_path=last "$@"
