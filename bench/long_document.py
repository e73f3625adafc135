"""Peak memory and seconds of each stage on data holding one very long document (a scraped book,
a log dump), with texts cut before tokenizing (rerank_distill.long_texts, the default) and
without (each text tokenized whole, as before), each run in a fresh process, alternating.

    python bench/long_document.py                          # tiny local models, a 20 MB document
    python bench/long_document.py --document_mb 5 --teacher output/bench_models/smollm2-135m-instruct \\
        --student output/bench_models/minilm-l6-cross-encoder

The data: the first --queries queries of --data, the first of them given the long document as one
more positive. Stage 1 scores it with the LLM judge --teacher, stage 2 makes triplets of the scores
(the long document among them), train.py trains --student for 3 steps on them, and evaluation.py
scores the data with --student. Prints peak RSS (MiB) and seconds for both ways and their ratio;
writes JSON. Without cutting, a 20 MB document costs each stage several GB: leave the memory.
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rerank_distill.cli import run_main  # noqa: E402
from rerank_distill.jsonl import read_jsonl  # noqa: E402

from bench.common import SHARED_DATA, bench_parser, machine, require_file, write_results  # noqa: E402
from bench.memory import run_measured  # noqa: E402

# Run in the child before any stage module imports the function, so every stage takes the whole texts.
TOKENIZE_WHOLE = "import rerank_distill.long_texts as m; m.clip_long_texts = lambda tokenizer, texts, limit: list(texts)"


def data_with_a_long_document(source: Path, queries: int, megabytes: float, target: Path) -> Path:
    """The first ``queries`` records of ``source``, the first given a document of ``megabytes`` MB
    of words drawn from the data's own text as one more positive."""
    records = [record for _, record in zip(range(queries), (record for _, record in read_jsonl(source)))]
    words = " ".join(text for record in records for text in record["positive"] + record["negative"]).split()
    rng = random.Random(0)
    document, size = [], 0
    while size < megabytes * 1e6:
        word = rng.choice(words)
        document.append(word)
        size += len(word) + 1
    records[0] = {**records[0], "positive": [*records[0]["positive"], " ".join(document)]}
    target.write_text("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records), encoding="utf-8")
    return target


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--teacher", default=None, help="Stage 1's LLM judge (causal LM); default: a tiny random "
                        "Qwen3 built here.")
    parser.add_argument("--student", default=None, help="Cross-encoder for train.py and evaluation.py; default: a "
                        "tiny random BERT built here.")
    parser.add_argument("--data", default=str(SHARED_DATA / "dev.jsonl"), help="MTEB reranking JSONL.")
    parser.add_argument("--queries", type=int, default=5, help="Queries of --data to use.")
    parser.add_argument("--document_mb", type=float, default=20.0, help="Size of the long document in MB.")
    parser.add_argument("--max_length", type=int, default=512, help="--max_length of every stage.")
    parser.add_argument("--output_json", default="bench/results/long_document.json",
                        help="The figures, or beside it with the date and time where that file exists.")
    args = parser.parse_args()
    require_file(args.data, "--data")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        teacher, student = args.teacher, args.student
        if teacher is None:
            from rerank_distill.toy import build_tiny_qwen3

            teacher = str(build_tiny_qwen3(tmp / "tiny-qwen3", hidden_size=64))
        if student is None:
            from rerank_distill.toy import build_tiny_cross_encoder

            student = str(build_tiny_cross_encoder(tmp / "tiny-cross-encoder"))
        data = data_with_a_long_document(Path(args.data), args.queries, args.document_mb, tmp / "long.jsonl")
        length = ["--max_length", str(args.max_length)]
        results: dict[str, dict[str, dict[str, float]]] = {}
        for way, setup in (("cut", ""), ("whole", TOKENIZE_WHOLE)):
            run = tmp / way
            stages = {
                "generate_logits": ["--model_path", teacher, "--input_path", str(data), "--output_dir", str(run),
                                    "--backend", "hf", "--no_show_progress", *length],
                "create_triplets": ["--input_path", str(run / "long_scores.jsonl"),
                                    "--output_path", str(run / "triplets.jsonl")],
                "train": ["--model_name_or_path", student, "--train_data", str(run / "triplets.jsonl"),
                          "--output_dir", str(run / "model"), "--max_steps", "3", "--per_device_train_batch_size", "4",
                          "--use_cpu", "--save_strategy", "no", "--eval_strategy", "no", "--report_to", "none",
                          "--disable_tqdm", "True", *length],
                "evaluation": ["--model_before_path", student, "--dataset_path", str(data),
                               "--output_path", str(run / "evaluation.json"), *length],
            }  # fmt: skip
            for stage, argv in stages.items():
                peak, seconds = run_measured(stage, argv, setup)
                results.setdefault(stage, {})[way] = {"peak_rss_mib": peak, "seconds": seconds}
                print(f"{stage:<16} texts {way:<5}: peak RSS {peak:8.0f} MiB, {seconds:7.1f} s", flush=True)
    print(f"\n{'stage':<16} {'peak RSS cut/whole':>20} {'seconds cut/whole':>20}")
    for stage, ways in results.items():
        cut, whole = ways["cut"], ways["whole"]
        print(f"{stage:<16} {cut['peak_rss_mib'] / whole['peak_rss_mib']:>20.3f} {cut['seconds'] / whole['seconds']:>20.3f}")
    written = write_results(args.output_json, {
        "benchmark": "long_document", "machine": machine(), "data": args.data, "queries": args.queries,
        "document_mb": args.document_mb, "max_length": args.max_length,
        "teacher": Path(teacher).name if args.teacher else "tiny random Qwen3 (hidden 64)",
        "student": Path(student).name if args.student else "tiny random BERT",
        "stages": results,
    })  # fmt: skip
    print("wrote", written)


if __name__ == "__main__":
    run_main(main)  # a user mistake: one error line, not a traceback
