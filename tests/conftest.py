"""Shared fixtures: tiny random-weight models and a synthetic data set, built locally once per
test session (no network)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"  # (forced: the tests never reach a hub, whatever the user exported)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models run many times faster on one thread: on tensors this small, starting threads costs
# more than the maths, and on a CI machine's two cores the threads of two libraries fight.
torch.set_num_threads(1)

from rerank_distill.toy import (  # noqa: E402
    build_tiny_cross_encoder,
    build_tiny_qwen3,
    synthetic_ranking_data,
    write_jsonl_records,
)


@pytest.fixture(scope="session")
def tiny_qwen3(tmp_path_factory) -> Path:
    """A random-weight Qwen3 causal LM with a chat-marker tokenizer (yes/no are single tokens)."""
    return build_tiny_qwen3(tmp_path_factory.mktemp("models") / "tiny-qwen3")


@pytest.fixture(scope="session")
def tiny_cross_encoder(tmp_path_factory) -> Path:
    """A random-weight BERT cross-encoder with one output logit."""
    return build_tiny_cross_encoder(tmp_path_factory.mktemp("models") / "tiny-cross-encoder")


@pytest.fixture
def ranking_file(tmp_path) -> Path:
    """Twelve synthetic queries in MTEB reranking format (one without positives, one without negatives)."""
    return write_jsonl_records(tmp_path / "train.jsonl", synthetic_ranking_data(12, docs_per_query=6, seed=3))


@pytest.fixture(scope="session")
def tiny_embedding_model(tmp_path_factory) -> Path:
    """A random-weight BERT SentenceTransformer (mean pooling) with "query: " / "passage: " prompts."""
    from rerank_distill.toy import build_tiny_embedding_model

    return build_tiny_embedding_model(tmp_path_factory.mktemp("models") / "tiny-embedding")


@pytest.fixture
def one_thread():
    """Tiny models run many times faster on one thread: on tensors this small, starting threads
    costs more than the maths."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class TeacherWouldLoad(Exception):
    """Raised where generate_logits.py would fetch or load a teacher (see teacher_never_loads)."""


@pytest.fixture
def teacher_never_loads(monkeypatch) -> type[Exception]:
    """generate_logits.py with every model path taken as given and TeacherWouldLoad raised where a
    teacher would load: a test runs main() up to that point and checks what happened before it."""
    import generate_logits
    from rerank_distill import teacher_runs

    def load(*args, **kwargs):
        raise TeacherWouldLoad

    monkeypatch.setattr(generate_logits, "resolve_model", lambda path, *args: path)
    monkeypatch.setattr(teacher_runs, "build_teachers", load)
    monkeypatch.setattr(generate_logits, "score_with_replicas", load)
    return TeacherWouldLoad
