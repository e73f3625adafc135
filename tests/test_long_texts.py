"""Very long texts are cut before a tokenizer sees them whole (rerank_distill.long_texts), and
the cut changes no token a model reads, so no score, count or trained weight."""

from __future__ import annotations

import json
import random

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

import evaluation
import generate_logits
from rerank_distill import long_texts
from rerank_distill.prompts import JudgePrompt
from rerank_distill.toy import build_chat_tokenizer, synthetic_ranking_data, write_jsonl_records
from rerank_distill.trainer import ClippingDataCollator
from test_train import run_train

LONG_CHARACTERS = 200_000


def long_texts_of_every_kind() -> dict[str, str]:
    rng = random.Random(0)
    words = "the of python error install version naïve café 東京 😀 don't x1234 a-b (c)".split()

    def words_joined(count: int, separator: str = " ") -> str:
        return separator.join(rng.choice(words) for _ in range(count))

    return {
        "words": words_joined(30_000),
        "lines": words_joined(30_000, "\n"),
        "cjk run": "東京大学日本語中文字符" * 10_000,
        "emoji": "😀" * 30_000,
        "whitespace run": "a" + " " * LONG_CHARACTERS + "b c d",
        "one long word": "x" * LONG_CHARACTERS,  # WordPiece reads a word over 100 characters as one unknown token
        "digits": "1234567890" * 20_000,
        "long word inside": words_joined(300) + " " + "y" * 5_000 + " " + words_joined(30_000),
        "short": words_joined(20),
    }


def unigram_tokenizer():
    """A SentencePiece-style Unigram tokenizer (Metaspace words), as XLM-R's of bge-reranker-v2-m3."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.Unigram())
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    corpus = [text[:5000] for text in long_texts_of_every_kind().values()]
    backend.train_from_iterator(corpus, trainers.UnigramTrainer(vocab_size=200, special_tokens=["<unk>"],
                                                                unk_token="<unk>"))  # fmt: skip
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")


def tokenizers(tiny_cross_encoder) -> dict:
    return {"byte-level BPE": build_chat_tokenizer(), "WordPiece": AutoTokenizer.from_pretrained(tiny_cross_encoder),
            "Unigram": unigram_tokenizer()}


@pytest.mark.parametrize("max_tokens", [16, 100])
def test_a_clipped_text_keeps_every_token_a_model_reads_and_whether_it_is_cut(tiny_cross_encoder, max_tokens):
    texts = long_texts_of_every_kind()
    for name, tokenizer in tokenizers(tiny_cross_encoder).items():
        clipped = long_texts.clip_long_texts(tokenizer, list(texts.values()), max_tokens)
        for (kind, whole), cut in zip(texts.items(), clipped):
            whole_ids = tokenizer(whole, add_special_tokens=False)["input_ids"]
            cut_ids = tokenizer(cut, add_special_tokens=False)["input_ids"]
            assert whole.startswith(cut), (name, kind)
            assert cut_ids[:max_tokens] == whole_ids[:max_tokens], (name, kind)
            assert (len(cut_ids) > max_tokens) == (len(whole_ids) > max_tokens), (name, kind)
        cut_lengths = dict(zip(texts, map(len, clipped)))
        assert cut_lengths["words"] < 20 * (max_tokens + long_texts.MARGIN_TOKENS), name  # cut at the first try
        assert cut_lengths["cjk run"] < len(texts["cjk run"]), name
        assert cut_lengths["short"] == len(texts["short"]), name


def test_no_limit_or_no_long_text_leaves_the_texts_as_they_are(tiny_cross_encoder):
    tokenizer = build_chat_tokenizer()
    texts = list(long_texts_of_every_kind().values())
    assert long_texts.clip_long_texts(tokenizer, texts, None) == texts
    assert long_texts.clip_long_texts(tokenizer, ["a b", "c"], 4) == ["a b", "c"]


@pytest.fixture
def longest_text_tokenized(monkeypatch) -> list[int]:
    """The length in characters of the longest text any tokenizer is called on, as it grows
    (a one-element list)."""
    longest = [0]
    call = PreTrainedTokenizerBase.__call__

    def texts_in(value):
        if isinstance(value, str):
            yield value
        elif isinstance(value, (list, tuple)):
            for item in value:
                yield from texts_in(item)

    def recording_call(self, text=None, text_pair=None, *args, **kwargs):
        for each in (*texts_in(text), *texts_in(text_pair)):
            longest[0] = max(longest[0], len(each))
        return call(self, text, text_pair, *args, **kwargs)

    monkeypatch.setattr(PreTrainedTokenizerBase, "__call__", recording_call)
    return longest


@pytest.fixture
def file_with_a_long_document(tmp_path):
    records = synthetic_ranking_data(4, docs_per_query=4, seed=1)
    long_document = long_texts_of_every_kind()["words"]
    records[0]["positive"].append(long_document)
    records[1]["query"] = long_document[:LONG_CHARACTERS // 2]  # a long query too
    return write_jsonl_records(tmp_path / "long.jsonl", records)


def scores_file(tmp_path, name: str, teacher: list[str], data) -> tuple[list[dict], int]:
    """The scores stage 1 writes for ``data``, and how many pairs it counted as truncated."""
    generate_logits.main([*teacher, "--input_path", str(data), "--output_dir", str(tmp_path / name),
                          "--max_length", "256", "--batch_size", "4"])  # fmt: skip
    output = tmp_path / name / "long_scores.jsonl"
    truncated = json.loads(output.with_name(output.name + ".run.json").read_text())["counts"]["truncated"]
    return [json.loads(line) for line in output.read_text().splitlines()], truncated


@pytest.mark.parametrize("teacher_type", ["llm_yesno", "cross_encoder", "embedding"])
def test_every_teacher_scores_a_long_text_alike_without_tokenizing_it_whole(
    request, tmp_path, monkeypatch, file_with_a_long_document, longest_text_tokenized, teacher_type
):
    model = request.getfixturevalue({"llm_yesno": "tiny_qwen3", "cross_encoder": "tiny_cross_encoder",
                                     "embedding": "tiny_embedding_model"}[teacher_type])  # fmt: skip
    teacher = ["--model_path", str(model), "--teacher_type", teacher_type]
    clipped = scores_file(tmp_path, "clipped", teacher, file_with_a_long_document)
    assert 0 < longest_text_tokenized[0] < 20_000  # (the long document: 200,000 characters)

    for module in ("prompts", "student", "teachers.cross_encoder", "teachers.embedding"):
        monkeypatch.setattr(f"rerank_distill.{module}.clip_long_texts", lambda tokenizer, texts, limit: list(texts))
    whole = scores_file(tmp_path, "whole", teacher, file_with_a_long_document)
    assert longest_text_tokenized[0] > 100_000  # (the comparison tokenized it whole)
    (clipped, clipped_truncated), (whole, whole_truncated) = clipped, whole
    assert clipped_truncated == whole_truncated > 0
    assert len(clipped) == len(whole)
    for cut, uncut in zip(clipped, whole):
        assert cut["passage"] == uncut["passage"]  # the output keeps the whole text
        assert cut["score"] == pytest.approx(uncut["score"], abs=1e-5)


def test_the_student_is_evaluated_and_trained_on_a_long_text_without_tokenizing_it_whole(
    tmp_path, tiny_cross_encoder, file_with_a_long_document, longest_text_tokenized
):
    evaluation.main(["--model_before_path", str(tiny_cross_encoder), "--dataset_path", str(file_with_a_long_document),
                     "--output_path", str(tmp_path / "report.json")])  # fmt: skip
    assert 0 < longest_text_tokenized[0] < 20_000

    long_document = long_texts_of_every_kind()["words"]
    triplets = [{"query": f"query {i}", "positive": long_document if i % 2 else f"doc {i}",
                 "negative": f"other {i}", "score": 1.0 + i} for i in range(8)]  # fmt: skip
    run_train(tiny_cross_encoder, write_jsonl_records(tmp_path / "triplets.jsonl", triplets), tmp_path / "model",
              "--max_steps", "2", "--max_length", "64", "--save_strategy", "no")  # fmt: skip
    assert 0 < longest_text_tokenized[0] < 20_000  # the loss's batches and the model card's statistics


def test_the_training_collator_cuts_text_columns_and_lists_of_texts_but_not_labels(tiny_cross_encoder):
    tokenizer = AutoTokenizer.from_pretrained(tiny_cross_encoder)
    long_document = long_texts_of_every_kind()["words"]
    collator = ClippingDataCollator(preprocess_fn=None, tokenizer=tokenizer, max_tokens=32)
    batch = collator([
        {"query": "q", "passages": [long_document, "short"], "label": [1.0, 0.0]},
        {"query": long_document, "passages": ["a", "b"], "label": [0.5, 0.5]},
    ])  # fmt: skip
    assert batch["query"][0] == "q" and len(batch["query"][1]) < len(long_document)
    assert long_document.startswith(batch["query"][1])
    assert batch["passages"][0][0] == batch["query"][1] and batch["passages"][0][1:] == ["short"]
    assert batch["passages"][1] == ["a", "b"]
    assert [row.tolist() for row in batch["label"]] == [[1.0, 0.0], [0.5, 0.5]]


def test_a_judge_prompt_of_long_texts_is_the_same_as_from_the_whole_texts(tiny_qwen3, monkeypatch):
    prompt = JudgePrompt(AutoTokenizer.from_pretrained(tiny_qwen3), max_length=240)
    long_text = long_texts_of_every_kind()["words"]
    queries = ["short query", long_text, long_text[:3000], "short"]
    documents = [long_text, "short document", long_text, "d"]
    clipped = prompt.encode(queries, documents)
    monkeypatch.setattr("rerank_distill.prompts.clip_long_texts", lambda tokenizer, texts, limit: list(texts))
    assert clipped == prompt.encode(queries, documents)
    assert clipped[1] == 3
