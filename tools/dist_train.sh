#!/usr/bin/env bash
# Distributed training with torchrun, in mmdet's argument order:
#   bash tools/dist_train.sh CONFIG GPUS [train.py options...]
# e.g. bash tools/dist_train.sh configs/det/cascade_mambavision_t_3x.py 8 --work-dir work_dirs/cascade_t
# Several nodes: NNODES, NODE_RANK, MASTER_ADDR, PORT as for mmdet; PYTHON picks the interpreter
# (default: the repository's .venv if there is one).
set -euo pipefail
CONFIG=$1
GPUS=$2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}
repo=$(cd "$(dirname "$0")/.." && pwd)
if [[ -z ${PYTHON:-} ]]; then
  if [[ -x $repo/.venv/bin/python ]]; then PYTHON=$repo/.venv/bin/python; else PYTHON=python; fi
fi

"$PYTHON" -m torch.distributed.run \
    --nnodes="$NNODES" \
    --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" \
    --nproc_per_node="$GPUS" \
    --master_port="$PORT" \
    "$repo/tools/train.py" \
    "$CONFIG" \
    --launcher pytorch "${@:3}"
