#!/usr/bin/env bash
# Stage 3: train the student cross-encoder on the teacher's scores in TRAIN_DATA.
# The defaults are the best configuration of bench/quality.py (README, "Distillation quality"):
# listwise KL over each query's whole candidate list (create_triplets.sh's default output) at
# teacher temperature 4, lr 1e-4, 12 epochs. With generate_logits.sh's passages-as-queries lists
# (about 10x more lists) two planned epochs did best: EPOCHS=2 ./train.sh. The first recipe instead:
#   LOSS=margin_mse TEACHER_TEMPERATURE=1 LEARNING_RATE=2e-5 EPOCHS=1 BATCH_SIZE=16 WARMUP=0.1 ./train.sh
#   (on FORMAT=triplets records); in about the same time on a CPU, a better student (bench/README.md, two seeds):
#   LOSS=margin_mse TEACHER_TEMPERATURE=1 LEARNING_RATE=2e-5 EPOCHS=1.85 BATCH_SIZE=16 WARMUP=0.1 ./train.sh --batch_grouping query
# Any train.py / Hugging Face training flag can be added at the end and overrides these, e.g.
#   ./train.sh --max_steps 1000 --eval_steps 100 --save_steps 100
#   ./train.sh --resume_from_checkpoint last        # continue an interrupted run in MODEL_DIR
#   LOSS=mse TRAIN_DATA=output/scores/train_scores.jsonl ./train.sh
# Several GPUs on one machine: NUM_GPUS=4 ./train.sh (runs torchrun --nproc_per_node 4;
# BATCH_SIZE is per GPU, so the effective batch is NUM_GPUS * BATCH_SIZE).
# bash, not sh (dash, busybox) or zsh, which would stop at its arrays with a message that does not say so
# shellcheck disable=SC2292  # [ ], which they have too, not [[ ]]
[ -n "${BASH_VERSION:-}" ] || { echo "train.sh: run it with bash (bash $0), not sh" >&2; exit 2; }
set -euo pipefail
# The interpreter: python, or python3 where only that is installed (Debian and Ubuntu without
# python-is-python3, Homebrew outside a virtual environment); PYTHON=... names another
python="${PYTHON:-$(command -v python || command -v python3 || echo python)}"
# This file's folder, through any symlink to it (Python's realpath: macOS's readlink has no -f)
here="$("$python" -c 'import os, sys; print(os.path.dirname(os.path.realpath(sys.argv[1])))' "$0")"

STUDENT="${STUDENT:-BAAI/bge-reranker-v2-m3}"                     # student: hub id or local folder
HUB="${HUB:-huggingface}"                                         # where hub ids (STUDENT, data sets) are downloaded from: huggingface or modelscope
# What the student learns, and so what TRAIN_DATA must be (python train.py --help explains each):
#   margin_mse  triplets or n-tuples from create_triplets.sh          mse, bce_soft  stage 1's scores file
#   listwise_kl create_triplets.sh --format listwise                  bce_labels     labelled data (MTEB format)
#   infonce     triplets or n-tuples (ignores the teacher's scores)
LOSS="${LOSS:-listwise_kl}"
TRAIN_DATA="${TRAIN_DATA:-${TRIPLETS:-output/triplets/train_triplets.jsonl}}"  # create_triplets.sh's TRIPLETS (see LOSS)
# Teacher scores and margins are divided by it (1 = as they are). Unset or empty: 4 for listwise_kl (measured with
# scores of 10 x cosine), else train.py's own 1; one you set is passed for every loss (train.py warns where unread)
temperature_given="${TEACHER_TEMPERATURE:+yes}"
TEACHER_TEMPERATURE="${TEACHER_TEMPERATURE:-4}"
# Gold-labelled candidate lists that pick the best checkpoint by MAP: stage 1's scores of the
# training data (5% of its queries are held out of training; where that is under 30 queries,
# selection would be chance, so nothing is held out and the last step is final) or a labelled
# dev file (a file, DIR:SPLIT or hub id, as train.py reads it). This default is skipped (with a
# warning) where it does not exist; one you set goes to train.py, which stops if it cannot read it.
# Set empty (SELECTION_DATA=) to pick by the labels of a labelled --eval_data (EVAL_DATA), else of a
# labelled or scores training file (bce_labels, mse, bce_soft), else by the held-out eval loss.
selection_data_given="${SELECTION_DATA+yes}"
SELECTION_DATA="${SELECTION_DATA-${SCORES:-${SCORES_DIR:-output/scores}/train_scores.jsonl}}"  # create_triplets.sh's SCORES
EARLY_STOPPING_PATIENCE="${EARLY_STOPPING_PATIENCE:-0}"           # stop after N evaluations without a better one; 0 = never
EVAL_DATA="${EVAL_DATA:-}"                                        # dev data for the eval loss; empty = held-out training queries
MODEL_DIR="${MODEL_DIR:-output/model}"                            # final (best) model, checkpoints and args.json
MAX_LENGTH="${MAX_LENGTH:-512}"                                   # tokens per (query, passage) pair
BATCH_SIZE="${BATCH_SIZE:-8}"                                     # examples (listwise: whole lists) per step per GPU
EVAL_BATCH_SIZE="${EVAL_BATCH_SIZE:-32}"                          # held-out evaluation batch per GPU
pairs_per_forward_given="${PAIRS_PER_FORWARD:+yes}"  # (passed where LOSS reads it, or where set: see below)
PAIRS_PER_FORWARD="${PAIRS_PER_FORWARD:-16}"                      # pairs per length-sorted forward pass (raise on a big GPU); 0 = a batch at once
LEARNING_RATE="${LEARNING_RATE:-1e-4}"                            # peak learning rate (the first recipe: 2e-5)
EPOCHS="${EPOCHS:-12}"                                            # planned epochs; fractions work (1.85); 2 with passages as queries
MAX_TRAIN_SECONDS="${MAX_TRAIN_SECONDS:-}"                        # stop after this many seconds, schedule fitted; empty = no limit
WARMUP="${WARMUP:-0}"                                             # warmup steps; below 1 = share of all steps (the first recipe: 0.1)
NUM_GPUS="${NUM_GPUS:-1}"                                         # >1: one torchrun process per GPU
BF16="${BF16:-auto}"                                              # true, false, or auto = where the hardware has bf16

# What the command line sets itself: its --loss decides the temperature's default, its --selection_data replaces SELECTION_DATA
loss="$LOSS"
selection_data_flag=false
fused_forward=true  # its --no_fused_forward (or --fused_forward false): margin_mse then scores one pair a pass
previous=""
for arg in "$@"; do
    case "$arg" in
        --loss=*) loss="${arg#--loss=}" ;;
        --no_fused_forward | --no-fused-forward) fused_forward=false ;;
        --fused_forward=* | --fused-forward=*) fused_forward="${arg#*=}" ;;
        --selection_data | --selection_data=* | --selection-data | --selection-data=*) selection_data_flag=true ;;
        -h | --help) exec "$python" "$here/train.py" --help ;;  # before the warnings below, which would not apply
    esac
    if [[ "$previous" == "--loss" ]]; then
        loss="$arg"
    elif [[ "$previous" == "--fused_forward" || "$previous" == "--fused-forward" ]]; then
        fused_forward="$arg"
    fi
    previous="$arg"
done

# a whole number: in (( )) below, 1.5 or 08 (a bad octal number) were false after a bash error, and one process trained
if [[ ! "$NUM_GPUS" =~ ^[0-9]+$ ]]; then
    echo "train.sh: NUM_GPUS must be a whole number of GPUs, not '$NUM_GPUS'" >&2
    exit 2
fi
NUM_GPUS="$((10#$NUM_GPUS))"  # 08 is 8

# auto: bf16 where it is multiplied natively (GPUs from Ampere on, CPUs with AVX512-BF16 or AMX);
# without a GPU, transformers wants --use_cpu true before it runs bf16 on the CPU. (Not read from a process
# substitution, <(...): that one's failure would go unnoticed, and bash 3.2 in POSIX mode, macOS's sh, refuses it.)
hardware="$("$python" -c '
import sys
sys.path.insert(0, sys.argv[1])  # (not PYTHONPATH, which would split a ":" in the path)
import torch
from rerank_distill.student import bfloat16_is_fast
gpu = torch.cuda.is_available()
print(str(gpu).lower(), str(bfloat16_is_fast("cuda" if gpu else "cpu")).lower())' "$here")"
read -r has_gpu fast_bf16 <<< "$hardware"
if [[ "$BF16" == "auto" ]]; then
    BF16="$fast_bf16"
fi

args=(
    --model_name_or_path "$STUDENT"
    --hub "$HUB"
    --train_data "$TRAIN_DATA"
    --loss "$LOSS"
    --early_stopping_patience "$EARLY_STOPPING_PATIENCE"
    --output_dir "$MODEL_DIR"
    --max_length "$MAX_LENGTH"
    --per_device_train_batch_size "$BATCH_SIZE"
    --per_device_eval_batch_size "$EVAL_BATCH_SIZE"
    --learning_rate "$LEARNING_RATE"
    --num_train_epochs "$EPOCHS"
    --warmup_steps "$WARMUP"
    --bf16 "$BF16"
)
# the pointwise losses score one pair an example (and margin_mse too with --no_fused_forward), so the default is
# passed only to those that score several; one you set is passed for every loss (train.py warns where unread)
several_pairs=false
if [[ "$loss" =~ ^(listwise_kl|infonce)$ || ( "$loss" == "margin_mse" &&
      ! "$(printf '%s' "$fused_forward" | tr '[:upper:]' '[:lower:]')" =~ ^(false|f|no|n|0)$ ) ]]; then
    several_pairs=true
fi
if [[ -n "$pairs_per_forward_given" || "$several_pairs" == "true" ]]; then
    args+=(--pairs_per_forward "$PAIRS_PER_FORWARD")
fi
if [[ -n "$temperature_given" || "$loss" == "listwise_kl" ]]; then
    args+=(--teacher_temperature "$TEACHER_TEMPERATURE")
fi
home=~  # a leading ~'s folder: $HOME, or where it is not set (env -i) the password database's, as Python reads it
if [[ "$selection_data_flag" == "true" ]]; then
    :  # the command line's --selection_data is train.py's to check
elif [[ -n "$SELECTION_DATA" && ( -e "${SELECTION_DATA/#\~\//$home/}" || -n "$selection_data_given" ) ]]; then
    args+=(--selection_data "$SELECTION_DATA")  # one you set goes to train.py, which checks it (a file, DIR:SPLIT, a hub id)
elif [[ -n "$SELECTION_DATA" ]]; then
    echo "train.sh: the default SELECTION_DATA $SELECTION_DATA does not exist, so checkpoints are picked without" \
         "gold labels (by the eval loss of held-out training queries); set SELECTION_DATA to stage 1's scores file" \
         "of the training data, or empty to keep this" >&2
fi
if [[ -n "$EVAL_DATA" ]]; then
    args+=(--eval_data "$EVAL_DATA")
fi
if [[ -n "$MAX_TRAIN_SECONDS" ]]; then
    args+=(--max_train_seconds "$MAX_TRAIN_SECONDS")
fi
if [[ "$has_gpu" == "false" ]]; then
    args+=(--use_cpu true)
fi

script="$here/train.py"
if (( NUM_GPUS > 1 )); then
    # torchrun, run by the interpreter above (a torchrun command on the PATH may belong to another)
    "$python" -m torch.distributed.run --nproc_per_node "$NUM_GPUS" "$script" "${args[@]}" "$@"
else
    "$python" "$script" "${args[@]}" "$@"
fi
