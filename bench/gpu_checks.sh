#!/usr/bin/env bash
# What only a CUDA GPU can show, in one short run: the whole test suite on the GPU (its GPU-only
# tests run instead of being skipped) and teacher-scoring throughput with a randomly initialised
# model of Qwen3-8B's shape (the original loop and our hf backend; vLLM too where installed).
#   bash bench/gpu_checks.sh
# Writes the test log and bench/results/teacher_cuda.json (or under RESULTS_DIR).
set -uo pipefail

DATA="${DATA:-../shared/data/semeval16b/train.jsonl}"
TOKENIZER_FROM="${TOKENIZER_FROM:-output/bench_models/smollm2-135m-instruct}"  # lends its tokenizer only
RESULTS_DIR="${RESULTS_DIR:-bench/results}"
NUM_QUERIES="${NUM_QUERIES:-48}"
BATCH_SIZE="${BATCH_SIZE:-128}"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c 'import torch, transformers, sentence_transformers as st; print("torch", torch.__version__, "transformers", transformers.__version__, "sentence-transformers", st.__version__)'

timeout 240 python3 -m pytest -q -rs -p no:cacheprovider 2>&1 | tee "$RESULTS_DIR/gpu_tests.log"
tests_status=${PIPESTATUS[0]}

timeout 280 python3 bench/teacher.py --random_qwen3_8b --device cuda --data "$DATA" --model_path "$TOKENIZER_FROM" \
    --num_queries "$NUM_QUERIES" --candidates_per_query 30 --batch_size "$BATCH_SIZE" \
    --output_json "$RESULTS_DIR/teacher_cuda.json" "$@"
bench_status=$?

echo "tests exit $tests_status, teacher bench exit $bench_status"
exit $(( tests_status || bench_status ))
