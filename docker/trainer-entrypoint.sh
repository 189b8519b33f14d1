#!/bin/sh
# Entrypoint of the lmrec trainer image (docker/trainer.Dockerfile).
#
#   lmrec-train [lmrec train options]   torchrun ... -m lmrec.cli train [options]
#   lmrec-train COMMAND [ARGS]          runs COMMAND as is (lmrec evaluate ..., dvc pull, bash)
#
# Environment:
#   NPROC          processes on this node, one per GPU (default 1)
#   NNODES         nodes taking part (default 1: a standalone rendezvous on this node)
#   RDZV_ENDPOINT  host:port of the c10d rendezvous, required when NNODES > 1
#   RDZV_ID        rendezvous id shared by the nodes of one run (default lmrec-train)
# lmrec's DDP code takes RANK/WORLD_SIZE/LOCAL_RANK from torchrun and puts rank r on
# cuda:LOCAL_RANK (NCCL on GPUs, gloo on CPU).
set -eu

case "${1:-}" in
    "" | -*) ;;
    *) exec "$@" ;;
esac

nproc="${NPROC:-1}"
nnodes="${NNODES:-1}"

if [ "$nnodes" = "1" ]; then
    exec torchrun --standalone --nnodes 1 --nproc_per_node "$nproc" -m lmrec.cli train "$@"
fi

: "${RDZV_ENDPOINT:?set RDZV_ENDPOINT=host:port (the c10d rendezvous) when NNODES > 1}"
exec torchrun --nnodes "$nnodes" --nproc_per_node "$nproc" \
    --rdzv-backend c10d --rdzv-endpoint "$RDZV_ENDPOINT" --rdzv-id "${RDZV_ID:-lmrec-train}" \
    -m lmrec.cli train "$@"
