"""Reranking data sets kept in parts, as MTEB v2 keeps them (corpus, queries, qrels, top_ranked;
rerank_distill/qrels.py): read as one ranking record a query, from a folder or a hub."""

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import evaluation
from rerank_distill.errors import InputError
from rerank_distill.formats import iter_ranking_queries, iter_rows, local_files
from rerank_distill.qrels import is_qrels

CORPUS = [{"_id": "d1", "title": "", "text": "pip install fails"},
          {"_id": "d2", "title": "Python", "text": "list comprehension"},
          {"_id": "d3", "title": "", "text": "git rebase"},
          {"_id": "d9", "title": "", "text": "never a candidate"}]  # fmt: skip
QUERIES = [{"_id": "q1", "text": "how to install a package"}, {"_id": "q2", "text": "undo a commit"}]
QRELS = [{"query-id": "q1", "corpus-id": "d1", "score": 1}, {"query-id": "q1", "corpus-id": "d2", "score": 0},
         {"query-id": "q2", "corpus-id": "d3", "score": 1}]  # fmt: skip
TOP_RANKED = [{"query-id": "q2", "corpus-ids": ["d1", "d3", "d2"]}, {"query-id": "q1", "corpus-ids": ["d2", "d1"]}]

README = """---
configs:
""" + "".join(f"""- config_name: {config}
  data_files:
  - split: {split}
    path: {folder}/{split}-*
""" for config, folder, split in (("corpus", "corpus", "{corpus_split}"), ("{qrels}", "{qrels_folder}", "test"),
                                  ("queries", "queries", "{queries_split}"), ("top_ranked", "top_ranked", "test"))) + "---\n"


def write_parts(folder: Path, corpus=CORPUS, queries=QUERIES, qrels=QRELS, top_ranked=TOP_RANKED,
                qrels_config: str = "default", own_splits: bool = False) -> Path:
    """A data set in parts as `hf download --repo-type dataset` leaves MTEB v2's (qrels in data/
    for the default configuration), with the README that tells `datasets` its configurations.
    ``own_splits``: the corpus and the queries kept as one split named after their part, as
    BEIR-style data sets keep them, instead of the split "test"."""
    qrels_folder = "data" if qrels_config == "default" else qrels_config
    split_of = {name: name if own_splits and name in ("corpus", "queries") else "test"
                for name in ("corpus", "queries", qrels_folder, "top_ranked")}  # fmt: skip
    for name, rows in (("corpus", corpus), ("queries", queries), (qrels_folder, qrels), ("top_ranked", top_ranked)):
        (folder / name).mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(rows), folder / name / f"{split_of[name]}-00000-of-00001.parquet")
    (folder / "README.md").write_text(README.replace("{qrels}", qrels_config).replace("{qrels_folder}", qrels_folder)
                                      .replace("{corpus_split}", split_of["corpus"])
                                      .replace("{queries_split}", split_of["queries"]))
    return folder


def records(source) -> list[dict]:
    return [record for _, _, record in iter_rows(str(source))]


def test_a_folder_in_parts_reads_as_one_mteb_record_a_query_in_top_ranked_order(tmp_path):
    parts = write_parts(tmp_path / "so")

    assert records(f"{parts}:test") == [
        {"query": "undo a commit", "positive": ["git rebase"], "negative": ["pip install fails", "Python list comprehension"]},
        {"query": "how to install a package", "positive": ["pip install fails"], "negative": ["Python list comprehension"]},
    ]  # a title goes before its text, as MTEB joins them; a candidate without a qrel is not relevant
    assert records(parts) == records(f"{parts}:test")  # its only split
    (row_file, row, _), _ = list(iter_rows(f"{parts}:test"))
    assert (Path(row_file).parent.name, row) == ("top_ranked", 1)


def test_every_part_is_a_file_the_run_reads_and_checks_for_changes(tmp_path):
    parts = write_parts(tmp_path / "so", qrels_config="qrels")
    assert sorted(Path(file).parent.name for file in local_files(f"{parts}:test")) == [
        "corpus", "qrels", "queries", "top_ranked"]


def test_graded_qrels_become_graded_rows_that_keep_the_ids(tmp_path):
    graded = [{**qrel, "score": 2 if qrel["score"] else 0} for qrel in QRELS] + [
        {"query-id": "q2", "corpus-id": "d2", "score": 1}]
    parts = write_parts(tmp_path / "graded", qrels=graded)

    first, second = iter_ranking_queries(f"{parts}:test")
    assert (first.query, first.labels, first.source_format) == ("undo a commit", [0.0, 2.0, 1.0], "graded")
    assert first.ids == [{"query_id": "q2", "corpus_id": "d1"}, {"query_id": "q2", "corpus_id": "d3"},
                         {"query_id": "q2", "corpus_id": "d2"}]  # fmt: skip
    assert (second.passages, second.labels) == (["Python list comprehension", "pip install fails"], [0.0, 2.0])


def test_qrels_with_a_fractional_score_are_graded_and_keep_it(tmp_path):
    halves = [{**qrel, "score": 0.5 if qrel["score"] else 0} for qrel in QRELS]
    parts = write_parts(tmp_path / "halves", qrels=halves)

    first, second = iter_ranking_queries(f"{parts}:test")
    assert (first.labels, first.source_format) == ([0.0, 0.5, 0.0], "graded")
    assert second.labels == [0.0, 0.5]


def test_a_table_is_qrels_only_with_query_id_corpus_id_and_score():
    assert is_qrels(["query-id", "corpus-id", "score"])
    assert not is_qrels(["query", "passage", "score"])  # a teacher-scores data set
    assert not is_qrels(["query-id", "score"])


def test_what_is_not_ranked_is_counted_in_a_warning_not_dropped_silently(tmp_path, caplog):
    parts = write_parts(tmp_path / "so", qrels=[*QRELS, {"query-id": "q1", "corpus-id": "d9", "score": 1},
                                                {"query-id": "q3", "corpus-id": "d9", "score": 1}],
                        queries=[*QUERIES, {"_id": "q4", "text": "nothing to rank"}],
                        top_ranked=[{"query-id": "q2", "corpus-ids": ["d2"]}, *TOP_RANKED,
                                    {"query-id": "q4", "corpus-ids": []}])  # fmt: skip
    assert [record["query"] for record in records(f"{parts}:test")] == ["undo a commit", "how to install a package"]
    assert ("relevant documents outside their query's top_ranked candidates: 1 (MTEB's own evaluation counts them "
            "as missed, so its MAP can be lower); queries of the qrels without candidates: 1; queries with an empty "
            "candidate list: 1") in caplog.text
    assert "queries listed again in top_ranked (the last list is read): 1" in caplog.text


def test_ids_and_judgements_given_again_are_counted_in_a_warning(tmp_path, caplog):
    parts = write_parts(tmp_path / "so", qrels=[*QRELS, {"query-id": "q1", "corpus-id": "d1", "score": 0}],
                        corpus=[*CORPUS, {"_id": "d3", "title": "", "text": "git rebase -i"}],
                        queries=[*QUERIES, {"_id": "q2", "text": "undo the last commit"}],
                        top_ranked=[{"query-id": "q2", "corpus-ids": ["d1", "d3", "d3"]}, TOP_RANKED[1]])  # fmt: skip
    first, second = records(f"{parts}:test")
    assert first == {"query": "undo the last commit", "positive": ["git rebase -i", "git rebase -i"],
                     "negative": ["pip install fails"]}  # fmt: skip
    assert second["positive"] == []  # q1's d1 judged again, 0: the last score is read
    assert ("candidates listed again in their query's top_ranked list (each is read): 1; (query, document) pairs "
            "judged again in the qrels (the last score is read): 1; ids listed again in the queries part (the last "
            "text is read): 1; ids listed again in the corpus part (the last text is read): 1") in caplog.text


@pytest.mark.parametrize(("change", "message"), [
    (dict(top_ranked=[{"query-id": "q1", "corpus-ids": ["d1", "d7", "d8"]}]),
     r'top_ranked/test-00000-of-00001.parquet:1: corpus-id "d7" and 1 more not in the corpus part'),
    (dict(top_ranked=[{"query-id": "q1", "corpus-ids": ["d1"]}, {"query-id": "q5", "corpus-ids": ["d1"]}]),
     r'top_ranked/test-00000-of-00001.parquet:2: query-id "q5" is not in the queries part'),
    (dict(qrels=[{"query-id": "q1", "corpus-id": "d1", "score": "high"}]),
     r'data/test-00000-of-00001.parquet:1: field "score" must be a finite number'),
    (dict(queries=[{"_id": "q1", "text": None}, {"_id": "q2", "text": "undo"}]),
     r'queries/test-00000-of-00001.parquet:1: field "text" must be a string'),
])  # fmt: skip
def test_bad_parts_are_named_with_file_and_row(tmp_path, change, message):
    parts = write_parts(tmp_path / "so", **change)
    with pytest.raises(InputError, match=message):
        records(f"{parts}:test")


def test_numeric_ids_are_read_as_their_text_and_numeric_scores_as_numbers(tmp_path):
    parts = write_parts(tmp_path / "so", corpus=[{"_id": 7, "title": "", "text": "seven"}], queries=[{"id": 1, "text": "q"}],
                        qrels=[{"query-id": "1", "corpus-id": "7", "score": "1"}],
                        top_ranked=[{"query-id": 1, "corpus-ids": [7]}])  # fmt: skip
    assert records(f"{parts}:test") == [{"query": "q", "positive": ["seven"], "negative": []}]


def test_a_folder_reads_one_split_of_candidates_and_qrels_and_the_corpus_and_queries_whatever_their_split(tmp_path):
    parts = write_parts(tmp_path / "so")
    for part in ("corpus", "queries"):  # kept as a split of their own name, as some data sets keep them
        (parts / part / "test-00000-of-00001.parquet").rename(parts / part / f"{part}-00000-of-00001.parquet")
    assert len(records(f"{parts}:test")) == len(records(parts)) == 2
    pq.write_table(pa.Table.from_pylist(TOP_RANKED), parts / "top_ranked" / "dev-00000-of-00001.parquet")
    with pytest.raises(InputError, match=r"data: this folder has no split 'dev'"):
        records(f"{parts}:dev")  # (candidates of one split are never joined with another's qrels)
    with pytest.raises(InputError, match=rf"{parts}: this data set in parts holds the splits \['dev', 'test'\] \(its "
                                         rf"top_ranked candidate lists\); name one as {parts}:SPLIT"):
        records(parts)
    pq.write_table(pa.Table.from_pylist(QRELS), parts / "data" / "dev-00000-of-00001.parquet")
    assert records(f"{parts}:dev") == records(f"{parts}:test")


def test_a_folder_of_several_data_sets_in_parts_names_one_of_them_to_pass_not_one_of_its_parts(tmp_path):
    for language in ("de", "en"):
        write_parts(tmp_path / "multilingual" / language)
    folder = tmp_path / "multilingual"
    with pytest.raises(InputError, match=rf"has files in several folders \(de/corpus, .*\): pass the one meant "
                                         rf"\(e.g. {folder / 'de'}:test\)"):
        records(f"{folder}:test")
    assert records(f"{folder / 'de'}:test") == records(f"{folder / 'en'}:test")


def test_a_folder_with_a_corpus_and_queries_but_no_candidate_lists_says_what_is_missing(tmp_path):
    parts = write_parts(tmp_path / "so")
    for file in (parts / "top_ranked").iterdir():
        file.unlink()
    (parts / "top_ranked").rmdir()
    with pytest.raises(InputError, match=r"holds a corpus and queries but no top_ranked \(top_ranked/\)"):
        records(f"{parts}:test")


def serve_from_folder(monkeypatch, parts: Path, cache: Path) -> None:
    """Every hub id served by the folder ``parts``, which datasets reads by its README as it reads a hub repository."""
    import datasets

    from rerank_distill import hub

    load, names = datasets.load_dataset, datasets.get_dataset_config_names
    monkeypatch.setattr(hub, "unreachable_hugging_face_host", lambda: None)
    monkeypatch.setattr(datasets, "load_dataset", lambda name, config, **kwargs: load(
        str(parts), config, split=kwargs["split"], cache_dir=str(cache)))
    monkeypatch.setattr(datasets, "get_dataset_config_names", lambda name, **kwargs: names(str(parts)))


@pytest.mark.parametrize("qrels_config", ["default", "qrels"])
def test_a_hub_data_set_in_parts_is_joined_from_its_configurations(tmp_path, monkeypatch, qrels_config):
    parts = write_parts(tmp_path / "so", qrels_config=qrels_config)
    serve_from_folder(monkeypatch, parts, tmp_path / "cache")

    assert records("mteb/SODupQuestions:test") == records(f"{parts}:test")
    file, row, _ = next(iter_rows("mteb/SODupQuestions:test"))
    assert (file, row) == ("mteb/SODupQuestions:test (top_ranked)", 1)
    with pytest.raises(InputError, match=r"is in parts .*: name the split as mteb/SODupQuestions:SPLIT"):
        records("mteb/SODupQuestions")
    with pytest.raises(InputError, match=r"which a slice such as :test\[:1\] cuts apart: name the whole split "
                                         r"\(mteb/SODupQuestions:test\)"):
        records("mteb/SODupQuestions:test[:1]")


def test_a_hub_data_sets_corpus_and_queries_are_read_from_their_one_split_whatever_its_name(tmp_path, monkeypatch):
    parts = write_parts(tmp_path / "scifact", own_splits=True)  # corpus/corpus-*.parquet, queries/queries-*.parquet
    serve_from_folder(monkeypatch, parts, tmp_path / "cache")
    assert records("mteb/SciFactLike:test") == records(f"{parts}:test") == records(f"{write_parts(tmp_path / 'so')}:test")


def test_offline_a_hub_data_set_in_parts_is_joined_from_its_copy_in_the_hub_cache(tmp_path, monkeypatch):
    import datasets
    from huggingface_hub import constants

    repo = tmp_path / "hub" / "datasets--mteb--SODupQuestions"
    parts = write_parts(repo / "snapshots" / ("3" * 40))  # as `hf download --repo-type dataset` leaves it
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("3" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")  # (HF_HUB_OFFLINE: conftest)
    assert records("mteb/SODupQuestions:test") == records(f"{parts}:test")


def test_a_data_set_in_parts_evaluates_as_the_same_queries_one_a_line(tmp_path, ranking_file, tiny_cross_encoder):
    from rerank_distill.jsonl import read_jsonl

    lines = [record for _, record in read_jsonl(ranking_file)]
    texts = sorted({text for record in lines for text in record["positive"] + record["negative"]})
    document_id = {text: f"doc{i}" for i, text in enumerate(texts)}
    parts = write_parts(
        tmp_path / "parts",
        corpus=[{"_id": document_id[text], "title": "", "text": text} for text in texts],
        queries=[{"_id": f"q{i}", "text": record["query"]} for i, record in enumerate(lines)],
        qrels=[{"query-id": f"q{i}", "corpus-id": document_id[text], "score": 1}
               for i, record in enumerate(lines) for text in record["positive"]],
        top_ranked=[{"query-id": f"q{i}", "corpus-ids": [document_id[t] for t in record["positive"] + record["negative"]]}
                    for i, record in enumerate(lines)],
    )  # fmt: skip

    one_a_line = evaluation.main(["--model_before_path", str(tiny_cross_encoder), "--dataset_path", str(ranking_file),
                                  "--output_path", str(tmp_path / "lines.json")])  # fmt: skip
    in_parts = evaluation.main(["--model_before_path", str(tiny_cross_encoder), "--dataset_path", f"{parts}:test",
                                "--output_path", str(tmp_path / "parts.json")])  # fmt: skip
    assert in_parts["before"] == one_a_line["before"]
    assert (in_parts["queries_evaluated"], in_parts["queries_skipped"]) == (10, 2)

