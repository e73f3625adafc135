"""LLM judge on vLLM (CUDA GPUs): the pooling runner with the causal LM converted into a
sequence classifier over its answer tokens, fed pre-tokenized prompts a chunk at a time.

For yes/no this is Qwen3-Reranker's documented conversion (``hf_overrides`` with
``classifier_from_token=["no", "yes"]`` and ``is_original_qwen3_reranker``): vLLM folds the two
output-layer rows into one weight ``W[yes] - W[no]``, so the one output *is*
logit(yes) - logit(no). We ask for it without the sigmoid (``use_activation=False``): inverting
a saturated sigmoid loses exactly the most confident pairs.

Prompts are the same token ids the hf backend builds (``JudgePrompt.encode``); a query's
documents stay contiguous so vLLM's prefix cache serves the shared system/instruction/query part.
"""

from __future__ import annotations

import logging
from typing import Callable

import numpy as np

from rerank_distill.prompts import JudgePrompt

logger = logging.getLogger(__name__)


def vllm_hf_overrides(answer_words: list[str]) -> dict:
    """``hf_overrides`` that turn a causal LM into a classifier over ``answer_words``.

    Two words ``[yes, no]``: one output, logit(yes) - logit(no) (the documented Qwen3-Reranker
    conversion, which wants the order ``[no, yes]``). More words: one raw logit per word.
    """
    if answer_words == ["yes", "no"]:
        return {
            "architectures": ["Qwen3ForSequenceClassification"],
            "classifier_from_token": ["no", "yes"],
            "is_original_qwen3_reranker": True,
        }
    return {
        "architectures": ["Qwen3ForSequenceClassification"],
        "classifier_from_token": list(answer_words),
        "method": "no_post_processing",
    }


def token_prompts(prompt_ids: list[list[int]]) -> list[dict]:
    """vLLM ``TokensPrompt`` dicts for pre-tokenized prompts (a plain dict is a TokensPrompt)."""
    return [{"prompt_token_ids": ids} for ids in prompt_ids]


class VllmJudge:
    def __init__(
        self,
        model_path: str,
        prompt: JudgePrompt,
        answer_words: list[str],
        answer_token_ids: list[int],
        dtype: str,
        options: dict,
    ):
        from vllm import LLM, PoolingParams

        self.prompt = prompt
        self.answer_words = answer_words
        self.llm = LLM(
            model=model_path,
            runner="pooling",
            hf_overrides=vllm_hf_overrides(answer_words),
            dtype="auto" if dtype == "auto" else dtype,
            max_model_len=prompt.max_length,
            enable_prefix_caching=True,
            tensor_parallel_size=options.get("tensor_parallel_size", 1),
            data_parallel_size=options.get("data_parallel_size", 1),
            gpu_memory_utilization=options.get("gpu_memory_utilization", 0.9),
        )
        self.params = PoolingParams(use_activation=False)

    def _classify(self, queries: list[str], passages: list[str], progress: Callable[[int], None]) -> tuple[np.ndarray, int]:
        prompt_ids, truncated = self.prompt.encode(queries, passages)
        outputs = self.llm.classify(token_prompts(prompt_ids), pooling_params=self.params, use_tqdm=False)
        progress(len(prompt_ids))
        return np.array([output.outputs.probs for output in outputs], dtype=np.float64), truncated

    def yes_minus_no(self, queries, passages, progress=lambda n: None) -> tuple[np.ndarray, int]:
        """logit(yes) - logit(no) per pair, straight from the converted classifier."""
        values, truncated = self._classify(queries, passages, progress)
        return values[:, 0], truncated

    def answer_logits(self, queries, passages, progress=lambda n: None) -> tuple[np.ndarray, int]:
        """Raw logit of each answer word per pair, ``[pairs, words]``."""
        return self._classify(queries, passages, progress)
