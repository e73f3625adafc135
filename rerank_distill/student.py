"""The student cross-encoder at the edges: loading it from a folder or hub id, and scoring
(query, passage) pairs with it as raw logits."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np

from rerank_distill.batching import length_batches
from rerank_distill.errors import MODEL_LOAD_ERRORS, InputError, first_line
from rerank_distill.formats import RankingQuery
from rerank_distill.hub import resolve_model
from rerank_distill.long_texts import clip_long_texts

logger = logging.getLogger(__name__)


def load_cross_encoder(
    name_or_path: str, hub: str = "huggingface", cache_dir: str | None = None, max_length: int | None = None,
    **cross_encoder_kwargs,
):
    """A ``sentence_transformers.CrossEncoder`` with one output logit, from a local folder or a hub id
    (``cross_encoder_kwargs`` go to its constructor: ``num_labels=1`` gives a bare encoder its head).

    ``max_length`` (tokens) is capped at the model's own limit, with a warning: beyond its position
    embeddings a model fails at the first longer pair, maybe hours into a run. The weights are
    float32 whatever dtype the checkpoint was saved in (transformers would keep a bf16 checkpoint's:
    scored in bf16 under --dtype float32, trained without float32 master weights); bf16 speed
    comes from autocast instead (bfloat16_autocast, the Trainer's --bf16).

    Raises InputError for a missing path, an unreachable hub id, a folder that holds no model or
    whose files do not load (a download cut short), or a model with more than one output label
    (a reranker scores with one logit).
    """
    import torch
    from sentence_transformers import CrossEncoder

    from rerank_distill.teachers.sentence_models import limit_length, refuse_tokenizer_without_vocabulary

    path = resolve_model(name_or_path, hub, cache_dir)
    try:  # at its own length limit: the tokenizer's, within its positions
        model = CrossEncoder(path, model_kwargs={"dtype": torch.float32}, **cross_encoder_kwargs)
    except MODEL_LOAD_ERRORS as error:
        raise InputError(f"cannot load a cross-encoder from '{name_or_path}' ({first_line(error)})") from None
    refuse_tokenizer_without_vocabulary(model.tokenizer, name_or_path)
    if model.num_labels != 1:
        raise InputError(labels_message(name_or_path, model.num_labels))
    if max_length is not None and limit_length(model, max_length) < max_length:
        logger.warning("--max_length %d is beyond what '%s' takes: pairs are cut to its limit of %d tokens",
                       max_length, name_or_path, model.max_seq_length)
    return model


def labels_message(name_or_path: str, labels: int) -> str:
    """Why a model of ``labels`` output labels is no reranker."""
    return f"model '{name_or_path}' has {labels} output labels; a reranker with one logit is expected"


def output_labels(model_path: str) -> int | None:
    """How many output labels a local model folder's config gives its head (transformers' default
    of 2 where it names none), or None where transformers cannot read its config."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(model_path).num_labels
    except MODEL_LOAD_ERRORS:
        return None


def without_trained_head(model_path: str) -> str | None:
    """What a local model folder holds where it has no trained relevance head (an embedding model,
    a bare encoder, an LLM): a CrossEncoder built on it gets a new random one. None where it has
    one, or where its config files do not tell."""
    from rerank_distill.teachers import KIND_NAMES, model_kind

    kind = model_kind(model_path)
    return None if kind in (None, "cross_encoder") else KIND_NAMES[kind]


def missing_weights(folder: str) -> str | None:
    """What of its weights a local model folder lacks: all of them (no model.safetensors or
    pytorch_model.bin), or shards its index lists; None where they are there, or the index does
    not tell (the loader then says what is wrong)."""
    root = Path(folder)
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (root / index_name).is_file():
            try:
                shards = sorted(set(json.loads((root / index_name).read_text(encoding="utf-8"))["weight_map"].values()))
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                return None
            absent = [shard for shard in shards if not (root / shard).is_file()]  # (a broken link to a blob too)
            return f"{len(absent)} of the {len(shards)} weight files its {index_name} lists missing ({absent[0]} ...)" \
                if absent else None
    if (root / "model.safetensors").is_file() or (root / "pytorch_model.bin").is_file():
        return None
    return "no weights file (model.safetensors or pytorch_model.bin)"


def check_rerankers(models: dict[str, str], hub: str, cache_dir: str | None) -> dict[str, str]:
    """The local folders of the models to evaluate (``{"before": path or hub id, ...}``, fetched
    where needed); InputError where one is missing or holds no trained relevance head: it fails
    now, not after minutes spent scoring another one."""
    folders = {}
    for name, path in models.items():
        try:
            local = resolve_model(path, hub, cache_dir)
        except InputError as error:
            raise InputError(f"--model_{name}_path: {error}") from None
        if lacking := missing_weights(local):  # (else found only on loading it, maybe after scoring the other)
            raise InputError(f"--model_{name}_path: {path} has {lacking}: a download or copy cut short? Fetch or copy "
                             "it again")
        if held := without_trained_head(local):
            raise InputError(f"--model_{name}_path: {path} holds {held}, no reranker: a cross-encoder made from it "
                             "scores with a new random head, noise that differs from run to run; evaluate a "
                             "cross-encoder (train.py's output, or a reranker such as BAAI/bge-reranker-v2-m3)")
        if (labels := output_labels(local)) not in (None, 1):
            raise InputError(f"--model_{name}_path: {labels_message(path, labels)}")
        folders[name] = local
    return folders


def load_student(name_or_path: str, hub: str, cache_dir: str | None, max_length: int, device, seed: int):
    """The student train.py trains: a one-logit CrossEncoder on ``device``. A model without a
    trained relevance head (see without_trained_head) gets a new one, the same for the same
    ``seed`` (the Trainer seeds only once the model is built)."""
    from transformers import set_seed

    path = resolve_model(name_or_path, hub, cache_dir)
    if held := without_trained_head(path):
        logger.info("%s holds %s: the student's relevance head starts new, initialised by --seed %d", name_or_path,
                    held, seed)
    set_seed(seed)
    return load_cross_encoder(path, max_length=max_length, num_labels=1, device=str(device))


DTYPES = ("float32", "bfloat16")


def pair_token_lengths(
    tokenizer, pairs: Sequence[Sequence[str]], max_length: int | None, chunk: int = 4096
) -> np.ndarray:
    """Tokens in each (query, passage) pair after truncation to ``max_length``, as the model will
    see them; tokenized a chunk at a time so only the lengths stay in memory."""
    lengths = []
    for start in range(0, len(pairs), chunk):
        part = pairs[start : start + chunk]
        encoded = tokenizer(
            [query for query, _ in part],
            [passage for _, passage in part],
            truncation="longest_first",
            max_length=max_length,
            return_attention_mask=False,
            return_token_type_ids=False,
        )["input_ids"]
        lengths.extend(len(ids) for ids in encoded)
    return np.asarray(lengths, dtype=np.int64)


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Indices split into batches of similar length, longest first (ties in input order), so an
    out-of-memory batch fails at once; a batch closes early rather than pad (see length_batches)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    return [order[rows] for rows in length_batches(lengths[order].tolist(), batch_size)]


def bfloat16_is_fast(device) -> bool:
    """Whether this device multiplies bfloat16 in hardware (CPUs with AVX512-BF16 or AMX, GPUs from
    Ampere on); elsewhere bfloat16 is emulated and can be slower than float32."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(getattr(torch.cpu, name, lambda: False)() for name in checks)
    return False


@contextmanager
def bfloat16_autocast(model):
    """Run the transformer in bfloat16 (autocast: matmuls in bf16, norms and softmax in float32)
    but its classification head in float32. A bf16 logit has 8 significant bits (steps of 0.03
    near a logit of 5), so a bf16 head ties candidates that float32 tells apart, and ties decide
    rankings by data-set position, which lists positives first."""
    import torch

    hf_model = getattr(model, "model", None)
    head = getattr(hf_model, "classifier", None) or getattr(hf_model, "score", None)
    device_type = model.device.type
    if head is not None:
        forward, own_forward = head.forward, head.__dict__.get("forward")  # a hook may have set its own

        def float32_forward(*args, **kwargs):
            args = tuple(a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args)
            with torch.autocast(device_type, enabled=False):
                return forward(*args, **kwargs)

        head.forward = float32_forward
    try:
        with torch.autocast(device_type, dtype=torch.bfloat16):
            yield
    finally:
        if head is not None:
            if own_forward is None:
                del head.forward
            else:
                head.forward = own_forward


@contextmanager
def in_float32(model):
    """Run ``model`` in float32 where training set it to mixed precision (--bf16 or --fp16): outside
    any autocast, and without the autocast accelerate wraps around its forward (restored after).
    Checkpoint selection scores so, as evaluation.py does by default: in bf16 the head's logits tie
    candidates float32 tells apart, and the MAP that picked a checkpoint would not be reproducible."""
    import torch

    wrapped, original = model.__dict__.get("forward"), model.__dict__.get("_original_forward")
    if wrapped is not None and original is not None:
        model.forward = original
    try:
        with torch.autocast(model.device.type, enabled=False):
            yield
    finally:
        if wrapped is not None and original is not None:
            model.forward = wrapped


def predicts_in_float32(model) -> None:
    """Have every ``model.predict`` from now on score in float32 (``in_float32``) on whichever
    process runs it. Under torchrun sentence-transformers shares an evaluator's predict calls
    between the processes: the main one runs the evaluator (inside ``in_float32``), the others
    score their share with the model as training left it, under --bf16's autocast."""
    inference = getattr(model, "_inference", None)  # (sentence-transformers 6's one path of predict)
    if inference is None:
        logger.warning("this sentence-transformers has no CrossEncoder._inference: under torchrun with --bf16, "
                       "processes other than the main one may score the held-out evaluation in bf16")
        return

    def inference_in_float32(*args, **kwargs):
        with in_float32(model):
            return inference(*args, **kwargs)

    model._inference = inference_in_float32


def score_pairs_with_cross_encoder(
    model,
    pairs: Sequence[tuple[str, str]],
    batch_size: int = 64,
    show_progress_bar: bool = True,
    dtype: str = "float32",
    sort_by_tokens: bool = True,
    token_lengths: Sequence[int] | None = None,
    log_cut: bool = True,
) -> np.ndarray:
    """One raw logit per (query, passage) pair, float32, in the order given.

    Each distinct pair goes through the model once. Logits, not sigmoid probabilities: the ranking
    is the same, and logits are on the teacher's scale, so the two can be compared.

    Batches hold pairs of similar token length (``sort_by_tokens``): CrossEncoder.predict sorts by
    characters, which on SemEval-2016 dev at batch 64 padded 46% above the real tokens, against 7%
    here (token lengths, batches that close early: see length_batches). The scores equal
    predict's own within float noise (padding moves logits by ~1e-7).
    ``dtype="bfloat16"`` runs the transformer under bf16 autocast (see ``bfloat16_autocast``):
    several times faster on CPUs with bf16 units, but scores move by ~1e-3 and metrics can change
    in the third decimal (MAP 0.5387 in float32, 0.5372 in bf16 on 50 SemEval dev queries:
    bench/results/evaluate_cpu_length_batches.json). ``token_lengths``: each pair's length as the
    model sees it (after truncation), where the caller has tokenized the pairs already, so they are
    not tokenized twice. ``log_cut``: log how many pairs filled the model's max_length (where
    ``token_lengths`` is not given), as a caller scoring the same pairs again need not hear twice.
    """
    import torch
    from tqdm.auto import tqdm

    if dtype not in DTYPES:
        raise InputError(f"unknown dtype '{dtype}'; choose one of {', '.join(DTYPES)}")
    index: dict[tuple[str, str], int] = {}
    positions = [index.setdefault((query, passage), len(index)) for query, passage in pairs]
    if not index:
        return np.zeros(0, dtype=np.float32)
    # (a pair's texts cut to what the model reads of them: the same tokens, without tokenizing a 20 MB text whole)
    queries = clip_long_texts(model.tokenizer, [query for query, _ in index], model.max_seq_length)
    passages = clip_long_texts(model.tokenizer, [passage for _, passage in index], model.max_seq_length)
    distinct = [[query, passage] for query, passage in zip(queries, passages)]
    identity = torch.nn.Identity()
    with bfloat16_autocast(model) if dtype == "bfloat16" else nullcontext():
        if not sort_by_tokens:
            logits = model.predict(distinct, batch_size=batch_size, activation_fn=identity,
                                   convert_to_numpy=True, show_progress_bar=show_progress_bar)  # fmt: skip
        else:
            logits = np.empty(len(distinct), dtype=np.float32)
            if token_lengths is None:
                lengths = pair_token_lengths(model.tokenizer, distinct, model.max_seq_length)
                cut = int((lengths >= (model.max_seq_length or np.inf)).sum())
                if cut and log_cut:
                    logger.info("%d of %d distinct pairs (%.1f%%) filled the model's max_length of %d tokens and "
                                "were cut there", cut, len(distinct), 100 * cut / len(distinct), model.max_seq_length)
            else:  # a repeated pair writes its (equal) length again
                lengths = np.empty(len(distinct), dtype=np.int64)
                lengths[positions] = token_lengths
            batches = length_sorted_batches(lengths, batch_size)
            for batch in tqdm(batches, desc="scoring", disable=not show_progress_bar):
                # one batch per call, so predict's own character sort cannot regroup the pairs
                logits[batch] = model.predict(
                    [distinct[i] for i in batch], batch_size=len(batch), activation_fn=identity,
                    convert_to_numpy=True, show_progress_bar=False,
                )  # fmt: skip
    return np.asarray(logits, dtype=np.float32).reshape(-1)[positions]


def score_ranking_queries(
    model,
    queries: Sequence[RankingQuery],
    batch_size: int = 64,
    show_progress_bar: bool = True,
    dtype: str = "float32",
    sort_by_tokens: bool = True,
    wanted: Sequence[bool] | None = None,
    log_cut: bool = True,
) -> list[np.ndarray]:
    """Each query's candidate logits (an array per query, in its passages' order), scoring all
    queries' distinct pairs in one pass (see ``score_pairs_with_cross_encoder``). A query whose
    ``wanted`` flag is False is not scored: its array is NaN. ``log_cut`` as there."""
    wanted = [True] * len(queries) if wanted is None else list(wanted)
    pairs = [(query.query, passage) for query, keep in zip(queries, wanted) if keep for passage in query.passages]
    flat = score_pairs_with_cross_encoder(model, pairs, batch_size, show_progress_bar, dtype, sort_by_tokens,
                                          log_cut=log_cut)
    scored = iter(np.split(flat, np.cumsum([len(q.passages) for q, keep in zip(queries, wanted) if keep])[:-1]))
    unscored = np.float32(np.nan)
    return [next(scored) if keep else np.full(len(q.passages), unscored) for q, keep in zip(queries, wanted)]
