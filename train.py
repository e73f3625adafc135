"""Stage 3: train the student cross-encoder on the teacher's margins (MarginMSE).

Reads triplets {"query", "positive", "negative", "score"} (score = teacher margin, from
create_triplets.py) and fine-tunes a one-logit CrossEncoder so that its margin
logit(query, positive) - logit(query, negative) matches the teacher's. Every Hugging Face
training flag works (--learning_rate, --bf16, --resume_from_checkpoint, ...). Unless you pass
them, train.py evaluates and saves on one schedule (--eval_steps/--save_steps 0.1, i.e. 10
times per run), keeps the checkpoint with the lowest eval_loss as the final model
(--load_best_model_at_end) and keeps 2 checkpoints (--save_total_limit). Evaluation uses
--eval_data, or else a held-out share of the training queries (never the test set).
Several GPUs: torchrun --nproc_per_node N train.py ...
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from sentence_transformers.cross_encoder import CrossEncoder, CrossEncoderTrainingArguments
from transformers import TrainerState

from rerank_distill.cli import parse_args, run_main, write_run_args
from rerank_distill.errors import InputError
from rerank_distill.hub import resolve_model
from rerank_distill.training import (
    DistillationTrainer,
    FusedMarginMSELoss,
    LengthGroupedBatchSampler,
    TrackedMarginMSELoss,
    default_training_flags,
    passed_flags,
    read_triplets,
    split_by_query,
    triplets_dataset,
)

logger = logging.getLogger("train")


@dataclass
class ScriptArguments:
    model_name_or_path: str = field(
        metadata={"help": "Student model: a local folder or a hub id, e.g. BAAI/bge-reranker-v2-m3."}
    )
    train_data: str = field(metadata={"help": "Triplets JSONL from create_triplets.py (.gz works)."})
    eval_data: str | None = field(
        default=None,
        metadata={"help": "Triplets JSONL for checkpoint selection (a dev split, never the test set). "
                  "Empty: hold out --eval_share of the training queries."},
    )
    eval_share: float = field(
        default=0.05,
        metadata={"help": "Share of distinct training queries held out for evaluation when there is no "
                  "--eval_data (at least one query; all its triplets go to eval)."},
    )
    max_length: int = field(
        default=512, metadata={"help": "Tokens per (query, passage) pair; longer pairs are truncated."}
    )
    hub: Literal["huggingface", "modelscope"] = field(
        default="huggingface", metadata={"help": "Where a hub id in --model_name_or_path is downloaded from."}
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Download cache for hub models."})
    fused_forward: bool = field(
        default=True,
        metadata={"help": "One forward pass over positive and negative pairs together (same loss, faster). "
                  "--no_fused_forward runs sentence-transformers' MarginMSELoss as is."},
    )
    group_by_length_batches: bool = field(
        default=True,
        metadata={"help": "Batch triplets of similar length to cut padding (ignored if you pass --batch_sampler)."},
    )


def resolve_checkpoint(value: str | None, output_dir: str) -> str | None:
    """--resume_from_checkpoint: a checkpoint folder, or 'last'/'true' for the newest in output_dir."""
    from transformers.trainer_utils import get_last_checkpoint

    if value is None:
        return None
    if value.lower() in ("last", "true"):
        last = get_last_checkpoint(output_dir) if Path(output_dir).is_dir() else None
        if last is None:
            raise InputError(f"--resume_from_checkpoint {value}: no checkpoint-* folder in {output_dir}")
        return last
    if not (Path(value) / "trainer_state.json").is_file():
        raise InputError(f"--resume_from_checkpoint {value}: not a checkpoint folder (no trainer_state.json)")
    return value


def load_data(script: ScriptArguments, evaluate: bool, seed: int):
    """(train, eval) triplet data sets; eval is --eval_data, held-out training queries, or None."""
    train_set = triplets_dataset(read_triplets(script.train_data))
    if not evaluate:
        logger.info("--eval_strategy no: no evaluation, the last step is the final model")
        return train_set, None
    if not script.eval_data:
        return split_by_query(train_set, script.eval_share, seed)
    eval_set = triplets_dataset(read_triplets(script.eval_data))
    if overlap := set(train_set["query"]) & set(eval_set["query"]):
        logger.warning("%d queries of --eval_data are also training queries", len(overlap))
    return train_set, eval_set


def triplet_and_query_count(dataset) -> tuple[int, int]:
    return (len(dataset), len(set(dataset["query"]))) if dataset is not None else (0, 0)


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    passed = passed_flags(argv)
    try:  # transformers checks flag combinations (e.g. mismatched strategies) with ValueError
        script, training = parse_args(
            (ScriptArguments, CrossEncoderTrainingArguments), __doc__, default_training_flags(passed) + argv
        )
    except ValueError as error:
        raise InputError(str(error)) from None
    if "output_dir" not in passed:
        raise InputError("--output_dir is required (the final model and checkpoints go there)")
    if not training.should_log:  # the other torchrun processes log warnings only
        logging.getLogger().setLevel(logging.WARNING)
    resume = resolve_checkpoint(training.resume_from_checkpoint, training.output_dir)

    # Data first: a bad line fails in seconds, before any model download.
    train_set, eval_set = load_data(script, evaluate=training.eval_strategy != "no", seed=training.seed)
    count = {"train": triplet_and_query_count(train_set), "eval": triplet_and_query_count(eval_set)}
    logger.info("train: %d triplets of %d queries; eval: %d triplets of %d queries", *count["train"], *count["eval"])

    model_path = resolve_model(script.model_name_or_path, script.hub, script.cache_dir)
    model = CrossEncoder(model_path, num_labels=1, max_length=script.max_length)
    loss = (FusedMarginMSELoss if script.fused_forward else TrackedMarginMSELoss)(model)
    if script.group_by_length_batches and "batch_sampler" not in passed:
        training.batch_sampler = LengthGroupedBatchSampler
    if training.should_save:
        write_run_args(Path(training.output_dir) / "args.json", script=script, training=training)

    trainer = DistillationTrainer(model=model, args=training, train_dataset=train_set, eval_dataset=eval_set, loss=loss)
    start_step = TrainerState.load_from_json(str(Path(resume) / "trainer_state.json")).global_step if resume else 0
    logger.info("training %s for %s", script.model_name_or_path,
                f"{training.max_steps} steps" if training.max_steps > 0 else f"{training.num_train_epochs:g} epochs")
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=resume)
    seconds = time.perf_counter() - started
    trainer.save_model(training.output_dir)  # every process calls it; only the main one writes

    state = trainer.state
    triplets_trained = loss.padding_stats.triplets * training.world_size  # this process's count, scaled
    summary = {
        "train_triplets": count["train"][0],
        "train_queries": count["train"][1],
        "eval_triplets": count["eval"][0],
        "eval_queries": count["eval"][1],
        "steps": state.global_step,
        "resumed_from_step": start_step,
        "triplets_trained": triplets_trained,
        "seconds": round(seconds, 1),
        "triplets_per_second": round(triplets_trained / max(seconds, 1e-9), 1),
        "best_checkpoint": state.best_model_checkpoint,
        "best_eval_loss": state.best_metric,
        **loss.padding_stats.summary(),  # mean real and padded tokens per pair: what the speed levers change
    }
    logger.info(
        "done: %d steps (%d this run) in %.1f s, %.1f triplets/s; tokens per pair %.1f real of %.1f padded "
        "(%.0f%% padding); final model %s%s", summary["steps"], state.global_step - start_step, seconds,
        summary["triplets_per_second"], summary["mean_real_tokens"], summary["mean_padded_tokens"],
        100 * summary["padding_share"], training.output_dir,
        f" = best checkpoint {state.best_model_checkpoint} (eval_loss {state.best_metric:.4g})"
        if state.best_model_checkpoint and training.load_best_model_at_end else " (last step)",
    )
    return summary


if __name__ == "__main__":
    run_main(main)
