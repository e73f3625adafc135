"""Tiny random-weight models, their tokenizers and a synthetic reranking data set, all built
locally, so the offline demo and the tests run with no network on a CPU in seconds.

Nothing here is a useful model: the weights are random, so scores are deterministic noise.
They exercise every code path (chat markers, yes/no tokens, pair encoding) at full speed.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

TOPICS = {
    "python": "list dict tuple loop function class import module exception generator pip virtualenv",
    "git": "commit branch merge rebase remote push pull stash tag checkout conflict history",
    "linux": "shell bash process kernel permission file directory mount service cron grep pipe",
    "database": "sql table index query join transaction schema postgres row column key backup",
    "network": "socket port tcp udp dns proxy firewall router packet latency http request",
    "javascript": "promise async callback dom event node npm array object closure browser react",
    "cooking": "oven recipe flour sugar butter bake boil pan salt pepper garlic onion",
    "travel": "visa flight hotel airport passport ticket luggage border embassy booking taxi",
    "cars": "engine tyre brake oil gearbox battery license insurance garage fuel clutch",
    "health": "doctor clinic fever medicine pain allergy vaccine hospital dentist diet sleep",
}
TEMPLATES = [
    "how do i fix the {a} when the {b} fails",
    "what is the best way to handle {a} and {b}",
    "why does my {a} break after changing the {b}",
    "is there a simple guide to {a} with {b}",
    "problem with {a} : the {b} keeps failing",
    "can someone explain {a} versus {b}",
]
# Words the judge prompts need as single tokens (yes/no and the default graded labels).
ANSWER_WORDS = ["yes", "no", "exact", "substitute", "complement", "irrelevant"]


def _sentence(rng: random.Random, topic: str) -> str:
    words = TOPICS[topic].split()
    return rng.choice(TEMPLATES).format(a=rng.choice(words), b=rng.choice(words))


def synthetic_ranking_data(num_queries: int, docs_per_query: int = 8, seed: int = 0) -> list[dict]:
    """MTEB-reranking records: each query's positives share its topic, negatives come from others.

    Every fifth query has one positive only, and the data contain one query with no positive
    and one with no negative, so skipping rules are exercised.
    """
    rng = random.Random(seed)
    topics = sorted(TOPICS)
    records = []
    for index in range(num_queries):
        topic = topics[index % len(topics)]
        num_positive = 1 if index % 5 == 0 else rng.randint(2, max(2, docs_per_query // 2))
        if index == num_queries - 1:
            num_positive = 0
        if index == num_queries - 2:
            num_positive = docs_per_query
        positives = [_sentence(rng, topic) for _ in range(num_positive)]
        others = [t for t in topics if t != topic]
        negatives = [_sentence(rng, rng.choice(others)) for _ in range(docs_per_query - num_positive)]
        records.append({"query": _sentence(rng, topic), "positive": positives, "negative": negatives})
    return records


def write_jsonl_records(path: str | Path, records: list[dict | str]) -> Path:
    """One JSON line per record; a string is written as it is (a broken line, for tests)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = (r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in records)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def read_jsonl_records(path: str | Path) -> list[dict]:
    from rerank_distill.jsonl import read_jsonl

    return [record for _, record in read_jsonl(path)]


def _training_corpus() -> list[str]:
    from rerank_distill.prompts import DEFAULT_INSTRUCTION, SUFFIX, YES_NO_SYSTEM, format_body, labels_system

    rng = random.Random(1)
    lines = [" ".join(words.split()) for words in TOPICS.values()] + TEMPLATES
    lines += [_sentence(rng, topic) for topic in TOPICS for _ in range(20)]
    lines += [YES_NO_SYSTEM, labels_system(ANSWER_WORDS[2:]), DEFAULT_INSTRUCTION, SUFFIX]
    lines += [format_body("Retrieve duplicate questions", "q", "d")]
    lines += ANSWER_WORDS * 50  # makes each answer word one token, with and without a leading space
    lines += [" " + word for word in ANSWER_WORDS] * 50
    return lines


def build_chat_tokenizer(vocab_size: int = 600):
    """A byte-level BPE tokenizer with Qwen's chat markers, where every answer word is one token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_training_corpus(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None
    )
    for word in ANSWER_WORDS:
        assert tokenizer.encode(word, add_special_tokens=False) == [tokenizer.convert_tokens_to_ids(word)], word
    return tokenizer


def build_tiny_qwen3(out_dir: str | Path, seed: int = 0, hidden_size: int = 32, num_layers: int = 2) -> Path:
    """Save a random-weight Qwen3 causal LM (Qwen3-Reranker's architecture) with its tokenizer."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tokenizer = build_chat_tokenizer()
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=hidden_size // 4,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config)
    with torch.no_grad():  # a wider output layer than init's gives scores that visibly vary
        model.lm_head.weight.normal_(0.0, 0.5)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def build_wordpiece_tokenizer():
    """A BERT-style WordPiece tokenizer (pairs as [CLS] a [SEP] b [SEP]) whose vocabulary is every
    word of the toy corpus plus single characters, written out in sorted order: the same in
    every process (the WordPiece trainer breaks frequency ties differently from run to run)."""
    import string

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    words = {
        word
        for line in _training_corpus()
        for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(line))
    }
    characters = sorted(set(string.ascii_lowercase + string.digits + string.punctuation))
    vocab_list = special + sorted(words | set(characters)) + [f"##{c}" for c in characters]
    vocab = {token: index for index, token in enumerate(dict.fromkeys(vocab_list))}
    backend = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    backend.normalizer = normalizer
    backend.pre_tokenizer = pre_tokenizer
    backend.decoder = decoders.WordPiece()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )


def tiny_bert_config(tokenizer, hidden_size: int, **overrides):
    """A two-layer BERT configuration for ``tokenizer``. Its initializer range is wider than
    BERT's 0.02 so random scores differ visibly between pairs."""
    from transformers import BertConfig

    return BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=hidden_size * 2,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=0.3,
        **overrides,
    )


def build_tiny_cross_encoder(out_dir: str | Path, seed: int = 0, hidden_size: int = 32) -> Path:
    """Save a random-weight BERT with a one-logit head that ``CrossEncoder(out_dir)`` loads."""
    import torch
    from transformers import BertForSequenceClassification

    tokenizer = build_wordpiece_tokenizer()
    config = tiny_bert_config(tokenizer, hidden_size, num_labels=1)
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def build_demo(out_dir: str | Path) -> dict[str, Path]:
    """Everything the offline demo needs under ``out_dir``: train/test data and the two models."""
    out_dir = Path(out_dir)
    paths = {
        "train": write_jsonl_records(out_dir / "data" / "train.jsonl", synthetic_ranking_data(60, 8, seed=1)),
        "test": write_jsonl_records(out_dir / "data" / "test.jsonl", synthetic_ranking_data(30, 8, seed=2)),
        "teacher": out_dir / "models" / "teacher-tiny-qwen3",
        "student": out_dir / "models" / "student-tiny-bert",
    }
    if not (paths["teacher"] / "config.json").exists():
        build_tiny_qwen3(paths["teacher"], hidden_size=64)
    if not (paths["student"] / "config.json").exists():
        build_tiny_cross_encoder(paths["student"])
    return paths


def build_tiny_embedding_model(out_dir: str | Path, seed: int = 0, hidden_size: int = 32) -> Path:
    """Save a random-weight BERT with mean pooling that ``SentenceTransformer(out_dir)`` loads, with
    E5-style prompts (``"query: "`` before queries, ``"passage: "`` before documents) so the prompt
    path of an embedding teacher is exercised."""
    import tempfile

    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import BertModel

    tokenizer = build_wordpiece_tokenizer()
    config = tiny_bert_config(tokenizer, hidden_size)
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as backbone:
        BertModel(config).save_pretrained(backbone)
        tokenizer.save_pretrained(backbone)
        model = SentenceTransformer(
            modules=[Transformer(backbone), Pooling(hidden_size, "mean")],
            prompts={"query": "query: ", "document": "passage: "},
        )
        out_dir = Path(out_dir)
        model.save(str(out_dir))
    return out_dir


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m rerank_distill.toy", description="Build the offline demo's "
                                     "synthetic data (data/train.jsonl, data/test.jsonl) and tiny random-weight "
                                     "models (models/teacher-tiny-qwen3, models/student-tiny-bert) under a folder.")
    parser.add_argument("out_dir", nargs="?", default="output/demo", help="Where to build them (default: output/demo).")
    for name, path in build_demo(parser.parse_args().out_dir).items():
        print(f"{name}: {path}")
