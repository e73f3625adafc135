#!/usr/bin/env bash
# What only a CUDA GPU can show, in one short run:
#   tests    the whole test suite on the GPU (its GPU-only tests run instead of being skipped)
#   fsdp     a few FSDP training steps of a tiny student through configs/accelerate_fsdp.yaml that
#            select the best checkpoint by held-out loss (it must load), then a resume from the last
#            checkpoint; the final model must load as a CrossEncoder (one GPU still runs the whole
#            FSDP path: wrapping, sharded optimiser, full state dict on save, nothing to shard across)
#   teacher  teacher-scoring throughput with a randomly initialised model of Qwen3-8B's shape (the
#            original loop and our hf backend; vLLM too where installed)
#   bash bench/gpu_checks.sh [extra bench/teacher.py flags]
#   CHECKS="fsdp" PYTEST_ARGS="tests/test_train.py" bash bench/gpu_checks.sh    # a part only
# PYTEST_ARGS="-n 12" runs the tests in 12 processes: it needs pytest-xdist (pip install pytest-xdist).
# Writes gpu_tests_{date}.log, fsdp_{date}.log and teacher_cuda.json (beside it, dated, where one exists)
# under RESULTS_DIR (default bench/results; for the
# CPU dry run, ALLOW_CPU=1 on a machine without a GPU, a temporary folder it names: tests and fsdp run
# there, the 8B-shaped teacher is skipped). It runs in the project folder, wherever it is started from: a relative
# RESULTS_DIR, TEACHER_DATA or TOKENIZER_FROM is taken from there.
# bash, not sh (dash, busybox) or zsh, which would stop at its arrays with a message that does not say so
# shellcheck disable=SC2292  # [ ], which they have too, not [[ ]]
[ -n "${BASH_VERSION:-}" ] || { echo "gpu_checks.sh: run it with bash (bash $0), not sh" >&2; exit 2; }
set -uo pipefail  # not -e: each check runs and its exit status is reported at the end, whichever failed
# The interpreter: python, or python3 where only that is installed (Debian and Ubuntu without
# python-is-python3, Homebrew outside a virtual environment); PYTHON=... names another
python="${PYTHON:-$(command -v python || command -v python3 || echo python)}"
# This file's folder, through any symlink to it (Python's realpath: macOS's readlink has no -f)
here="$("$python" -c 'import os, sys; print(os.path.dirname(os.path.realpath(sys.argv[1])))' "$0")"
cd "$here/.." || exit 2  # the project folder, wherever it is run from: the paths below are relative to it

# The teacher check's data, tokenizer, queries and batch (TEACHER_ like generate_logits.sh's teacher settings)
TEACHER_DATA="${TEACHER_DATA:-../shared/data/semeval16b/train.jsonl}"
TOKENIZER_FROM="${TOKENIZER_FROM:-output/bench_models/smollm2-135m-instruct}"  # lends its tokenizer only
NUM_QUERIES="${NUM_QUERIES:-32}"  # 32 x 30 pairs: its three alternating repetitions fit the 200 s below
TEACHER_BATCH_SIZE="${TEACHER_BATCH_SIZE:-128}"
CHECKS="${CHECKS:-tests fsdp teacher}"
PYTEST_ARGS="${PYTEST_ARGS:-}"
TESTS_TIMEOUT="${TESTS_TIMEOUT:-300}"  # seconds for the whole suite (about 8 minutes on 2 CPU cores: raise it there; 2 on the H200 with PYTEST_ARGS="-n 12")

gpus="$(nvidia-smi -L 2> /dev/null | grep -c '^GPU ' || true)"  # not the lines of its error messages
if (( gpus == 0 )); then
    if [[ "${ALLOW_CPU:-0}" != 1 ]]; then
        echo "gpu_checks.sh: no GPU here (nvidia-smi fails); ALLOW_CPU=1 runs the flow on the CPU as a dry run" >&2
        exit 1
    fi
    RESULTS_DIR="${RESULTS_DIR:-$(mktemp -d)}"
    echo "gpu_checks.sh: dry run on the CPU, results in $RESULTS_DIR"
    # accelerate runs the FSDP config as plain multi-CPU training there: the flow, not FSDP itself
    processes=1 precision=(--use_cpu true) distributed_type=MULTI_CPU
else
    processes="$gpus" precision=(--bf16 true) distributed_type=FSDP
fi
# The teacher check's inputs are checked before the minutes of tests: ../shared, say, does not travel
# to a lent machine, and finding that out at the end costs the whole run
if [[ " $CHECKS " == *" teacher "* ]] && (( gpus > 0 )); then
    for input in "$TEACHER_DATA" "$TOKENIZER_FROM"; do
        [[ -e "$input" ]] || { echo "gpu_checks.sh: $input (TEACHER_DATA or TOKENIZER_FROM) does not exist; set it, or leave teacher out of CHECKS" >&2; exit 2; }
    done
fi
RESULTS_DIR="${RESULTS_DIR:-bench/results}"
mkdir -p "$RESULTS_DIR"
STAMP="$(date +%Y%m%d-%H%M%S)"  # in the logs' names: a rerun never replaces the logs a README cites
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2> /dev/null || true
"$python" -c 'import torch, transformers, sentence_transformers as st, accelerate; print("torch", torch.__version__, "transformers", transformers.__version__, "sentence-transformers", st.__version__, "accelerate", accelerate.__version__)'
declare -A status=()

if [[ " $CHECKS " == *" tests "* ]]; then
    # Each of -n N's workers starts a thread a core (14 x 16 on the H200's 16 cores): the suite was cut off
    # at 300 s there, 97% through; with 2 threads a worker it ran whole in 170 s (six slow tests cut at 40 s)
    workers="$(sed -nE 's/(^|.* )-n ?([0-9]+).*/\2/p' <<< "$PYTEST_ARGS")"
    threads="${OMP_NUM_THREADS:-$(( workers > 0 ? ($(nproc) + workers - 1) / workers : $(nproc) ))}"
    # shellcheck disable=SC2086  # PYTEST_ARGS is a list of words
    OMP_NUM_THREADS="$threads" timeout "$TESTS_TIMEOUT" "$python" -m pytest -q -rs -p no:cacheprovider $PYTEST_ARGS \
        2>&1 | tee "$RESULTS_DIR/gpu_tests_$STAMP.log"
    status[tests]=${PIPESTATUS[0]}
fi

if [[ " $CHECKS " == *" fsdp "* ]]; then
    fsdp_dir="$(mktemp -d)"
    trap 'rm -rf "$fsdp_dir"' EXIT
    "$python" -c "from rerank_distill.toy import build_tiny_cross_encoder, synthetic_ranking_data, write_jsonl_records
build_tiny_cross_encoder('$fsdp_dir/student')
write_jsonl_records('$fsdp_dir/triplets.jsonl', [{'query': r['query'], 'positive': p, 'negative': n, 'score': 1.5}
                    for r in synthetic_ranking_data(16, docs_per_query=6, seed=1) for p in r['positive'] for n in r['negative']])"
    # held-out loss selects a checkpoint, so the best one is loaded through the sharded loader; then
    # the run is resumed from its last checkpoint to 12 steps
    launch=("$python" -m accelerate.commands.launch --config_file configs/accelerate_fsdp.yaml
            --num_processes "$processes" --fsdp_transformer_layer_cls_to_wrap BertLayer
            train.py --model_name_or_path "$fsdp_dir/student" --train_data "$fsdp_dir/triplets.jsonl"
            --output_dir "$fsdp_dir/out" --per_device_train_batch_size 8 "${precision[@]}" --report_to none
            --disable_tqdm true --selection_metric loss --eval_share 0.25)
    timeout 120 "${launch[@]}" --max_steps 8 > "$RESULTS_DIR/fsdp_$STAMP.log" 2>&1
    cp "$fsdp_dir/out/training_summary.json" "$fsdp_dir/first_summary.json"
    timeout 120 "${launch[@]}" --max_steps 12 --resume_from_checkpoint last >> "$RESULTS_DIR/fsdp_$STAMP.log" 2>&1
    grep -E "Error|error:|done:|best checkpoint" "$RESULTS_DIR/fsdp_$STAMP.log" | grep -v ChildFailedError | head -20
    "$python" -c "import json; from sentence_transformers.cross_encoder import CrossEncoder
first = json.load(open('$fsdp_dir/first_summary.json'))
resumed = json.load(open('$fsdp_dir/out/training_summary.json'))
keys = ('distributed_type', 'processes', 'steps', 'resumed_from_step', 'final_model', 'best_model_error', 'final_loss')
print('FSDP run:', {k: first[k] for k in keys})
print('FSDP resumed:', {k: resumed[k] for k in keys})
print('its final model loads and scores', CrossEncoder('$fsdp_dir/out').predict([('a query', 'a passage')]))
assert first['distributed_type'] == resumed['distributed_type'] == '$distributed_type'
assert first['final_model'] == 'best checkpoint' and first['best_model_error'] is None, 'best checkpoint not loaded'
assert (resumed['resumed_from_step'], resumed['steps']) == (8, 12), 'not resumed from step 8'"
    status[fsdp]=$?
fi

if [[ " $CHECKS " == *" teacher "* ]] && (( gpus == 0 )); then
    echo "teacher: skipped in the CPU dry run (an 8B-shaped model is a GPU's work)"
elif [[ " $CHECKS " == *" teacher "* ]]; then
    timeout 200 "$python" bench/teacher.py --random_qwen3_8b --device cuda --data "$TEACHER_DATA" \
        --model_path "$TOKENIZER_FROM" --num_queries "$NUM_QUERIES" --candidates_per_query 30 --batch_size "$TEACHER_BATCH_SIZE" \
        --output_json "$RESULTS_DIR/teacher_cuda.json" "$@"
    status[teacher]=$?
fi

failed=0
for check in "${!status[@]}"; do
    echo "$check exit ${status[$check]}"
    (( status[$check] != 0 )) && failed=1
done
exit "$failed"
