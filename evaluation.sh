#!/usr/bin/env bash
# Stage 4: MAP, MRR@10 and NDCG@10 of the model before and after distillation (and of the teacher);
# graded data (e.g. ESCI's E/S/C/I) adds each model's mean score per grade and a label teacher's accuracy.
# Each setting can be set from the environment (MODEL_AFTER=path ./evaluation.sh) and extra
# arguments are passed on: ./evaluation.sh --protocol sentence-transformers --dtype bfloat16
# bash, not sh (dash, busybox) or zsh, which would stop at its arrays with a message that does not say so
# shellcheck disable=SC2292  # [ ], which they have too, not [[ ]]
[ -n "${BASH_VERSION:-}" ] || { echo "evaluation.sh: run it with bash (bash $0), not sh" >&2; exit 2; }
set -euo pipefail
# The interpreter: python, or python3 where only that is installed (Debian and Ubuntu without
# python-is-python3, Homebrew outside a virtual environment); PYTHON=... names another
python="${PYTHON:-$(command -v python || command -v python3 || echo python)}"
# This file's folder, through any symlink to it (Python's realpath: macOS's readlink has no -f)
here="$("$python" -c 'import os, sys; print(os.path.dirname(os.path.realpath(sys.argv[1])))' "$0")"

# The student before distillation: a CrossEncoder folder or hub id (train.sh's STUDENT)
MODEL_BEFORE="${MODEL_BEFORE:-${STUDENT:-BAAI/bge-reranker-v2-m3}}"
# The distilled student written by train.sh (into its MODEL_DIR); set empty (MODEL_AFTER=) to evaluate MODEL_BEFORE alone
MODEL_AFTER="${MODEL_AFTER-${MODEL_DIR:-output/model}}"
# Labelled test data: MTEB reranking or pos/neg JSONL, graded rows (JSONL or Parquet), a data-set folder
# DIR:SPLIT or a hub data set NAME:SPLIT
DATASET="${DATASET:-data/test.jsonl.gz}"
# Teacher scores on the same test data from generate_logits.sh: by default DATASET's own file in
# generate_logits.sh's SCORES_DIR ({name}_scores.jsonl), where it exists; set empty (TEACHER_SCORES=)
# to leave the teacher out
teacher_scores_given="${TEACHER_SCORES+yes}"
# (the name stage 1 gave its output: data/test.jsonl.gz -> test, DIR:test -> {DIR's name}_test, NAME:test -> ..._test;
# a leading ~ is the home folder there, as the stages read it where the shell left it alone: DATASET="~/so:test")
dataset_name="$("$python" -c 'import os, sys; sys.path.insert(0, sys.argv[1])  # (PYTHONPATH would split a ":" in it)
from rerank_distill.formats import source_stem; print(source_stem(os.path.expanduser(sys.argv[2])))' "$here" "$DATASET")"
TEACHER_SCORES="${TEACHER_SCORES-${SCORES_DIR:-output/scores}/${dataset_name}_scores.jsonl}"
# Where the JSON report goes (the run's arguments are written beside it as evaluation.args.json)
REPORT="${REPORT:-output/evaluation.json}"
# Download source for hub ids (models and data sets): huggingface or modelscope
HUB="${HUB:-huggingface}"
# Tokens per (query, passage) pair for both models (train.sh's MAX_LENGTH, where exported); empty = each
# model's own limit (the distilled one keeps the MAX_LENGTH it was trained with, the one before its own)
MAX_LENGTH="${MAX_LENGTH:-}"

# The command line's --teacher_scores replaces TEACHER_SCORES; its --dataset_path leaves out the default
# TEACHER_SCORES, which are DATASET's
teacher_scores_flag=false
dataset_flag=false
for arg in "$@"; do
    case "$arg" in
        --teacher_scores | --teacher_scores=* | --teacher-scores | --teacher-scores=*) teacher_scores_flag=true ;;
        --dataset_path | --dataset_path=* | --dataset-path | --dataset-path=*) dataset_flag=true ;;
        -h | --help) exec "$python" "$here/evaluation.py" --help ;;  # before the warnings below, which would not apply
    esac
done

# These flags are passed only when set; the odd expansion below keeps an empty array safe under set -u in bash 3
optional=()
if [[ -n "$MODEL_AFTER" ]]; then
    optional+=(--model_after_path "$MODEL_AFTER")
fi
if [[ -n "$MAX_LENGTH" ]]; then
    optional+=(--max_length "$MAX_LENGTH")
fi
home=~  # a leading ~'s folder: $HOME, or where it is not set (env -i) the password database's, as Python reads it
if [[ "$teacher_scores_flag" == "true" ]]; then
    :  # the command line's --teacher_scores is evaluation.py's to check
elif [[ "$dataset_flag" == "true" && -z "$teacher_scores_given" ]]; then
    echo "evaluation.sh: --dataset_path on the command line: the default TEACHER_SCORES (of $DATASET) are left out;" \
         "pass --teacher_scores with stage 1's scores of that data to report the teacher" >&2
elif [[ -n "$TEACHER_SCORES" && ( -e "${TEACHER_SCORES/#\~\//$home/}" || -n "$teacher_scores_given" ) ]]; then
    optional+=(--teacher_scores "$TEACHER_SCORES")  # one you set goes to evaluation.py, which checks it
elif [[ -n "$TEACHER_SCORES" ]]; then
    echo "evaluation.sh: no teacher scores at $TEACHER_SCORES (the default), so the report leaves the teacher out;" \
         "set TEACHER_SCORES to stage 1's scores of $DATASET" >&2
fi

"$python" "$here/evaluation.py" \
    --model_before_path "$MODEL_BEFORE" \
    --dataset_path "$DATASET" \
    --output_path "$REPORT" \
    --hub "$HUB" \
    ${optional[@]+"${optional[@]}"} \
    "$@"
