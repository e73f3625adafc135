"""LLM judges: a causal LM asked about each (query, document) in the Qwen3-Reranker prompt layout,
scored from the logits of its possible answer tokens at the last prompt position.

- ``YesNoJudge`` (``llm_yesno``): score = logit("yes") - logit("no"), Qwen3-Reranker's recipe.
- ``LabelJudge`` (``llm_labels``): the answer is one of several graded label words (by default
  the Amazon ESCI shopping-relevance labels exact/substitute/complement/irrelevant, grades
  3/2/1/0); score = the expected grade under the softmax over those label tokens only.
"""

from __future__ import annotations

import functools
import logging
from typing import Callable

import numpy as np

from rerank_distill.errors import MODEL_LOAD_ERRORS, InputError, first_line
from rerank_distill.formats import label_word_grades
from rerank_distill.prompts import YES_NO_SYSTEM, JudgePrompt, labels_system, single_token_id
from rerank_distill.teachers import TeacherScores, model_config, teacher_name, yes_minus_no
from rerank_distill.teachers.sentence_models import refuse_tokenizer_without_vocabulary

logger = logging.getLogger(__name__)

ESCI_LABEL_WORDS = ["exact", "substitute", "complement", "irrelevant"]


def load_tokenizer(model_path: str):
    """The judge's tokenizer; InputError naming the folder when it has none that loads."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path)
    except MODEL_LOAD_ERRORS as error:
        raise InputError(f"cannot load the LLM judge's tokenizer from '{model_path}' ({first_line(error)})") from None
    refuse_tokenizer_without_vocabulary(tokenizer, model_path)
    return tokenizer


def label_probabilities(answer_logits: np.ndarray) -> np.ndarray:
    """Softmax over the label tokens only (each row of ``[pairs, labels]`` logits sums to 1)."""
    logits = answer_logits.astype(np.float64)
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def expected_grade(probabilities: np.ndarray, grades: list[float]) -> np.ndarray:
    """Sum over labels of P(label) * grade, one per pair: on the grades' scale (0..3 for ESCI)."""
    return probabilities @ np.asarray(grades, dtype=np.float64)


def _judge_engine(model_path, backend, prompt, words, token_ids, batch_size, device, dtype, prefix_cache, vllm_options,
                  yes_minus_no):
    if backend == "vllm":
        from rerank_distill.teachers.llm_vllm import VllmJudge

        return VllmJudge(model_path, prompt, words, dtype, vllm_options or {}, yes_minus_no)
    from rerank_distill.teachers.llm_hf import HFJudge

    return HFJudge(model_path, prompt, token_ids, batch_size, device, dtype, prefix_cache)


def usable_length(model_path: str, max_length: int) -> int:
    """``max_length``, cut to the model's positions (beyond them it fails or reads noise). The cut
    is not in the judge's config, which keeps the length asked for: outputs made before the cut
    existed, with the same scores wherever no pair was that long, still resume and are reused."""
    positions = model_config(model_path).get("max_position_embeddings")
    if isinstance(positions, int) and max_length > positions:
        logger.warning("--max_length %d is more than %s's %d positions: cut to %d", max_length, model_path, positions,
                       positions)
        return positions
    return max_length


class _Judge:
    """What both judges share: the prompt, the answer words' token ids, the engine (hf or vLLM),
    and ``config`` (what makes the scores what they are, for resuming safely)."""

    teacher_type = ""

    def __init__(self, model_path, backend, system, words, instruction, max_length, batch_size, device,
                 dtype, prefix_cache, vllm_options, extra_config=None):  # fmt: skip
        tokenizer = load_tokenizer(model_path)
        self.prompt = JudgePrompt(tokenizer, system, instruction, usable_length(model_path, max_length))
        hint = ""
        if {word.lower() for word in words} == set(ESCI_LABEL_WORDS):  # Qwen's vocabulary splits three of them
            hint = (" ESCI's letters are one token in most vocabularies: --label_words E S C I, with an --instruction "
                    "that says what each letter means")
        token_ids = [single_token_id(tokenizer, word, model_path, hint) for word in words]
        self.name = teacher_name(model_path)
        self.config = {
            "teacher_type": self.teacher_type,
            "model_path": model_path,
            "instruction": instruction,
            "max_length": max_length,
            **(extra_config or {}),
            "backend": backend,
            "dtype": dtype,
        }
        # the weights load on first use: a run whose outputs are all finished never waits for an 8B model
        self._engine_args = (model_path, backend, self.prompt, words, token_ids, batch_size, device, dtype,
                             prefix_cache, vllm_options, self.teacher_type == "llm_yesno")

    @functools.cached_property
    def engine(self):
        """The hf or vLLM engine, built (its weights loaded) when first asked for."""
        return _judge_engine(*self._engine_args)

    def load(self) -> None:
        """Build the engine now, its weights loaded."""
        _ = self.engine


class YesNoJudge(_Judge):
    """Qwen3-Reranker style: score = logit("yes") - logit("no") at the last prompt position."""

    teacher_type = "llm_yesno"

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
        super().__init__(model_path, backend, YES_NO_SYSTEM, ["yes", "no"], instruction, max_length, batch_size,
                         device, dtype, prefix_cache, vllm_options)  # fmt: skip

    def score(self, queries: list[str], passages: list[str], progress: Callable[[int], None] = lambda n: None) -> TeacherScores:
        if hasattr(self.engine, "yes_minus_no"):
            scores, truncated = self.engine.yes_minus_no(queries, passages, progress)
            return TeacherScores(scores, truncated=truncated)
        logits, truncated = self.engine.answer_logits(queries, passages, progress)
        return TeacherScores(yes_minus_no(logits), truncated=truncated)


class LabelJudge(_Judge):
    """A judge that answers with one graded label word: score = expected grade under the softmax
    over the label tokens; the output also keeps each label's probability (``label_probs``)."""

    teacher_type = "llm_labels"

    def __init__(
        self,
        model_path: str,
        backend: str,
        instruction: str,
        max_length: int,
        batch_size: int,
        label_words: list[str] = ESCI_LABEL_WORDS,
        label_grades: list[float] | None = None,
        device: str | None = None,
        dtype: str = "auto",
        prefix_cache: bool = True,
        vllm_options: dict | None = None,
    ):
        grades = label_word_grades(list(label_words), label_grades)  # None: ESCI's for its words, else len-1 .. 0
        self.words, self.grades = list(grades), list(grades.values())
        super().__init__(model_path, backend, labels_system(self.words), self.words, instruction, max_length,
                         batch_size, device, dtype, prefix_cache, vllm_options,
                         extra_config={"label_words": self.words, "label_grades": self.grades})  # fmt: skip

    def score(self, queries: list[str], passages: list[str], progress: Callable[[int], None] = lambda n: None) -> TeacherScores:
        logits, truncated = self.engine.answer_logits(queries, passages, progress)
        probabilities = label_probabilities(logits)
        label_probs = [dict(zip(self.words, row.tolist())) for row in probabilities]
        return TeacherScores(expected_grade(probabilities, self.grades), {"label_probs": label_probs}, truncated)
