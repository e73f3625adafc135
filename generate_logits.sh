#!/usr/bin/env bash
# Stage 1: the teacher scores every (query, passage) pair. Safe to interrupt: run it again to continue.
# Each setting can be set from the environment (TEACHER=path ./generate_logits.sh) and extra
# arguments are passed on: ./generate_logits.sh --backend hf --batch_size 8
# bash, not sh (dash, busybox) or zsh, which would stop at its arrays with a message that does not say so
# shellcheck disable=SC2292  # [ ], which they have too, not [[ ]]
[ -n "${BASH_VERSION:-}" ] || { echo "generate_logits.sh: run it with bash (bash $0), not sh" >&2; exit 2; }
set -euo pipefail
# The interpreter: python, or python3 where only that is installed (Debian and Ubuntu without
# python-is-python3, Homebrew outside a virtual environment); PYTHON=... names another
python="${PYTHON:-$(command -v python || command -v python3 || echo python)}"
# This file's folder, through any symlink to it (Python's realpath: macOS's readlink has no -f)
here="$("$python" -c 'import os, sys; print(os.path.dirname(os.path.realpath(sys.argv[1])))' "$0")"
instruction_given="${INSTRUCTION:+yes}"  # set in the environment (not empty): passed whatever the teacher (the script warns if unread)

# Teacher: a local folder or hub id (Qwen3-Reranker-8B needs a GPU; vLLM is used when installed).
# Several, space-separated, ensemble their scores (mean of per-query z-scores). A path with a space
# cannot go in that list: give such models as a flag instead (--model_path 'my models/judge').
TEACHER="${TEACHER:-Qwen/Qwen3-Reranker-8B}"
# Kind of teacher: llm_yesno (Qwen3-Reranker), llm_labels, cross_encoder or embedding;
# one for every model, or space-separated, one per model in the same order
TEACHER_TYPE="${TEACHER_TYPE:-llm_yesno}"
# Data sets to score, space-separated: MTEB reranking JSONL(.gz) or hub data sets NAME[:SPLIT] (data/README.md says how to get the reference task).
# Score the test split too, so evaluation can report the teacher's own metrics. A path with a space
# cannot go in a space-separated list: give such paths as a flag instead (--input_path 'my data/a.jsonl').
INPUTS="${INPUTS-data/train.jsonl.gz data/test.jsonl.gz}"
# Where {name}_scores.jsonl files go (create_triplets.sh and train.sh read them from here too)
SCORES_DIR="${SCORES_DIR:-output/scores}"
# The task's own instruction (this one is MTEB's for StackOverflowDupQuestions)
INSTRUCTION="${INSTRUCTION:-Retrieve duplicate questions from StackOverflow forum}"
# auto (vLLM on a GPU when installed, else transformers), vllm or hf
BACKEND="${BACKEND:-auto}"
# Inputs per forward pass (vLLM batches by itself)
TEACHER_BATCH_SIZE="${TEACHER_BATCH_SIZE:-32}"
# Longest input in tokens, capped at the model's own limit; an LLM judge cuts only the query/document text
TEACHER_MAX_LENGTH="${TEACHER_MAX_LENGTH:-2048}"
# Download source for hub ids: huggingface or modelscope
HUB="${HUB:-huggingface}"
# N > 0: also score up to N passages of each list of the FIRST input of INPUTS (the training data;
# inputs given as --input_path flags instead: every one of them) as queries
# against the rest of their list, into {name}_passages_as_queries_scores.jsonl, which
# create_triplets.sh then adds. For tasks whose passages are queries too (duplicate questions) it
# gave the best student in bench/quality.py (N = 32: every passage; then EPOCHS=2 ./train.sh), but it
# costs the teacher up to N x list length more pairs (10x measured on SemEval's lists of 10; lists of
# 30 candidates would make it about 30x), so it is off by default.
PASSAGES_AS_QUERIES="${PASSAGES_AS_QUERIES:-0}"

# (words split at spaces, tabs and newlines: INPUTS="$(ls data/*.jsonl)" or a list over several lines; read stops at
# the first line without -d '', and with it returns 1 at the end of its input, hence || true)
read -r -d '' -a input_paths <<< "$INPUTS" || true
read -r -d '' -a model_paths <<< "$TEACHER" || true
read -r -d '' -a teacher_types <<< "$TEACHER_TYPE" || true
# The script adds repeated --model_path/--teacher_type flags together (several teachers), so one
# given on this command line replaces TEACHER/TEACHER_TYPE instead of adding a teacher to them.
# (an array that may be empty is expanded as ${a[@]+"${a[@]}"}: a bare "${a[@]}" of an empty one stops
# the launcher under set -u in bash before 4.4, macOS's bash 3.2 among them)
model_args=(--model_path ${model_paths[@]+"${model_paths[@]}"})
type_args=(--teacher_type ${teacher_types[@]+"${teacher_types[@]}"})
inputs_given=false
check_first=true  # a run that scores nothing needs no check ahead of it
command_line_types=()  # --teacher_type's values on the command line
reading_types=false
for arg in "$@"; do
    if [[ "$reading_types" == "true" && "$arg" != -* ]]; then
        command_line_types+=("$arg")
        continue
    fi
    reading_types=false
    case "$arg" in
        --model_path | --model_path=* | --model-path | --model-path=*) model_args=() ;;
        --teacher_type | --teacher-type) type_args=(); reading_types=true ;;
        --teacher_type=* | --teacher-type=*) type_args=(); command_line_types+=("${arg#*=}") ;;
        --input_path | --input_path=* | --input-path | --input-path=*) inputs_given=true ;;
        --merge_shards | --merge_shards=* | --merge-shards | --merge-shards=* | --check_inputs_only | \
            --check_inputs_only=* | --check-inputs-only | --check-inputs-only=*) check_first=false ;;
        -h | --help) exec "$python" "$here/generate_logits.py" --help ;;
    esac
done
# --passages_as_queries N on this command line sets PASSAGES_AS_QUERIES (the first input only): passed on to
# the one run over INPUTS, it would also score the test data's passages as queries. With inputs named as
# --input_path flags it goes to that run, for each of them, as PASSAGES_AS_QUERIES does.
if [[ "$inputs_given" == "false" ]]; then
    rest=()
    taking=false
    for arg in "$@"; do
        if [[ "$taking" == "true" ]]; then
            PASSAGES_AS_QUERIES="$arg" taking=false
            continue
        fi
        case "$arg" in
            --passages_as_queries | --passages-as-queries) taking=true; continue ;;
            --passages_as_queries=* | --passages-as-queries=*) PASSAGES_AS_QUERIES="${arg#*=}"; continue ;;
        esac
        rest+=("$arg")
    done
    if [[ "$taking" == "true" ]]; then
        rest+=(--passages_as_queries)  # no value: the script says so
    fi
    set -- ${rest[@]+"${rest[@]}"}
fi

# A list setting that is one existing path with a space in it would be split into words that are not
# (unless a flag replaces that setting)
for setting in INPUTS TEACHER; do
    flag=--input_path replaced="$inputs_given"
    if [[ "$setting" == TEACHER ]]; then
        flag=--model_path replaced=false
        (( ${#model_args[@]} > 0 )) || replaced=true
    fi
    if [[ "$replaced" == false && "${!setting}" == *" "* && -e "${!setting}" ]]; then
        value="${!setting}"
        quoted="'${value//\'/\'\\\'\'}'"  # (in single quotes, each ' of it as '\'': the command pastes as it is)
        echo "generate_logits.sh: $setting is one path with a space in it, '${!setting}', but it is a space-separated" \
             "list; give that path as a flag instead: ./generate_logits.sh $flag $quoted" >&2
        exit 2
    fi
done

# a whole number: in (( )) below, 1.5, "2 3" or 08 (a bad octal number) were false after a bash error, and the
# inputs were scored without their passages-as-queries lists
if [[ ! "$PASSAGES_AS_QUERIES" =~ ^[0-9]+$ ]]; then
    echo "generate_logits.sh: PASSAGES_AS_QUERIES must be a whole number of passages (0: off), not '$PASSAGES_AS_QUERIES'" >&2
    exit 2
fi
PASSAGES_AS_QUERIES="$((10#$PASSAGES_AS_QUERIES))"  # 08 is 8

# INSTRUCTION is an LLM judge's (the llm_ types): unless set in the environment, it is passed only where the
# teacher types (the command line's, else TEACHER_TYPE) name one, as the script warns of a flag no teacher reads
types=(${teacher_types[@]+"${teacher_types[@]}"})
if (( ${#type_args[@]} == 0 )); then
    types=(${command_line_types[@]+"${command_line_types[@]}"})
fi
instruction_args=()
if [[ -n "$instruction_given" || " ${types[*]-} " == *" llm_"* ]]; then
    instruction_args=("--instruction=$INSTRUCTION")  # one word: an instruction may begin with "-"
fi

score() {
    "$python" "$here/generate_logits.py" \
        ${model_args[@]+"${model_args[@]}"} \
        ${type_args[@]+"${type_args[@]}"} \
        --output_dir "$SCORES_DIR" \
        ${instruction_args[@]+"${instruction_args[@]}"} \
        --backend "$BACKEND" \
        --batch_size "$TEACHER_BATCH_SIZE" \
        --max_length "$TEACHER_MAX_LENGTH" \
        --hub "$HUB" \
        "$@"
}

if [[ "$inputs_given" == "true" ]]; then
    # inputs named on the command line: one run over them (with PASSAGES_AS_QUERIES, for each of them)
    paq_args=()
    if (( PASSAGES_AS_QUERIES > 0 )); then
        paq_args=(--passages_as_queries "$PASSAGES_AS_QUERIES")
        echo "generate_logits.sh: PASSAGES_AS_QUERIES applies to every --input_path named on the command line;" \
             "name only the training data there (and score the test data in a run without it)" >&2
    fi
    score ${paq_args[@]+"${paq_args[@]}"} "$@"
elif (( ${#input_paths[@]} == 0 )); then
    echo "generate_logits.sh: INPUTS is empty: set it to the data sets to score (or pass --input_path)" >&2
    exit 2
elif (( PASSAGES_AS_QUERIES > 0 )); then
    # the first input with its passages-as-queries lists, then the others: each file is scored by one
    # run only, so a flag such as --overwrite never makes a second run score a file again. The others
    # are checked first, so a broken one stops the launcher before the first run's hours of scoring.
    if (( ${#input_paths[@]} > 1 )) && [[ "$check_first" == "true" ]]; then
        score --input_path "${input_paths[@]:1}" --check_inputs_only "$@"
    fi
    score --input_path "${input_paths[0]}" --passages_as_queries "$PASSAGES_AS_QUERIES" "$@"
    if (( ${#input_paths[@]} > 1 )); then
        score --input_path "${input_paths[@]:1}" "$@"
    fi
else
    score --input_path "${input_paths[@]}" "$@"
fi
