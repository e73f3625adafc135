"""Teacher types other than the yes/no judge, several teachers at once, and what every type shares
(resuming, flag checks). Each score is checked against a computation written out here with the
plain transformers model, independent of the teacher's code."""

import json
import logging
import shutil
import sys
import types

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

import generate_logits
from rerank_distill import teacher_runs
from rerank_distill.cli import parse_args, warn_unread
from rerank_distill.errors import InputError
from rerank_distill.prompts import DEFAULT_INSTRUCTION
from rerank_distill.scoring import Shard, score_source, validate_source
from rerank_distill.teachers import (
    TeacherScores,
    build_teachers,
    check_teacher_options,
    teacher_types_for,
    unique_names,
    unread_backend_flags,
    unread_teacher_flags,
)
from rerank_distill.teachers.cross_encoder import CrossEncoderTeacher
from rerank_distill.teachers.embedding import EmbeddingTeacher, model_prompts
from rerank_distill.teachers.llm_judge import LabelJudge, YesNoJudge, label_probabilities
from rerank_distill.teachers.llm_vllm import logit_post_processing, vllm_hf_overrides
from rerank_distill.toy import read_jsonl_records, write_jsonl_records

QUERIES = ["how do i fix git rebase", "how do i fix git rebase", "how do i fix git rebase", "bake bread at home"]
DOCS = ["use git rebase --abort", "commit branch merge", "the oven is hot", "flour sugar butter and a hot oven"]
ESCI = ["exact", "substitute", "complement", "irrelevant"]


# --- independent computations -------------------------------------------------------------------


def cross_encoder_logits(model_dir, queries, docs, max_length=512):
    """The BERT classifier's one output logit for "[CLS] q [SEP] d [SEP]", pair by pair."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    logits = []
    for query, doc in zip(queries, docs):
        encoded = tokenizer(query, doc, truncation="longest_first", max_length=max_length, return_tensors="pt")
        with torch.no_grad():
            logits.append(model(**encoded).logits[0, 0].item())
    return np.array(logits)


def mean_pooled_cosines(model_dir, queries, docs, query_prompt, document_prompt):
    """cos(mean of token states of prompt+query, mean of token states of prompt+doc), text by text."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()

    def embed(text):
        with torch.no_grad():
            states = model(**tokenizer(text, return_tensors="pt")).last_hidden_state[0]
        vector = states.mean(dim=0).double()
        return vector / vector.norm()

    return np.array([(embed(query_prompt + q) @ embed(document_prompt + d)).item() for q, d in zip(queries, docs)])


def label_judge_by_hand(model_dir, queries, docs, instruction, words, grades):
    """The judge prompt written out, the full model's next-token logits of the label words,
    softmax over those words only, and the probabilities dotted with the grades."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    quoted = ", ".join(f'"{word}"' for word in words)
    system = (
        "Judge how well the Document meets the requirements based on the Query and the Instruct provided. "
        f"Note that the answer can only be one of {quoted}."
    )
    word_ids = [tokenizer.convert_tokens_to_ids(word) for word in words]
    probabilities = []
    for query, doc in zip(queries, docs):
        text = (
            f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n"
            f"<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}"
            "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
        )
        with torch.no_grad():
            last = model(input_ids=torch.tensor([tokenizer.encode(text, add_special_tokens=False)])).logits[0, -1]
        probabilities.append(torch.softmax(last[word_ids].double(), dim=0).numpy())
    probabilities = np.array(probabilities)
    return probabilities @ np.array(grades, dtype=np.float64), probabilities


def options(*argv):
    """Stage 1's parsed arguments, as build_teachers receives them."""
    base = ["--model_path", "unused", "--input_path", "unused", "--output_dir", "unused", "--device", "cpu", "--batch_size", "3"]
    (args,) = parse_args((generate_logits.GenerateLogitsArguments,), "", [*base, *argv])
    return args


def input_pairs(ranking_file):
    """(query, passage) in the order stage 1 writes them: each record's positives, then negatives."""
    records = [json.loads(line) for line in ranking_file.read_text().splitlines()]
    return [(r["query"], p) for r in records for p in r["positive"] + r["negative"]]


# --- a checkpoint of another kind than the teacher type ----------------------------------------------


@pytest.mark.parametrize("teacher_type, model, holds, suggestion", [
    ("llm_yesno", "tiny_cross_encoder", "a cross-encoder with its classification head", "cross_encoder"),
    ("llm_labels", "tiny_embedding_model", "an embedding model", "embedding"),
    ("cross_encoder", "tiny_embedding_model", "an embedding model", "embedding"),
    ("cross_encoder", "tiny_qwen3", "an LLM with its generative head", r"llm_yesno \(or llm_labels\)"),
    ("embedding", "tiny_cross_encoder", "a cross-encoder with its classification head", "cross_encoder"),
])  # fmt: skip
def test_a_checkpoint_of_another_kind_is_refused_before_it_loads_with_a_new_random_head(request, teacher_type, model,
                                                                                      holds, suggestion):
    path = str(request.getfixturevalue(model))
    with pytest.raises(InputError, match=rf"{path} holds {holds}, but --teacher_type {teacher_type} needs .* pass "
                                         rf"--teacher_type {suggestion}$"):
        build_teachers([path], [teacher_type], "hf", parse_args((generate_logits.GenerateLogitsArguments,), "",
                       ["--model_path", path, "--input_path", "x", "--output_dir", "y"])[0])  # fmt: skip


def test_a_generative_llm_is_a_judge_whatever_sentence_transformers_layout_its_folder_also_has(tiny_qwen3,
                                                                                               tiny_cross_encoder, tmp_path):
    from rerank_distill.teachers import check_model_kind

    folder = tmp_path / "judge"
    shutil.copytree(tiny_qwen3, folder)
    (folder / "config_sentence_transformers.json").write_text(json.dumps({"model_type": "CrossEncoder"}))
    check_model_kind("llm_yesno", str(folder))  # not refused
    with pytest.raises(InputError, match="holds a cross-encoder"):  # but it is no embedding model
        check_model_kind("embedding", str(folder))
    with pytest.raises(InputError, match="holds a cross-encoder"):
        check_model_kind("llm_yesno", str(tiny_cross_encoder))


def test_an_llm_without_sentence_transformers_files_is_no_embedding_teacher(tiny_qwen3, tmp_path):
    from rerank_distill.teachers import check_model_kind

    # (it was mean-pooled with no prompts and scored noise, exit status 0)
    with pytest.raises(InputError, match=rf"{tiny_qwen3} holds an LLM with its generative head and no "
                                         r"sentence-transformers files .* pass --teacher_type llm_yesno"):
        check_model_kind("embedding", str(tiny_qwen3))
    embedding_llm = tmp_path / "embedding-llm"  # as Qwen3-Embedding ships: an LM's config, and its pooling
    shutil.copytree(tiny_qwen3, embedding_llm)
    (embedding_llm / "modules.json").write_text("[]")
    check_model_kind("embedding", str(embedding_llm))  # not refused


def test_a_masked_lm_checkpoint_is_no_cross_encoder_teacher(tiny_cross_encoder, tmp_path):
    """A pre-trained encoder (bert-base-uncased: BertForMaskedLM) has no relevance head: as a
    cross_encoder it got a new random one and scored noise, other noise each run, exit status 0."""
    from rerank_distill.teachers import check_model_kind, model_kind
    from transformers import BertForMaskedLM

    masked_lm = tmp_path / "bert-base"
    BertForMaskedLM(AutoConfig.from_pretrained(tiny_cross_encoder)).save_pretrained(masked_lm)
    AutoTokenizer.from_pretrained(tiny_cross_encoder).save_pretrained(masked_lm)
    assert model_kind(str(masked_lm)) == "embedding"  # a bare encoder: either class drops its pre-training head
    with pytest.raises(InputError, match=rf"{masked_lm} holds an embedding model, but --teacher_type cross_encoder"):
        check_model_kind("cross_encoder", str(masked_lm))
    check_model_kind("embedding", str(masked_lm))  # mean-pooled as sentence-transformers does a bare encoder


def test_each_kind_of_checkpoint_is_told_from_its_config(tiny_qwen3, tiny_cross_encoder, tiny_embedding_model, tmp_path):
    from rerank_distill.teachers import model_kind

    assert [model_kind(str(m)) for m in (tiny_qwen3, tiny_cross_encoder, tiny_embedding_model)] == [
        "llm", "cross_encoder", "embedding"]
    assert model_kind(str(tmp_path)) is None  # no config: nothing refused


def test_an_llm_judges_max_length_is_cut_to_the_models_positions(tiny_qwen3, tmp_path, caplog):
    limited = tmp_path / "limited"
    shutil.copytree(tiny_qwen3, limited)
    config = json.loads((limited / "config.json").read_text())
    (limited / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 160}))
    judge = YesNoJudge(str(limited), "hf", "Find it", max_length=2048, batch_size=2, device="cpu")
    assert judge.prompt.max_length == 160 and "cut to 160" in caplog.text
    assert judge.config["max_length"] == 2048  # as asked: outputs made before the cut still resume
    assert judge.score(["q " * 100], ["d " * 100]).truncated == 1


# --- cross_encoder ---------------------------------------------------------------------------------


def test_cross_encoder_score_is_the_models_raw_logit_not_its_sigmoid(tiny_cross_encoder):
    teacher = CrossEncoderTeacher(str(tiny_cross_encoder), max_length=512, batch_size=3, device="cpu")
    result = teacher.score(QUERIES, DOCS)
    np.testing.assert_allclose(result.scores, cross_encoder_logits(tiny_cross_encoder, QUERIES, DOCS), atol=1e-5)
    assert result.truncated == 0


def test_cross_encoder_cuts_pairs_to_max_length_and_counts_them(tiny_cross_encoder):
    docs = [DOCS[0], "commit branch merge rebase remote push pull stash tag checkout conflict history " * 3]
    teacher = CrossEncoderTeacher(str(tiny_cross_encoder), max_length=40, batch_size=2, device="cpu")
    result = teacher.score(QUERIES[:2], docs)
    np.testing.assert_allclose(result.scores, cross_encoder_logits(tiny_cross_encoder, QUERIES[:2], docs, 40), atol=1e-5)
    assert result.truncated == 1


def test_max_length_above_the_models_own_limit_is_capped(tiny_cross_encoder):
    teacher = CrossEncoderTeacher(str(tiny_cross_encoder), max_length=100_000, batch_size=2, device="cpu")
    assert teacher.max_length == 512  # the tiny BERT's position embeddings
    assert teacher.config["max_length"] == 512


def test_a_cross_encoder_with_several_outputs_is_refused(tiny_cross_encoder, tmp_path):
    config = AutoConfig.from_pretrained(tiny_cross_encoder)
    config.num_labels = 3
    AutoModelForSequenceClassification.from_config(config).save_pretrained(tmp_path / "three-labels")
    AutoTokenizer.from_pretrained(tiny_cross_encoder).save_pretrained(tmp_path / "three-labels")
    with pytest.raises(InputError, match="3 outputs"):
        CrossEncoderTeacher(str(tmp_path / "three-labels"), max_length=512, batch_size=2, device="cpu")


def test_a_folder_without_a_model_is_named(tmp_path):
    with pytest.raises(InputError, match=f"cannot load a CrossEncoder from '{tmp_path}'"):
        CrossEncoderTeacher(str(tmp_path), max_length=512, batch_size=2, device="cpu")


def test_a_model_folder_without_its_tokenizer_files_is_refused(tiny_cross_encoder, tiny_qwen3, tmp_path):
    """transformers builds a tokenizer of special tokens alone for such a folder, with no error: every
    word would be read as unknown, and the scores (of a teacher, the student, an evaluation) noise."""
    from rerank_distill.student import load_cross_encoder
    from rerank_distill.teachers.llm_judge import load_tokenizer

    bare = {}
    for name, model in (("cross-encoder", tiny_cross_encoder), ("qwen3", tiny_qwen3)):
        bare[name] = tmp_path / name
        shutil.copytree(model, bare[name], ignore=shutil.ignore_patterns("tokenizer*", "vocab*", "merges*",
                                                                         "special_tokens*"))
    with pytest.raises(InputError, match="has no tokenizer files"):
        CrossEncoderTeacher(str(bare["cross-encoder"]), max_length=512, batch_size=2, device="cpu")
    with pytest.raises(InputError, match="has no tokenizer files"):
        load_cross_encoder(str(bare["cross-encoder"]))
    with pytest.raises(InputError, match="has no tokenizer files"):
        load_tokenizer(str(bare["qwen3"]))
    assert len(load_tokenizer(str(tiny_qwen3))) > 2  # a whole tokenizer passes


# --- embedding -------------------------------------------------------------------------------------


def test_embedding_score_is_scaled_cosine_with_the_models_own_prompts(tiny_embedding_model):
    teacher = EmbeddingTeacher(str(tiny_embedding_model), max_length=512, batch_size=3, score_scale=7.5, device="cpu")
    assert (teacher.query_prompt, teacher.document_prompt) == ("query: ", "passage: ")
    expected = 7.5 * mean_pooled_cosines(tiny_embedding_model, QUERIES, DOCS, "query: ", "passage: ")
    np.testing.assert_allclose(teacher.score(QUERIES, DOCS).scores, expected, atol=1e-5)


def test_query_prompt_flag_replaces_the_models_query_prompt(tiny_embedding_model):
    teacher = EmbeddingTeacher(str(tiny_embedding_model), 512, 3, score_scale=1.0, query_prompt="search: ", device="cpu")
    expected = mean_pooled_cosines(tiny_embedding_model, QUERIES, DOCS, "search: ", "passage: ")
    np.testing.assert_allclose(teacher.score(QUERIES, DOCS).scores, expected, atol=1e-5)
    assert teacher.config["query_prompt"] == "search: "


def test_embedding_teacher_embeds_each_distinct_text_once(tiny_embedding_model):
    teacher = EmbeddingTeacher(str(tiny_embedding_model), 512, 3, device="cpu")
    seen = {"query": [], "document": []}
    for kind in seen:
        encode = getattr(teacher.model, f"encode_{kind}")
        setattr(teacher.model, f"encode_{kind}", lambda texts, _e=encode, _k=kind, **kw: seen[_k].extend(texts) or _e(texts, **kw))
    teacher.score(QUERIES + QUERIES[:1], DOCS + DOCS[:1])
    assert sorted(seen["query"]) == sorted(set(QUERIES))
    assert sorted(seen["document"]) == sorted(set(DOCS))


def test_a_max_length_the_prompts_fill_leaves_no_room_for_text_and_is_refused(tiny_embedding_model):
    """Inputs are cut from their end, prompt included: where the prompt and the special tokens fill
    --max_length, every query (or document) was its prompt alone, one vector for all, and the
    scores meant nothing, with exit status 0."""
    # [CLS] query : [SEP] is 4 tokens, [CLS] passage: [SEP] 10 in the tiny tokenizer
    with pytest.raises(InputError, match=r"--max_length 4 leaves no room for text: the query prompt 'query: ' and "
                                         r"the special tokens take 4"):
        EmbeddingTeacher(str(tiny_embedding_model), max_length=4, batch_size=2, device="cpu")
    with pytest.raises(InputError, match=r"--max_length 10 leaves no room for text: the document prompt "
                                         r"'passage: ' and the special tokens take 10"):
        EmbeddingTeacher(str(tiny_embedding_model), max_length=10, batch_size=2, device="cpu")
    room = EmbeddingTeacher(str(tiny_embedding_model), max_length=11, batch_size=2, device="cpu")
    assert room.score(["git rebase", "bake bread"], ["use git", "use git"]).scores.std() > 0


def test_model_prompts_take_the_query_prompt_and_the_first_document_prompt():
    assert model_prompts({"query": "q: ", "passage": "p: ", "corpus": "c: "}) == ("q: ", "p: ")
    assert model_prompts({"query": None, "document": None}) == ("", "")
    assert model_prompts({"query": "q: "}, query_prompt="") == ("", "")



def test_an_empty_document_prompt_is_the_models_choice_as_encode_document_reads_it(tiny_embedding_model, tmp_path):
    """A model whose "document" prompt is "" gives documents no prompt, though it has a "passage" one:
    sentence-transformers' encode_document takes the first of its prompt names the model has, empty or not."""
    from sentence_transformers import SentenceTransformer

    folder = tmp_path / "empty-document-prompt"
    shutil.copytree(tiny_embedding_model, folder)
    config = json.loads((folder / "config_sentence_transformers.json").read_text())
    config["prompts"] = {"query": "query: ", "document": "", "passage": "passage: "}
    (folder / "config_sentence_transformers.json").write_text(json.dumps(config))
    assert model_prompts(config["prompts"]) == ("query: ", "")
    teacher = EmbeddingTeacher(str(folder), 512, 3, score_scale=1.0, device="cpu")
    model = SentenceTransformer(str(folder), device="cpu")
    queries = model.encode_query(QUERIES, normalize_embeddings=True)
    documents = model.encode_document(DOCS, normalize_embeddings=True)
    np.testing.assert_allclose(teacher.score(QUERIES, DOCS).scores, (queries * documents).sum(axis=1), atol=1e-5)

# --- llm_labels ------------------------------------------------------------------------------------


def test_label_judge_score_is_the_expected_grade_over_the_label_tokens(tiny_qwen3):
    judge = LabelJudge(str(tiny_qwen3), "hf", "Find the product", 512, batch_size=2, device="cpu")
    result = judge.score(QUERIES, DOCS)
    grades, probabilities = label_judge_by_hand(tiny_qwen3, QUERIES, DOCS, "Find the product", ESCI, [3, 2, 1, 0])
    np.testing.assert_allclose(result.scores, grades, atol=1e-5)
    assert [list(p) for p in result.fields["label_probs"]] == [ESCI] * len(QUERIES)
    np.testing.assert_allclose([[p[w] for w in ESCI] for p in result.fields["label_probs"]], probabilities, atol=1e-5)


def test_label_words_and_grades_are_flags(tiny_qwen3):
    judge = LabelJudge(str(tiny_qwen3), "hf", "Find the product", 512, 2, ["irrelevant", "exact"], [-1.0, 5.0], device="cpu")
    grades, _ = label_judge_by_hand(tiny_qwen3, QUERIES, DOCS, "Find the product", ["irrelevant", "exact"], [-1, 5])
    np.testing.assert_allclose(judge.score(QUERIES, DOCS).scores, grades, atol=1e-5)


def test_label_probabilities_are_a_softmax_over_the_given_logits_only():
    probabilities = label_probabilities(np.array([[0.0, np.log(3.0)], [1000.0, 1000.0]]))
    np.testing.assert_allclose(probabilities, [[0.25, 0.75], [0.5, 0.5]])


def test_a_label_word_that_is_not_one_token_stops_the_run(tiny_qwen3, ranking_file, tmp_path):
    with pytest.raises(InputError, match="'substitutions' into .* exactly one token"):
        generate_logits.main([
            "--model_path", str(tiny_qwen3), "--teacher_type", "llm_labels", "--label_words", "exact", "substitutions",
            "--label_grades", "1", "0", "--input_path", str(ranking_file), "--output_dir", str(tmp_path),
        ])  # fmt: skip


def test_esci_words_the_tokenizer_splits_stop_the_run_with_their_letters_as_the_way_out(tiny_qwen3, ranking_file,
                                                                                        tmp_path):
    with pytest.raises(InputError, match="'Exact' into 3 tokens .* --label_words E S C I"):
        generate_logits.main([
            "--model_path", str(tiny_qwen3), "--teacher_type", "llm_labels", "--label_words", "Exact", "Substitute",
            "Complement", "Irrelevant", "--input_path", str(ranking_file), "--output_dir", str(tmp_path),
        ])  # fmt: skip


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--label_words", "exact", "irrelevant", "--label_grades", "3", "2", "0"], "3 values for 2 --label_words"),
        (["--label_words", "exact", "exact", "--label_grades", "1", "0"], "two different words"),
        (["--label_words", "exact", "--label_grades", "1"], "two different words"),
        (["--label_grades", "1", "1", "1", "1"], "every label word the grade 1"),
        (["--label_words", "yes", "no", "--label_grades", "nan", "0"], "must be finite numbers, got nan 0"),
        (["--label_words", "yes", "no", "--label_grades", "inf", "0"], "must be finite numbers, got inf 0"),
        (["--label_words", "I", "C", "S", "E", "--label_grades", "3", "2", "1", "0"],
         r"ranks them in another order than ESCI's .* --label_grades 0 1 2 3"),
    ],
)
def test_label_flags_are_checked_before_anything_is_read(flags, message):
    with pytest.raises(InputError, match=message):
        check_teacher_options(["llm_labels"], options(*flags))


@pytest.mark.parametrize("grades", [["1", "0", "0", "0"], ["1", "1", "0", "0"], ["1", "0.1", "0.01", "0"]])
def test_esci_words_graded_in_esci_order_with_ties_are_kept(grades):
    """Exact against the rest (1 0 0 0) ranks no word above one ESCI ranks higher: no reordering
    to refuse (it was refused as 'another order than ESCI's')."""
    given = options("--label_words", *ESCI, "--label_grades", *grades)
    check_teacher_options(["llm_labels"], given)
    assert given.label_grades == [float(grade) for grade in grades]


@pytest.mark.parametrize("words, grades", [(["good", "fair", "bad"], [2.0, 1.0, 0.0]),
                                           (["I", "C", "S", "E"], [0.0, 1.0, 2.0, 3.0]),
                                           (["exact", "substitute", "complement", "irrelevant"], [3.0, 2.0, 1.0, 0.0])])
def test_label_words_without_grades_get_esci_grades_or_descending_ones(words, grades):
    given = options("--label_words", *words)
    check_teacher_options(["llm_labels"], given)
    assert given.label_grades == grades


@pytest.mark.parametrize("scale", ["0", "-3", "inf", "nan"])
def test_score_scale_must_be_positive_and_finite(scale):
    with pytest.raises(InputError, match="--score_scale must be positive and finite"):
        check_teacher_options(["embedding"], options("--score_scale", scale))


@pytest.mark.parametrize(
    ("types", "flags", "unread"),
    [
        (["llm_yesno"], ["--label_words", "a", "b", "--score_scale", "-3", "--query_prompt", "x"],
         ["--label_words", "--score_scale", "--query_prompt"]),
        (["cross_encoder", "embedding"], ["--instruction", "Find twins", "--backend", "hf", "--score_scale", "5"],
         ["--instruction", "--backend"]),
        (["llm_labels", "embedding"], ["--label_words", "a", "b", "--instruction", "Find twins", "--score_scale", "5"],
         []),
        (["embedding"], ["--instruction", DEFAULT_INSTRUCTION, "--backend", "auto"], []),  # defaults ask for nothing
    ],
)
def test_a_flag_no_teacher_reads_is_warned_about(caplog, types, flags, unread):
    warn_unread(options(*flags), unread_teacher_flags(types))

    assert [record.getMessage().split()[0] for record in caplog.records if "is not read" in record.getMessage()] == unread


@pytest.mark.parametrize(
    ("types", "flags", "unread"),
    [
        (["llm_yesno"], ["--backend", "hf", "--tensor_parallel_size", "2", "--gpu_memory_utilization", "0.5"],
         ["--tensor_parallel_size", "--gpu_memory_utilization"]),
        (["llm_yesno"], ["--backend", "hf", "--tensor_parallel_size", "2", "--data_parallel_size", "2"], []),
        (["cross_encoder"], ["--tensor_parallel_size", "2"], ["--tensor_parallel_size"]),
    ],
)
def test_a_flag_the_chosen_backend_never_reads_is_warned_about_before_a_teacher_loads(teacher_never_loads, tmp_path,
                                                                                     caplog, ranking_file, types, flags,
                                                                                     unread):
    caplog.set_level(logging.WARNING)
    with pytest.raises(teacher_never_loads):  # (the vLLM-only flags were dropped unsaid on the hf backend)
        generate_logits.main(["--model_path", "m", "--teacher_type", *types, "--input_path", str(ranking_file),
                              "--output_dir", str(tmp_path / "o"), *flags])
    assert [record.getMessage().split()[0] for record in caplog.records if "is not read" in record.getMessage()] == unread


def test_the_hf_backends_prefix_cache_flag_is_unread_on_vllm():
    assert "prefix_cache" in unread_backend_flags("vllm", 1) and "prefix_cache" not in unread_backend_flags("hf", 1)


def test_device_is_unread_on_vllm_unless_a_teacher_beside_the_judges_runs_on_it():
    # (vLLM placed the teacher on the GPUs it sees, --device cuda:1 or cpu dropped unsaid)
    assert "device" in unread_backend_flags("vllm", 1, ["llm_yesno", "llm_labels"])
    assert "device" not in unread_backend_flags("vllm", 1, ["llm_yesno", "cross_encoder"])
    assert "device" not in unread_backend_flags("hf", 1, ["llm_yesno"])


def test_generate_logits_warns_of_device_on_vllm_before_a_teacher_loads(teacher_never_loads, monkeypatch, tmp_path,
                                                                        caplog, ranking_file):
    monkeypatch.setattr(generate_logits, "choose_backend", lambda backend: "vllm")
    monkeypatch.setattr(generate_logits, "check_device", lambda *args: None)  # (no GPU here)
    caplog.set_level(logging.WARNING)
    with pytest.raises(teacher_never_loads):
        generate_logits.main(["--model_path", "m", "--input_path", str(ranking_file), "--output_dir",
                              str(tmp_path / "o"), "--device", "cuda:1"])
    assert [record.getMessage().split()[0] for record in caplog.records if "is not read" in record.getMessage()] == [
        "--device"]


@pytest.mark.parametrize(("device", "message"), [("cuda", "--device cuda: no CUDA GPU is visible here"),
                                               ("cuda:1", "--device cuda:1: no CUDA GPU is visible here"),
                                               ("gpu", "--device 'gpu' is not a device name")])
def test_a_device_this_machine_lacks_is_refused_before_any_input_is_read(monkeypatch, tmp_path, ranking_file, device,
                                                                        message):
    # (it was a traceback from torch once the teacher loaded, after every input had been read)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(generate_logits, "validate_source", lambda *args, **kwargs: pytest.fail("an input was read"))
    with pytest.raises(InputError, match=message):
        generate_logits.main(["--model_path", "m", "--teacher_type", "embedding", "--input_path", str(ranking_file),
                              "--output_dir", str(tmp_path / "out"), "--device", device])
    assert not (tmp_path / "out").exists()


def test_gpu_memory_is_released_with_cublas_workspaces_before_the_cache_is_emptied(monkeypatch):
    # empty_cache leaves cuBLAS's workspaces held (66 MiB stayed reserved on an H200): they are cleared first
    calls = []
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "clear_cublas_workspaces", None, raising=False)  # (PyTorch 2.11's name below)
    monkeypatch.setattr(torch._C, "_cuda_clearCublasWorkspaces", lambda: calls.append("workspaces"), raising=False)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append("cache"))
    teacher_runs.release_gpu_memory()
    assert calls == ["workspaces", "cache"]


def test_one_gpu_named_for_several_replicas_is_refused(monkeypatch, tmp_path, ranking_file):
    # each replica sees only its own GPUs, numbered from cuda:0: cuda:1 would be missing or shared
    monkeypatch.setattr(generate_logits, "validate_source", lambda *args, **kwargs: pytest.fail("an input was read"))
    with pytest.raises(InputError, match="--device cuda:1 names one GPU, but --data_parallel_size 2 gives each"):
        generate_logits.main(["--model_path", "m", "--input_path", str(ranking_file), "--output_dir",
                              str(tmp_path / "out"), "--device", "cuda:1", "--data_parallel_size", "2"])


class FakeVllm:
    """Stands in for vLLM's LLM (not installed here) and does what its documented sequence-classifier
    conversion does with our ``hf_overrides`` (vllm/model_executor/models/adapters.py, 0.33):
    ``no_post_processing`` makes the classifier rows the output-layer rows of
    ``classifier_from_token`` (looked up with ``convert_tokens_to_ids``); ``from_2_way_softmax``
    (what ``is_original_qwen3_reranker`` selects) makes one row W[true] - W[false], tokens ordered
    [false, true]. The pooled state is the last prompt token's."""

    created: list = []

    def __init__(self, model, runner, hf_overrides, **kwargs):
        assert runner == "pooling"
        self.model = AutoModelForCausalLM.from_pretrained(model).eval()
        tokenizer = AutoTokenizer.from_pretrained(model)
        ids = [tokenizer.convert_tokens_to_ids(token) for token in hf_overrides["classifier_from_token"]]
        rows = self.model.lm_head.weight[ids].detach()
        method = hf_overrides.get("method") or ("from_2_way_softmax" if hf_overrides.get("is_original_qwen3_reranker") else None)
        self.weight = (rows[1] - rows[0])[None] if method == "from_2_way_softmax" else rows
        self.requests = []
        FakeVllm.created.append(self)

    def classify(self, prompts, pooling_params, use_tqdm):
        assert pooling_params.use_activation is False
        outputs = []
        for prompt in prompts:
            self.requests.append(prompt["prompt_token_ids"])
            with torch.no_grad():
                hidden = self.model.model(input_ids=torch.tensor([prompt["prompt_token_ids"]])).last_hidden_state[0, -1]
            outputs.append(types.SimpleNamespace(outputs=types.SimpleNamespace(probs=(self.weight @ hidden).tolist())))
        return outputs


@pytest.fixture
def fake_vllm(monkeypatch):
    module = types.SimpleNamespace(LLM=FakeVllm, PoolingParams=lambda **kw: types.SimpleNamespace(**kw))
    monkeypatch.setitem(sys.modules, "vllm", module)
    FakeVllm.created = []
    return FakeVllm


def test_a_request_vllm_failed_stops_the_run_with_its_error_rather_than_a_shape_error(tiny_qwen3, fake_vllm,
                                                                                     monkeypatch):
    classify = FakeVllm.classify

    def classify_failing_the_second(self, prompts, pooling_params, use_tqdm):
        outputs = classify(self, prompts, pooling_params, use_tqdm)
        outputs[1] = types.SimpleNamespace(outputs=types.SimpleNamespace(probs=[]), error="RequestError(code='x')")
        return outputs

    monkeypatch.setattr(FakeVllm, "classify", classify_failing_the_second)
    with pytest.raises(RuntimeError, match=r"vLLM could not score a prompt of this chunk \(RequestError\(code='x'\)\)"):
        YesNoJudge(str(tiny_qwen3), "vllm", "Find the product", 512, 2).score(QUERIES, DOCS)


# the label judge's logits in word order; the yes/no judge's one output of vLLM's from_2_way_softmax
# row W[yes] - W[no]: logit(yes) - logit(no), the sign included
@pytest.mark.parametrize("judge", [LabelJudge, YesNoJudge])
def test_a_vllm_judge_sends_the_hf_prompts_and_scores_as_the_hf_judge_does(tiny_qwen3, fake_vllm, judge):
    hf = judge(str(tiny_qwen3), "hf", "Find the product", 512, 2, device="cpu")
    vllm = judge(str(tiny_qwen3), "vllm", "Find the product", 512, 2)
    vllm_result = vllm.score(QUERIES, DOCS)
    assert fake_vllm.created[0].requests == hf.prompt.encode(QUERIES, DOCS)[0]
    np.testing.assert_allclose(vllm_result.scores, hf.score(QUERIES, DOCS).scores, atol=1e-4)


def test_a_vllm_label_judge_answering_yes_or_no_reads_both_logits_not_their_difference(tiny_qwen3, fake_vllm):
    words = {"label_words": ["yes", "no"], "label_grades": [1, 0]}
    hf = LabelJudge(str(tiny_qwen3), "hf", "Find the product", 512, 2, device="cpu", **words)
    vllm = LabelJudge(str(tiny_qwen3), "vllm", "Find the product", 512, 2, **words)
    np.testing.assert_allclose(vllm.score(QUERIES, DOCS).scores, hf.score(QUERIES, DOCS).scores, atol=1e-4)


# vLLM's converted classifier is the output layer's rows over the last hidden state, nothing after
# (adapters.py as_seq_cls_model, 0.33); these families soft-cap or scale their logits after it, in
# vLLM's LogitsProcessor (gemma2.py, commandr.py, granite.py, falcon_h1.py)
@pytest.mark.parametrize("model_type, setting", [("gemma2", "final_logit_softcapping=30.0"),
                                                 ("cohere", "logit_scale=0.0625"),
                                                 ("granite", "logits_scaling=8.0"),
                                                 ("falcon_h1", "lm_head_multiplier=0.5")])
def test_logit_post_processing_is_read_from_the_families_own_configs(model_type, setting):
    from transformers import AutoConfig as Config

    extra = {"granite": {"logits_scaling": 8.0}, "falcon_h1": {"lm_head_multiplier": 0.5}}.get(model_type, {})
    assert logit_post_processing(Config.for_model(model_type, **extra)) == setting
    assert logit_post_processing(Config.for_model("qwen3")) is None
    assert logit_post_processing(Config.for_model("granite")) is None  # its default scale is 1


def test_a_vllm_judge_whose_model_post_processes_its_logits_is_refused(tiny_qwen3, tmp_path, fake_vllm):
    model = shutil.copytree(tiny_qwen3, tmp_path / "capped")
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "final_logit_softcapping": 30.0}))
    judge = YesNoJudge(str(model), "vllm", "Find the product", 512, 2)
    with pytest.raises(InputError, match=r"final_logit_softcapping=30.0.*--backend hf"):
        judge.score(QUERIES, DOCS)
    assert fake_vllm.created == []


def test_vllm_overrides_for_label_words_keep_their_order():
    assert vllm_hf_overrides(["irrelevant", "exact"]) == {
        "architectures": ["Qwen3ForSequenceClassification"],
        "classifier_from_token": ["irrelevant", "exact"],
        "method": "no_post_processing",
    }
    assert vllm_hf_overrides(ESCI, "LlamaForCausalLM")["architectures"] == ["LlamaForSequenceClassification"]
    with pytest.raises(InputError, match="--backend hf"):
        vllm_hf_overrides(ESCI, "Gemma3ForConditionalGeneration")


def test_vllm_yes_no_for_other_model_families_names_the_two_way_method():
    assert vllm_hf_overrides(["yes", "no"])["method"] == "no_post_processing"  # a label judge's yes and no
    assert vllm_hf_overrides(["yes", "no"], "LlamaForCausalLM", yes_minus_no=True) == {
        "architectures": ["LlamaForSequenceClassification"],
        "classifier_from_token": ["no", "yes"],
        "method": "from_2_way_softmax",
    }


# --- several teachers ------------------------------------------------------------------------------


def test_one_teacher_type_applies_to_every_model_and_a_list_is_matched_in_order():
    assert teacher_types_for(["a", "b"], None) == ["llm_yesno", "llm_yesno"]
    assert teacher_types_for(["a", "b"], ["embedding"]) == ["embedding", "embedding"]
    assert teacher_types_for(["a", "b"], ["llm_yesno", "cross_encoder"]) == ["llm_yesno", "cross_encoder"]
    with pytest.raises(InputError, match="3 values for 2 --model_path"):
        teacher_types_for(["a", "b"], ["llm_yesno", "cross_encoder", "embedding"])
    with pytest.raises(InputError, match="unknown --teacher_type 'bm25'"):
        teacher_types_for(["a"], ["bm25"])


def test_teachers_sharing_a_folder_name_get_numbered_names():
    assert unique_names(["m", "m", "x", "m"]) == ["m", "m-2", "x", "m-3"]
    assert unique_names(["m", "m-2", "m"]) == ["m", "m-2", "m-3"]


class FixedTeacher:
    """Scores each passage with a number given in the test."""

    def __init__(self, name, by_passage):
        self.name, self.by_passage, self.config = name, by_passage, {"teacher_type": "fixed", "scores": by_passage}

    def score(self, queries, passages, progress=lambda n: None):
        return TeacherScores(np.array([self.by_passage[p] for p in passages], dtype=np.float64))


def test_combined_score_is_the_mean_of_each_teachers_per_query_z_scores(tmp_path):
    source = tmp_path / "two.jsonl"
    source.write_text(
        '{"query": "q1", "positive": ["a"], "negative": ["b", "c"]}\n{"query": "q2", "positive": ["d"], "negative": ["e"]}\n'
    )
    first = FixedTeacher("first", {"a": 1, "b": 2, "c": 3, "d": 0, "e": 10})
    second = FixedTeacher("second", {"a": 10, "b": 10, "c": 40, "d": 5, "e": 5})
    output = tmp_path / "two_scores.jsonl"
    score_source(str(source), output, [first, second], validate_source(str(source), "auto", Shard()), show_progress=False)
    lines = read_jsonl_records(output)
    # first, q1: mean 2, std sqrt(2/3) -> -sqrt(1.5), 0, sqrt(1.5); q2: mean 5, std 5 -> -1, 1.
    # second, q1: mean 20, std sqrt(200) -> -sqrt(0.5), -sqrt(0.5), sqrt(2); q2: equal scores -> 0, 0.
    expected = [(-np.sqrt(1.5) - np.sqrt(0.5)) / 2, -np.sqrt(0.5) / 2, (np.sqrt(1.5) + np.sqrt(2)) / 2, -0.5, 0.5]
    np.testing.assert_allclose([line["score"] for line in lines], expected)
    assert [line["teacher_scores"] for line in lines] == [
        {"first": 1, "second": 10}, {"first": 2, "second": 10}, {"first": 3, "second": 40},
        {"first": 0, "second": 5}, {"first": 10, "second": 5},
    ]  # fmt: skip


def test_what_is_logged_while_the_bar_is_drawn_goes_through_tqdm_above_the_bar(tmp_path, monkeypatch):
    # a terminal's log handler writes straight to stderr, onto the bar's line; tqdm's writes above the bar
    source = tmp_path / "one.jsonl"
    source.write_text('{"query": "q1", "positive": ["a"], "negative": ["b"]}\n')
    terminal = logging.StreamHandler(sys.stderr)
    monkeypatch.setattr(logging.getLogger(), "handlers", [terminal])
    handlers_while_scoring = []

    class LookingTeacher(FixedTeacher):
        def score(self, queries, passages, progress=lambda n: None):
            handlers_while_scoring.extend(type(h).__name__ for h in logging.getLogger().handlers)
            return super().score(queries, passages, progress)

    teacher = LookingTeacher("t", {"a": 1.0, "b": 0.0})
    score_source(str(source), tmp_path / "out.jsonl", [teacher], validate_source(str(source), "auto", Shard()),
                 show_progress=True)
    assert handlers_while_scoring == ["_TqdmLoggingHandler"]
    assert logging.getLogger().handlers == [terminal]  # the terminal's own again after the bar


def test_each_line_of_a_pair_listed_twice_keeps_every_teachers_score_of_that_pair(tmp_path):
    source = tmp_path / "again.jsonl"
    source.write_text('{"query": "q1", "positive": ["a"], "negative": ["a", "b", "c"]}\n')  # "a" twice
    first = FixedTeacher("first", {"a": 1, "b": 2, "c": 4})
    second = FixedTeacher("second", {"a": 30, "b": 20, "c": 10})
    output = tmp_path / "again_scores.jsonl"
    score_source(str(source), output, [first, second], validate_source(str(source), "auto", Shard()), show_progress=False)
    lines = read_jsonl_records(output)
    assert [line["passage"] for line in lines] == ["a", "a", "b", "c"]
    assert [line["teacher_scores"] for line in lines] == [
        {"first": 1, "second": 30}, {"first": 1, "second": 30}, {"first": 2, "second": 20}, {"first": 4, "second": 10},
    ]  # fmt: skip


def test_pairs_truncated_by_several_teachers_count_as_the_most_any_one_cut(tmp_path):
    class TruncatingTeacher(FixedTeacher):
        def __init__(self, name, by_passage, truncated):
            super().__init__(name, by_passage)
            self.truncated = truncated

        def score(self, queries, passages, progress=lambda n: None):
            return TeacherScores(super().score(queries, passages).scores, truncated=self.truncated)

    source = tmp_path / "one.jsonl"
    source.write_text('{"query": "q1", "positive": ["a"], "negative": ["b", "c"]}\n')
    first = TruncatingTeacher("first", {"a": 1, "b": 2, "c": 3}, truncated=2)  # cut a and b, say
    second = TruncatingTeacher("second", {"a": 3, "b": 1, "c": 2}, truncated=1)  # cut a only
    stats = score_source(str(source), tmp_path / "one_scores.jsonl", [first, second],
                         validate_source(str(source), "auto", Shard()), show_progress=False)
    assert stats.truncated == 2


def test_scores_alike_within_float_noise_get_no_vote_in_the_combined_score():
    from rerank_distill.scoring import zscore_by_query

    # one passage scored in batches of other sizes moves by ~1e-7 of itself: that is no ranking
    noisy = np.array([-0.4197292625904083, -0.4197293221950531, -0.41972920298576355, 12.0, 12.0000001, 30.0])
    z = zscore_by_query(noisy, np.array([0, 0, 0, 1, 1, 1]))
    np.testing.assert_array_equal(z[:3], 0.0)
    assert z[5] > 1 and z[3] < 0  # a real spread is standardised, its small differences kept
    np.testing.assert_allclose(zscore_by_query(np.array([1.0, 1.001]), np.array([0, 0])), [-1.0, 1.0])


def test_huge_finite_scores_are_standardised_as_their_scaled_down_copies():
    from rerank_distill.scoring import zscore_by_query

    # (the std squares the scores: from about 1e154 up it overflowed to inf, and the query's z-scores were all 0)
    scores = np.array([3.0, -3.0, 0.0, 1.0, 2.0])
    queries = np.array([0, 0, 0, 1, 1])
    for scale in (1e160, 1e300):
        np.testing.assert_allclose(zscore_by_query(scores * scale, queries), zscore_by_query(scores, queries))
    np.testing.assert_array_equal(zscore_by_query(np.array([1e300, 1e300]), np.array([0, 0])), 0.0)


def test_a_constant_teacher_among_several_stops_the_run_and_is_named(tmp_path, ranking_file):
    passages = {p for _, p in input_pairs(ranking_file)}
    varied = FixedTeacher("varied", {p: float(len(p)) for p in passages})
    constant = FixedTeacher("constant", {p: 0.5 for p in passages})
    expected = validate_source(str(ranking_file), "auto", Shard())
    with pytest.raises(InputError, match="teacher constant gave every pair"):
        score_source(str(ranking_file), tmp_path / "out.jsonl", [varied, constant], expected, show_progress=False)


def test_a_teacher_whose_scores_barely_vary_is_warned_about_and_kept(tmp_path, ranking_file, caplog):
    passages = sorted({p for _, p in input_pairs(ranking_file)})
    flat = FixedTeacher("flat", {p: 1.0 + 0.001 * i for i, p in enumerate(passages)})  # std far below 0.05
    expected = validate_source(str(ranking_file), "auto", Shard())
    caplog.set_level(logging.WARNING)
    score_source(str(ranking_file), tmp_path / "out.jsonl", [flat], expected, show_progress=False)
    assert "teacher flat's scores barely vary" in caplog.text
    lines = read_jsonl_records(tmp_path / "out.jsonl")  # every pair written, with the teacher's own score
    assert [(line["query"], line["passage"]) for line in lines] == input_pairs(ranking_file)
    assert [line["score"] for line in lines] == [flat.by_passage[line["passage"]] for line in lines]


# --- through the stage script ----------------------------------------------------------------------


def run_stage(tmp_path, ranking_file, *argv):
    out = tmp_path / "scores"
    generate_logits.main([*argv, "--input_path", str(ranking_file), "--output_dir", str(out), "--device", "cpu",
                          "--batch_size", "4", "--no_show_progress", "--overwrite"])  # fmt: skip
    return read_jsonl_records(out / "train_scores.jsonl"), json.loads((out / "args.json").read_text())


def test_cross_encoder_teacher_end_to_end(tiny_cross_encoder, ranking_file, tmp_path):
    lines, args = run_stage(tmp_path, ranking_file, "--teacher_type", "cross_encoder", "--model_path", str(tiny_cross_encoder))
    pairs = input_pairs(ranking_file)
    assert [(l["query"], l["passage"]) for l in lines] == pairs
    assert all(set(line) == {"query", "passage", "score", "label"} for line in lines)
    expected = cross_encoder_logits(tiny_cross_encoder, *zip(*pairs))
    np.testing.assert_allclose([line["score"] for line in lines], expected, atol=1e-5)
    assert args["resolved"]["teachers"]["tiny-cross-encoder"]["teacher_type"] == "cross_encoder"


def test_an_llm_judge_whose_outputs_are_all_finished_never_loads_its_weights(tiny_qwen3, ranking_file, tmp_path,
                                                                              monkeypatch):
    import rerank_distill.teachers.llm_judge as llm_judge

    run_stage(tmp_path, ranking_file, "--model_path", str(tiny_qwen3), "--backend", "hf")

    def no_loading(*args):
        raise AssertionError("the weights were loaded")

    monkeypatch.setattr(llm_judge, "_judge_engine", no_loading)
    out = tmp_path / "scores"
    summary = generate_logits.main(["--model_path", str(tiny_qwen3), "--backend", "hf", "--input_path", str(ranking_file),
                                    "--output_dir", str(out), "--device", "cpu", "--batch_size", "4",
                                    "--no_show_progress"])  # fmt: skip
    assert summary[str(out / "train_scores.jsonl")]["already_complete"]


def test_an_llm_judge_that_fails_to_load_writes_and_deletes_nothing(tiny_qwen3, ranking_file, tmp_path):
    lines, _ = run_stage(tmp_path, ranking_file, "--model_path", str(tiny_qwen3), "--backend", "hf")
    out = tmp_path / "scores"
    kept = {path.name: path.read_bytes() for path in out.iterdir() if path.is_file()}
    broken = tmp_path / "broken"
    shutil.copytree(tiny_qwen3, broken)
    (broken / "model.safetensors").write_bytes((broken / "model.safetensors").read_bytes()[:300])
    with pytest.raises(InputError, match="cannot load"):
        run_stage(tmp_path, ranking_file, "--model_path", str(broken), "--backend", "hf")  # with --overwrite
    assert {path.name: path.read_bytes() for path in out.iterdir() if path.is_file()} == kept


def test_a_finished_output_of_another_teacher_is_refused_before_it_loads_and_args_json_stays(tiny_cross_encoder,
                                                                                               ranking_file, tmp_path):
    run_stage(tmp_path, ranking_file, "--teacher_type", "cross_encoder", "--model_path", str(tiny_cross_encoder))
    args_json = tmp_path / "scores" / "args.json"
    recorded = args_json.read_text()
    unloadable = tmp_path / "unloadable"  # a model folder that could never load: the refusal comes first
    unloadable.mkdir()
    (unloadable / "config.json").write_text("{}")
    out = tmp_path / "scores"
    with pytest.raises(InputError, match=r"finished but was scored with other settings or input \(differing: "
                                         r"teachers: model_path\)"):
        generate_logits.main(["--teacher_type", "cross_encoder", "--model_path", str(unloadable), "--input_path",
                              str(ranking_file), "--output_dir", str(out), "--no_show_progress"])  # fmt: skip
    assert args_json.read_text() == recorded
    # a record of an earlier release, without the input's digest, is still reused
    record = out / "train_scores.jsonl.run.json"
    made = json.loads(record.read_text())
    del made["made_with"]["input_digest"]
    record.write_text(json.dumps(made))
    summary = generate_logits.main(["--teacher_type", "cross_encoder", "--model_path", str(tiny_cross_encoder),
                                    "--input_path", str(ranking_file), "--output_dir", str(out), "--device", "cpu",
                                    "--batch_size", "4", "--no_show_progress"])  # fmt: skip
    assert summary[str(out / "train_scores.jsonl")]["already_complete"]
    assert args_json.read_text() == recorded  # nothing to do: still the record of the run that made it


def test_label_column_names_the_grade_column_of_graded_input_and_its_grades_become_labels(tiny_cross_encoder, tmp_path):
    rows = [{"query": "q", "item_text": "a", "stars": 4}, {"query": "q", "item_text": "b", "stars": "I"}]
    source = write_jsonl_records(tmp_path / "train.jsonl", rows)
    teacher = ("--teacher_type", "cross_encoder", "--model_path", str(tiny_cross_encoder))
    with pytest.raises(InputError, match="cannot tell the format"):
        run_stage(tmp_path, source, *teacher)
    lines, args = run_stage(tmp_path, source, *teacher, "--label_column", "stars")
    assert [(line["passage"], line["label"]) for line in lines] == [("a", 4), ("b", 0)]
    assert args["script"]["label_column"] == "stars"


def test_embedding_teacher_end_to_end(tiny_embedding_model, ranking_file, tmp_path):
    lines, args = run_stage(tmp_path, ranking_file, "--teacher_type", "embedding", "--model_path", str(tiny_embedding_model))
    pairs = input_pairs(ranking_file)
    assert [(l["query"], l["passage"]) for l in lines] == pairs
    assert all(set(line) == {"query", "passage", "score", "label"} for line in lines)
    expected = 10.0 * mean_pooled_cosines(tiny_embedding_model, *zip(*pairs), "query: ", "passage: ")
    np.testing.assert_allclose([line["score"] for line in lines], expected, atol=1e-5)
    assert args["resolved"]["teachers"]["tiny-embedding"]["score_scale"] == 10.0


def test_label_judge_end_to_end(tiny_qwen3, ranking_file, tmp_path):
    lines, _ = run_stage(tmp_path, ranking_file, "--teacher_type", "llm_labels", "--model_path", str(tiny_qwen3))
    pairs = input_pairs(ranking_file)
    assert [(l["query"], l["passage"]) for l in lines] == pairs
    assert all(set(line) == {"query", "passage", "score", "label", "label_probs"} for line in lines)
    grades, probabilities = label_judge_by_hand(tiny_qwen3, *zip(*pairs), generate_logits.DEFAULT_INSTRUCTION, ESCI, [3, 2, 1, 0])
    np.testing.assert_allclose([line["score"] for line in lines], grades, atol=1e-5)
    np.testing.assert_allclose([[line["label_probs"][w] for w in ESCI] for line in lines], probabilities, atol=1e-5)


def test_teachers_given_as_hub_ids_are_named_after_them_not_their_download_folder(
    tiny_cross_encoder, ranking_file, tmp_path, monkeypatch
):
    cache = tmp_path / "hub-cache"
    for name, commit in (("ce-small", "1" * 40), ("ce-large", "2" * 40)):
        repo = cache / f"models--acme--{name}"
        shutil.copytree(tiny_cross_encoder, repo / "snapshots" / commit)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(commit, encoding="utf-8")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    lines, args = run_stage(tmp_path, ranking_file, "--teacher_type", "cross_encoder", "--model_path", "acme/ce-small",
                            "acme/ce-large", "--cache_dir", str(cache))  # fmt: skip
    assert list(args["resolved"]["teachers"]) == ["ce-small", "ce-large"]
    assert list(lines[0]["teacher_scores"]) == ["ce-small", "ce-large"]


def test_several_teachers_end_to_end_keep_each_score_and_combine_them(tiny_qwen3, tiny_cross_encoder, ranking_file, tmp_path):
    yes_no, _ = run_stage(tmp_path / "a", ranking_file, "--model_path", str(tiny_qwen3))
    cross, _ = run_stage(tmp_path / "b", ranking_file, "--teacher_type", "cross_encoder", "--model_path", str(tiny_cross_encoder))
    labels, _ = run_stage(tmp_path / "c", ranking_file, "--teacher_type", "llm_labels", "--model_path", str(tiny_qwen3))
    lines, args = run_stage(
        tmp_path / "all", ranking_file, "--model_path", str(tiny_qwen3), "--model_path", str(tiny_cross_encoder), str(tiny_qwen3),
        "--teacher_type", "llm_yesno", "cross_encoder", "llm_labels",
    )  # fmt: skip
    names = ["tiny-qwen3", "tiny-cross-encoder", "tiny-qwen3-2"]
    assert list(args["resolved"]["teachers"]) == names
    assert all(list(line["teacher_scores"]) == names for line in lines)
    for name, single in zip(names, (yes_no, cross, labels)):
        np.testing.assert_allclose([l["teacher_scores"][name] for l in lines], [l["score"] for l in single], atol=1e-6)
    words = list(labels[0]["label_probs"])
    assert all(list(l["tiny-qwen3-2/label_probs"]) == words for l in lines)
    np.testing.assert_allclose(
        [[l["tiny-qwen3-2/label_probs"][word] for word in words] for l in lines],
        [[l["label_probs"][word] for word in words] for l in labels],
        rtol=1e-6,
    )
    records = [json.loads(line) for line in ranking_file.read_text().splitlines()]
    start = 0
    for record in records:  # each record's lines are contiguous; combine them by hand
        size = len(record["positive"]) + len(record["negative"])
        group = lines[start : start + size]
        z_scores = []
        for name in names:
            values = np.array([l["teacher_scores"][name] for l in group])
            z_scores.append((values - values.mean()) / values.std() if values.std() > 0 else np.zeros(size))
        np.testing.assert_allclose([l["score"] for l in group], np.mean(z_scores, axis=0), atol=1e-9)
        start += size


def test_teacher_types_that_do_not_match_the_models_stop_before_any_model_is_loaded(ranking_file, tmp_path, monkeypatch):
    monkeypatch.setattr(teacher_runs, "build_teachers", lambda *a: pytest.fail("model loaded before flags were checked"))
    with pytest.raises(InputError, match="2 values for 3 --model_path"):
        generate_logits.main(["--model_path", "a", "b", "c", "--teacher_type", "llm_yesno", "embedding",
                              "--input_path", str(ranking_file), "--output_dir", str(tmp_path)])  # fmt: skip


# --- resuming --------------------------------------------------------------------------------------


class CrashOnCall:
    """Wraps a teacher and raises KeyboardInterrupt (as Ctrl-C would) on its n-th chunk."""

    def __init__(self, teacher, call):
        self.teacher, self.call, self.calls = teacher, call, 0
        self.name, self.config = teacher.name, teacher.config

    def score(self, queries, passages, progress=lambda n: None):
        self.calls += 1
        if self.calls == self.call:
            raise KeyboardInterrupt
        return self.teacher.score(queries, passages, progress)


@pytest.mark.parametrize("teacher_type, model", [("llm_yesno", "tiny_qwen3"), ("cross_encoder", "tiny_cross_encoder")])
def test_dtype_auto_is_recorded_as_what_it_means_on_this_machine(request, teacher_type, model):
    """A run begun with --dtype auto on a CPU (float32) must not resume in bf16 on a GPU."""
    model_path = str(request.getfixturevalue(model))

    def config(*argv):
        return build_teachers([model_path], [teacher_type], "hf", options(*argv))[0].config

    assert config()["dtype"] == "float32"  # --device cpu
    assert config() == config("--dtype", "float32")
    assert config("--dtype", "bfloat16")["dtype"] == "bfloat16"


@pytest.mark.parametrize(
    "teacher_type, model, other_settings",
    [
        ("llm_yesno", "tiny_qwen3", ["--instruction", "Find duplicates"]),
        ("llm_labels", "tiny_qwen3", ["--label_grades", "3", "2", "1", "-1"]),
        ("cross_encoder", "tiny_cross_encoder", ["--max_length", "64"]),
        ("embedding", "tiny_embedding_model", ["--score_scale", "5"]),
    ],
)
def test_every_teacher_type_resumes_after_a_crash_and_refuses_other_settings(request, ranking_file, tmp_path, teacher_type, model, other_settings):
    model_path = str(request.getfixturevalue(model))
    expected = validate_source(str(ranking_file), "auto", Shard())

    def run(output, teacher):
        return score_source(str(ranking_file), output, [teacher], expected, chunk_size=10, show_progress=False)

    def teacher(*argv):
        return build_teachers([model_path], [teacher_type], "hf", options(*argv))[0]

    whole, resumed = tmp_path / "whole" / "train_scores.jsonl", tmp_path / "resumed" / "train_scores.jsonl"
    run(whole, teacher())
    with pytest.raises(KeyboardInterrupt):
        run(resumed, CrashOnCall(teacher(), call=3))
    with pytest.raises(InputError, match="other settings"):
        run(resumed, teacher(*other_settings))
    stats = run(resumed, teacher())
    assert stats.resumed_at_pair > 0
    assert resumed.read_bytes() == whole.read_bytes()
