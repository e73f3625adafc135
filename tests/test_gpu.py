"""What only a CUDA GPU can show: the student trains in bf16 on it and scores there as on the CPU.
(The teacher's GPU checks are in test_teacher_llm.py.) Skipped, with the reason, without a GPU."""

import gc
import json

import numpy as np
import pytest
import torch

import generate_logits
import train
from rerank_distill import teacher_runs
from rerank_distill.formats import iter_ranking_queries
from rerank_distill.student import load_cross_encoder, score_ranking_queries

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_the_student_trains_in_bf16_on_the_gpu_and_loads_for_prediction(tiny_cross_encoder, ranking_file, tmp_path):
    records = [json.loads(line) for line in ranking_file.read_text().splitlines()]
    triplets = tmp_path / "triplets.jsonl"
    triplets.write_text("".join(
        json.dumps({"query": r["query"], "positive": p, "negative": n, "score": 1.5})
        + "\n" for r in records for p in r["positive"][:1] for n in r["negative"][:2]
    ))  # fmt: skip
    summary = train.main([
        "--model_name_or_path", str(tiny_cross_encoder), "--train_data", str(triplets),
        "--output_dir", str(tmp_path / "model"), "--max_steps", "3", "--per_device_train_batch_size", "4",
        "--bf16", "true", "--eval_strategy", "no", "--save_strategy", "no", "--report_to", "none",
    ])  # fmt: skip
    assert summary["steps"] == 3
    assert json.loads((tmp_path / "model" / "args.json").read_text())["training"]["bf16"] is True
    model = load_cross_encoder(str(tmp_path / "model"))
    assert model.device.type == "cuda"
    assert np.isfinite(model.predict([("a query", "a passage")])).all()


def test_scores_on_the_gpu_equal_scores_on_the_cpu(tiny_cross_encoder, ranking_file):
    queries = list(iter_ranking_queries(str(ranking_file)))
    on_gpu = score_ranking_queries(load_cross_encoder(str(tiny_cross_encoder)), queries, batch_size=8)
    cpu_model = load_cross_encoder(str(tiny_cross_encoder))
    cpu_model.to("cpu")
    on_cpu = score_ranking_queries(cpu_model, queries, batch_size=8)
    for gpu_scores, cpu_scores in zip(on_gpu, on_cpu):
        np.testing.assert_allclose(gpu_scores, cpu_scores, atol=1e-4)


def test_replicas_start_with_no_gpu_memory_held_by_the_teacher_that_checked_a_finished_output(
    tiny_cross_encoder, ranking_file, tmp_path, monkeypatch
):
    common = ["--model_path", str(tiny_cross_encoder), "--teacher_type", "cross_encoder", "--input_path",
              str(ranking_file), "--output_dir", str(tmp_path), "--no_show_progress", "--device", "cuda"]
    generate_logits.main(common)  # finished: a replicas run checks it with a teacher of its own, on the GPU
    held = []

    def note_memory_and_stop(*args, **kwargs):
        # (the CUDA tensors Python still reaches, named in the failure: what would hold the memory)
        live = [tuple(o.shape) for o in gc.get_objects() if isinstance(o, torch.Tensor) and o.is_cuda]
        held.append((torch.cuda.memory_reserved(), live))
        raise KeyboardInterrupt

    monkeypatch.setattr(teacher_runs, "run_replicas", note_memory_and_stop)
    with pytest.raises(KeyboardInterrupt):  # (a second output, still to score, is the replicas')
        generate_logits.main([*common, "--data_parallel_size", "2", "--passages_as_queries", "2"])
    assert held == [(0, [])]
