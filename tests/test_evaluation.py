"""Stage 4 (evaluation.py): the report's fields and values on the tiny cross-encoder, the skip
protocols, the teacher's own metrics, equality with sentence-transformers' reranking evaluator,
graded labels (mean score per grade, a label-predicting teacher's accuracy), the scoring speed
levers changing no score, and bad input failing with file:line before any model is loaded."""

import itertools
import json
import logging
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import evaluation
from rerank_distill.errors import InputError
from rerank_distill.toy import build_tiny_cross_encoder, synthetic_ranking_data, write_jsonl_records

REPO = Path(__file__).resolve().parent.parent
ESCI_WORDS = ("exact", "substitute", "complement", "irrelevant")
METRICS = ("map", "mrr@10", "ndcg@10")


@pytest.fixture(scope="module")
def other_cross_encoder(tmp_path_factory) -> Path:
    """A second random cross-encoder (another seed), so before and after differ."""
    return build_tiny_cross_encoder(tmp_path_factory.mktemp("models") / "other-cross-encoder", seed=1)


def records_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def run(tmp_path: Path, model: Path, dataset: Path, *flags: str) -> dict:
    output = tmp_path / "report" / "evaluation.json"
    return evaluation.main(
        ["--model_before_path", str(model), "--dataset_path", str(dataset), "--output_path", str(output), *flags]
    )


def write_teacher_scores(path: Path, records: list[dict], positive: float, negative: float) -> Path:
    """Stage 1's output for MTEB records: every positive scored around ``positive``, every negative
    around ``negative`` (a small step per passage keeps the scores tie-free)."""
    lines = []
    for record in records:
        for i, passage in enumerate(record["positive"]):
            lines.append({"query": record["query"], "passage": passage, "score": positive - 0.01 * i, "label": 1})
        for i, passage in enumerate(record["negative"]):
            lines.append({"query": record["query"], "passage": passage, "score": negative - 0.01 * i, "label": 0})
    return write_jsonl_records(path, lines)


def test_report_holds_each_models_metrics_and_the_change(
    tiny_cross_encoder, other_cross_encoder, ranking_file, tmp_path, capsys
):
    report = run(tmp_path, tiny_cross_encoder, ranking_file, "--model_after_path", str(other_cross_encoder))

    written = json.loads((tmp_path / "report" / "evaluation.json").read_text())
    assert written == report
    run_args = json.loads((tmp_path / "report" / "evaluation.args.json").read_text())
    # called from Python, it records its own command line, not the test runner's
    assert run_args["command"][:3] == ["evaluation.py", "--model_before_path", str(tiny_cross_encoder)]
    assert report["protocol"]["name"] == "mteb"
    assert report["models"] == {"before": str(tiny_cross_encoder), "after": str(other_cross_encoder)}
    assert report["queries"] == 12
    assert report["pairs"] == 12 * 6
    for name in METRICS:
        before, after = report["before"][name], report["after"][name]
        assert 0.0 < before <= 1.0 and 0.0 < after <= 1.0
        assert report["change"][name]["absolute"] == pytest.approx(after - before)
        assert report["change"][name]["relative"] == pytest.approx((after - before) / before)
    assert report["before"] != report["after"]  # two different random models rank differently
    assert "graded" not in report  # binary labels: MAP, MRR and NDCG say it all
    table = capsys.readouterr().out
    assert f"MAP{report['before']['map']:>17.4f}{report['after']['map']:>10.4f}" in table
    assert "10 of 12 queries evaluated" in table


def test_each_querys_metrics_go_beside_the_report(tiny_cross_encoder, other_cross_encoder, ranking_file, tmp_path):
    report = run(tmp_path, tiny_cross_encoder, ranking_file, "--model_after_path", str(other_cross_encoder))
    lines = records_of(tmp_path / "report" / "evaluation.per_query.jsonl")
    records = records_of(ranking_file)
    assert [line["query"] for line in lines] == [record["query"] for record in records]
    assert [line["candidates"] for line in lines] == [len(r["positive"]) + len(r["negative"]) for r in records]
    kept = [line for line in lines if line["skipped"] is None]
    assert sorted(line["skipped"] for line in lines if line["skipped"]) == ["no_negative", "no_positive"]
    assert all("before" not in line for line in lines if line["skipped"])
    for name, key in zip(METRICS, ("ap", "rr@10", "ndcg@10")):
        for model in ("before", "after"):
            assert np.mean([line[model][key] for line in kept]) == pytest.approx(report[model][name], abs=1e-12)
    better = sum(line["after"]["ap"] > line["before"]["ap"] for line in kept)
    worse = sum(line["after"]["ap"] < line["before"]["ap"] for line in kept)
    assert report["queries_changed"] == {"better": better, "worse": worse, "same": len(kept) - better - worse}


def test_a_run_killed_before_its_report_is_written_leaves_no_earlier_report_beside_its_files(
    tiny_cross_encoder, other_cross_encoder, ranking_file, tmp_path, monkeypatch
):
    run(tmp_path, tiny_cross_encoder, ranking_file)  # an earlier report, of one model
    recorded = evaluation.write_run_args

    def killed_once_written(*args, **kwargs):
        recorded(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluation, "write_run_args", killed_once_written)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, tiny_cross_encoder, ranking_file, "--model_after_path", str(other_cross_encoder))

    assert not (tmp_path / "report" / "evaluation.json").exists()  # the report is written last
    assert all("after" in line for line in records_of(tmp_path / "report" / "evaluation.per_query.jsonl")
               if line["skipped"] is None)


def test_same_model_before_and_after_gives_zero_change(tiny_cross_encoder, ranking_file, tmp_path):
    report = run(tmp_path, tiny_cross_encoder, ranking_file, "--model_after_path", str(tiny_cross_encoder))
    assert report["before"] == report["after"]
    for name in METRICS:
        assert report["change"][name] == {"absolute": 0.0, "relative": 0.0}
    assert report["queries_changed"] == {"better": 0, "worse": 0, "same": report["queries_evaluated"]}


def test_mteb_protocol_reports_skipped_queries_and_why(tiny_cross_encoder, ranking_file, tmp_path):
    # the fixture holds one query with no positive and one with no negative
    report = run(tmp_path, tiny_cross_encoder, ranking_file)
    assert "after" not in report and "change" not in report
    assert report["queries_evaluated"] == 10
    assert report["queries_skipped"] == 2
    assert report["queries_skipped_by_reason"] == {"no_positive": 1, "no_negative": 1}


def test_sentence_transformers_protocol_keeps_every_query(tiny_cross_encoder, ranking_file, tmp_path):
    report = run(tmp_path, tiny_cross_encoder, ranking_file, "--protocol", "sentence-transformers")
    assert report["queries_evaluated"] == 12
    assert report["queries_skipped"] == 0
    assert report["queries_scored_zero"] == 1


@pytest.mark.parametrize("protocol, clause", [
    ("mteb", ""), ("sentence-transformers", ", 1 scored 0 for having no positive")
])  # fmt: skip
def test_the_table_names_queries_scored_0_only_where_the_protocol_keeps_them(
    tiny_cross_encoder, ranking_file, tmp_path, capsys, protocol, clause
):
    # (the fixture's query with no positive: skipped under mteb, which never scores one 0)
    run(tmp_path, tiny_cross_encoder, ranking_file, "--protocol", protocol)
    (line,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("protocol ")]
    assert line.endswith(f"no negative){clause}")


@pytest.mark.parametrize(
    "protocol, unscored", [("mteb", {"no positive", "no negative"}), ("sentence-transformers", {"no positive"})]
)
def test_queries_whose_metrics_ignore_scores_are_not_scored(
    tiny_cross_encoder, ranking_file, tmp_path, monkeypatch, protocol, unscored
):
    seen = []
    score = evaluation.score_ranking_queries
    monkeypatch.setattr(evaluation, "score_ranking_queries", lambda model, queries, *a, wanted, **k: seen.append(
        [q for q, keep in zip(queries, wanted) if keep]) or score(model, queries, *a, wanted=wanted, **k))
    report = run(tmp_path, tiny_cross_encoder, ranking_file, "--protocol", protocol)
    (scored,) = seen
    kinds = {"no positive" if not q.positives else "no negative" if not q.negatives else "both" for q in scored}
    assert kinds == {"both", "no negative", "no positive"} - unscored
    assert len(scored) == {"mteb": 10, "sentence-transformers": 11}[protocol]
    assert report["queries_evaluated"] - report["queries_scored_zero"] == len(scored)


@pytest.mark.parametrize("protocol", ["mteb", "sentence-transformers"])
def test_equals_cross_encoder_reranking_evaluator(
    protocol, tiny_cross_encoder, ranking_file, tmp_path, one_thread
):
    import torch
    from sentence_transformers import CrossEncoder
    from sentence_transformers.cross_encoder.evaluation import CrossEncoderRerankingEvaluator

    records = records_of(ranking_file)
    assert any(not r["positive"] for r in records) and any(not r["negative"] for r in records)
    # The tiny random model's logits differ between passages by as little as ~1e-8, near the float
    # noise that batch padding adds, so both sides score one pair at a time (identical numbers), and
    # on logits as evaluation.py does: float32 sigmoids of such close logits can tie.
    model = CrossEncoder(str(tiny_cross_encoder), activation_fn=torch.nn.Identity())
    for record in records:
        scores = model.predict([[record["query"], p] for p in record["positive"] + record["negative"]], batch_size=1)
        assert len(set(scores.tolist())) == len(scores), "equality is claimed on tie-free scores only"
    if protocol == "mteb":
        records = [r for r in records if r["positive"] and r["negative"]]
    expected = CrossEncoderRerankingEvaluator(records, batch_size=1, write_csv=False)(model)

    report = run(tmp_path, tiny_cross_encoder, ranking_file, "--protocol", protocol, "--batch_size", "1")
    for name in METRICS:
        assert report["before"][name] == pytest.approx(expected[name], abs=1e-6)


def test_teacher_scores_that_rank_perfectly_give_map_one(tiny_cross_encoder, ranking_file, tmp_path):
    teacher = write_teacher_scores(tmp_path / "scores.jsonl", records_of(ranking_file), positive=5.0, negative=-5.0)
    report = run(tmp_path, tiny_cross_encoder, ranking_file, "--teacher_scores", str(teacher))
    assert report["teacher"] == {"map": 1.0, "mrr@10": 1.0, "ndcg@10": 1.0}
    assert report["teacher_scores"] == str(teacher)
    assert report["share_of_teacher"] == {"before": report["before"]}  # each metric divided by 1


def test_change_is_after_minus_before_and_relative_to_before_or_null_where_before_is_zero():
    from rerank_distill.report import change

    before = {"map": 0.5, "mrr@10": 0.0, "ndcg@10": 0.8}
    after = {"map": 0.75, "mrr@10": 0.25, "ndcg@10": 0.6}
    assert change(before, after) == {"map": {"absolute": 0.25, "relative": 0.5},
                                     "mrr@10": {"absolute": 0.25, "relative": None},
                                     "ndcg@10": {"absolute": pytest.approx(-0.2), "relative": pytest.approx(-0.25)}}


def test_share_of_teacher_divides_each_models_metrics_by_the_teachers_and_is_null_where_it_is_zero():
    from rerank_distill.report import share_of_teacher

    report = {"teacher": {"map": 0.8, "mrr@10": 0.5, "ndcg@10": 0.0},
              "before": {"map": 0.4, "mrr@10": 0.25, "ndcg@10": 0.3},
              "after": {"map": 0.6, "mrr@10": 0.5, "ndcg@10": 0.7}}
    assert share_of_teacher(report) == {"before": {"map": 0.5, "mrr@10": 0.5, "ndcg@10": None},
                                        "after": {"map": pytest.approx(0.75), "mrr@10": 1.0, "ndcg@10": None}}


def test_teacher_scores_that_rank_every_negative_first_are_scored_low(tiny_cross_encoder, ranking_file, tmp_path):
    records = records_of(ranking_file)
    teacher = write_teacher_scores(tmp_path / "scores.jsonl", records, positive=-5.0, negative=5.0)
    report = run(tmp_path, tiny_cross_encoder, ranking_file, "--teacher_scores", str(teacher))
    # the first positive sits right after the query's negatives; MRR is the mean of 1 / its rank
    kept = [r for r in records if r["positive"] and r["negative"]]
    assert report["teacher"]["mrr@10"] == pytest.approx(sum(1 / (len(r["negative"]) + 1) for r in kept) / len(kept))


def test_teacher_scores_that_all_tie_earn_a_random_orders_expectation_not_top_marks(
    tiny_cross_encoder, ranking_file, tmp_path
):
    records = records_of(ranking_file)  # positives are listed first: a break by position would give MAP 1
    teacher = write_jsonl_records(tmp_path / "scores.jsonl", [
        {"query": r["query"], "passage": passage, "score": 0.0} for r in records for passage in r["positive"] + r["negative"]
    ])  # fmt: skip
    report = run(tmp_path, tiny_cross_encoder, ranking_file, "--teacher_scores", str(teacher))
    def mean_ap_over_every_order(relevant: int, total: int) -> float:
        precisions = []
        for order in itertools.permutations([1] * relevant + [0] * (total - relevant)):  # each order of the tie
            hits = [rank for rank, label in enumerate(order, 1) if label]
            precisions.append(sum(found / rank for found, rank in enumerate(hits, 1)) / relevant)
        return float(np.mean(precisions))

    kept = [r for r in records if r["positive"] and r["negative"]]
    expected = np.mean([mean_ap_over_every_order(len(r["positive"]), len(r["positive"]) + len(r["negative"]))
                        for r in kept])  # fmt: skip
    assert report["teacher"]["map"] == pytest.approx(expected) and report["teacher"]["map"] < 0.9


def test_a_model_that_gives_nan_scores_stops_the_run_naming_it(tiny_cross_encoder, ranking_file, tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    broken = tmp_path / "broken"
    model = AutoModelForSequenceClassification.from_pretrained(tiny_cross_encoder)
    with torch.no_grad():
        model.classifier.bias.fill_(float("nan"))
    model.save_pretrained(broken)
    AutoTokenizer.from_pretrained(tiny_cross_encoder).save_pretrained(broken)
    with pytest.raises(InputError, match=f"{broken}: the after model gives 60 pairs a score that is not finite"):
        run(tmp_path, tiny_cross_encoder, ranking_file, "--model_after_path", str(broken))
    assert not (tmp_path / "report" / "evaluation.json").exists()


def test_graded_labels_are_ndcg_gains_and_any_positive_grade_is_relevant(tiny_cross_encoder, tmp_path):
    dataset = write_jsonl_records(
        tmp_path / "graded.jsonl",
        [
            {"query": "q", "passage": "exact match", "label": 3},
            {"query": "q", "passage": "partial match", "label": 1},
            {"query": "q", "passage": "unrelated", "label": 0},
        ],
    )
    teacher = write_jsonl_records(
        tmp_path / "scores.jsonl",
        [
            {"query": "q", "passage": "partial match", "score": 2.0},
            {"query": "q", "passage": "exact match", "score": 1.0},
            {"query": "q", "passage": "unrelated", "score": 0.0},
        ],
    )
    report = run(tmp_path, tiny_cross_encoder, dataset, "--teacher_scores", str(teacher))
    # both relevant passages lead, so MAP and MRR are 1; NDCG sees grade 1 ranked above grade 3
    assert report["teacher"]["map"] == 1.0
    assert report["teacher"]["mrr@10"] == 1.0
    assert report["teacher"]["ndcg@10"] == pytest.approx((1 + 3 / math.log2(3)) / (3 + 1 / math.log2(3)))


def test_a_data_set_pair_without_teacher_score_is_an_error_naming_it(tiny_cross_encoder, ranking_file, tmp_path):
    records = records_of(ranking_file)
    teacher = write_teacher_scores(tmp_path / "scores.jsonl", records[:-1], positive=5.0, negative=-5.0)
    with pytest.raises(InputError, match=f"{ranking_file}:12: .*no teacher score for passage") as error:
        run(tmp_path, tiny_cross_encoder, ranking_file, "--teacher_scores", str(teacher))
    assert repr(records[-1]["negative"][0]) in str(error.value)


def test_a_graded_row_without_teacher_score_is_named_by_its_own_line(tiny_cross_encoder, tmp_path):
    rows = [{"query": "q", "passage": p, "label": grade} for p, grade in (("a", 3), ("b", 1), ("c", 0))]
    dataset = write_jsonl_records(tmp_path / "graded.jsonl", rows)
    teacher = write_jsonl_records(tmp_path / "scores.jsonl", [{**row, "score": 1.0} for row in rows[:2]])
    with pytest.raises(InputError, match=f"{dataset}:3: .*no teacher score for passage 'c'"):
        run(tmp_path, tiny_cross_encoder, dataset, "--teacher_scores", str(teacher))


def test_broken_json_line_fails_with_file_and_line_before_any_model_is_loaded(ranking_file, tmp_path):
    lines = ranking_file.read_text().splitlines()
    broken = tmp_path / "broken.jsonl"
    broken.write_text("\n".join([lines[0], '{"query": "q", "positive": [', *lines[1:]]) + "\n")
    # the model path does not exist either: the data set is read and checked first
    with pytest.raises(InputError, match=f"{broken}:2: not valid JSON"):
        run(tmp_path, tmp_path / "no-such-model", broken)


def test_record_missing_a_field_fails_with_file_line_and_field(tiny_cross_encoder, tmp_path):
    dataset = write_jsonl_records(
        tmp_path / "test.jsonl",
        [{"query": "q", "positive": ["a"], "negative": ["b"]}, {"positive": ["a"], "negative": ["b"]}],
    )
    with pytest.raises(InputError, match=f'{dataset}:2: missing field "query"'):
        run(tmp_path, tiny_cross_encoder, dataset)


def test_missing_model_path_fails_naming_it(tiny_cross_encoder, ranking_file, tmp_path):
    missing = tmp_path / "output" / "model"
    with pytest.raises(InputError, match=f"^--model_after_path: model path '{missing}' does not exist"):
        run(tmp_path, tiny_cross_encoder, ranking_file, "--model_after_path", str(missing))
    assert not (tmp_path / "report" / "evaluation.json").exists()


@pytest.mark.parametrize("with_teacher", [False, True])
def test_label_words_no_teacher_label_probs_are_read_with_are_warned_about(ranking_file, tmp_path, caplog,
                                                                          with_teacher):
    # (without --teacher_scores, or with scores that hold no label_probs, they were dropped in silence)
    from rerank_distill.toy import read_jsonl_records

    teacher = ["--teacher_scores", str(write_teacher_scores(tmp_path / "t.jsonl", read_jsonl_records(ranking_file), 2, -2))]
    caplog.set_level(logging.WARNING)
    with pytest.raises(InputError):  # (stopped at the model, after the warning)
        run(tmp_path, tmp_path / "no-such-model", ranking_file, "--label_words", "E", "S", "C", "I",
            *(teacher if with_teacher else []))
    assert "--label_words ['E', 'S', 'C', 'I'] is not read: only a label teacher's label_probs" in caplog.text


def test_one_label_word_is_refused_as_stage_1_refuses_it(ranking_file, tmp_path):
    # (one answer word grades every pair alike: its label accuracy would be 100% of nothing)
    with pytest.raises(InputError, match=r"--label_words needs at least two different words, got \['exact'\]"):
        run(tmp_path, tmp_path / "no-model-needed", ranking_file, "--label_words", "exact")


@pytest.mark.parametrize("output", ["a_folder", "a_file.jsonl/report.json"])
def test_an_output_path_that_cannot_be_written_fails_before_any_scoring(ranking_file, tmp_path, output):
    (tmp_path / "a_folder").mkdir()
    (tmp_path / "a_file.jsonl").write_text("{}\n")
    with pytest.raises(InputError, match="^--output_path .* (is a folder|is a file, not a folder)"):
        evaluation.main(["--model_before_path", str(tmp_path / "no-model-needed"), "--dataset_path", str(ranking_file),
                         "--output_path", str(tmp_path / output)])
    assert not list((tmp_path / "a_folder").iterdir()) and not list(tmp_path.glob("*.tmp"))


def test_label_grades_that_are_not_finite_are_refused_before_anything_is_written(ranking_file, tmp_path):
    # without a label teacher they were never read, and the report's args.json got NaN, which is no JSON
    with pytest.raises(InputError, match=r"^--label_grades must be a finite number, got \[nan, 1.0\]$"):
        evaluation.main(["--model_before_path", str(tmp_path / "no-model-needed"), "--dataset_path", str(ranking_file),
                         "--output_path", str(tmp_path / "report.json"), "--label_grades", "nan", "1"])
    assert list(tmp_path.iterdir()) == [ranking_file]


def test_launcher_passes_teacher_scores_only_when_set(tiny_cross_encoder, ranking_file, tmp_path):
    teacher = write_teacher_scores(tmp_path / "scores.jsonl", records_of(ranking_file), positive=5.0, negative=-5.0)
    output = tmp_path / "evaluation.json"
    env = {
        **os.environ,
        "MODEL_BEFORE": str(tiny_cross_encoder),
        "MODEL_AFTER": str(tiny_cross_encoder),
        "DATASET": str(ranking_file),
        "TEACHER_SCORES": str(teacher),
        "REPORT": str(output),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",  # tiny tensors: threads cost more than they save
    }
    done = subprocess.run(["bash", str(REPO / "evaluation.sh"), "--batch_size", "16"], env=env, cwd=tmp_path,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(output.read_text())
    assert report["teacher"]["map"] == 1.0
    assert json.loads((tmp_path / "evaluation.args.json").read_text())["script"]["batch_size"] == 16
    # set empty, it passes none, not even the default file that exists in SCORES_DIR
    default = write_teacher_scores(tmp_path / "scores" / "train_scores.jsonl", records_of(ranking_file), positive=5.0,
                                   negative=-5.0)  # fmt: skip
    done = subprocess.run(["bash", str(REPO / "evaluation.sh")], env={**env, "TEACHER_SCORES": "",
                          "SCORES_DIR": str(default.parent)}, cwd=tmp_path, capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "teacher" not in json.loads(output.read_text())
    assert json.loads((tmp_path / "evaluation.args.json").read_text())["script"]["teacher_scores"] is None


def test_launcher_finds_the_teachers_scores_of_its_dataset_in_the_scores_folder(tiny_cross_encoder, ranking_file,
                                                                                tmp_path):
    write_teacher_scores(tmp_path / "scores" / "train_scores.jsonl", records_of(ranking_file), positive=5.0,
                         negative=-5.0)  # stage 1's name for train.jsonl's scores
    env = {**os.environ, "STUDENT": str(tiny_cross_encoder), "MODEL_AFTER": "", "DATASET": str(ranking_file),
           "SCORES_DIR": str(tmp_path / "scores"), "REPORT": str(tmp_path / "e.json"), "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}  # fmt: skip
    done = subprocess.run(["bash", str(REPO / "evaluation.sh")], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "e.json").read_text())["teacher"]["map"] == 1.0
    done = subprocess.run(["bash", str(REPO / "evaluation.sh")], env={**env, "SCORES_DIR": str(tmp_path / "none")},
                          cwd=tmp_path, capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0 and "no teacher scores at" in done.stderr
    assert "teacher" not in json.loads((tmp_path / "e.json").read_text())
    # the command line's --teacher_scores replaces the default, unwarned
    given = ["--teacher_scores", str(tmp_path / "scores" / "train_scores.jsonl")]
    done = subprocess.run(["bash", str(REPO / "evaluation.sh"), *given], env={**env, "SCORES_DIR": str(tmp_path / "none")},
                          cwd=tmp_path, capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0 and "no teacher scores at" not in done.stderr, done.stderr
    assert json.loads((tmp_path / "e.json").read_text())["teacher"]["map"] == 1.0
    # another data set on the command line is not given DATASET's teacher scores
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"query": "new", "positive": ["a"], "negative": ["b"]}) + "\n")
    done = subprocess.run(["bash", str(REPO / "evaluation.sh"), "--dataset_path", str(other)], env=env, cwd=tmp_path,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0 and "the default TEACHER_SCORES" in done.stderr, done.stderr
    assert "teacher" not in json.loads((tmp_path / "e.json").read_text())


def test_launcher_names_a_folder_splits_scores_as_stage_1_does(tiny_cross_encoder, ranking_file, tmp_path):
    (tmp_path / "so").mkdir()
    (tmp_path / "so" / "test.jsonl").write_bytes(ranking_file.read_bytes())
    write_teacher_scores(tmp_path / "scores" / "so_test_scores.jsonl", records_of(ranking_file), positive=5.0,
                         negative=-5.0)  # stage 1's name for so:test's scores
    env = {**os.environ, "STUDENT": str(tiny_cross_encoder), "MODEL_AFTER": "", "DATASET": f"{tmp_path / 'so'}:test",
           "SCORES_DIR": str(tmp_path / "scores"), "REPORT": str(tmp_path / "e.json"), "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}  # fmt: skip
    done = subprocess.run(["bash", str(REPO / "evaluation.sh")], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "e.json").read_text())["teacher"]["map"] == 1.0


def test_launcher_finds_the_teachers_scores_of_a_dataset_and_scores_folder_written_with_a_leading_tilde(
        tiny_cross_encoder, ranking_file, tmp_path):
    (tmp_path / "so").mkdir()
    (tmp_path / "so" / "test.jsonl").write_bytes(ranking_file.read_bytes())
    write_teacher_scores(tmp_path / "scores" / "so_test_scores.jsonl", records_of(ranking_file), positive=5.0,
                         negative=-5.0)  # stage 1's name for ~/so:test's scores, which it reads as $HOME/so:test
    # quoted, as in a launcher variable, the shell leaves the ~ alone; the stages read it as the home folder
    env = {**os.environ, "HOME": str(tmp_path), "STUDENT": str(tiny_cross_encoder), "MODEL_AFTER": "",
           "DATASET": "~/so:test", "SCORES_DIR": "~/scores", "REPORT": str(tmp_path / "e.json"),
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}  # fmt: skip
    done = subprocess.run(["bash", str(REPO / "evaluation.sh")], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0 and "no teacher scores at" not in done.stderr, done.stderr
    assert json.loads((tmp_path / "e.json").read_text())["teacher"]["map"] == 1.0


def test_launcher_evaluates_one_model_when_model_after_is_set_empty(tiny_cross_encoder, ranking_file, tmp_path):
    output = tmp_path / "evaluation.json"
    env = {**os.environ, "MODEL_BEFORE": str(tiny_cross_encoder), "MODEL_AFTER": "", "DATASET": str(ranking_file),
           "REPORT": str(output), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}  # fmt: skip
    done = subprocess.run(["bash", str(REPO / "evaluation.sh")], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    report = json.loads(output.read_text())
    assert "before" in report and "after" not in report


@pytest.mark.parametrize("flag", ["--batch_size", "--max_length"])
def test_a_size_below_one_is_refused_before_any_model_loads(ranking_file, tmp_path, flag):
    with pytest.raises(InputError, match=f"^{flag} must be at least 1, got 0$"):
        run(tmp_path, tmp_path / "no-model-needed", ranking_file, flag, "0")


def test_a_weights_file_cut_short_is_a_one_line_error(tiny_cross_encoder, ranking_file, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_cross_encoder, broken)
    (weights,) = broken.glob("*.safetensors")
    weights.write_bytes(weights.read_bytes()[:5000])  # a download or copy that stopped early
    with pytest.raises(InputError, match=f"^cannot load a cross-encoder from '{broken}'"):
        run(tmp_path, broken, ranking_file)


def test_command_line_error_is_one_line_and_exit_status_2(tmp_path):
    missing = tmp_path / "test.jsonl"
    done = subprocess.run(
        [sys.executable, str(REPO / "evaluation.py"), "--model_before_path", "m", "--dataset_path", str(missing)],
        cwd=tmp_path, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == f"error: {missing}: file not found; check the path"
    assert "Traceback" not in done.stderr


# --- graded labels -------------------------------------------------------------------------------

ESCI_ROWS = [  # two queries, grades 3/2/1/0 from ESCI letters
    {"query": "usb cable", "item_text": "usb-c cable one metre", "esci_label": "E"},
    {"query": "usb cable", "item_text": "hdmi cable", "esci_label": "S"},
    {"query": "usb cable", "item_text": "usb wall charger", "esci_label": "C"},
    {"query": "usb cable", "item_text": "garden hose", "esci_label": "I"},
    {"query": "red shoes", "item_text": "red running shoes", "esci_label": "E"},
    {"query": "red shoes", "item_text": "shoe polish", "esci_label": "C"},
    {"query": "red shoes", "item_text": "blue hat", "esci_label": "I"},
]
# a graded-label teacher's output: score = expected grade, label_probs over the ESCI words
TEACHER_PROBS = [  # most probable label per row: E, C (wrong, true S), C, I, S (wrong, true E), C, I
    {"exact": 0.7, "substitute": 0.1, "complement": 0.1, "irrelevant": 0.1},
    {"exact": 0.1, "substitute": 0.3, "complement": 0.5, "irrelevant": 0.1},
    {"exact": 0.0, "substitute": 0.2, "complement": 0.7, "irrelevant": 0.1},
    {"exact": 0.0, "substitute": 0.0, "complement": 0.1, "irrelevant": 0.9},
    {"exact": 0.3, "substitute": 0.6, "complement": 0.1, "irrelevant": 0.0},
    {"exact": 0.0, "substitute": 0.1, "complement": 0.8, "irrelevant": 0.1},
    {"exact": 0.1, "substitute": 0.0, "complement": 0.0, "irrelevant": 0.9},
]
GRADES = [3.0, 2.0, 1.0, 0.0, 3.0, 1.0, 0.0]


def expected_grade(probs: dict) -> float:
    return 3 * probs.get("exact", 0) + 2 * probs.get("substitute", 0) + probs.get("complement", 0)


def write_label_teacher(path: Path, rows=ESCI_ROWS, probs=TEACHER_PROBS) -> Path:
    lines = [
        {"query": r["query"], "passage": r["item_text"], "score": expected_grade(p), "label": grade, "label_probs": p}
        for r, p, grade in zip(rows, probs, GRADES)
    ]
    return write_jsonl_records(path, lines)


def test_graded_data_reports_each_models_mean_score_per_true_grade(tiny_cross_encoder, tmp_path, capsys):
    import torch
    from sentence_transformers import CrossEncoder

    dataset = write_jsonl_records(tmp_path / "esci.jsonl", ESCI_ROWS)
    teacher = write_jsonl_records(tmp_path / "scores.jsonl", [
        {"query": row["query"], "content": row["item_text"], "score": str(10 * grade)}
        for row, grade in zip(ESCI_ROWS, GRADES)
    ])  # fmt: skip
    report = run(tmp_path, tiny_cross_encoder, dataset, "--teacher_scores", str(teacher))

    graded = report["graded"]
    assert graded["pairs_per_grade"] == {"3": 2, "2": 1, "1": 2, "0": 2}
    assert graded["mean_score_per_grade"]["teacher"] == {"3": 30.0, "2": 20.0, "1": 10.0, "0": 0.0}
    model = CrossEncoder(str(tiny_cross_encoder), activation_fn=torch.nn.Identity())
    logits = model.predict([[row["query"], row["item_text"]] for row in ESCI_ROWS], batch_size=1)
    for grade in (3.0, 2.0, 1.0, 0.0):
        expected = logits[[g == grade for g in GRADES]].mean()
        assert graded["mean_score_per_grade"]["before"][f"{grade:g}"] == pytest.approx(expected, abs=1e-5)
    assert "label_accuracy" not in graded  # these teacher scores carry no label_probs
    table = capsys.readouterr().out
    assert "mean score per true grade (all 7 pairs)" in table
    lines = table.splitlines()
    below = lines[lines.index("grade         pairs    before   teacher") + 1 :]
    rows = {line.split()[0]: line.split()[1:] for line in below}
    assert rows["3"] == ["2", f"{graded['mean_score_per_grade']['before']['3']:.4f}", "30.0000"]
    assert list(rows) == ["3", "2", "1", "0"]


def test_label_predicting_teacher_reports_its_label_accuracy_and_confusion(tiny_cross_encoder, tmp_path, capsys):
    dataset = write_jsonl_records(tmp_path / "esci.jsonl", ESCI_ROWS)
    teacher = write_label_teacher(tmp_path / "scores.jsonl")
    report = run(tmp_path, tiny_cross_encoder, dataset, "--teacher_scores", str(teacher))

    accuracy = report["graded"]["label_accuracy"]["teacher"]
    assert (accuracy["accuracy"], accuracy["correct"], accuracy["pairs"]) == (pytest.approx(5 / 7), 5, 7)
    assert accuracy["confusion"] == {"3": {"3": 1, "2": 1}, "2": {"1": 1}, "1": {"1": 2}, "0": {"0": 2}}
    assert accuracy["label_grades"] == {"exact": 3.0, "substitute": 2.0, "complement": 1.0, "irrelevant": 0.0}
    means = report["graded"]["mean_score_per_grade"]["teacher"]
    assert means["3"] == pytest.approx((expected_grade(TEACHER_PROBS[0]) + expected_grade(TEACHER_PROBS[4])) / 2)
    expected = "teacher label accuracy 0.7143: its most probable label has the true grade for 5 of 7 pairs"
    assert expected in capsys.readouterr().out


def test_among_several_teachers_the_label_teachers_probabilities_give_its_accuracy(tiny_cross_encoder, tmp_path):
    dataset = write_jsonl_records(tmp_path / "esci.jsonl", ESCI_ROWS)
    teacher = write_jsonl_records(tmp_path / "scores.jsonl", [  # stage 1's lines for two teachers
        {"query": r["query"], "passage": r["item_text"], "score": 0.1 * i, "label": grade,
         "teacher_scores": {"judge": expected_grade(p), "ce": 0.0}, "judge/label_probs": p}
        for i, (r, p, grade) in enumerate(zip(ESCI_ROWS, TEACHER_PROBS, GRADES))
    ])  # fmt: skip
    accuracy = run(tmp_path, tiny_cross_encoder, dataset, "--teacher_scores", str(teacher))["graded"]["label_accuracy"]
    assert (accuracy["teacher"]["correct"], accuracy["teacher"]["pairs"]) == (5, 7)  # as with the judge alone


def test_the_log_names_queries_left_unscored_only_where_there_are_some(tiny_cross_encoder, tmp_path, caplog):
    dataset = write_jsonl_records(tmp_path / "test.jsonl", [{"query": "q", "positive": ["a"], "negative": ["b"]}])
    with caplog.at_level("INFO", logger="rerank_distill.evaluation"):
        run(tmp_path, tiny_cross_encoder, dataset)
    assert "scoring 1 of 1 queries" in caplog.text and "the others" not in caplog.text


def test_label_probs_on_binary_data_still_add_the_graded_section(tiny_cross_encoder, tmp_path):
    dataset = write_jsonl_records(tmp_path / "test.jsonl", [{"query": "q", "positive": ["a"], "negative": ["b"]}])
    teacher = write_jsonl_records(tmp_path / "scores.jsonl", [
        {"query": "q", "passage": "a", "score": 0.8, "label_probs": {"yes": 0.8, "no": 0.2}},
        {"query": "q", "passage": "b", "score": 0.6, "label_probs": {"yes": 0.6, "no": 0.4}},
    ])  # fmt: skip
    report = run(tmp_path, tiny_cross_encoder, dataset, "--teacher_scores", str(teacher), "--label_words", "yes", "no")
    accuracy = report["graded"]["label_accuracy"]["teacher"]
    assert accuracy["label_grades"] == {"yes": 1.0, "no": 0.0}  # len-1 down to 0, best first
    assert (accuracy["correct"], accuracy["pairs"]) == (1, 2)  # "b" is predicted "yes" but is a negative


def test_graded_data_with_two_grades_still_reports_the_graded_section(tiny_cross_encoder, tmp_path):
    rows = [row for row in ESCI_ROWS if row["esci_label"] in "EI"]
    report = run(tmp_path, tiny_cross_encoder, write_jsonl_records(tmp_path / "esci.jsonl", rows))
    assert report["graded"]["pairs_per_grade"] == {"3": 2, "0": 2}


@pytest.mark.parametrize("records", [
    [{"query": "q", "positive": ["a", "b"], "negative": ["c"]}],  # MTEB lists
    [{"query": "q", "passage": p, "label": int(p != "c"), "score": 0.0} for p in "abc"],  # stage 1's output of them
    [{"query": "q", "passage": p, "label": int(p != "c")} for p in "abc"],  # labelled rows
])  # fmt: skip
def test_esci_label_words_on_labels_of_1_and_0_in_any_file_are_right_when_they_agree_on_relevance(
    tiny_cross_encoder, tmp_path, records
):
    predicted = {"a": "exact", "b": "complement", "c": "irrelevant"}  # all right: 1 is "relevant", not grade 1
    dataset = write_jsonl_records(tmp_path / "data.jsonl", records)
    teacher = write_jsonl_records(tmp_path / "scores.jsonl", [
        {"query": "q", "passage": p, "score": 1.0 - i, "label_probs": {w: 0.7 if w == predicted[p] else 0.1 for w in ESCI_WORDS}}
        for i, p in enumerate("abc")
    ])  # fmt: skip
    accuracy = run(tmp_path, tiny_cross_encoder, dataset, "--teacher_scores", str(teacher))["graded"]["label_accuracy"]
    assert (accuracy["teacher"]["correct"], accuracy["teacher"]["compared"]) == (3, "relevance")


def test_esci_data_with_only_complements_and_irrelevants_still_compares_grades(tiny_cross_encoder, tmp_path):
    rows = [row for row in ESCI_ROWS if row["esci_label"] in "CI"]  # grades 1 and 0, but ESCI's
    probs = [p for row, p in zip(ESCI_ROWS, TEACHER_PROBS) if row["esci_label"] in "CI"]
    probs[0] = {"exact": 0.7, "substitute": 0.1, "complement": 0.1, "irrelevant": 0.1}  # a C predicted E: wrong
    dataset = write_jsonl_records(tmp_path / "esci.jsonl", rows)
    teacher = write_jsonl_records(tmp_path / "scores.jsonl", [
        {"query": r["query"], "passage": r["item_text"], "score": expected_grade(p), "label_probs": p}
        for r, p in zip(rows, probs)
    ])  # fmt: skip
    accuracy = run(tmp_path, tiny_cross_encoder, dataset, "--teacher_scores", str(teacher))["graded"]["label_accuracy"]
    assert (accuracy["teacher"]["correct"], accuracy["teacher"]["pairs"], accuracy["teacher"]["compared"]) == (
        3, 4, "grade")


def good_ok_bad_files(tmp_path) -> tuple[Path, Path]:
    """A graded data set of one query, and a teacher's scores with label_probs over the words good,
    ok and bad (not ESCI's)."""
    dataset = write_jsonl_records(tmp_path / "graded.jsonl", [
        {"query": "q", "passage": p, "grade": g} for p, g in (("a", 2), ("b", 1), ("c", 0))
    ])  # fmt: skip
    probs = [{"good": 0.8, "ok": 0.1, "bad": 0.1}, *[{"good": 0.1, "ok": 0.1, "bad": 0.8}] * 2]
    teacher = write_jsonl_records(tmp_path / "scores.jsonl", [
        {"query": "q", "passage": p, "score": i, "label_probs": pr} for i, (p, pr) in enumerate(zip("abc", probs))
    ])  # fmt: skip
    return dataset, teacher


def test_label_words_that_are_not_esci_need_label_words_naming_them(tiny_cross_encoder, tmp_path):
    dataset, teacher = good_ok_bad_files(tmp_path)
    with pytest.raises(InputError, match=rf"{teacher}: the teacher's label_probs use the words \['good', 'ok', 'b"):
        run(tmp_path, tiny_cross_encoder, dataset, "--teacher_scores", str(teacher))
    report = run(tmp_path, tiny_cross_encoder, dataset, "--teacher_scores", str(teacher),
                 "--label_words", "good", "ok", "bad", "--label_grades", "2", "1", "0")  # fmt: skip
    assert report["graded"]["label_accuracy"]["teacher"]["confusion"] == {"2": {"2": 1}, "1": {"0": 1}, "0": {"0": 1}}


def test_label_grades_alone_never_grade_words_that_are_not_esci_by_their_order_in_the_file(tiny_cross_encoder, tmp_path):
    # the keys of a label_probs object are in whatever order the tool that wrote it left them: no ranking of the
    # words, so grades given without --label_words have no words to go with (here they would grade bad best)
    dataset, teacher = good_ok_bad_files(tmp_path)
    with pytest.raises(InputError, match=rf"{teacher}: the teacher's label_probs use the words \['good', 'ok', 'b"):
        run(tmp_path, tiny_cross_encoder, dataset, "--teacher_scores", str(teacher), "--label_grades", "0", "1", "2")


@pytest.mark.parametrize(("grades", "problem"), [
    (["1", "1", "1"], "--label_grades gives every label word the grade 1; grade them apart"),
    (["2", "nan", "0"], "--label_grades must be finite numbers, got 2 nan 0"),
    (["2", "1"], "--label_grades has 2 values"),
])  # fmt: skip
def test_label_grades_that_cannot_grade_are_refused_before_any_file_is_read(tmp_path, grades, problem):
    # as stage 1 refuses them: evaluation reached these only with a teacher file of label_probs, and not all of them
    missing = tmp_path / "missing"
    with pytest.raises(InputError, match=re.escape(problem)):
        run(tmp_path, missing, missing / "test.jsonl", "--teacher_scores", str(missing / "scores.jsonl"),
            "--label_words", "good", "ok", "bad", "--label_grades", *grades)


def test_a_label_teacher_whose_grades_cannot_name_the_datas_is_scored_on_relevance(tiny_cross_encoder, tmp_path, caplog):
    dataset, _ = good_ok_bad_files(tmp_path)  # grades 2, 1, 0; the judge answers yes (1) or no (0)
    probs = [{"yes": 0.9, "no": 0.1}, {"yes": 0.6, "no": 0.4}, {"yes": 0.2, "no": 0.8}]
    teacher = write_jsonl_records(tmp_path / "yes_no.jsonl", [
        {"query": "q", "passage": p, "score": 2 - i, "label_probs": pr} for i, (p, pr) in enumerate(zip("abc", probs))
    ])  # fmt: skip
    report = run(tmp_path, tiny_cross_encoder, dataset, "--teacher_scores", str(teacher), "--label_words", "yes", "no")
    accuracy = report["graded"]["label_accuracy"]["teacher"]
    assert (accuracy["compared"], accuracy["correct"], accuracy["pairs"]) == ("relevance", 3, 3)  # not 2 of 3 by grade
    assert "the data's grades [2.0] are not among the teacher's label grades" in caplog.text


def test_the_label_words_and_grades_stage_1_recorded_are_read_and_others_refused(tiny_cross_encoder, tmp_path):
    dataset, teacher = good_ok_bad_files(tmp_path)
    judge = {"teacher_type": "llm_labels", "label_words": ["good", "ok", "bad"], "label_grades": [2.0, 1.0, 0.0]}
    Path(f"{teacher}.run.json").write_text(json.dumps({"made_with": {"teachers": [judge]}}))
    report = run(tmp_path, tiny_cross_encoder, dataset, "--teacher_scores", str(teacher))
    assert report["graded"]["label_accuracy"]["teacher"]["label_grades"] == {"good": 2.0, "ok": 1.0, "bad": 0.0}
    with pytest.raises(InputError, match=r"--label_words bad ok good \(grades \[2.0, 1.0, 0.0\]\) are not those "
                                         r"stage 1 scored"):
        run(tmp_path, tiny_cross_encoder, dataset, "--teacher_scores", str(teacher), "--label_words", "bad", "ok", "good")
    with pytest.raises(InputError, match=r"--label_words good ok bad \(grades \[9.0, 1.0, 0.0\]\) are not those "
                                         r"stage 1 scored"):  # grades alone are checked too, not silently replaced
        run(tmp_path, tiny_cross_encoder, dataset, "--teacher_scores", str(teacher), "--label_grades", "9", "1", "0")
    same = run(tmp_path, tiny_cross_encoder, dataset, "--teacher_scores", str(teacher), "--label_grades", "2", "1", "0")
    assert same["graded"]["label_accuracy"]["teacher"]["label_grades"] == {"good": 2.0, "ok": 1.0, "bad": 0.0}


def test_label_probs_that_tie_predict_the_better_label_whatever_order_the_file_lists_them_in(tiny_cross_encoder,
                                                                                            tmp_path):
    dataset = write_jsonl_records(tmp_path / "esci.jsonl", ESCI_ROWS)
    tied = [dict.fromkeys(reversed(ESCI_WORDS), 0.25) for _ in ESCI_ROWS]  # irrelevant first in every line
    report = run(tmp_path, tiny_cross_encoder, dataset, "--teacher_scores",
                 str(write_label_teacher(tmp_path / "scores.jsonl", probs=tied)))
    accuracy = report["graded"]["label_accuracy"]["teacher"]
    assert accuracy["confusion"] == {"3": {"3": 2}, "2": {"3": 1}, "1": {"3": 2}, "0": {"3": 2}}
    assert list(accuracy["label_grades"]) == list(ESCI_WORDS)


def test_teacher_scores_whose_labels_differ_from_the_data_sets_are_warned_about(tiny_cross_encoder, ranking_file,
                                                                                tmp_path, caplog):
    records = records_of(ranking_file)
    teacher = write_teacher_scores(tmp_path / "scores.jsonl", records, positive=5.0, negative=-5.0)
    run(tmp_path, tiny_cross_encoder, ranking_file, "--teacher_scores", str(teacher))
    assert "another label" not in caplog.text
    lines = records_of(teacher)
    lines[1]["label"] = 1 - lines[1]["label"]
    write_jsonl_records(teacher, lines)
    run(tmp_path, tiny_cross_encoder, ranking_file, "--teacher_scores", str(teacher))
    assert (f"scores.jsonl: 1 pairs carry another label than the data set gives them (the first at {teacher}:2)"
            in caplog.text)


def test_a_passage_listed_as_positive_and_negative_is_not_taken_for_teacher_scores_of_another_version(
        tiny_cross_encoder, tmp_path, caplog):
    # stage 1 writes a line for each listing, with its own label; the data set gives the pair both labels too
    dataset = write_jsonl_records(tmp_path / "data.jsonl", [
        {"query": "q", "positive": ["both", "good"], "negative": ["both", "bad"]}])
    teacher = write_jsonl_records(tmp_path / "scores.jsonl", [
        {"query": "q", "passage": passage, "score": score, "label": label}
        for passage, score, label in (("both", 1.0, 1), ("good", 2.0, 1), ("both", 1.0, 0), ("bad", -1.0, 0))])
    run(tmp_path, tiny_cross_encoder, dataset, "--teacher_scores", str(teacher))
    assert "carry another label" not in caplog.text


def test_teacher_line_without_label_probs_among_lines_with_them_fails_at_its_line(tiny_cross_encoder, tmp_path):
    dataset = write_jsonl_records(tmp_path / "esci.jsonl", ESCI_ROWS)
    teacher = write_label_teacher(tmp_path / "scores.jsonl")
    lines = teacher.read_text().splitlines()
    broken = json.loads(lines[2])
    del broken["label_probs"]
    teacher.write_text("\n".join([*lines[:2], json.dumps(broken), *lines[3:]]) + "\n")
    with pytest.raises(InputError, match=f'{teacher}:3: missing field "label_probs"'):
        run(tmp_path, tiny_cross_encoder, dataset, "--teacher_scores", str(teacher))


def test_teacher_label_word_without_a_grade_fails_at_its_line(tiny_cross_encoder, tmp_path):
    dataset = write_jsonl_records(tmp_path / "esci.jsonl", ESCI_ROWS)
    probs = [*TEACHER_PROBS[:5], {"exact": 0.5, "maybe": 0.5}, TEACHER_PROBS[6]]
    teacher = write_label_teacher(tmp_path / "scores.jsonl", probs=probs)
    with pytest.raises(InputError, match=f"{teacher}:6: field \"label_probs\": the label word 'maybe'"):
        run(tmp_path, tiny_cross_encoder, dataset, "--teacher_scores", str(teacher))


def test_graded_parquet_with_a_named_label_column_is_evaluated(tiny_cross_encoder, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    dataset = tmp_path / "esci.parquet"
    pq.write_table(pa.table({
        "query": [row["query"] for row in ESCI_ROWS],
        "passage": [row["item_text"] for row in ESCI_ROWS],
        "esci_label": ["ignored"] * len(ESCI_ROWS),
        "stars": [int(grade) for grade in GRADES],
    }), dataset)  # fmt: skip
    teacher = write_label_teacher(tmp_path / "scores.jsonl")
    report = run(tmp_path, tiny_cross_encoder, dataset, "--label_column", "stars", "--teacher_scores", str(teacher))
    assert report["queries"] == 2 and report["pairs"] == 7
    assert report["graded"]["pairs_per_grade"] == {"3": 2, "2": 1, "1": 2, "0": 2}
    # the teacher's expected grades, 2.4 1.4 1.1 0.1 and 2.2 1.0 0.3, follow the "stars" order: NDCG 1
    assert report["teacher"]["ndcg@10"] == pytest.approx(1.0)


# --- speed levers change no score ----------------------------------------------------------------


def test_length_sorted_batches_put_similar_lengths_together_longest_first():
    from rerank_distill.student import length_sorted_batches

    batches = length_sorted_batches([3, 9, 5, 9, 1], batch_size=2)
    # the two 9s fill a batch; 5 beside 3 would pad 8 tokens to 10, so each of the rest goes alone
    assert [batch.tolist() for batch in batches] == [[1, 3], [2], [0], [4]]
    batches = length_sorted_batches([4, 9, 5, 9, 4], batch_size=2)
    assert [batch.tolist() for batch in batches] == [[1, 3], [2], [0, 4]]


def test_pair_token_lengths_count_tokens_after_truncation(tiny_cross_encoder):
    from rerank_distill.student import load_cross_encoder, pair_token_lengths

    tokenizer = load_cross_encoder(str(tiny_cross_encoder)).tokenizer
    pairs = [("query one", "a short passage"), ("q", "word " * 100)]
    expected = [len(tokenizer(q, p)["input_ids"]) for q, p in pairs]
    assert pair_token_lengths(tokenizer, pairs, max_length=None).tolist() == expected
    assert pair_token_lengths(tokenizer, pairs, max_length=16, chunk=1).tolist() == [min(expected[0], 16), 16]


def test_the_log_says_how_many_pairs_the_max_length_cut(tiny_cross_encoder, caplog):
    from rerank_distill.student import load_cross_encoder, score_pairs_with_cross_encoder

    model = load_cross_encoder(str(tiny_cross_encoder), max_length=16)
    pairs = [("q", "git"), ("q", "word " * 100), ("q", "word " * 50), ("q", "rice")]
    assert [len(model.tokenizer(q, p)["input_ids"]) < 16 for q, p in pairs] == [True, False, False, True]
    with caplog.at_level("INFO", logger="rerank_distill.student"):
        score_pairs_with_cross_encoder(model, pairs, show_progress_bar=False)
    assert "2 of 4 distinct pairs (50.0%) filled the model's max_length of 16 tokens" in caplog.text


@pytest.fixture(scope="module")
def scored_one_at_a_time(tiny_cross_encoder):
    """The tiny model, the fixture data's pairs, and their logits scored one pair at a time (no padding)."""
    import torch

    from rerank_distill.student import load_cross_encoder

    model = load_cross_encoder(str(tiny_cross_encoder))
    records = synthetic_ranking_data(12, docs_per_query=6, seed=3)  # the ranking_file fixture's data
    pairs = [(r["query"], p) for r in records for p in r["positive"] + r["negative"]]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        logits = model.predict([list(pair) for pair in pairs], batch_size=1, activation_fn=torch.nn.Identity())
    finally:
        torch.set_num_threads(threads)
    return model, pairs, logits


@pytest.mark.parametrize("batch_size, sort_by_tokens", [(5, True), (64, True), (5, False)])
def test_every_batching_gives_the_scores_of_one_pair_at_a_time(
    scored_one_at_a_time, batch_size, sort_by_tokens, one_thread
):
    from rerank_distill.student import score_pairs_with_cross_encoder

    model, pairs, one_at_a_time = scored_one_at_a_time
    scores = score_pairs_with_cross_encoder(model, pairs, batch_size, False, sort_by_tokens=sort_by_tokens)
    assert scores.dtype == np.float32 and scores.shape == (len(pairs),)
    np.testing.assert_allclose(scores, one_at_a_time, rtol=0, atol=1e-5)


def test_a_repeated_pair_goes_through_the_model_once_and_gets_its_score_at_every_position(tiny_cross_encoder):
    from rerank_distill.student import load_cross_encoder, score_pairs_with_cross_encoder

    model = load_cross_encoder(str(tiny_cross_encoder))
    seen = []
    predict = model.predict
    model.predict = lambda inputs, **kwargs: seen.extend(map(tuple, inputs)) or predict(inputs, **kwargs)
    pairs = [("q", "a"), ("q", "b"), ("q", "a"), ("r", "a")]
    scores = score_pairs_with_cross_encoder(model, pairs, batch_size=2, show_progress_bar=False)
    assert sorted(seen) == [("q", "a"), ("q", "b"), ("r", "a")]
    assert scores[0] == scores[2] and scores[0] != scores[3]


def test_bfloat16_scores_stay_close_keep_a_float32_head_and_restore_the_model(scored_one_at_a_time, one_thread):
    import torch

    from rerank_distill.student import score_pairs_with_cross_encoder

    model, pairs, exact = scored_one_at_a_time
    fast = score_pairs_with_cross_encoder(model, pairs, 8, False, dtype="bfloat16")
    assert 0 < np.abs(fast - exact).max() < 0.1 * np.ptp(exact)
    # a float32 head: the scores are not rounded to bfloat16's 8 significant bits
    rounded = torch.tensor(fast).to(torch.bfloat16).float().numpy()
    assert (rounded != fast).mean() > 0.9
    assert "forward" not in vars(model.model.classifier)  # the head's float32 wrapper is gone afterwards
    np.testing.assert_allclose(score_pairs_with_cross_encoder(model, pairs, 8, False), exact, rtol=0, atol=1e-5)


def test_dtype_bfloat16_is_recorded_and_changes_metrics_only_slightly(tiny_cross_encoder, ranking_file, tmp_path,
                                                                      monkeypatch):
    scored_in = []
    score = evaluation.score_ranking_queries

    def spy(*args, dtype, **kwargs):  # what the students are scored in
        scored_in.append(dtype)
        return score(*args, dtype=dtype, **kwargs)

    monkeypatch.setattr(evaluation, "score_ranking_queries", spy)
    exact = run(tmp_path, tiny_cross_encoder, ranking_file)
    fast = run(tmp_path, tiny_cross_encoder, ranking_file, "--dtype", "bfloat16")
    assert scored_in == ["float32", "bfloat16"]
    for name in METRICS:
        assert fast["before"][name] == pytest.approx(exact["before"][name], abs=0.1)
    assert json.loads((tmp_path / "report" / "evaluation.args.json").read_text())["script"]["dtype"] == "bfloat16"


@pytest.mark.parametrize("teacher_name, report_name", [
    ("scores.jsonl", "DATASET"),  # the labelled test set itself
    ("scores.jsonl", "scores.jsonl"),  # the teacher's scores
    ("scores.per_query.jsonl", "scores.json"),  # the per-query lines written beside the report
])  # fmt: skip
def test_a_report_path_that_would_overwrite_an_input_is_refused(ranking_file, tmp_path, teacher_name, report_name):
    teacher = write_teacher_scores(tmp_path / teacher_name, records_of(ranking_file), positive=5.0, negative=-5.0)
    report = ranking_file if report_name == "DATASET" else tmp_path / report_name
    before = {path: path.read_bytes() for path in (ranking_file, teacher)}
    with pytest.raises(InputError, match="--output_path .* is an input of this run"):
        evaluation.main(["--model_before_path", str(tmp_path / "no-model-needed"), "--dataset_path", str(ranking_file),
                         "--teacher_scores", str(teacher), "--output_path", str(report)])
    assert {path: path.read_bytes() for path in before} == before


def test_a_report_path_on_the_teacher_scores_run_record_is_refused(ranking_file, tmp_path):
    """Stage 1's record beside the scores is read with them (teachers, label words): overwritten by a report,
    every later run with those scores failed."""
    teacher = write_teacher_scores(tmp_path / "scores.jsonl", records_of(ranking_file), positive=5.0, negative=-5.0)
    record = tmp_path / "scores.jsonl.run.json"
    record.write_text('{"made_with": {"teachers": []}}')
    with pytest.raises(InputError, match="--output_path .*scores.jsonl.run.json is an input of this run"):
        evaluation.main(["--model_before_path", str(tmp_path / "no-model-needed"), "--dataset_path", str(ranking_file),
                         "--teacher_scores", str(teacher), "--output_path", str(record)])
    assert record.read_text() == '{"made_with": {"teachers": []}}'


@pytest.mark.parametrize("in_the_way", ["report.per_query.jsonl", "report.args.json"])
def test_a_file_written_beside_the_report_that_cannot_be_written_is_refused_before_any_model_scores(
        ranking_file, tmp_path, in_the_way):
    """A folder in its place stopped the run with a traceback after every model had scored, the earlier report gone."""
    (tmp_path / in_the_way).mkdir()
    (tmp_path / "report.json").write_text("{}")  # an earlier run's
    with pytest.raises(InputError, match=f"^--output_path's companion file .*{in_the_way} is a folder"):
        evaluation.main(["--model_before_path", str(tmp_path / "no-model-needed"), "--dataset_path",
                         str(ranking_file), "--output_path", str(tmp_path / "report.json")])
    assert (tmp_path / "report.json").read_text() == "{}"


def test_a_report_path_inside_a_model_folder_is_refused(tiny_cross_encoder, ranking_file, tmp_path):
    config = (tiny_cross_encoder / "config.json").read_bytes()
    with pytest.raises(InputError, match="--output_path .*config.json is inside the model folder of "
                                         "--model_before_path"):
        evaluation.main(["--model_before_path", str(tiny_cross_encoder), "--dataset_path", str(ranking_file),
                         "--output_path", str(tiny_cross_encoder / "config.json")])
    assert (tiny_cross_encoder / "config.json").read_bytes() == config


def test_teacher_files_joined_into_one_are_warned_about_where_a_pair_scores_differently(tiny_cross_encoder,
                                                                                        ranking_file, tmp_path, caplog):
    records = records_of(ranking_file)
    first = write_teacher_scores(tmp_path / "a.jsonl", records, positive=5.0, negative=-5.0)
    second = write_teacher_scores(tmp_path / "b.jsonl", records, positive=-5.0, negative=5.0)
    joined = tmp_path / "joined.jsonl"
    joined.write_text(first.read_text() + second.read_text())
    alone = run(tmp_path, tiny_cross_encoder, ranking_file, "--teacher_scores", str(first))
    assert "score a pair again differently" not in caplog.text
    report = run(tmp_path, tiny_cross_encoder, ranking_file, "--teacher_scores", str(joined))
    assert report["teacher"] == alone["teacher"]  # the first score of each pair
    pairs = sum(len(r["positive"]) + len(r["negative"]) for r in records)
    assert f"joined.jsonl: {pairs} lines score a pair again differently (the first at {joined}:{pairs + 1})" in caplog.text


def test_a_pair_scored_in_two_lists_of_one_query_to_batch_noise_is_not_warned_about(tiny_cross_encoder, tmp_path,
                                                                                     caplog):
    lists = [{"query": "python list", "positive": ["a"], "negative": ["b", "c"]},
             {"query": "python list", "positive": ["a"], "negative": ["b", "c"]}]  # fmt: skip
    data = write_jsonl_records(tmp_path / "twice.jsonl", lists)
    # one teacher: the second list, in another chunk, is scored in other batches, and its logits move with them: in
    # float32's last digits (stage 1's hf backend gave -0.4182487 and -0.4182489 for one pair), in bf16 by a step of
    # its 8-bit mantissa (-1.0 and -1.0078125)
    lines = [("a", -0.4182487428188324), ("b", 0.25), ("c", -1.0),
             ("a", -0.41824889183044434), ("b", 0.25), ("c", -1.0078125)]
    teacher = write_jsonl_records(tmp_path / "teacher.jsonl", [
        {"query": "python list", "passage": passage, "score": score} for passage, score in lines])
    run(tmp_path, tiny_cross_encoder, data, "--teacher_scores", str(teacher))
    assert "score a pair again differently" not in caplog.text


def test_a_combined_score_that_differs_between_two_lists_of_one_query_is_warned_about(tiny_cross_encoder, tmp_path,
                                                                                     caplog):
    lists = [{"query": "python list", "positive": ["a"], "negative": ["b", "c"]},
             {"query": "python list", "positive": ["a"], "negative": ["b"]}]  # fmt: skip
    data = write_jsonl_records(tmp_path / "twice.jsonl", lists)
    # two teachers' combined score, standardised within each list: the same raw scores, another combined one
    lines = [("a", 1.2, [2.0, 1.0]), ("b", 0.0, [1.0, 0.5]), ("c", -1.2, [0.0, 0.0]),
             ("a", 1.0, [2.0, 1.0]), ("b", -1.0, [1.0, 0.5])]
    teacher = write_jsonl_records(tmp_path / "teacher.jsonl", [
        {"query": "python list", "passage": passage, "score": score, "teacher_scores": {"x": raw[0], "y": raw[1]}}
        for passage, score, raw in lines])  # fmt: skip
    run(tmp_path, tiny_cross_encoder, data, "--teacher_scores", str(teacher))
    assert f"2 lines score a pair again differently (the first at {teacher}:4)" in caplog.text


def test_a_repeated_query_text_is_warned_about(tiny_cross_encoder, tmp_path, caplog):
    lists = [{"query": "python list", "positive": ["a"], "negative": ["b"]},
             {"query": "python list", "positive": ["c"], "negative": ["d"]}]  # fmt: skip
    report = run(tmp_path, tiny_cross_encoder, write_jsonl_records(tmp_path / "twice.jsonl", lists))
    assert report["queries_evaluated"] == 2
    assert (f"1 query texts given again with a list of their own in a later record (first at {tmp_path / 'twice.jsonl'}:2; "
            "create_triplets.py joins one query text's lists into one, evaluation.py ranks each record's list apart"
            in caplog.text)


def test_blank_texts_and_passages_listed_again_are_evaluated_as_given_and_warned_about(tiny_cross_encoder, tmp_path,
                                                                                         caplog):
    lists = [{"query": "dns", "positive": ["same"], "negative": ["same", "b", "b"]},
             {"query": "  ", "positive": [""], "negative": ["x"]}]  # fmt: skip
    data = write_jsonl_records(tmp_path / "odd.jsonl", lists)
    report = run(tmp_path, tiny_cross_encoder, data)
    assert report["queries_evaluated"] == 2
    assert (f"odd.jsonl: 1 blank query texts (first at {data}:2); 1 blank passages (first at {data}:2); 1 passages "
            f"listed again in their query's list with the same label (first at {data}:1); 1 passages listed again in "
            f"their query's list with another label (first at {data}:1); each is evaluated as it is: clean the data if "
            "they are mistakes") in caplog.text


def test_a_max_length_with_no_room_for_text_is_refused(tiny_cross_encoder, ranking_file, tmp_path):
    with pytest.raises(InputError, match=r"--max_length 3 leaves no room for text: the special tokens of a pair take 3"):
        run(tmp_path, tiny_cross_encoder, ranking_file, "--max_length", "3")


def test_a_model_without_a_trained_relevance_head_is_refused(tiny_embedding_model, ranking_file, tmp_path):
    # a cross-encoder made from it would score with a new random head: noise, different on every run
    with pytest.raises(InputError, match="--model_before_path: .* holds an embedding model, no reranker"):
        run(tmp_path, tiny_embedding_model, ranking_file)


@pytest.mark.parametrize("cut", ["model.safetensors", "shard"])
def test_a_model_after_whose_weights_are_missing_is_refused_before_the_model_before_scores(tiny_cross_encoder,
                                                                                           ranking_file, tmp_path, cut):
    import shutil

    copy = shutil.copytree(tiny_cross_encoder, tmp_path / "cut-short")
    (copy / "model.safetensors").unlink()  # a download cut off: its config there, its weights not
    if cut == "shard":
        (copy / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors",
                                                                                      "b": "model-00002-of-00002.safetensors"}}))
        (copy / "model-00001-of-00002.safetensors").write_bytes(b"")
    lacking = ("no weights file" if cut == "model.safetensors"
               else r"1 of the 2 weight files its model.safetensors.index.json lists missing \(model-00002-of-00002")
    with pytest.raises(InputError, match=f"--model_after_path: .*cut-short has {lacking}"):
        evaluation.main(["--model_before_path", str(tiny_cross_encoder), "--model_after_path", str(copy),
                         "--dataset_path", str(ranking_file), "--output_path", str(tmp_path / "report.json")])

def test_a_model_after_with_two_output_labels_is_refused_before_the_model_before_scores(tiny_cross_encoder,
                                                                                       ranking_file, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    two_labels = tmp_path / "two-labels"
    AutoModelForSequenceClassification.from_pretrained(tiny_cross_encoder, num_labels=2,
                                                       ignore_mismatched_sizes=True).save_pretrained(two_labels)
    AutoTokenizer.from_pretrained(tiny_cross_encoder).save_pretrained(two_labels)
    with pytest.raises(InputError, match="^--model_after_path: model .*two-labels' has 2 output labels"):
        evaluation.main(["--model_before_path", str(tiny_cross_encoder), "--model_after_path", str(two_labels),
                         "--dataset_path", str(ranking_file), "--output_path", str(tmp_path / "report.json")])


def test_a_model_saved_in_bfloat16_is_scored_in_float32_weights(tiny_cross_encoder, ranking_file, tmp_path):
    """transformers keeps a checkpoint's own dtype: a bf16 one was scored in bf16 under --dtype float32 (the
    default), its scores rounded into ties and its metrics moved by --batch_size."""
    import shutil

    import torch
    from transformers import AutoModelForSequenceClassification

    from rerank_distill.student import load_cross_encoder

    saved_bf16 = shutil.copytree(tiny_cross_encoder, tmp_path / "bf16")
    bf16 = AutoModelForSequenceClassification.from_pretrained(tiny_cross_encoder, dtype=torch.bfloat16)
    bf16.save_pretrained(saved_bf16)
    model = load_cross_encoder(str(saved_bf16))
    assert {parameter.dtype for parameter in model.model.parameters()} == {torch.float32}
    widened = AutoModelForSequenceClassification.from_pretrained(saved_bf16, dtype=torch.float32)
    copy = tmp_path / "widened"
    shutil.copytree(tiny_cross_encoder, copy)
    widened.save_pretrained(copy)  # the same bf16 weights, stored as float32
    assert run(tmp_path, saved_bf16, ranking_file)["before"] == run(tmp_path, copy, ranking_file)["before"]


def test_a_teacher_ranking_below_the_student_before_training_is_warned_about(tiny_cross_encoder, ranking_file,
                                                                              tmp_path, caplog):
    inverted = write_teacher_scores(tmp_path / "scores.jsonl", records_of(ranking_file), positive=-5.0, negative=5.0)
    caplog.set_level(logging.WARNING)
    report = run(tmp_path, tiny_cross_encoder, ranking_file, "--teacher_scores", str(inverted))
    assert report["teacher"]["map"] < report["before"]["map"]
    assert "the teacher's MAP" in caplog.text and "is below the student's before training" in caplog.text


def test_teacher_scores_given_as_a_hub_data_set_are_fetched_through_the_hub_and_cache_given(
    tiny_cross_encoder, ranking_file, tmp_path, monkeypatch
):
    rows = records_of(write_teacher_scores(tmp_path / "scores.jsonl", records_of(ranking_file), positive=5.0, negative=-5.0))
    asked = []
    monkeypatch.setattr("rerank_distill.hub.load_hub_dataset",
                        lambda name, split, hub, cache_dir: asked.append((name, split, hub, cache_dir)) or rows)
    report = run(tmp_path, tiny_cross_encoder, ranking_file, "--teacher_scores", "someone/scores@v1:test",
                 "--hub", "modelscope", "--cache_dir", str(tmp_path / "downloads"))
    assert asked == [("someone/scores@v1", "test", "modelscope", str(tmp_path / "downloads"))]
    assert report["teacher"] == {"map": 1.0, "mrr@10": 1.0, "ndcg@10": 1.0}


def test_a_second_run_on_the_same_report_is_refused_before_it_loads_a_model(tmp_path, ranking_file, monkeypatch):
    from rerank_distill.jsonl import only_writer

    monkeypatch.setattr(evaluation, "load_cross_encoder", lambda *a, **k: pytest.fail("a model was loaded"))
    output = tmp_path / "report" / "evaluation.json"
    with only_writer(output):
        with pytest.raises(InputError, match=f"another run is writing {output} at this moment"):
            run(tmp_path, tmp_path / "any-model", ranking_file)
    assert list((tmp_path / "report").iterdir()) == []  # (the folder is the first run's lock's)


def test_a_report_named_after_another_stages_output_beside_it_is_refused_before_any_model_loads(tmp_path, ranking_file):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "train.jsonl").write_text("{}\n")  # create_triplets.py's output, and its record
    (tmp_path / "out" / "train.args.json").write_text(json.dumps({"script": {"output_path": "out/train.jsonl"}}))
    with pytest.raises(InputError, match=r"--output_path .*train.json: its run record .*train.args.json is that of"):
        evaluation.main(["--model_before_path", str(tmp_path / "no-model"), "--dataset_path", str(ranking_file),
                         "--output_path", str(tmp_path / "out" / "train.json")])
