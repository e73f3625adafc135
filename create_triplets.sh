#!/usr/bin/env bash
# Stage 2: turn teacher scores into (query, positive, hard negative, margin) triplets.
# Each setting can be set from the environment (TOP_K=16 ./create_triplets.sh) and extra
# arguments are passed on: ./create_triplets.sh --num_negatives 8
set -euo pipefail

# Teacher scores written by generate_logits.sh
INPUT="${INPUT:-output/scores/train_scores.jsonl}"
# Where the triplets go (the run's arguments are written beside it as train_triplets.args.json)
OUTPUT="${OUTPUT:-output/triplets/train_triplets.jsonl}"
# How many of each query's best-scored passages act as positives
TOP_K="${TOP_K:-8}"
# Hard negatives per positive: the passages ranked just below it
NUM_NEGATIVES="${NUM_NEGATIVES:-4}"

python "$(dirname "$0")/create_triplets.py" \
    --input_path "$INPUT" \
    --output_path "$OUTPUT" \
    --top_k "$TOP_K" \
    --num_negatives "$NUM_NEGATIVES" \
    "$@"
