#!/usr/bin/env bash
# Stage 2: turn teacher scores into training records: listwise groups by default, or
# (query, positive, hard negative, margin) triplets / n-tuples (FORMAT).
# Each setting can be set from the environment (TOP_K=16 ./create_triplets.sh) and extra
# arguments are passed on: ./create_triplets.sh --label_margin 1
# The defaults are the best configuration of bench/quality.py (README, "Distillation quality"):
# one listwise group per query holding its whole candidate list, for train.sh's listwise_kl loss.
# The first recipe's triplets: FORMAT=triplets TOP_K=8 NUM_NEGATIVES=4 ./create_triplets.sh
# bash, not sh (dash, busybox) or zsh, which would stop at its arrays with a message that does not say so
# shellcheck disable=SC2292  # [ ], which they have too, not [[ ]]
[ -n "${BASH_VERSION:-}" ] || { echo "create_triplets.sh: run it with bash (bash $0), not sh" >&2; exit 2; }
set -euo pipefail
# The interpreter: python, or python3 where only that is installed (Debian and Ubuntu without
# python-is-python3, Homebrew outside a virtual environment); PYTHON=... names another
python="${PYTHON:-$(command -v python || command -v python3 || echo python)}"
# This file's folder, through any symlink to it (Python's realpath: macOS's readlink has no -f)
here="$("$python" -c 'import os, sys; print(os.path.dirname(os.path.realpath(sys.argv[1])))' "$0")"
# The size settings below that the environment gives: passed even where the format does not read them,
# so that create_triplets.py warns instead of the launcher dropping them unsaid
given="${NUM_NEGATIVES:+NUM_NEGATIVES} ${GROUP_SIZE:+GROUP_SIZE} ${TOP_K:+TOP_K}"  # (set empty: the default, not given)

# Teacher scores written by generate_logits.sh (into its SCORES_DIR): train.jsonl(.gz) gives train_scores.jsonl,
# a folder's split DIR:train gives {DIR's name}_train_scores.jsonl, a hub data set OWNER/NAME[@REV]:train
# {NAME[@REV]}_train_scores.jsonl
SCORES="${SCORES:-${SCORES_DIR:-output/scores}/train_scores.jsonl}"
# Its passages-as-queries lists (generate_logits.sh with PASSAGES_AS_QUERIES > 0), read too when the
# file exists: by default SCORES' name with _scores.jsonl -> _passages_as_queries_scores.jsonl; set
# empty (PASSAGES_AS_QUERIES_SCORES=) to leave it out
PASSAGES_AS_QUERIES_SCORES="${PASSAGES_AS_QUERIES_SCORES-${SCORES%_scores.jsonl}_passages_as_queries_scores.jsonl}"
# Where the records go (the run's arguments are written beside it as train_triplets.args.json; train.py reads it)
TRIPLETS="${TRIPLETS:-output/triplets/train_triplets.jsonl}"
# Record layout: triplets (margin per pair), ntuples (one positive, several negatives, raw scores)
# or listwise (the positive first, then GROUP_SIZE - 1 negatives, raw scores and gold labels)
FORMAT="${FORMAT:-listwise}"
# Positives: teacher (the TOP_K best-scored), labels (gold label > 0; the input needs labels) or both
POSITIVES="${POSITIVES:-teacher}"
# How many of each query's best-scored passages the teacher rule takes as positives
TOP_K="${TOP_K:-1}"
# Negatives: hardest (ranked just below the positive), random (seeded draw from all below) or mixed (half each)
NEGATIVES="${NEGATIVES:-hardest}"
# Negatives per positive for triplets and ntuples
NUM_NEGATIVES="${NUM_NEGATIVES:-4}"
# Listwise only: passages per group, the positive included (32 holds a whole StackOverflowDupQuestions list)
GROUP_SIZE="${GROUP_SIZE:-32}"
# Skip pairs whose teacher margin is below this many logits (near-ties); 0 keeps every positive margin
MIN_MARGIN="${MIN_MARGIN:-0}"
# Seed for random and mixed negatives: the same seed gives the same output
SEED="${SEED:-42}"
# Download source for SCORES given as a hub data set (NAME:SPLIT): huggingface or modelscope
HUB="${HUB:-huggingface}"

# The settings as the command line leaves them: the passages-as-queries lists carry no gold labels, so
# they are left out when the records need labels on every line; a flag the settings never read is passed only
# when its variable was set
positives="$POSITIVES"
format="$FORMAT"
needs_labels=false
inputs_given=false
previous=""
for arg in "$@"; do
    case "$arg" in
        --label_margin | --label_margin=* | --label-margin | --label-margin=*) needs_labels=true ;;
        --positives=*) positives="${arg#--positives=}" ;;
        --format=*) format="${arg#--format=}" ;;
        --input_path | --input_path=* | --input-path | --input-path=*) inputs_given=true ;;
        -h | --help) exec "$python" "$here/create_triplets.py" --help ;;  # before the notes below, which would not apply
    esac
    case "$previous" in
        --positives) positives="$arg" ;;
        --format) format="$arg" ;;
    esac
    previous="$arg"
done
size_args=()
if [[ "$format" != "listwise" || "$given" == *NUM_NEGATIVES* ]]; then
    size_args+=(--num_negatives "$NUM_NEGATIVES")
fi
if [[ "$format" == "listwise" || "$given" == *GROUP_SIZE* ]]; then
    size_args+=(--group_size "$GROUP_SIZE")
fi
if [[ "$positives" != "labels" || "$given" == *TOP_K* ]]; then
    size_args+=(--top_k "$TOP_K")
fi
if [[ "$positives" != "teacher" ]]; then
    needs_labels=true
fi
home=~  # a leading ~'s folder: $HOME, or where it is not set (env -i) the password database's, as Python reads it
# --input_path on the command line replaces SCORES and its passages-as-queries lists
input_args=(--input_path "$SCORES")
if [[ "$inputs_given" == "true" ]]; then
    input_args=()
# (a leading ~ left by the shell, SCORES="~/out/...", is the home folder, as the stages read it)
elif [[ -n "$PASSAGES_AS_QUERIES_SCORES" && -e "${PASSAGES_AS_QUERIES_SCORES/#\~\//$home/}" ]]; then
    if [[ "${PASSAGES_AS_QUERIES_SCORES/#\~\//$home/}" -ot "${SCORES/#\~\//$home/}" ]]; then
        # stage 1 writes them after SCORES in one run: older, they were left by a run on other data or settings
        echo "create_triplets.sh: leaving out $PASSAGES_AS_QUERIES_SCORES, older than $SCORES (left by an earlier" \
             "stage 1 run?); score them again with PASSAGES_AS_QUERIES, or touch the file to use it" >&2
    elif [[ "$needs_labels" == "true" ]]; then
        echo "create_triplets.sh: leaving out $PASSAGES_AS_QUERIES_SCORES (no gold labels, which these options need)" >&2
    else
        echo "create_triplets.sh: adding the passages-as-queries lists of $PASSAGES_AS_QUERIES_SCORES" >&2
        input_args+=("$PASSAGES_AS_QUERIES_SCORES")
    fi
fi

"$python" "$here/create_triplets.py" \
    ${input_args[@]+"${input_args[@]}"} \
    --output_path "$TRIPLETS" \
    --format "$FORMAT" \
    --positives "$POSITIVES" \
    --negatives "$NEGATIVES" \
    ${size_args[@]+"${size_args[@]}"} \
    --min_margin "$MIN_MARGIN" \
    --seed "$SEED" \
    --hub "$HUB" \
    "$@"
