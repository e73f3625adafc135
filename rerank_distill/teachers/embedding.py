"""A SentenceTransformer embedding model as teacher (e.g. Qwen3-Embedding, all-MiniLM-L6-v2):
score = ``score_scale`` x cosine(query embedding, document embedding).

Queries get the model's own "query" prompt (Qwen3-Embedding: "Instruct: ...\\nQuery:"; E5:
"query: ") unless ``--query_prompt`` replaces it, documents its "document"/"passage"/"corpus"
prompt if it has one, as sentence-transformers' ``encode_query``/``encode_document`` do.
Cosines lie in [-1, 1] and a query's candidates often differ by a few hundredths, so the scale
(default 10) puts margins on the few-units scale of a cross-encoder's logits.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from rerank_distill.errors import InputError
from rerank_distill.long_texts import clip_long_texts
from rerank_distill.teachers import TeacherScores, teacher_name
from rerank_distill.teachers.sentence_models import limit_length, load_model, token_lengths, too_long

DEFAULT_SCORE_SCALE = 10.0
# sentence-transformers' encode_document looks for these prompt names, in this order.
DOCUMENT_PROMPT_NAMES = ("document", "passage", "corpus")


def model_prompts(prompts: dict[str, str | None], query_prompt: str | None = None) -> tuple[str, str]:
    """The texts put before each query and each document: ``query_prompt`` or the model's "query"
    prompt, and the model's first document prompt; "" where there is none. As encode_document, the
    first of DOCUMENT_PROMPT_NAMES the model has wins, an empty one too: a "document" prompt of ""
    says documents get none, even beside a "passage" prompt."""
    if query_prompt is None:
        query_prompt = prompts.get("query") or ""
    document_prompt = next((prompts[name] or "" for name in DOCUMENT_PROMPT_NAMES if name in prompts), "")
    return query_prompt, document_prompt


def refuse_prompts_filling(tokenizer, query_prompt: str, document_prompt: str, max_length: int) -> None:
    """InputError where a prompt and the special tokens take all of ``max_length``: an input is cut
    from its end, so every query (or document) would be its prompt alone, one vector for all."""
    prompts = {"query": query_prompt, "document": document_prompt}
    for kind, length in zip(prompts, token_lengths(tokenizer, list(prompts.values()))):
        if max_length <= length:
            raise InputError(f"--max_length {max_length} leaves no room for text: the {kind} prompt "
                             f"{prompts[kind]!r} and the special tokens take {length}; give a larger one")


class EmbeddingTeacher:
    """score = score_scale * cosine similarity of the query's and the document's embeddings."""

    def __init__(
        self,
        model_path: str,
        max_length: int,
        batch_size: int,
        score_scale: float = DEFAULT_SCORE_SCALE,
        query_prompt: str | None = None,
        device: str | None = None,
        dtype: str = "auto",
    ):
        from sentence_transformers import SentenceTransformer

        self.model = load_model(SentenceTransformer, model_path, device, dtype)
        self.max_length = limit_length(self.model, max_length, pairs=False)
        self.batch_size = batch_size
        self.score_scale = float(score_scale)
        self.query_prompt, self.document_prompt = model_prompts(self.model.prompts, query_prompt)
        refuse_prompts_filling(self.model.tokenizer, self.query_prompt, self.document_prompt, self.max_length)
        self.name = teacher_name(model_path)
        self.config = {
            "teacher_type": "embedding",
            "model_path": model_path,
            "max_length": self.max_length,
            "query_prompt": self.query_prompt,
            "document_prompt": self.document_prompt,
            "score_scale": self.score_scale,
            "dtype": dtype,
        }

    def _unit_vectors(self, texts: list[str], prompt: str, encode) -> np.ndarray:
        vectors = encode(texts, prompt=prompt, batch_size=self.batch_size, normalize_embeddings=True,
                         convert_to_numpy=True, show_progress_bar=False)  # fmt: skip
        return np.asarray(vectors, dtype=np.float64)

    def load(self) -> None:
        """Nothing to do: the weights loaded with the teacher."""

    def score(self, queries: list[str], passages: list[str], progress: Callable[[int], None] = lambda n: None) -> TeacherScores:
        # Each distinct text is embedded once; a chunk repeats each query once per candidate.
        query_row = {text: row for row, text in enumerate(dict.fromkeys(queries))}
        passage_row = {text: row for row, text in enumerate(dict.fromkeys(passages))}
        # (each cut to what the model reads of it: the same tokens, without tokenizing a 20 MB text whole)
        query_texts = clip_long_texts(self.model.tokenizer, list(query_row), self.max_length)
        passage_texts = clip_long_texts(self.model.tokenizer, list(passage_row), self.max_length)
        query_vectors = self._unit_vectors(query_texts, self.query_prompt, self.model.encode_query)
        passage_vectors = self._unit_vectors(passage_texts, self.document_prompt, self.model.encode_document)
        query_rows = [query_row[text] for text in queries]
        passage_rows = [passage_row[text] for text in passages]
        cosine = np.einsum("ij,ij->i", query_vectors[query_rows], passage_vectors[passage_rows])
        long_query = too_long(self.model.tokenizer, [self.query_prompt + t for t in query_texts], None, self.max_length)
        long_passage = too_long(self.model.tokenizer, [self.document_prompt + t for t in passage_texts], None,
                                self.max_length)
        truncated = sum(long_query[i] or long_passage[j] for i, j in zip(query_rows, passage_rows))
        progress(len(queries))
        return TeacherScores(self.score_scale * cosine, truncated=truncated)
