"""The student cross-encoder at the edges: loading it from a folder or hub id, and scoring
(query, passage) pairs with it as raw logits."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rerank_distill.errors import InputError
from rerank_distill.formats import RankingQuery
from rerank_distill.hub import resolve_model


def load_cross_encoder(
    name_or_path: str, hub: str = "huggingface", cache_dir: str | None = None, max_length: int | None = None
):
    """A ``sentence_transformers.CrossEncoder`` with one output logit, from a local folder or a hub id.

    Raises InputError for a missing path, an unreachable hub id, a folder that holds no model,
    or a model with more than one output label (a reranker scores with one logit).
    """
    from sentence_transformers import CrossEncoder

    path = resolve_model(name_or_path, hub, cache_dir)
    try:
        model = CrossEncoder(path, max_length=max_length)
    except (OSError, ValueError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise InputError(f"cannot load a cross-encoder from '{name_or_path}' ({reason})") from None
    if model.num_labels != 1:
        raise InputError(
            f"model '{name_or_path}' has {model.num_labels} output labels; a reranker with one logit is expected"
        )
    return model


def score_pairs_with_cross_encoder(
    model, pairs: Sequence[tuple[str, str]], batch_size: int = 64, show_progress_bar: bool = True
) -> np.ndarray:
    """One raw logit per (query, passage) pair, float32, in the order given.

    Each distinct pair goes through the model once. Logits, not sigmoid probabilities: the ranking
    is the same, and logits are on the teacher's scale, so the two can be compared.
    """
    import torch

    index: dict[tuple[str, str], int] = {}
    positions = [index.setdefault((query, passage), len(index)) for query, passage in pairs]
    if not index:
        return np.zeros(0, dtype=np.float32)
    logits = model.predict(
        [list(pair) for pair in index],
        batch_size=batch_size,
        activation_fn=torch.nn.Identity(),
        convert_to_numpy=True,
        show_progress_bar=show_progress_bar,
    )
    return np.asarray(logits, dtype=np.float32).reshape(-1)[positions]


def score_ranking_queries(
    model, queries: Sequence[RankingQuery], batch_size: int = 64, show_progress_bar: bool = True
) -> list[np.ndarray]:
    """Each query's candidate logits (an array per query, in its passages' order), scoring all
    queries' distinct pairs in one pass."""
    pairs = [(query.query, passage) for query in queries for passage in query.passages]
    flat = score_pairs_with_cross_encoder(model, pairs, batch_size, show_progress_bar)
    return np.split(flat, np.cumsum([len(query.passages) for query in queries])[:-1])
