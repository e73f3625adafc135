"""LLM judge on vLLM (CUDA GPUs): the pooling runner with the causal LM converted into a
sequence classifier over its answer tokens, fed pre-tokenized prompts a chunk at a time.

For yes/no this is Qwen3-Reranker's documented conversion (``hf_overrides`` with
``classifier_from_token=["no", "yes"]`` and ``is_original_qwen3_reranker``, which selects vLLM's
``from_2_way_softmax`` weight loading): vLLM folds the two output-layer rows into one weight
``W[yes] - W[no]``, so the one output *is* logit(yes) - logit(no). Graded label words use the
``no_post_processing`` loading (documented for bge-reranker-v2-gemma): the classifier's rows are
the label words' output-layer rows, so its outputs are the raw label logits, in word order. We
ask for outputs without activation (``use_activation=False``): inverting a saturated sigmoid
loses exactly the most confident pairs, and the label softmax is taken by the caller. A model that
soft-caps or scales its logits after the output layer (Gemma2, Cohere, Granite...) is refused: the
converted classifier stops at the output layer's rows (logit_post_processing).

Prompts are the same token ids the hf backend builds (``JudgePrompt.encode``); a query's
documents stay contiguous so vLLM's prefix cache serves the shared system/instruction/query part.
"""

from __future__ import annotations

import logging
from typing import Callable

import numpy as np

from rerank_distill.errors import InputError
from rerank_distill.prompts import JudgePrompt

logger = logging.getLogger(__name__)


def classifier_architecture(causal_architecture: str) -> str:
    """vLLM's sequence-classifier form of a causal LM (``Qwen3ForCausalLM`` -> ``Qwen3ForSequenceClassification``)."""
    if not causal_architecture.endswith("ForCausalLM"):
        raise InputError(
            f"--backend vllm turns *ForCausalLM judges into classifiers; this model is {causal_architecture}. "
            "Use --backend hf."
        )
    return causal_architecture.removesuffix("ForCausalLM") + "ForSequenceClassification"


# What some families do between the last hidden state and the logits, in their config (Gemma2's soft-cap,
# Cohere's and Granite's scale, Falcon-H1's multiplier, MiniCPM's width scaling). vLLM applies them in the
# generating model's LogitsProcessor only (vllm/model_executor/models/gemma2.py, granite.py, commandr.py,
# falcon_h1.py, minicpm.py, 0.33); the converted classifier (adapters.py as_seq_cls_model: one
# ReplicatedLinear over the pooled last hidden state) projects onto the output-layer rows and stops there.
def logit_post_processing(config) -> str | None:
    """The config setting by which this model's logits are more than its output layer's rows times
    the last hidden state (``None`` if there is none): vLLM's converted classifier would skip it."""
    cap = getattr(config, "final_logit_softcapping", None)
    if cap:
        return f"final_logit_softcapping={cap}"
    for key in ("logit_scale", "logits_scaling", "lm_head_multiplier"):
        value = getattr(config, key, None)
        if isinstance(value, (int, float)) and value != 1:
            return f"{key}={value}"
    base, hidden = getattr(config, "dim_model_base", None), getattr(config, "hidden_size", None)
    if isinstance(base, (int, float)) and isinstance(hidden, (int, float)) and base != hidden:
        return f"dim_model_base={base} (its logits are divided by hidden_size / dim_model_base)"
    return None


def vllm_hf_overrides(answer_words: list[str], causal_architecture: str = "Qwen3ForCausalLM",
                      yes_minus_no: bool = False) -> dict:
    """``hf_overrides`` that turn a causal LM into a classifier over ``answer_words``.

    ``yes_minus_no`` (the yes/no judge, words ``[yes, no]``): one output, logit(yes) - logit(no)
    (the documented Qwen3-Reranker conversion, which wants the order ``[no, yes]``; other model
    families name its loading method, as vLLM's convert_model_to_seq_cls example does for
    mxbai-rerank-v2). Otherwise, whatever the words (a label judge may use yes and no too): one raw
    logit per word.
    """
    architecture = classifier_architecture(causal_architecture)
    if yes_minus_no and answer_words != ["yes", "no"]:
        raise ValueError(f"yes_minus_no needs the answer words ['yes', 'no'], got {answer_words}")
    if yes_minus_no and architecture == "Qwen3ForSequenceClassification":
        return {
            "architectures": [architecture],
            "classifier_from_token": ["no", "yes"],
            "is_original_qwen3_reranker": True,
        }
    if yes_minus_no:
        return {
            "architectures": [architecture],
            "classifier_from_token": ["no", "yes"],
            "method": "from_2_way_softmax",
        }
    return {
        "architectures": [architecture],
        "classifier_from_token": list(answer_words),
        "method": "no_post_processing",
    }


def token_prompts(prompt_ids: list[list[int]]) -> list[dict]:
    """vLLM ``TokensPrompt`` dicts for pre-tokenized prompts (a plain dict is a TokensPrompt)."""
    return [{"prompt_token_ids": ids} for ids in prompt_ids]


class VllmJudge:
    """An LLM judge on vLLM's pooling runner: the causal LM turned into a classifier over the
    answer words' tokens (vllm_hf_overrides; with ``yes_minus_no``, one output, logit(yes) -
    logit(no)), fed pre-tokenized prompts a chunk at a time, its raw logits asked for (no
    sigmoid or softmax, which saturate), and the shared prompt prefixes cached by vLLM."""

    def __init__(
        self,
        model_path: str,
        prompt: JudgePrompt,
        answer_words: list[str],
        dtype: str,
        options: dict,
        yes_minus_no: bool = False,
    ):
        from transformers import AutoConfig
        from vllm import LLM, PoolingParams

        self.prompt = prompt
        config = AutoConfig.from_pretrained(model_path)
        architecture = (config.architectures or ["Qwen3ForCausalLM"])[0]
        post_processing = logit_post_processing(config)
        if post_processing:
            raise InputError(
                f"{model_path} post-processes its logits ({post_processing}), which vLLM's classifier conversion "
                "skips: its outputs would not be the answer words' logits. Use --backend hf (it applies the model's "
                "own output step)."
            )
        self.llm = LLM(
            model=model_path,
            runner="pooling",
            hf_overrides=vllm_hf_overrides(answer_words, architecture, yes_minus_no),
            dtype=dtype,
            max_model_len=prompt.max_length,
            enable_prefix_caching=True,
            tensor_parallel_size=options.get("tensor_parallel_size", 1),
            gpu_memory_utilization=options.get("gpu_memory_utilization", 0.9),
            **options.get("engine_args", {}),  # further vllm.LLM arguments (bench/teacher.py: load_format)
        )
        self.params = PoolingParams(use_activation=False)

    def _classify(self, queries: list[str], passages: list[str], progress: Callable[[int], None]) -> tuple[np.ndarray, int]:
        prompt_ids, truncated = self.prompt.encode(queries, passages)
        outputs = self.llm.classify(token_prompts(prompt_ids), pooling_params=self.params, use_tqdm=False)
        # a request vLLM failed comes back with its error and no outputs (vllm/outputs.py, 0.33)
        if failed := next((output.error for output in outputs if getattr(output, "error", None) is not None), None):
            raise RuntimeError(f"vLLM could not score a prompt of this chunk ({failed}); rerun the command to continue "
                               "from the last chunk written")
        progress(len(prompt_ids))
        return np.array([output.outputs.probs for output in outputs], dtype=np.float64), truncated

    def yes_minus_no(self, queries, passages, progress=lambda n: None) -> tuple[np.ndarray, int]:
        """logit(yes) - logit(no) per pair, straight from the converted classifier."""
        values, truncated = self._classify(queries, passages, progress)
        return values[:, 0], truncated

    def answer_logits(self, queries, passages, progress=lambda n: None) -> tuple[np.ndarray, int]:
        """Raw logit of each answer word per pair, ``[pairs, words]``."""
        return self._classify(queries, passages, progress)
