"""The data-set formats every stage reads, detected from a record's fields or named with
``--input_format``:

- ``mteb``: MTEB reranking, one query a line: ``{"query", "positive": [...], "negative": [...]}``
- ``pos_neg``: labelled pairs, one query a line: ``{"query", "pos": [...], "neg": [...]}``
- ``graded``: one (query, passage) a row with a relevance label, in JSONL or Parquet:
  ``{"query", "item_text" | "passage" | "content" | "product_title", "esci_label" | "label" | "grade" | "relevance"}``;
  ESCI letters E/S/C/I (or the words) are grades 3/2/1/0; ``label_column`` names another column
- ``scores``: teacher scores, one (query, passage) a row: ``{"query", "passage" | "content", "score"}``
  with ``score`` a number or numeric string; stage 1's own output is this format plus ``label``

A source is a local ``.jsonl``, ``.jsonl.gz`` or ``.parquet`` file; a local data-set folder
``DIR[:split]`` (a hub data set as ``hf download --repo-type dataset --local-dir DIR`` leaves it,
its Parquet conversion ``CONFIG/SPLIT/0000.parquet``, or what ``datasets``' ``save_to_disk``
writes); or a hub data set ``owner/name[@revision][:split]``. A data set kept in parts as MTEB v2
keeps its reranking tasks (corpus, queries, qrels, top_ranked; on a hub or in a folder) is read as
``mteb`` records, one a query (``graded`` rows for graded qrels): see rerank_distill.qrels.
"""

from __future__ import annotations

import ast
import difflib
import itertools
import json
import logging
import math
import os
import re
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from rerank_distill.cli import to_jsonable
from rerank_distill.errors import InputError, first_line
from rerank_distill.jsonl import (
    check_encodable, check_input_file, check_not_an_input, finite_number, get_number, get_text, get_text_list,
    read_jsonl, shown,
)
from rerank_distill.qrels import is_qrels, join_parts, local_part_folders

logger = logging.getLogger(__name__)

INPUT_FORMATS = ("auto", "mteb", "pos_neg", "graded", "scores")
PASSAGE_FIELDS = ("passage", "item_text", "content", "document", "doc", "product_title")  # the last: ESCI's own
LABEL_FIELDS = ("esci_label", "label", "grade", "relevance")
ESCI_GRADES = {
    "e": 3.0, "exact": 3.0,
    "s": 2.0, "substitute": 2.0,
    "c": 1.0, "complement": 1.0,
    "i": 0.0, "irrelevant": 0.0,
}  # fmt: skip


@dataclass
class RankingQuery:
    """One query with its candidate passages and a relevance grade for each (1/0 for binary data)."""

    query: str
    passages: list[str]
    labels: list[float]
    location: str = ""  # "file:line" of the record, for messages
    source_format: str = ""  # the INPUT_FORMATS name it was read from ("mteb", "graded", ...)
    esci_labels: bool = False  # graded by ESCI letters or words: grades, even where only C (1) and I (0) occur
    # row-per-pair sources: each passage's row ids (id_columns), so outputs can be joined back to the rows
    ids: list[dict[str, Any]] | None = None
    # and each passage's file and line, for messages about one passage (a reference and 8 bytes a row:
    # a "file:line" string a row made the grouped rows of a large file a third bigger)
    row_files: list[str] | None = None
    row_lines: array | None = None

    @classmethod
    def of_rows(cls, query: str, location: str, source_format: str = "", ids: list | None = None) -> RankingQuery:
        """An empty list for a row-per-pair source, to be filled by add_row (``ids``: a list there to
        fill with each row's id_columns, where they are kept)."""
        return cls(query, [], [], location, source_format, ids=ids, row_files=[], row_lines=array("q"))

    @classmethod
    def row_list_in(cls, lists: dict[str, RankingQuery], query: str, location: str, source_format: str = "",
                    keep_ids: bool = False) -> RankingQuery:
        """``lists[query]``, or where it is not there yet a new of_rows list put there (``keep_ids``:
        with a list for the rows' id_columns). Built only for a query's first row: setdefault would
        build and drop one for every row."""
        if (found := lists.get(query)) is None:
            found = lists[query] = cls.of_rows(query, location, source_format, ids=[] if keep_ids else None)
        return found

    def add_row(self, passage: str, label: float | None, path: str, line: int) -> None:
        """One row's passage and label, read at ``path``:``line``."""
        self.passages.append(passage)
        self.labels.append(label)
        self.row_files.append(path)
        self.row_lines.append(line)

    def passage_location(self, index: int) -> str:
        """Where the ``index``-th passage was read: its own row, or its query's record."""
        return f"{self.row_files[index]}:{self.row_lines[index]}" if self.row_files else self.location

    @property
    def positives(self) -> list[str]:
        return [p for p, label in zip(self.passages, self.labels) if label > 0]

    @property
    def negatives(self) -> list[str]:
        return [p for p, label in zip(self.passages, self.labels) if label <= 0]


@dataclass
class ListOddities:
    """What in candidate lists a stage reads as it is but should not pass over unsaid: blank query
    or passage texts, a passage listed again in its query's list, with the same label or another
    (a passage both relevant and not), and a query text whose list is given again in a later record.
    Counts, and the first record of each kind."""

    blank_queries: int = 0
    blank_passages: int = 0
    lists_as_text: int = 0
    repeated_passages: int = 0
    conflicting_labels: int = 0
    repeated_queries: int = 0
    first: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._seen_queries: set[int] = set()  # hashes, not texts: a streaming stage's memory stays small

    @classmethod
    def found_in(cls, queries: list[RankingQuery]) -> ListOddities:
        oddities = cls()
        for query in queries:
            oddities.add(query)
        return oddities

    def note_query_text(self, query: RankingQuery) -> None:
        """Remember ``query``'s text (a record another shard takes, say), so a later repeat of it is counted."""
        self._seen_queries.add(hash(query.query))

    def add(self, query: RankingQuery) -> None:
        label_of_passage: dict[str, float] = {}
        blank = not query.query.strip()
        found = {"blank_queries": blank,
                 "blank_passages": sum(not passage.strip() for passage in query.passages),
                 "repeated_queries": not blank and hash(query.query) in self._seen_queries}  # fmt: skip
        self.note_query_text(query)
        first_at = {}  # each kind's first passage (a row of its own in row-per-pair sources)
        for index, (passage, label) in enumerate(zip(query.passages, query.labels)):
            if not passage.strip():
                first_at.setdefault("blank_passages", index)
            if passage.startswith("[") and _is_list_as_text(passage):
                found["lists_as_text"] = found.get("lists_as_text", 0) + 1
                first_at.setdefault("lists_as_text", index)
            if passage in label_of_passage:
                kind = "repeated_passages" if label_of_passage[passage] == label else "conflicting_labels"
                found[kind] = found.get(kind, 0) + 1
                first_at.setdefault(kind, index)
            label_of_passage.setdefault(passage, label)
        for kind, count in found.items():
            if count:
                setattr(self, kind, getattr(self, kind) + count)
                self.first.setdefault(kind, query.passage_location(first_at[kind]) if kind in first_at
                                      else query.location)

    def warn(self, source: str, what_happens: str) -> None:
        """One warning line for ``source`` if anything was found; ``what_happens`` to such entries."""
        names = {"blank_queries": "blank query texts", "blank_passages": "blank passages",
                 "repeated_passages": "passages listed again in their query's list with the same label",
                 "conflicting_labels": "passages listed again in their query's list with another label",
                 "lists_as_text": "passages that are the text of a list of texts (a list saved as a string, as a CSV "
                                  "export writes it? Each is one passage here: store lists as JSON arrays)",
                 "repeated_queries": "query texts given again with a list of their own in a later record"}  # fmt: skip
        # how the stages differ on such entries, said with them
        notes = {"repeated_queries": "; create_triplets.py joins one query text's lists into one, evaluation.py ranks "
                                     "each record's list apart, several teachers' combined score is standardised "
                                     "within each list"}  # fmt: skip
        found = [f"{getattr(self, kind)} {name} (first at {self.first[kind]}{notes.get(kind, '')})"
                 for kind, name in names.items() if getattr(self, kind)]  # fmt: skip
        if found:
            logger.warning("%s: %s; %s: clean the data if they are mistakes", source, "; ".join(found), what_happens)


def _is_list_as_text(text: str) -> bool:
    """Whether ``text`` spells a list of texts, as JSON (``["a", "b"]``) or Python (``['a', 'b']``,
    as pandas writes a list column to CSV)."""
    for parse in (json.loads, ast.literal_eval):
        try:
            value = parse(text)
        except (ValueError, SyntaxError, RecursionError, MemoryError):
            continue
        return isinstance(value, list) and all(isinstance(item, str) for item in value)
    return False


@dataclass
class ScoredPair:
    """One teacher-scored (query, passage) pair: a line of stage 1's output."""

    query: str
    passage: str
    score: float  # the teacher's logit-scale score
    label: float | None = None  # the gold grade when the source had one
    extra: dict[str, Any] = field(default_factory=dict)  # other fields, kept as they came
    line: int = 0
    path: str = ""  # the file of the line (one of a data-set folder's files), for messages


DATA_FILE_SUFFIXES = (".jsonl", ".jsonl.gz", ".parquet")
OTHER_TABLE_SUFFIXES = (".csv", ".tsv", ".json")  # (plain or .gz) data a folder may hold that no stage reads


def _folder_and_split(source: str) -> tuple[str, str | None] | None:
    """``(folder, split)`` when ``source`` is ``DIR`` or ``DIR:SPLIT`` for an existing folder, else
    None (``DIR:``, the split left empty, is ``DIR``). Either may hold colons (``runs:2/data``, a
    split saved as ``test[:5]``): the longest existing folder before a colon is the folder. An
    existing file is a file (``runs:2/test.jsonl`` beside a folder ``runs/``)."""
    if os.path.isdir(source):
        return source, None
    if os.path.exists(source):
        return None
    for colon in reversed([i for i, char in enumerate(source) if char == ":"]):
        folder, split = source[:colon], source[colon + 1:]
        if os.path.isdir(folder):
            return folder, split or None
    return None


def data_set_folder(source: str) -> str | None:
    """The folder of a ``DIR[:SPLIT]`` source, else None."""
    folder_split = _folder_and_split(os.fspath(source))
    return folder_split[0] if folder_split else None


def check_outside_data_set_folders(output: str | os.PathLike, sources: list[str], flag: str) -> None:
    """InputError where ``output`` (the value of ``flag``) lies inside the folder of a ``DIR[:SPLIT]``
    input: a data file written there would be read the next time as a split of its own or part of one
    (splits are found by file name, anywhere below), or overwrite a save_to_disk folder's own files."""
    written = os.path.realpath(output)
    for source in sources:
        folder = data_set_folder(source)
        if folder and (written + os.sep).startswith(os.path.realpath(folder) + os.sep):
            raise InputError(f"{flag} {output} is inside the data-set folder {folder} this run reads ({source}): "
                             "what is written there would be read as part of the data set; write it elsewhere")


def check_output_not_read(output: str | os.PathLike, sources: list[str], flag: str) -> None:
    """InputError where writing ``output`` (the value of ``flag``) would destroy one of the files
    ``sources`` read (with the ``.run.json`` record stage 1 keeps beside a scores file, read for its
    teachers and label words), or land inside a data-set folder among them (check_outside_data_set_folders)."""
    files = [file for source in sources for file in local_files(source)]
    check_not_an_input(output, files + [f"{file}.run.json" for file in files], flag)
    check_outside_data_set_folders(output, sources, flag)


def split_files(folder: str, split: str | None, by_split: dict[str, list[str]] | None = None) -> list[str]:
    """The data files of one split of a local data-set folder, sorted by path: the files named for
    the split, as hubs name them (``train.jsonl.gz``, ``data/test-00000-of-00001.parquet``), or
    numbered inside a folder named for it (``default/test/0000.parquet``), or the split's Arrow
    files of a ``save_to_disk`` folder. With no split, the folder must hold exactly one.
    ``by_split``: what splits_in found in the folder, where the caller has it."""
    by_split = splits_in(folder) if by_split is None else by_split
    split = resolve_split(folder, split, by_split)
    if split not in by_split:
        raise InputError(f"this folder has no split '{split}' (file names, or the folders of numbered files, "
                         f"name their split); it holds {sorted(by_split)}", folder)  # fmt: skip
    files = sorted(by_split[split])
    if not files:  # what save_to_disk writes for a data set of no rows
        raise InputError(f"split '{split}' has no data files: the data set is empty", folder)
    places = sorted({os.path.relpath(os.path.dirname(path), folder) for path in files})
    if len(places) > 1:  # configurations of one data set (en/train-*, de/train-*): joining them mixes tasks
        # a folder that holds none of the others can be passed on its own; one that does, only as its files; a part
        # of a data set in parts (en/corpus, en/queries, ...) only as that data set (en)
        passable = sorted({os.path.dirname(place) if _in_parts(folder, place) else place for place in places})
        alone = [place for place in passable
                 if place != "." and not any(other.startswith(place + os.sep) for other in passable)]
        example = f"{os.path.join(folder, alone[0])}:{split}" if alone else files[0]
        raise InputError(f"split '{split}' has files in several folders ({', '.join(places)}): pass the one meant "
                         f"(e.g. {example}) or a file", folder)  # fmt: skip
    by_stem: dict[str, list[str]] = {}
    for path in files:
        stem = next((path[: -len(suffix)] for suffix in DATA_FILE_SUFFIXES if path.endswith(suffix)), path)
        by_stem.setdefault(stem, []).append(os.path.basename(path))
    twice = next((names for names in by_stem.values() if len(names) > 1), None)
    whole = [names[0] for stem, names in by_stem.items() if os.path.basename(stem) == split]
    parts = [names[0] for stem, names in by_stem.items() if re.search(r"-\d+-of-\d+$", stem)]
    if twice is None and whole and parts:  # test.jsonl beside test-00000-of-00001.parquet
        twice = [whole[0], parts[0]]
    if twice:
        raise InputError(f"split '{split}' holds {' and '.join(twice)}: the same data in two forms? Its files are "
                         "joined, so keep one", folder)
    return files


def _in_parts(folder: str, place: str) -> bool:
    """Whether the folder ``place`` below ``folder`` is a part of a data set in parts (its corpus, ...)."""
    parent = os.path.dirname(place)
    try:
        return bool(parent) and local_part_folders(os.path.join(folder, parent)) is not None
    except InputError:  # one with a part missing: passed on its own, it says which
        return True


def splits_in(folder: str) -> dict[str, list[str]]:
    """``{split: data files}`` of a local data-set folder (see split_files); InputError where it has none."""
    by_split = _saved_data_set_files(folder)
    if by_split is None:
        by_split = {}
        seen = set()  # real folders walked: a linked folder is followed (data/ linked in), once (a link to above)
        tables = set()  # suffixes of files that may be data in another format (a hub download's .csv files)
        for root, folders, files in os.walk(folder, followlinks=True):
            real = os.path.realpath(root)
            if real in seen:
                folders[:] = []
                continue
            seen.add(real)
            folders[:] = [name for name in folders if not name.startswith(".")]  # .cache and the like
            for name in files:  # hidden ones are no data: macOS's ._NAME copies, editors' .#NAME locks
                if name.endswith(DATA_FILE_SUFFIXES) and not name.startswith("."):
                    by_split.setdefault(_split_named_by(root, name), []).append(os.path.join(root, name))
                elif (unzipped := name.lower().removesuffix(".gz")).endswith(OTHER_TABLE_SUFFIXES):
                    tables.add(unzipped.rsplit(".", 1)[1])
    model_file = next((name for name in ("config.json", "modules.json") if os.path.isfile(os.path.join(folder, name))),
                      None)
    if not by_split and model_file:  # a model given where data goes (train.py's output, a student)
        raise InputError(f"is a model folder ({model_file}), not a data set: pass the data file (JSONL, Parquet) or "
                         "data-set folder meant", folder)
    if not by_split:
        others = (f"; its .{', .'.join(sorted(tables))} files are not read in a folder: pass one as a file (a file "
                  "of JSON lines is read whatever its suffix, a table says how to convert it), or convert them to "
                  ".jsonl or .parquet") if tables else ""
        raise InputError(f"this folder holds no data files ({', '.join(DATA_FILE_SUFFIXES)}) and is no "
                         f"data set saved by datasets' save_to_disk{others}", folder)  # fmt: skip
    return by_split


def resolve_split(folder: str, split: str | None, by_split: dict[str, list[str]] | None = None) -> str:
    """``split``, or where it is None the only split of ``folder`` (InputError where it has several;
    ``by_split``: what splits_in found there, where the caller has it)."""
    if split is not None:
        return split
    by_split = splits_in(folder) if by_split is None else by_split
    if len(by_split) != 1:
        raise InputError(f"this folder holds the splits {sorted(by_split)}; name one as {folder}:SPLIT", folder)
    return next(iter(by_split))


def _split_named_by(folder: str, file_name: str) -> str:
    """A data file's split: its name up to a ``-`` or its data suffix (``train``.jsonl.gz,
    ``test``-00000-of-00001.parquet; a split's name may hold dots, as ``datasets`` allows:
    ``test.clean``-00000-of-00001.parquet is not ``test``), or, for a zero-padded numbered file
    (``0000.parquet``, as the hub's Parquet conversion names them), its folder's name."""
    first_word = file_name.split("-", 1)[0]
    first_word = next((first_word[: -len(suffix)] for suffix in DATA_FILE_SUFFIXES if first_word.endswith(suffix)),
                      first_word)
    numbered = first_word.isdigit() and first_word.startswith("0")  # 0000, 0001, ...; not 2023.jsonl
    return os.path.basename(folder) if numbered else first_word


def _saved_data_set_files(folder: str) -> dict[str, list[str]] | None:
    """``{split: Arrow files}`` of a folder written by datasets' ``save_to_disk`` (a DatasetDict's
    ``dataset_dict.json`` with a folder per split, or one Dataset's ``state.json``), else None."""
    listing, state = os.path.join(folder, "dataset_dict.json"), os.path.join(folder, "state.json")
    if os.path.isfile(listing):
        splits = _json_field(listing, "splits", list)
        if not all(isinstance(split, str) for split in splits):
            raise InputError(f'"splits" must be a list of split names, got {splits!r}', listing)
        by_split = {split: _arrow_files(os.path.join(folder, split)) for split in splits}
    elif os.path.isfile(state):
        split = _json_field(state, "_split", (str, type(None)))
        by_split = {split or "train": _arrow_files(folder)}
    else:
        return None
    loose = [os.path.relpath(os.path.join(root, name), folder) for root, folders, files in os.walk(folder)
             for name in files if name.endswith(DATA_FILE_SUFFIXES) and not name.startswith(".")]
    if loose:  # which of the two is the data set is not for this tool to guess
        raise InputError(f"this folder is a data set written by save_to_disk but also holds data files "
                         f"({', '.join(sorted(loose)[:3])}{', ...' if len(loose) > 3 else ''}): move one or the "
                         "other out", folder)
    return by_split


def _arrow_files(split_folder: str) -> list[str]:
    """The Arrow files of one save_to_disk split, from its ``state.json``."""
    state = os.path.join(split_folder, "state.json")
    parts = _json_field(state, "_data_files", list)
    if not all(isinstance(part, dict) and isinstance(part.get("filename"), str) for part in parts):
        raise InputError('"_data_files" must list {"filename": ...} entries', state)
    return [os.path.join(split_folder, part["filename"]) for part in parts]


def _json_field(path: str, name: str, kind: type | tuple[type, ...]) -> Any:
    """Field ``name`` of the JSON object in ``path``, of type ``kind`` (InputError naming the file otherwise)."""
    try:
        with open(path, encoding="utf-8") as file:
            record = json.load(file)
    except (OSError, ValueError) as error:
        raise InputError(f"cannot read this save_to_disk file ({first_line(error)})", path) from None
    if not isinstance(record, dict) or not isinstance(record.get(name), kind):  # (a missing field reads as None)
        raise InputError(f'expected a JSON object with "{name}" as datasets\' save_to_disk writes it', path)
    return record.get(name)


def _part_files(folder: str, split: str | None) -> dict[str, list[str]] | None:
    """``{part: files of the split}`` where ``folder`` holds a data set in parts (corpus, queries,
    qrels, top_ranked: see rerank_distill.qrels), else None. With no split, top_ranked's only one;
    corpus and queries, which splits often share, may hold one split of another name (as MTEB reads them)."""
    part_folders = local_part_folders(folder)
    if not part_folders:
        return None
    by_part = {part: splits_in(part_folder) for part, part_folder in part_folders.items()}
    if split is None and len(by_part["top_ranked"]) > 1:  # (named for the data set, not its top_ranked folder)
        raise InputError(f"this data set in parts holds the splits {sorted(by_part['top_ranked'])} (its top_ranked "
                         f"candidate lists); name one as {folder}:SPLIT", folder)
    split = resolve_split(part_folders["top_ranked"], split, by_part["top_ranked"])
    files = {}
    for part, part_folder in part_folders.items():
        shared = part in ("corpus", "queries") and len(by_part[part]) == 1
        files[part] = split_files(part_folder, next(iter(by_part[part])) if shared else split, by_part[part])
    return files


def local_files(source: str) -> list[str]:
    """The local files a source reads (none for a hub data set): what a resumed run checks for changes."""
    folder_split = _folder_and_split(source)
    if folder_split:
        parts = _part_files(*folder_split)
        return [file for files in parts.values() for file in files] if parts else split_files(*folder_split)
    return [source] if os.path.isfile(source) else []


def _looks_like_hub_dataset(source: str) -> bool:
    """Whether ``source`` could be ``NAME[@REVISION][:SPLIT]``: a split holds no path separator, so
    ``runs:2/data.jsonl`` or ``C:\\data\\test.jsonl`` that does not exist is a path, reported missing."""
    from rerank_distill.hub import looks_like_hub_id

    name, _, split = source.partition(":")
    return looks_like_hub_id(name) and not any(separator in split for separator in "/\\")


def source_stem(source: str) -> str:
    """A file-name stem for a source: ``data/train.jsonl.gz`` -> ``train``;
    ``mteb/stackoverflowdupquestions-reranking:test`` -> ``stackoverflowdupquestions-reranking_test``
    (``...-reranking@v1:test`` -> ``stackoverflowdupquestions-reranking@v1_test``)."""
    folder_split = _folder_and_split(source)
    if folder_split:
        folder, split = folder_split
        # its absolute path's name: "." or ".." would name a hidden file (._test_scores.jsonl), not DIR's name
        return os.path.basename(os.path.abspath(folder)) + (f"_{split}" if split else "")
    if os.path.exists(source) or not _looks_like_hub_dataset(source):
        name = os.path.basename(source)
        for suffix in (".gz", ".jsonl", ".json", *FILE_READERS):
            if name.endswith(suffix):
                name = name[: -len(suffix)]
        return name
    from rerank_distill.hub import split_revision

    name, _, split = source.partition(":")
    name, revision = split_revision(name)
    # a revision stays in (x@v1 and x@v2 are two data sets), its slashes (refs/pr/1) made dashes: a stem names no folder
    at_revision = f"@{revision.replace('/', '-')}" if revision else ""
    return name.split("/")[-1] + at_revision + (f"_{split}" if split else "")


def iter_rows(source: str, hub: str = "huggingface", cache_dir: str | None = None) -> Iterator[tuple[str, int, dict]]:
    """Yield ``(path, row_number, record)`` for every record of a JSONL, Parquet or hub source."""
    source = os.fspath(source)  # a pathlib.Path works too
    folder_split = _folder_and_split(source)
    if folder_split and (parts := _part_files(*folder_split)):
        yield from join_parts(lambda part: (row for path in parts[part] for row in _iter_file(path)), source)
    elif folder_split:
        for path in split_files(*folder_split):
            yield from _iter_file(path)
    elif os.path.exists(source) or not _looks_like_hub_dataset(source):
        if not os.path.exists(source):  # /data/set@v1:test: a path, so never tried on a hub
            from rerank_distill.hub import refuse_revision_of_a_folder, refuse_web_address

            refuse_web_address(source, "data set")
            refuse_revision_of_a_folder(source.rsplit(":", 1)[0], "data set", "{folder}:SPLIT")
        yield from _iter_file(source)
    else:
        yield from _iter_hub_rows(source, hub, cache_dir)


def _iter_hub_rows(source: str, hub: str, cache_dir: str | None) -> Iterator[tuple[str, int, dict]]:
    """The rows of a hub data set ``NAME[:SPLIT]``; one in parts (its default configuration or its
    ``qrels`` one holds qrels: MTEB v2) is joined into ranking records (rerank_distill.qrels)."""
    from rerank_distill.hub import load_hub_dataset

    name, _, split = source.partition(":")
    loaded = load_hub_dataset(name, split or None, hub, cache_dir)
    rows = iter(loaded)
    first = next(rows, None)
    if first is None:  # as an empty file is: a stage would otherwise go on with no queries at all
        raise InputError("contains no records (the data set is empty)", source)
    if not is_qrels(first):
        for row_number, record in enumerate(itertools.chain([first], rows), start=1):
            yield source, row_number, dict(record)
        return
    if not split:  # each part is loaded by name, and a part's only split need not be the others'
        raise InputError(f"data set '{name}' is in parts (corpus, queries, qrels, top_ranked): name the split as "
                         f"{name}:SPLIT (e.g. :test)")
    if "[" in split:  # a slice takes rows of each part alike, whose rows do not line up: the corpus would lack passages
        raise InputError(f"data set '{name}' is in parts (corpus, queries, qrels, top_ranked), which a slice such "
                         f"as :{split} cuts apart: name the whole split ({name}:{split.split('[')[0]})")

    def read_part(part: str) -> Iterator[tuple[str, int, dict]]:
        rows = loaded if part == "qrels" else _load_hub_part(name, split, part, hub, cache_dir)
        for row_number, record in enumerate(rows, start=1):
            yield f"{source} ({part})", row_number, dict(record)

    yield from join_parts(read_part, source)


def _load_hub_part(name: str, split: str, part: str, hub: str, cache_dir: str | None):
    """Part ``part`` (a configuration) of hub data set ``name`` in parts, of ``split``; corpus and
    queries, which splits often share, from their only split where they have no ``split`` (BEIR-style
    data sets keep them as splits named ``corpus`` and ``queries``), as a folder's are read (_part_files)."""
    from rerank_distill.hub import load_hub_dataset

    try:
        return load_hub_dataset(name, split, hub, cache_dir, config=part)
    except InputError as error:
        if part not in ("corpus", "queries"):
            raise
        try:
            return load_hub_dataset(name, None, hub, cache_dir, config=part)  # its only split, where it has one
        except InputError:
            raise error from None


def first_record(source: str, hub: str = "huggingface", cache_dir: str | None = None) -> tuple[str, int, dict]:
    """``(path, line, record)`` of a source's first record (InputError for a missing or empty file).
    ``hub``/``cache_dir``: where a hub data set is fetched from."""
    for path, line, record in iter_rows(source, hub, cache_dir):
        return path, line, record
    raise InputError("contains no records (the file is empty)", source)


def _iter_file(path: str) -> Iterator[tuple[str, int, dict]]:
    """The rows of one file, read by its suffix (FILE_READERS); any other file is JSONL, plain or gzip."""
    reader = next((read for suffix, read in FILE_READERS.items() if path.endswith(suffix)), _iter_jsonl)
    yield from reader(path)


def _iter_jsonl(path: str) -> Iterator[tuple[str, int, dict]]:
    for line, record in read_jsonl(path):
        yield path, line, record


def _iter_parquet(path: str) -> Iterator[tuple[str, int, dict]]:
    check_input_file(path)
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as error:  # pyarrow raises ArrowInvalid, OSError, ... for a bad file
        raise InputError(f"cannot be read as Parquet ({error})", path) from None
    names = parquet.schema_arrow.names
    if repeated := next((name for i, name in enumerate(names) if name in names[:i]), None):
        # (pyarrow writes such a file; its rows as dicts keep the last column of the name, as json keeps a repeated key)
        raise InputError(f"names the column {shown(repeated)} twice (a row would keep only the last one's value); "
                         "keep one", path)
    row_number = 0
    try:
        with parquet:
            for batch in parquet.iter_batches(batch_size=10_000):
                for record in batch.to_pylist():
                    row_number += 1
                    yield path, row_number, record
    except (pa.ArrowException, OSError) as error:  # damaged pages (a thrift or codec error is an OSError)
        raise InputError(f"cannot be read as Parquet after row {row_number} ({first_line(error)})", path) from None
    if row_number == 0:
        raise InputError("contains no records (the file is empty)", path)


def _iter_arrow(path: str) -> Iterator[tuple[str, int, dict]]:
    """The rows of one Arrow stream file of a save_to_disk folder."""
    if not os.path.isfile(path):
        raise InputError("file not found (the save_to_disk folder lists it)", path)
    import pyarrow as pa

    row_number = 0
    try:
        with pa.memory_map(path) as source:
            for batch in pa.ipc.open_stream(source):
                for record in batch.to_pylist():
                    row_number += 1
                    yield path, row_number, record
    except (pa.ArrowInvalid, OSError) as error:  # a file cut short raises OSError
        raise InputError(f"cannot be read as an Arrow stream after row {row_number} ({first_line(error)})", path) from None
    if row_number == 0:
        raise InputError("contains no records (the data set is empty)", path)


# The files read by another reader than JSONL's, by suffix (a new kind of file: its reader here, and its
# suffix in DATA_FILE_SUFFIXES if a data-set folder may hold it).
FILE_READERS = {".parquet": _iter_parquet, ".arrow": _iter_arrow}  # (.arrow: a save_to_disk folder's streams)


# Stage 2's outputs, which train.py trains on: what a record of each holds, for messages.
TRAINING_RECORDS = {
    "triplets": '{"query", "positive", "negative", "score"}',
    "ntuples": '{"query", "positive", "negatives": [...], "scores": [...]}',
    "listwise": '{"query", "passages": [...], "scores": [...]}',
}


def training_record_kind(record: dict) -> str | None:
    """"triplets", "ntuples" or "listwise" for a record of stage 2's output, else None. A record with
    a triplet's "score" or an n-tuple's "scores" beside a "positive" or "negative" that is no list is
    one even where a text is null, of another type or missing (its reader then names that field): an
    MTEB record holds lists and no score."""
    if "passages" in record:
        return "listwise"
    texts = [record[name] for name in ("positive", "negative") if name in record]
    of_lists = any(isinstance(text, list) for text in texts)
    # (an MTEB record with "negatives" for "negative" holds lists and no "scores": a misspelt field, no n-tuple)
    if ("negatives" in record and ("scores" in record or not of_lists)) or (
            "scores" in record and "positive" in record and not of_lists):
        return "ntuples"
    if "score" in record and texts and not of_lists:
        return "triplets"
    return None


def refuse_training_record(record: dict, path: str, line: int, wanted: str) -> None:
    """InputError where a record of stage 2's output came where ``wanted`` data belongs."""
    kind = training_record_kind(record)
    if kind is not None:
        raise InputError(
            f"this is a line of {kind} {TRAINING_RECORDS[kind]} (create_triplets.py's output, which train.py trains "
            f"on), but this stage reads {wanted}",
            path,
            line,
        )


def detect_format(record: dict, path: str, line: int, label_column: str | None = None) -> str:
    """Name the format of one record from its fields, or raise InputError saying what was expected.
    ``label_column`` replaces the usual label fields when telling graded rows apart."""
    if "query" in record and ("positive" in record or "negative" in record):
        return "mteb"
    if "query" in record and ("pos" in record or "neg" in record):
        return "pos_neg"
    has_passage = any(name in record for name in PASSAGE_FIELDS)
    if "query" in record and has_passage and "score" in record:
        return "scores"
    if "query" in record and has_passage and any(name in record for name in _label_fields(label_column)):
        return "graded"
    raise InputError(
        f"cannot tell the format from the fields {sorted(record)}; expected "
        '{"query", "positive", "negative"} (MTEB reranking), {"query", "pos", "neg"}, '
        '{"query", "passage"|"content", "score"} (teacher scores) or '
        '{"query", "item_text"|"passage"|"product_title", '
        + (f'"{label_column}" (--label_column)}} (graded labels)' if label_column
           else '"esci_label"|"label"} (graded labels; another grade column: name it with --label_column)'),
        path,
        line,
    )


def _refuse_another_format(record: dict, path: str, line: int, source_format: str, first_location: str,
                          label_column: str | None = None) -> None:
    """InputError where a record that lacks what its source's format reads is of another format, one
    query a line among rows a pair or the reverse (two files joined): say so, rather than name the
    field it lacks. (The rows of graded labels and of teacher scores are read alike.)"""
    try:
        own_format = detect_format(record, path, line, label_column)
    except InputError:  # of no format: the caller names what it lacks
        return
    one_query_a_line = ("mteb", "pos_neg")
    if (own_format in one_query_a_line) != (source_format in one_query_a_line):
        raise InputError(f"this record is in the {own_format} format, but the first record ({first_location}) is in "
                         f"the {source_format} format, and one source holds one format: were two files joined? Keep "
                         "each format in a file of its own", path, line)


# What a record must hold to be read as each format --input_format can name: (any of these fields, in words)
_NAMED_FORMAT_FIELDS = {
    "mteb": (("positive", "negative"), '"positive" / "negative" lists'),
    "pos_neg": (("pos", "neg"), '"pos" / "neg" lists'),
    "graded": (PASSAGE_FIELDS, "one passage a row (passage, item_text, content, ...)"),
    "scores": (PASSAGE_FIELDS, "one passage a row (passage, content, ...)"),
}


def check_named_format(record: dict, path: str, line: int, input_format: str, label_column: str | None = None) -> None:
    """InputError where a source's first record has none of the fields the format named with
    --input_format reads: the flag, not the data, is then what is wrong, and the message says so."""
    fields, described = _NAMED_FORMAT_FIELDS[input_format]
    if any(name in record for name in fields):
        return
    try:
        detected = f" (the {detect_format(record, path, line, label_column)} format)"
    except InputError:
        detected = ""
    raise InputError(f"--input_format {input_format} reads {described}, but this record has the fields "
                     f"{sorted(record)}{detected}; leave --input_format out to tell the format from the fields, or name "
                     "the one this data holds", path, line)


def id_columns(record: dict, path: str, line: int) -> dict[str, Any]:
    """A row's identifier columns (``id``, ``qid``, ``docid``, or a name ending in ``_id`` or ``-id``:
    ESCI's query_id, product_id, example_id), kept beside each output line so it can be joined back
    to its row; values JSON has no type for (dates, decimals, bytes) are written as text, a missing
    number (NaN, as pandas and Parquet hold one) as null. InputError for one holding a lone surrogate
    (JSON's ``\\ud800``): it is written out, and UTF-8 cannot hold it."""
    ids = {}
    for name, value in record.items():
        if _is_id_column(name):
            check_encodable(name, f"the name of id column {shown(name)}", path, line)
            ids[name] = _written_id(to_jsonable(value), f"id column {shown(name)}", path, line)
    return ids


def _written_id(value: Any, what: str, path: str, line: int) -> Any:
    """A JSON id value (a list or an object of ids too) as it is written out: each NaN or infinity
    in it, at any depth, made null (json.dumps would write a bare NaN); InputError where a string in
    it holds a lone surrogate."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, str):
        check_encodable(value, what, path, line)
    elif isinstance(value, list):
        return [_written_id(item, what, path, line) for item in value]
    elif isinstance(value, dict):
        return {_written_id(key, what, path, line): _written_id(item, what, path, line) for key, item in value.items()}
    return value


def _is_id_column(name: str) -> bool:
    name = name.lower()
    return name in ("id", "qid", "pid", "docid") or name.endswith(("_id", "-id"))


def _misspelt_list_field(record: dict, names: tuple[str, ...]) -> tuple[str, str] | None:
    """``(field, name meant)`` where ``record`` holds texts under a near-spelling of one of the list fields
    ``names`` that it lacks ("positives", "Negative", "negs"): the record is read without that list, and its
    passages would be lost unsaid. Else None. (Close: difflib's ratio 0.85 or more, which takes a letter
    missing, added or changed in a case, but not a name of its own such as "positive_ids" or "hard_negatives".)"""
    lacking = [name for name in names if name not in record]
    for field_name, value in record.items():
        if field_name != "query" and isinstance(value, (str, list)):
            if meant := difflib.get_close_matches(field_name, lacking, n=1, cutoff=0.85):
                return field_name, meant[0]
    return None


def passage_of(record: dict, path: str, line: int) -> str:
    """The passage text of a one-pair row, from its passage field (one of PASSAGE_FIELDS).
    InputError where two such fields hold different texts: which one is the passage is not ours to guess.
    A null field counts as missing, as a Parquet row holds the columns of other rows' passage fields."""
    texts = {name: get_text(record, name, path, line) for name in PASSAGE_FIELDS if record.get(name) is not None}
    if not texts:
        raise InputError(f"missing the passage field (one of {', '.join(PASSAGE_FIELDS)})", path, line)
    if len(set(texts.values())) > 1:
        names = " and ".join(f'"{name}"' for name in texts)
        raise InputError(f"fields {names} hold different passages; keep the passage text in one of them and "
                         "rename the others", path, line)
    return next(iter(texts.values()))


def grade_of(value: Any, path: str, line: int, field_name: str, hint: str = "") -> float:
    """A relevance grade from an ESCI letter or word, or a finite number (bools count as 1/0);
    InputError, ending with ``hint``, for anything else."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and value.strip().lower() in ESCI_GRADES:
        return ESCI_GRADES[value.strip().lower()]
    if (number := finite_number(value)) is not None:
        return number
    raise InputError(
        f'field "{field_name}" must be a number or an ESCI label (E, S, C, I), got {shown(value)}{hint}', path, line
    )


def warn_label_column_unread(label_column: str, path: str, why: str) -> None:
    """Warn that --label_column is not read in the file ``path``, and ``why``: a setting the user
    asked for must not vanish unnoticed (one file may read it where another does not)."""
    logger.warning("--label_column %s is not read in %s: %s", label_column, path, why)


def _label_fields(label_column: str | None) -> tuple[str, ...]:
    return (label_column,) if label_column else LABEL_FIELDS


def label_of(record: dict, path: str, line: int, label_column: str | None = None) -> tuple[str, float] | None:
    """``(field, grade)`` of the record's relevance label, or None when it has none. With
    ``label_column`` only that field is read; without, the first of LABEL_FIELDS a record has, and an
    InputError where another one it has gives another grade (which one is meant only the user knows)."""
    present = [name for name in _label_fields(label_column) if record.get(name) is not None]
    if len(present) < 2:  # (the usual row, read a million times)
        return (present[0], grade_of(record[present[0]], path, line, present[0])) if present else None
    several = f"; this row has several label fields ({', '.join(present)}): name the one to read with --label_column"
    labels = [(name, grade_of(record[name], path, line, name, several)) for name in present]
    if len({grade for _, grade in labels}) > 1:
        given = ", ".join(f'"{name}" ({shown(record[name])}, grade {grade:g})' for name, grade in labels)
        raise InputError(f"row has relevance labels that disagree: {given}; name the one to read with --label_column",
                         path, line)
    return labels[0]


def iter_ranking_queries(
    source: str,
    input_format: str = "auto",
    hub: str = "huggingface",
    cache_dir: str | None = None,
    label_column: str | None = None,
    nonnegative_grades: bool = False,
) -> Iterator[RankingQuery]:
    """Yield each query with its labelled candidates, in the order the source gives them.

    One-query-a-line formats stream. Row-per-pair formats (graded, scores with labels) are
    grouped by query text in first-appearance order, which holds one source's queries in memory.
    ``label_column`` names the grade column of row-per-pair sources (default: the first of
    esci_label, label, grade, relevance that a row has). ``nonnegative_grades``: a grade below 0
    is an InputError at its row (NDCG takes grades as gains).
    """
    if input_format not in INPUT_FORMATS:
        raise InputError(f"unknown --input_format '{input_format}'; choose one of {', '.join(INPUT_FORMATS)}")
    grouped: dict[str, RankingQuery] = {}
    chosen = None if input_format == "auto" else input_format
    first_location = None
    for path, line, record in iter_rows(source, hub, cache_dir):
        refuse_training_record(record, path, line, "ranking data: a query with its candidate passages and labels")
        if first_location is None and input_format != "auto":
            check_named_format(record, path, line, input_format, label_column)
        record_format = chosen or detect_format(record, path, line, label_column)
        chosen = chosen or record_format  # a source holds one format; the first record decides it
        location = f"{path}:{line}"
        if first_location is None and label_column and record_format in ("mteb", "pos_neg"):
            warn_label_column_unread(label_column, path, f"its {record_format} format labels a passage by the list "
                                                         "it is in")
        first_location = first_location or location
        if record_format in ("mteb", "pos_neg"):
            pos_name, neg_name = ("positive", "negative") if record_format == "mteb" else ("pos", "neg")
            other_names = [name for name in ("pos", "neg", "positive", "negative") if name in record
                           and name not in (pos_name, neg_name)]  # fmt: skip
            if other_names and input_format == "auto":  # the candidates under those names would be lost unsaid
                names = " / ".join(f'"{name}"' for name in other_names)
                mixed = (f"record mixes {names} with" if pos_name in record or neg_name in record
                         else f"record uses {names}, but the first record ({first_location}) used")  # fmt: skip
                raise InputError(f'{mixed} the {record_format} format\'s "{pos_name}" / "{neg_name}": use one pair of '
                                 "names, or name the pair to read with --input_format mteb or pos_neg", path, line)
            query = get_text(record, "query", path, line)
            if (pos_name not in record or neg_name not in record) and (
                    misspelt := _misspelt_list_field(record, (pos_name, neg_name))):
                raise InputError(f'field "{misspelt[0]}" is not read: did you mean "{misspelt[1]}"? Its passages would '
                                 "be lost; rename it", path, line)
            if record.get(pos_name) is None and record.get(neg_name) is None:  # (null: a Parquet row's missing list)
                _refuse_another_format(record, path, line, record_format, first_location, label_column)
                raise InputError(f'record has neither "{pos_name}" nor "{neg_name}"', path, line)
            positives = get_text_list(record, pos_name, path, line, required=False)
            negatives = get_text_list(record, neg_name, path, line, required=False)
            yield RankingQuery(query, positives + negatives, [1.0] * len(positives) + [0.0] * len(negatives), location,
                               record_format)
        else:
            query = get_text(record, "query", path, line)
            if not any(record.get(name) is not None for name in PASSAGE_FIELDS):
                _refuse_another_format(record, path, line, record_format, first_location, label_column)
            passage = passage_of(record, path, line)
            label = label_of(record, path, line, label_column)
            if record_format == "scores":  # not ranked by, but a broken score is a broken file, as where it is read
                try:
                    get_number(record, "score", path, line)
                except InputError as error:
                    if input_format != "auto" or label is None:
                        raise
                    raise InputError(f'{error}; if "score" holds no teacher score (a retriever\'s, say), read the '
                                     "rows as graded labels with --input_format graded") from None
            if label is None:
                names = f'"{label_column}" (--label_column)' if label_column else ", ".join(LABEL_FIELDS)
                hint = (
                    "; a teacher-scores file without labels is create_triplets.py's input (it skips stage 1), or "
                    "evaluation.py's --teacher_scores beside the labelled data set it scores"
                    if "score" in record
                    else ""
                )
                raise InputError(
                    f"this row has no relevance label ({names}), so it cannot be used as a labelled ranking "
                    f"data set{hint}",
                    path,
                    line,
                )
            if nonnegative_grades and label[1] < 0:
                raise InputError(f'field "{label[0]}" is {label[1]:g}; relevance grades must be >= 0 (they are NDCG '
                                 "gains)", path, line)
            entry = RankingQuery.row_list_in(grouped, query, location, record_format, keep_ids=True)
            entry.add_row(passage, label[1], path, line)
            entry.ids.append(id_columns(record, path, line))
            raw = record[label[0]]
            entry.esci_labels = entry.esci_labels or (isinstance(raw, str) and raw.strip().lower() in ESCI_GRADES)
    yield from grouped.values()


def iter_scored_pairs(source: str, label_column: str | None = None, hub: str = "huggingface",
                      cache_dir: str | None = None) -> Iterator[ScoredPair]:
    """Yield teacher-scored pairs from stage 1's output or another tool's
    ``{"query", "passage"|"content", "score"}`` file (or hub data set), validating every field. The
    gold label is read from ``label_column`` where given, else from the first of LABEL_FIELDS a line has."""
    for path, line, record in iter_rows(source, hub, cache_dir):
        refuse_training_record(record, path, line, "teacher scores, one pair a line (generate_logits.py's output)")
        query = get_text(record, "query", path, line)
        if "score" not in record and _is_ranking_data(record, path, line):
            raise InputError(
                "this is ranking data without teacher scores, but this stage reads teacher scores, one pair a line: "
                "score it with generate_logits.py first (or train on its labels: train.py --loss bce_labels)",
                path,
                line,
            )
        passage = passage_of(record, path, line)
        if "score" not in record:
            raise InputError(
                f'missing field "score" (fields present: {sorted(record)}); is this a teacher-scores file '
                "written by generate_logits.py?",
                path,
                line,
            )
        score = get_number(record, "score", path, line)
        label = label_of(record, path, line, label_column)
        known = {"query", "score", *PASSAGE_FIELDS, *_label_fields(label_column)}
        extra = {k: v for k, v in record.items() if k not in known}
        yield ScoredPair(query, passage, score, None if label is None else label[1], extra, line, path)


def _is_ranking_data(record: dict, path: str, line: int) -> bool:
    """Whether a record is of labelled ranking data (MTEB, pos/neg or graded rows)."""
    try:
        return detect_format(record, path, line) in ("mteb", "pos_neg", "graded")
    except InputError:
        return False


def label_probs_of(value: Any, path: str, line: int) -> dict[str, float]:
    """A graded-label teacher's ``label_probs`` field, ``{label word: probability}``, validated:
    a non-empty object of finite numbers (numeric strings too, as for scores)."""
    if not isinstance(value, dict) or not value:
        raise InputError('field "label_probs" must be a non-empty object {label word: probability}', path, line)
    probs = {}
    for word, probability in value.items():
        number = finite_number(probability)
        if number is None:
            raise InputError(
                f'field "label_probs" must map each label word to a finite number; "{word}" has {shown(probability)}',
                path,
                line,
            )
        probs[word] = number
    return probs


def label_word_grades(words: list[str], grades: list[float] | None = None) -> dict[str, float]:
    """``{label word: grade}`` for a graded-label teacher's words. Without ``grades``: the ESCI
    grades when every word is an ESCI label (exact/substitute/complement/irrelevant or E/S/C/I),
    else ``len(words) - 1`` down to 0 in the order given (best first). InputError for fewer than two
    words or a word repeated, or ``grades`` that cannot grade them: another length, a non-finite grade,
    one grade for all, or ESCI's words graded in another order than ESCI's."""
    if len(words) < 2 or len(set(words)) != len(words):  # one answer: every pair the same expected grade
        raise InputError(f"--label_words needs at least two different words, got {words}")
    esci = [ESCI_GRADES.get(word.strip().lower()) for word in words]
    if grades is None:
        if None not in esci:
            return dict(zip(words, esci))
        return {word: float(len(words) - 1 - i) for i, word in enumerate(words)}
    if len(grades) != len(words):
        raise InputError(f"--label_grades has {len(grades)} values for {len(words)} --label_words "
                         f"({' '.join(words)}); give one grade per word, in the same order")
    if not all(math.isfinite(grade) for grade in grades):
        raise InputError(f"--label_grades must be finite numbers, got {' '.join(f'{g:g}' for g in grades)}")
    if len(set(grades)) == 1:  # every answer the same grade: the expected grade would be a constant
        raise InputError(f"--label_grades gives every label word the grade {grades[0]:g}; grade them apart")
    # ESCI's labels graded in another order (words reordered, the grades left as they were); grades
    # that tie ESCI's labels (exact against the rest: 1 0 0 0) reorder none
    if None not in esci and any(a > b and grade_a < grade_b for a, grade_a in zip(esci, grades)
                                for b, grade_b in zip(esci, grades)):  # fmt: skip
        given, wanted = (" ".join(f"{g:g}" for g in values) for values in (grades, esci))
        raise InputError(
            f"--label_words {' '.join(words)} are ESCI's labels, but --label_grades {given} ranks them in another "
            f"order than ESCI's (E > S > C > I); give the grades in the words' order, e.g. --label_grades {wanted}"
        )
    return {word: float(grade) for word, grade in zip(words, grades)}


class TeacherLine(NamedTuple):
    """What teacher_scores_for keeps of a pair's first line in a teacher-scores file."""

    score: float
    label_probs: dict[str, float] | None
    location: str  # "file:line"
    teacher_scores: Any  # every teacher's score, where several scored it
    label: float | None  # the gold grade the line carries


# Two readings of a pair's teacher score this close (relative, or absolute below 1) are one score: a pair whose
# query text has lists in two chunks or shards of stage 1 is scored in each, in other batches, and its logit moves
# with the batch (float32 in its last digits; bf16, as GPU teachers run, keeps 8 bits of mantissa: steps of 2^-8)
SAME_SCORE_WITHIN = 0.02


def _alike(first: Any, again: Any) -> bool:
    """Whether two readings of a pair's teacher scores (numbers, or tuples and objects of them) agree
    to SAME_SCORE_WITHIN."""
    if isinstance(first, dict) and isinstance(again, dict):
        return first.keys() == again.keys() and all(_alike(first[key], again[key]) for key in first)
    if isinstance(first, tuple) and isinstance(again, tuple):
        return len(first) == len(again) and all(map(_alike, first, again))
    numbers = finite_number(first), finite_number(again)
    if None not in numbers:
        return math.isclose(*numbers, rel_tol=SAME_SCORE_WITHIN, abs_tol=SAME_SCORE_WITHIN)
    return first == again


@dataclass
class TeacherRanking:
    """A teacher's scores for the candidates of a ranking data set."""

    per_query: list[np.ndarray]  # each query's candidate scores, in its passages' order
    label_probs: list[dict[str, float]] | None = None  # one per pair in data-set order (graded-label teachers)
    label_grades: dict[str, float] | None = None  # {label word: grade} for label_probs' words


def teacher_scores_for(
    queries: list[RankingQuery],
    source: str,
    label_words: list[str] | None = None,
    label_grades: list[float] | None = None,
    hub: str = "huggingface",
    cache_dir: str | None = None,
) -> TeacherRanking:
    """Look up each candidate of each query in a teacher-scores file (stage 1's output or any
    ``{"query", "passage"|"content", "score"}`` file; a repeated pair keeps its first score).

    Where the file has ``label_probs`` (a graded-label teacher; among several teachers, the first
    one's ``NAME/label_probs``), they come along with their words' grades: ``label_words``/
    ``label_grades`` when given, else label_probs' own words, which must then be ESCI's. Raises
    InputError for a pair the file never scored, a line without label_probs where others have
    them, and a label word with no grade. ``hub``/``cache_dir``: where a hub data set is fetched from.
    """
    scored: dict[tuple[str, str], TeacherLine] = {}  # each pair's first line
    # a repeated pair that reads differently from its first (stage 1 scores each pair once a chunk, so alike to
    # within batch noise, SAME_SCORE_WITHIN; the combined score of several teachers, standardised within each list,
    # may differ between lists)
    conflicting = []
    # the other labels a pair's later lines carry (a passage listed under its query as relevant and as not): the
    # data set's listing of it under such a label is no other version of the data set
    other_labels: dict[tuple[str, str], set[float]] = {}
    for pair in iter_scored_pairs(source, hub=hub, cache_dir=cache_dir):
        field_name = next((name for name in pair.extra if name == "label_probs" or name.endswith("/label_probs")), None)
        probs = label_probs_of(pair.extra[field_name], pair.path, pair.line) if field_name else None
        reading = TeacherLine(pair.score, probs, f"{pair.path}:{pair.line}", pair.extra.get("teacher_scores"),
                              pair.label)
        first = scored.setdefault((pair.query, pair.passage), reading)
        what_it_says = (reading.score, reading.label_probs, reading.teacher_scores)
        if first is not reading and not _alike((first.score, first.label_probs, first.teacher_scores), what_it_says):
            conflicting.append(reading.location)
        if first is not reading and reading.label != first.label:
            other_labels.setdefault((pair.query, pair.passage), set()).add(reading.label)
    if conflicting:
        logger.warning("%s: %d lines score a pair again differently (the first at %s); the first score of each pair "
                       "is used: were two teachers' files joined, or (several teachers) is a query's list given "
                       "twice, its combined score standardised within each?", source, len(conflicting), conflicting[0])
    per_query = []
    for query in queries:
        missing = [index for index, passage in enumerate(query.passages) if (query.query, passage) not in scored]
        if missing:
            raise InputError(
                f"{source} has no teacher score for passage {query.passages[missing[0]][:80]!r} of query "
                f"{query.query[:80]!r} ({len(missing)} of this query's passages unscored); score this data set with "
                "generate_logits.py",
                query.passage_location(missing[0]),
            )
        per_query.append(np.array([scored[(query.query, passage)].score for passage in query.passages]))
    keys = [(query.query, passage) for query in queries for passage in query.passages]
    labels = [label for query in queries for label in query.labels]
    used = [scored[key] for key in keys]
    relabelled = [line.location for key, line, label in zip(keys, used, labels)
                  if line.label is not None and line.label != label and label not in other_labels.get(key, ())]
    if relabelled:  # the same texts, other labels: scored from another version of the data set, or another data set
        logger.warning("%s: %d pairs carry another label than the data set gives them (the first at %s): were they "
                       "scored from another version of it? The data set's labels are used", source, len(relabelled),
                       relabelled[0])
    with_probs = [line.label_probs for line in used if line.label_probs is not None]
    if not with_probs:
        return TeacherRanking(per_query)
    words = label_words or list(with_probs[0])
    # (--label_grades alone grade no such words: a label_probs object's key order is the writer's, no ranking)
    if not label_words and not all(word.strip().lower() in ESCI_GRADES for word in words):
        raise InputError(
            f"the teacher's label_probs use the words {words}, which are not ESCI's; name them best first with "
            "--label_words (and their grades with --label_grades, default len-1 down to 0)",
            source,
        )
    if not label_words:  # best first, as --label_words are: a tie in probability goes to the better label
        words.sort(key=lambda word: -ESCI_GRADES[word.strip().lower()])
    word_grades = label_word_grades(words, label_grades)
    for line in used:
        if line.label_probs is None:
            raise InputError('missing field "label_probs", which other lines of this file have', line.location)
        unknown = sorted(set(line.label_probs) - set(word_grades))
        if unknown:
            raise InputError(
                f'field "label_probs": the label word {unknown[0]!r} is not among {list(word_grades)}; name the '
                "teacher's words with --label_words and --label_grades",
                line.location,
            )
    return TeacherRanking(per_query, [line.label_probs for line in used], word_grades)
