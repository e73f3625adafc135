"""A sentence-transformers CrossEncoder as teacher (e.g. bge-reranker-v2-m3 teaching a MiniLM
student): the score is its raw output logit, not the sigmoid ``predict`` applies by default,
so a confident teacher's margins are not squashed towards 0 and 1."""

from __future__ import annotations

from typing import Callable

import numpy as np

from rerank_distill.errors import InputError
from rerank_distill.long_texts import clip_long_texts
from rerank_distill.teachers import TeacherScores, teacher_name
from rerank_distill.teachers.sentence_models import limit_length, load_model, token_lengths


class CrossEncoderTeacher:
    """score = the cross-encoder's one output logit for the pair (query, passage)."""

    def __init__(self, model_path: str, max_length: int, batch_size: int, device: str | None = None, dtype: str = "auto"):
        import torch
        from sentence_transformers import CrossEncoder

        self.model = load_model(CrossEncoder, model_path, device, dtype, activation_fn=torch.nn.Identity())
        if self.model.num_labels != 1:
            raise InputError(
                f"cross-encoder '{model_path}' has {self.model.num_labels} outputs; a teacher needs a reranker "
                "with one relevance logit"
            )
        self.max_length = limit_length(self.model, max_length)
        self.batch_size = batch_size
        self.name = teacher_name(model_path)
        self.config = {"teacher_type": "cross_encoder", "model_path": model_path, "max_length": self.max_length, "dtype": dtype}

    def load(self) -> None:
        """Nothing to do: the weights loaded with the teacher."""

    def score(self, queries: list[str], passages: list[str], progress: Callable[[int], None] = lambda n: None) -> TeacherScores:
        from rerank_distill.student import score_pairs_with_cross_encoder

        queries = clip_long_texts(self.model.tokenizer, queries, self.max_length)  # (see long_texts)
        passages = clip_long_texts(self.model.tokenizer, passages, self.max_length)
        # one tokenization gives both the truncation count and the lengths the batches are built from
        lengths = np.array(token_lengths(self.model.tokenizer, queries, passages), dtype=np.int64)
        # raw logits in batches of similar token length, as the evaluation scores the student
        # (the model already has its --dtype, so no autocast on top)
        logits = score_pairs_with_cross_encoder(self.model, list(zip(queries, passages)), self.batch_size,
                                                show_progress_bar=False,
                                                token_lengths=np.minimum(lengths, self.max_length))
        truncated = int((lengths > self.max_length).sum())
        progress(len(queries))
        return TeacherScores(np.asarray(logits, dtype=np.float64).reshape(-1), truncated=truncated)
