#!/usr/bin/env bash
# The whole pipeline on an offline demo: a synthetic data set and tiny random-weight models,
# all built here (no network), so the four stages run on a laptop CPU in a few minutes.
# The models are random, so the demo's metrics are noise: it shows the plumbing, not a result.
# bash, not sh (dash, busybox) or zsh, which would stop at its arrays with a message that does not say so
# shellcheck disable=SC2292  # [ ], which they have too, not [[ ]]
[ -n "${BASH_VERSION:-}" ] || { echo "demo.sh: run it with bash (bash $0), not sh" >&2; exit 2; }
set -euo pipefail
# The interpreter: python, or python3 where only that is installed (Debian and Ubuntu without
# python-is-python3, Homebrew outside a virtual environment); PYTHON=... names another
python="${PYTHON:-$(command -v python || command -v python3 || echo python)}"
# This file's folder, through any symlink to it (Python's realpath: macOS's readlink has no -f)
here="$("$python" -c 'import os, sys; print(os.path.dirname(os.path.realpath(sys.argv[1])))' "$0")"
# DEMO_DIR and PYTHON given relative to the folder the demo is run in, which the cd below leaves
if [[ -n "${DEMO_DIR:-}" && "$DEMO_DIR" != /* && "$DEMO_DIR" != "~"* ]]; then
    DEMO_DIR="$PWD/$DEMO_DIR"
fi
if [[ "$python" == */* && "$python" != /* ]]; then
    python="$PWD/$python"
fi
if [[ -n "${PYTHON:-}" ]]; then
    export PYTHON="$python"  # (the stages' launchers read it too)
fi
cd "$here"
# The same demo wherever it runs: launcher settings a shell has exported (LOSS, FORMAT, NUM_GPUS, ...) would
# flow into its stages, so they are dropped here; PYTHON and DEMO_DIR stay
# shellcheck disable=SC2046  # (a name a word)
unset $(sed -nE 's/^([A-Z_][A-Z0-9_]*)=.*/\1/p' generate_logits.sh create_triplets.sh train.sh evaluation.sh)

# Where the demo's data, models and outputs go (no spaces: the launchers take space-separated lists)
DEMO_DIR="${DEMO_DIR:-output/demo}"

"$python" -m rerank_distill.toy "$DEMO_DIR"

# (the teacher and the inputs as flags: the launcher's TEACHER and INPUTS are space-separated lists,
# which a DEMO_DIR with a space in it would split)
SCORES_DIR="$DEMO_DIR/scores" \
INSTRUCTION="Retrieve questions about the same problem" \
BACKEND=hf \
TEACHER_BATCH_SIZE=16 \
TEACHER_MAX_LENGTH=512 \
    bash generate_logits.sh --model_path "$DEMO_DIR/models/teacher-tiny-qwen3" \
        --input_path "$DEMO_DIR/data/train.jsonl" "$DEMO_DIR/data/test.jsonl"

SCORES="$DEMO_DIR/scores/train_scores.jsonl" \
TRIPLETS="$DEMO_DIR/triplets/train_triplets.jsonl" \
    bash create_triplets.sh

STUDENT="$DEMO_DIR/models/student-tiny-bert" \
TRAIN_DATA="$DEMO_DIR/triplets/train_triplets.jsonl" \
SELECTION_DATA="$DEMO_DIR/scores/train_scores.jsonl" \
MODEL_DIR="$DEMO_DIR/model" \
MAX_LENGTH=128 \
BATCH_SIZE=16 \
LEARNING_RATE=1e-3 \
EPOCHS=2 \
    bash train.sh --overwrite_output_dir

MODEL_BEFORE="$DEMO_DIR/models/student-tiny-bert" \
MODEL_AFTER="$DEMO_DIR/model" \
DATASET="$DEMO_DIR/data/test.jsonl" \
TEACHER_SCORES="$DEMO_DIR/scores/test_scores.jsonl" \
REPORT="$DEMO_DIR/evaluation.json" \
MAX_LENGTH=128 \
    bash evaluation.sh

echo "demo finished: $DEMO_DIR/evaluation.json"
