"""Reranking data sets kept in four parts, as MTEB v2 keeps them (mteb/StackOverflowDupQuestions):
``corpus`` ({_id, title, text}), ``queries`` ({_id, text}), qrels ({query-id, corpus-id, score}: the
``default`` configuration, in folder ``data/``, or ``qrels``) and ``top_ranked`` ({query-id,
corpus-ids}: each query's candidates). Joined here into one MTEB reranking record a query,
``{"query", "positive", "negative"}``, so every stage reads them as it reads such files; with
graded qrels (a score other than 0 and 1), into one graded row a pair, ``{"query", "passage",
"label", "query_id", "corpus_id"}``.

A query's candidates are its top_ranked list, as MTEB reranks them (their order is kept within the
positive and the negative lists, and in graded rows); a candidate's label is its qrels score (0
where it has none), so a candidate counts as relevant where its score is above 0."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from rerank_distill.errors import InputError
from rerank_distill.jsonl import finite_number, get_text, shown

logger = logging.getLogger(__name__)

# the four parts, and where their files lie in a downloaded copy (push_to_hub writes the "default"
# configuration into data/)
PART_FOLDERS = {"corpus": ("corpus",), "queries": ("queries",), "qrels": ("data", "qrels", "default"),
                "top_ranked": ("top_ranked",)}  # fmt: skip
QRELS_COLUMNS = ("query-id", "corpus-id", "score")

Rows = Iterable[tuple[str, int, dict]]  # (file, row number, record), as formats.iter_rows yields them


def is_qrels(columns: Iterable[str]) -> bool:
    """Whether a table with these columns is qrels: a hub data set's default configuration may be."""
    return set(QRELS_COLUMNS) <= set(columns)


def local_part_folders(folder: str) -> dict[str, str] | None:
    """``{part: folder}`` where ``folder`` holds the four parts' folders, else None (with corpus and
    queries but another part missing: InputError naming it)."""
    found = {part: next((path for path in (os.path.join(folder, name) for name in names) if os.path.isdir(path)), None)
             for part, names in PART_FOLDERS.items()}  # fmt: skip
    if found["corpus"] is None or found["queries"] is None:
        return None
    missing = [f"{part} ({' or '.join(f'{name}/' for name in PART_FOLDERS[part])})" for part, path in found.items()
               if path is None]
    if missing:
        raise InputError(f"this folder holds a corpus and queries but no {', '.join(missing)}: a reranking data set "
                         "in parts needs qrels and each query's candidate list (top_ranked) too", folder)
    return found


@dataclass
class _Candidates:
    query_id: str
    corpus_ids: list[str]
    path: str
    row: int


def join_parts(read_part: Callable[[str], Rows], where: str) -> Iterator[tuple[str, int, dict]]:
    """Yield ``(top_ranked file, row, record)``: one MTEB reranking record for each query of
    top_ranked, or (graded qrels) one graded row for each of its candidates. ``read_part(part)``
    gives a part's rows; ``where`` names the data set in messages.

    Holds the qrels, the candidate lists and the texts of the queries and documents they name in
    memory (not the rest of the corpus). Two query ids of one text stay two records; as graded rows
    they join one list, as every row-per-pair format groups by query text."""
    qrels: dict[str, dict[str, float]] = {}
    judged_again = 0  # a (query, document) pair of the qrels listed again: its last score is read
    for path, row, record in read_part("qrels"):
        query_id, corpus_id = (_id_of(record, name, path, row) for name in ("query-id", "corpus-id"))
        judged_again += corpus_id in qrels.setdefault(query_id, {})
        qrels[query_id][corpus_id] = _score_of(record, path, row)
    by_query: dict[str, _Candidates] = {}  # a query listed twice: its last list counts, as in MTEB
    relisted = 0
    for path, row, record in read_part("top_ranked"):
        query_id = _id_of(record, "query-id", path, row)
        relisted += query_id in by_query
        by_query[query_id] = _Candidates(query_id, _ids_of(record, "corpus-ids", path, row), path, row)
    candidates_again = sum(len(entry.corpus_ids) - len(set(entry.corpus_ids)) for entry in by_query.values())
    candidates = [entry for entry in by_query.values() if entry.corpus_ids]
    if not candidates:
        raise InputError("its top_ranked part lists no candidates: nothing to rerank", where)
    wanted_queries = {entry.query_id for entry in candidates}
    wanted_documents = {corpus_id for entry in candidates for corpus_id in entry.corpus_ids}
    queries, queries_again = _texts(read_part("queries"), wanted_queries, with_title=False)
    documents, documents_again = _texts(read_part("corpus"), wanted_documents, with_title=True)
    graded = any(score not in (0, 1) for scores in qrels.values() for score in scores.values())

    unranked_relevant = 0
    for entry in candidates:
        if entry.query_id not in queries:
            raise InputError(f'query-id "{entry.query_id}" is not in the queries part', entry.path, entry.row)
        missing = [corpus_id for corpus_id in entry.corpus_ids if corpus_id not in documents]
        if missing:
            raise InputError(f'corpus-id "{missing[0]}"{f" and {len(missing) - 1} more" if len(missing) > 1 else ""} '
                             "not in the corpus part", entry.path, entry.row)
        scores = qrels.get(entry.query_id, {})
        unranked_relevant += sum(score > 0 for corpus_id, score in scores.items() if corpus_id not in entry.corpus_ids)
        query = queries[entry.query_id]
        if graded:
            for corpus_id in entry.corpus_ids:
                yield entry.path, entry.row, {"query": query, "passage": documents[corpus_id],
                                              "label": scores.get(corpus_id, 0.0), "query_id": entry.query_id,
                                              "corpus_id": corpus_id}  # fmt: skip
        else:
            labels = [scores.get(corpus_id, 0.0) > 0 for corpus_id in entry.corpus_ids]
            yield entry.path, entry.row, {
                "query": query,
                "positive": [documents[c] for c, relevant in zip(entry.corpus_ids, labels) if relevant],
                "negative": [documents[c] for c, relevant in zip(entry.corpus_ids, labels) if not relevant],
            }
    unlisted, empty = len(qrels.keys() - by_query.keys()), len(by_query) - len(candidates)
    if unranked_relevant or unlisted or empty:
        logger.warning("%s: not ranked here: relevant documents outside their query's top_ranked candidates: %d (MTEB's "
                       "own evaluation counts them as missed, so its MAP can be lower); queries of the qrels without "
                       "candidates: %d; queries with an empty candidate list: %d", where, unranked_relevant, unlisted,
                       empty)
    again = {"queries listed again in top_ranked (the last list is read)": relisted,
             "candidates listed again in their query's top_ranked list (each is read)": candidates_again,
             "(query, document) pairs judged again in the qrels (the last score is read)": judged_again,
             "ids listed again in the queries part (the last text is read)": queries_again,
             "ids listed again in the corpus part (the last text is read)": documents_again}  # fmt: skip
    if any(again.values()):
        logger.warning("%s: %s", where, "; ".join(f"{what}: {count}" for what, count in again.items() if count))


def _id_of(record: dict, name: str, path: str, row: int) -> str:
    value = record.get(name)
    if isinstance(value, int) and not isinstance(value, bool):  # ids stored as numbers
        return str(value)
    return get_text(record, name, path, row)


def _ids_of(record: dict, name: str, path: str, row: int) -> list[str]:
    """A list field of ids, each a string or an integer (read as its text)."""
    if name not in record:
        raise InputError(f'missing field "{name}" (fields present: {sorted(record)})', path, row)
    values = record[name]
    if not isinstance(values, list) or not all(isinstance(value, (str, int)) and not isinstance(value, bool)
                                               for value in values):
        raise InputError(f'field "{name}" must be a list of ids (strings or integers)', path, row)
    return [str(value) for value in values]


def _score_of(record: dict, path: str, row: int) -> float:
    value = record.get("score")
    number = finite_number(value)  # (numeric strings too: MTEB casts scores to integers)
    if number is None:
        raise InputError(f'field "score" must be a finite number, got {shown(value)}', path, row)
    return number


def _texts(rows: Rows, wanted: set[str], with_title: bool) -> tuple[dict[str, str], int]:
    """``{_id: text}`` of the rows whose id (``_id`` or ``id``) is wanted, and how many of those ids
    a later row gave again (the last text is kept); a document's title, where it has one, goes
    before its text, as MTEB joins them."""
    texts, again = {}, 0
    for path, row, record in rows:
        name = "_id" if "_id" in record else "id"
        identifier = _id_of(record, name, path, row)
        if identifier not in wanted:
            continue
        text = get_text(record, "text", path, row)
        title = record.get("title") if with_title else None
        again += identifier in texts
        texts[identifier] = f"{title} {text}".strip() if isinstance(title, str) and title.strip() else text
    return texts, again
