"""What the benchmarks share: alternating timed runs, medians, the machine's description and
writing results as JSON."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "semeval16b"


def machine() -> dict:
    import torch

    info = {"platform": platform.platform(), "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    info["versions"] = {}
    for package in ("torch", "transformers", "sentence-transformers", "vllm"):
        try:
            info["versions"][package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return info


def bench_parser(description: str | None) -> argparse.ArgumentParser:
    """An argument parser whose --help keeps the docstring's layout and shows every default."""
    from rerank_distill.cli import HelpFormatter

    return argparse.ArgumentParser(description=description, formatter_class=HelpFormatter)


def require_cuda(what: str) -> None:
    """InputError unless a CUDA GPU is present: ``what`` is a GPU's work (minutes a step on a CPU)."""
    import torch

    from rerank_distill.errors import InputError

    if not torch.cuda.is_available():
        raise InputError(f"{what} needs a CUDA GPU, and none is present here")


def require_file(path: str | Path, flag: str) -> None:
    """InputError unless ``path`` exists, naming the flag that gave it."""
    from rerank_distill.errors import InputError

    if not Path(path).exists():
        raise InputError(f"{flag} {path}: no such file or folder")


def alternate(runs: dict[str, Callable[[], float]], repetitions: int) -> dict[str, list[float]]:
    """Call each run ``repetitions`` times, interleaved (A B A B ...; the order flips every
    repetition so neither side always runs on a warmer machine). Each run returns its own
    measured rate; returns the list of rates per run."""
    rates: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for repetition in range(repetitions):
        for name in names if repetition % 2 == 0 else reversed(names):
            rates[name].append(runs[name]())
    return rates


def timed(function: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def median(values: list[float]) -> float:
    return statistics.median(values)


def write_results(path: str | Path, results: dict, keep_existing: bool = True) -> Path:
    """Write ``results`` as JSON to ``path`` and return where: where a file of that name exists
    (figures a README may cite) and ``keep_existing``, beside it with the date and time in its name,
    so a rerun never replaces earlier figures."""
    path = Path(path)
    if path.exists() and keep_existing:
        path = path.with_name(f"{path.stem}.{time.strftime('%Y%m%d-%H%M%S')}{path.suffix}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return path


def print_table(title: str, rows: list[tuple[str, float]], unit: str, baseline: str) -> None:
    base = dict(rows)[baseline]
    print(f"\n{title}")
    print(f"{'run':<34} {unit:>14} {'x baseline':>11}")
    for name, rate in rows:
        print(f"{name:<34} {rate:>14.2f} {rate / base:>11.2f}")


def embedding_teacher_scores(teacher: str, inputs: list[Path], out_dir: Path, score_scale: float = 10.0,
                             passages_as_queries: int = 0) -> list[Path]:
    """Stage 1 on each input with an embedding teacher (score = score_scale x cosine), as
    generate_logits.py runs it; a finished output is reused (stage 1 resumes). The output paths:
    each input's scores, or with ``passages_as_queries`` its passages-as-queries scores."""
    import generate_logits
    from rerank_distill.scoring import output_path_for

    generate_logits.main([
        "--teacher_type", "embedding", "--model_path", teacher, "--score_scale", str(score_scale),
        "--input_path", *map(str, inputs), "--output_dir", str(out_dir), "--no_show_progress",
        "--passages_as_queries", str(passages_as_queries),
    ])  # fmt: skip
    return [output_path_for(str(source), out_dir, passages_as_queries=passages_as_queries) for source in inputs]


def train_original_recipe(student: str, triplets: Path, out: Path, **training_args):
    """The original recipe as written: its triplets, a one-logit CrossEncoder, MarginMSELoss and
    CrossEncoderTrainer with default batching; ``training_args`` are CrossEncoderTrainingArguments
    (max_length goes to the model). Saves the final model in ``out``; returns the trainer, the
    train() result, the seconds of train() alone and the number of triplets."""
    from datasets import Dataset
    from sentence_transformers.cross_encoder import CrossEncoder, CrossEncoderTrainer, CrossEncoderTrainingArguments
    from sentence_transformers.cross_encoder.losses import MarginMSELoss

    from rerank_distill.jsonl import read_jsonl

    rows = [record for _, record in read_jsonl(triplets)]
    dataset = Dataset.from_dict({
        "query": [r["query"] for r in rows], "positive": [r["positive"] for r in rows],
        "negative": [r["negative"] for r in rows], "label": [r["score"] for r in rows],
    })  # fmt: skip
    model = CrossEncoder(student, num_labels=1, max_length=training_args.pop("max_length"))
    args = CrossEncoderTrainingArguments(output_dir=str(out), save_strategy="no", eval_strategy="no", report_to="none",
                                         **training_args)
    trainer = CrossEncoderTrainer(model=model, args=args, train_dataset=dataset, loss=MarginMSELoss(model))
    started = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - started
    trainer.save_model(str(out))
    return trainer, result, seconds, len(rows)
