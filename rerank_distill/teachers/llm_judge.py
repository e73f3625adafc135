"""LLM judges: a causal LM asked the Qwen3-Reranker question, scored from its answer-token logits."""

from __future__ import annotations

import os
from typing import Callable

from rerank_distill.prompts import YES_NO_SYSTEM, JudgePrompt, single_token_id
from rerank_distill.teachers import TeacherScores, yes_minus_no


def load_tokenizer(model_path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_path)


class YesNoJudge:
    """Qwen3-Reranker style: score = logit("yes") - logit("no") at the last prompt position."""

    def __init__(
        self,
        model_path: str,
        backend: str,
        instruction: str,
        max_length: int,
        batch_size: int,
        device: str | None = None,
        dtype: str = "auto",
        prefix_cache: bool = True,
        vllm_options: dict | None = None,
    ):
        tokenizer = load_tokenizer(model_path)
        self.prompt = JudgePrompt(tokenizer, YES_NO_SYSTEM, instruction, max_length)
        yes_no_ids = [single_token_id(tokenizer, "yes", model_path), single_token_id(tokenizer, "no", model_path)]
        self.name = os.path.basename(os.path.normpath(model_path))
        self.config = {
            "teacher_type": "llm_yesno",
            "model_path": model_path,
            "instruction": instruction,
            "max_length": max_length,
            "backend": backend,
            "dtype": dtype,
        }
        if backend == "vllm":
            from rerank_distill.teachers.llm_vllm import VllmJudge

            self.engine = VllmJudge(model_path, self.prompt, ["yes", "no"], yes_no_ids, dtype, vllm_options or {})
        else:
            from rerank_distill.teachers.llm_hf import HFJudge

            self.engine = HFJudge(model_path, self.prompt, yes_no_ids, batch_size, device, dtype, prefix_cache)

    def score(self, queries: list[str], passages: list[str], progress: Callable[[int], None] = lambda n: None) -> TeacherScores:
        if hasattr(self.engine, "yes_minus_no"):
            scores, truncated = self.engine.yes_minus_no(queries, passages, progress)
            return TeacherScores(scores, truncated=truncated)
        logits, truncated = self.engine.answer_logits(queries, passages, progress)
        return TeacherScores(yes_minus_no(logits), truncated=truncated)
