#!/usr/bin/env bash
# Stage 1: the teacher scores every (query, passage) pair. Safe to interrupt: run it again to continue.
# Each setting can be set from the environment (MODEL=path ./generate_logits.sh) and extra
# arguments are passed on: ./generate_logits.sh --backend hf --batch_size 8
set -euo pipefail

# Teacher: a local folder or hub id (Qwen3-Reranker-8B needs a GPU; vLLM is used when installed)
MODEL="${MODEL:-Qwen/Qwen3-Reranker-8B}"
# Data sets to score, space-separated: MTEB reranking JSONL(.gz) or hub data sets NAME[:SPLIT].
# Score the test split too, so evaluation can report the teacher's own metrics.
INPUTS="${INPUTS:-data/train.jsonl data/test.jsonl}"
# Where {name}_scores.jsonl files go
OUTPUT_DIR="${OUTPUT_DIR:-output/scores}"
# The task's own instruction (this one is MTEB's for StackOverflowDupQuestions)
INSTRUCTION="${INSTRUCTION:-Retrieve duplicate questions from StackOverflow forum}"
# auto (vLLM on a GPU when installed, else transformers), vllm or hf
BACKEND="${BACKEND:-auto}"
# Prompts per forward pass on the hf backend (vLLM batches by itself)
BATCH_SIZE="${BATCH_SIZE:-32}"
# Longest prompt in tokens; only the query/document text is cut
MAX_LENGTH="${MAX_LENGTH:-2048}"
# Download source for hub ids: huggingface or modelscope
HUB="${HUB:-huggingface}"

read -r -a input_paths <<< "$INPUTS"

python "$(dirname "$0")/generate_logits.py" \
    --model_path "$MODEL" \
    --input_path "${input_paths[@]}" \
    --output_dir "$OUTPUT_DIR" \
    --instruction "$INSTRUCTION" \
    --backend "$BACKEND" \
    --batch_size "$BATCH_SIZE" \
    --max_length "$MAX_LENGTH" \
    --hub "$HUB" \
    "$@"
