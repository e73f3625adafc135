"""Stage 4 (evaluation.py): the report's fields and values on the tiny cross-encoder, the skip
protocols, the teacher's own metrics, equality with sentence-transformers' reranking evaluator,
and bad input failing with file:line before any model is loaded."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

import evaluation
from rerank_distill.errors import InputError
from rerank_distill.toy import build_tiny_cross_encoder, write_jsonl_records

REPO = Path(__file__).resolve().parent.parent
METRICS = ("map", "mrr@10", "ndcg@10")


@pytest.fixture(scope="module")
def other_cross_encoder(tmp_path_factory) -> Path:
    """A second random cross-encoder (another seed), so before and after differ."""
    return build_tiny_cross_encoder(tmp_path_factory.mktemp("models") / "other-cross-encoder", seed=1)


@pytest.fixture
def one_torch_thread():
    """Score one pair at a time quickly: on tensors this small, thread start-up costs more than the maths."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
    assert (tmp_path / "report" / "evaluation.args.json").exists()
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
    table = capsys.readouterr().out
    assert f"MAP{report['before']['map']:>17.4f}{report['after']['map']:>10.4f}" in table
    assert "10 of 12 queries evaluated" in table


def test_same_model_before_and_after_gives_zero_change(tiny_cross_encoder, ranking_file, tmp_path):
    report = run(tmp_path, tiny_cross_encoder, ranking_file, "--model_after_path", str(tiny_cross_encoder))
    assert report["before"] == report["after"]
    for name in METRICS:
        assert report["change"][name] == {"absolute": 0.0, "relative": 0.0}


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


@pytest.mark.parametrize("protocol", ["mteb", "sentence-transformers"])
def test_equals_cross_encoder_reranking_evaluator(
    protocol, tiny_cross_encoder, ranking_file, tmp_path, one_torch_thread
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


def test_teacher_scores_that_rank_every_negative_first_are_scored_low(tiny_cross_encoder, ranking_file, tmp_path):
    records = records_of(ranking_file)
    teacher = write_teacher_scores(tmp_path / "scores.jsonl", records, positive=-5.0, negative=5.0)
    report = run(tmp_path, tiny_cross_encoder, ranking_file, "--teacher_scores", str(teacher))
    # the first positive sits right after the query's negatives; MRR is the mean of 1 / its rank
    kept = [r for r in records if r["positive"] and r["negative"]]
    assert report["teacher"]["mrr@10"] == pytest.approx(sum(1 / (len(r["negative"]) + 1) for r in kept) / len(kept))


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
    with pytest.raises(InputError, match=f"model path '{missing}' does not exist"):
        run(tmp_path, tiny_cross_encoder, ranking_file, "--model_after_path", str(missing))
    assert not (tmp_path / "report" / "evaluation.json").exists()


def test_launcher_passes_teacher_scores_only_when_set(tiny_cross_encoder, ranking_file, tmp_path):
    teacher = write_teacher_scores(tmp_path / "scores.jsonl", records_of(ranking_file), positive=5.0, negative=-5.0)
    output = tmp_path / "evaluation.json"
    env = {
        **os.environ,
        "MODEL_BEFORE": str(tiny_cross_encoder),
        "MODEL_AFTER": str(tiny_cross_encoder),
        "DATASET": str(ranking_file),
        "TEACHER_SCORES": str(teacher),
        "OUTPUT": str(output),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",  # tiny tensors: threads cost more than they save
    }
    done = subprocess.run(["bash", str(REPO / "evaluation.sh"), "--batch_size", "16"], env=env, cwd=tmp_path,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(output.read_text())
    assert report["teacher"]["map"] == 1.0
    assert json.loads((tmp_path / "evaluation.args.json").read_text())["script"]["batch_size"] == 16


def test_command_line_error_is_one_line_and_exit_status_2(tmp_path):
    missing = tmp_path / "test.jsonl"
    done = subprocess.run(
        [sys.executable, str(REPO / "evaluation.py"), "--model_before_path", "m", "--dataset_path", str(missing)],
        cwd=tmp_path, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == f"error: {missing}: file not found; check the path"
    assert "Traceback" not in done.stderr
