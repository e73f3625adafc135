#!/usr/bin/env bash
# Stage 3: train the student cross-encoder on the teacher's scores in TRAIN_DATA.
# Any train.py / Hugging Face training flag can be added at the end and overrides these, e.g.
#   ./train.sh --max_steps 1000 --eval_steps 100 --save_steps 100
#   ./train.sh --resume_from_checkpoint last        # continue an interrupted run in OUTPUT_DIR
#   LOSS=mse TRAIN_DATA=output/scores/train_scores.jsonl ./train.sh
# Several GPUs on one machine: NUM_GPUS=4 ./train.sh (runs torchrun --nproc_per_node 4;
# BATCH_SIZE is per GPU, so the effective batch is NUM_GPUS * BATCH_SIZE).
set -euo pipefail

MODEL="${MODEL:-BAAI/bge-reranker-v2-m3}"                         # student: hub id or local folder
# What the student learns, and so what TRAIN_DATA must be (python train.py --help explains each):
#   margin_mse  triplets or n-tuples from create_triplets.sh          mse, bce_soft  stage 1's scores file
#   listwise_kl create_triplets.sh --format listwise                  bce_labels     labelled data (MTEB format)
#   infonce     triplets or n-tuples (ignores the teacher's scores)
LOSS="${LOSS:-margin_mse}"
TRAIN_DATA="${TRAIN_DATA:-output/triplets/train_triplets.jsonl}"  # from create_triplets.sh (see LOSS)
TEACHER_TEMPERATURE="${TEACHER_TEMPERATURE:-1}"                   # teacher scores and margins are divided by it
# Gold-labelled candidate lists that pick the best checkpoint by MAP: stage 1's scores of the
# training data (5% of its queries are held out of training) or a labelled dev file. Skipped if
# the file does not exist; empty = the training file's own labels, else the held-out eval loss.
SELECTION_DATA="${SELECTION_DATA:-output/scores/train_scores.jsonl}"
EARLY_STOPPING_PATIENCE="${EARLY_STOPPING_PATIENCE:-0}"           # stop after N evaluations without a better one; 0 = never
EVAL_DATA="${EVAL_DATA:-}"                                        # dev data for the eval loss; empty = held-out training queries
OUTPUT_DIR="${OUTPUT_DIR:-output/model}"                          # final (best) model, checkpoints and args.json
MAX_LENGTH="${MAX_LENGTH:-512}"                                   # tokens per (query, passage) pair
BATCH_SIZE="${BATCH_SIZE:-16}"                                    # examples per step per GPU
LEARNING_RATE="${LEARNING_RATE:-2e-5}"
EPOCHS="${EPOCHS:-1}"
WARMUP="${WARMUP:-0.1}"                                           # warmup steps; below 1 = share of all steps
NUM_GPUS="${NUM_GPUS:-1}"                                         # >1: one torchrun process per GPU
BF16="${BF16:-auto}"                                              # true, false, or auto = when the GPU supports it

if [[ "$BF16" == "auto" ]]; then
    BF16="$(python -c 'import torch; print(str(torch.cuda.is_available() and torch.cuda.is_bf16_supported()).lower())')"
fi

args=(
    --model_name_or_path "$MODEL"
    --train_data "$TRAIN_DATA"
    --loss "$LOSS"
    --teacher_temperature "$TEACHER_TEMPERATURE"
    --early_stopping_patience "$EARLY_STOPPING_PATIENCE"
    --output_dir "$OUTPUT_DIR"
    --max_length "$MAX_LENGTH"
    --per_device_train_batch_size "$BATCH_SIZE"
    --per_device_eval_batch_size "$BATCH_SIZE"
    --learning_rate "$LEARNING_RATE"
    --num_train_epochs "$EPOCHS"
    --warmup_steps "$WARMUP"
    --bf16 "$BF16"
)
if [[ -n "$SELECTION_DATA" && -e "$SELECTION_DATA" ]]; then
    args+=(--selection_data "$SELECTION_DATA")
elif [[ -n "$SELECTION_DATA" ]]; then
    echo "train.sh: SELECTION_DATA $SELECTION_DATA does not exist; checkpoints are picked without it" >&2
fi
if [[ -n "$EVAL_DATA" ]]; then
    args+=(--eval_data "$EVAL_DATA")
fi

script="$(dirname "$0")/train.py"
if (( NUM_GPUS > 1 )); then
    torchrun --nproc_per_node "$NUM_GPUS" "$script" "${args[@]}" "$@"
else
    python "$script" "${args[@]}" "$@"
fi
