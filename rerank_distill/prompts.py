"""The LLM-judge prompt: Qwen3-Reranker's official chat layout, tokenized so that only the
query/document text is ever truncated.

Layout (from the Qwen3-Reranker model card)::

    <|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n            <- prefix
    <Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}      <- body (truncated)
    <|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n          <- suffix

The model's next-token logits after the suffix hold the judgement ("yes"/"no", or a graded label).
Chat-marker text inside the body (a document quoting a chat template) is tokenized as text, so the
markers above are the only ones in the prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

from rerank_distill.errors import InputError
from rerank_distill.long_texts import clip_long_texts

YES_NO_SYSTEM = (
    'Judge whether the Document meets the requirements based on the Query and the Instruct provided. '
    'Note that the answer can only be "yes" or "no".'
)
DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


def labels_system(label_words: list[str]) -> str:
    """System text for a judge that answers with one graded label word."""
    quoted = ", ".join(f'"{word}"' for word in label_words)
    return (
        "Judge how well the Document meets the requirements based on the Query and the Instruct provided. "
        f"Note that the answer can only be one of {quoted}."
    )


def prompt_prefix(system: str) -> str:
    """The chat-template text before the user's message: the system turn, then the user turn opened."""
    return f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n"


def format_body(instruction: str, query: str, document: str) -> str:
    """The user message of the Qwen3-Reranker prompt (the part whose query and document may be cut)."""
    return f"<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {document}"


def single_token_id(tokenizer, word: str, model_path: str = "the teacher", hint: str = "") -> int:
    """The vocabulary id of ``word``; InputError (ending with ``hint``) if the tokenizer does not
    keep it as one token."""
    token_id = tokenizer.convert_tokens_to_ids(word)
    pieces = tokenizer.encode(word, add_special_tokens=False)
    if token_id is not None and token_id != tokenizer.unk_token_id and pieces == [token_id]:
        return token_id
    if len(pieces) != 1:
        problem = f"splits the answer word '{word}' into {len(pieces)} tokens {pieces}"
    elif token_id is None or token_id == tokenizer.unk_token_id:
        problem = (f"encodes the answer word '{word}' as one token, {pieces[0]}, but has no vocabulary entry '{word}' "
                   f"(it spells that token's {tokenizer.convert_ids_to_tokens(pieces[0])!r}: byte-level, say)")
    else:  # one token, but another than the entry spelled so (a byte-level or space-prefixed form)
        problem = f"encodes the answer word '{word}' as token {pieces[0]}, not as its vocabulary entry {token_id}"
    raise InputError(
        f"the tokenizer of {model_path} {problem}; every answer word must be exactly one token, whose vocabulary "
        "entry is spelled as the word (vLLM's classifier takes the words by their entries). Choose other words "
        f"(flags --label_words / the model's own yes/no) or another teacher.{hint}"
    )


@dataclass
class JudgePrompt:
    """Builds token ids for (query, document) pairs in the judge layout above."""

    tokenizer: object
    system: str = YES_NO_SYSTEM
    instruction: str = DEFAULT_INSTRUCTION
    max_length: int = 8192

    def __post_init__(self) -> None:
        self.prefix_ids = self.tokenizer.encode(prompt_prefix(self.system), add_special_tokens=False)
        self.suffix_ids = self.tokenizer.encode(SUFFIX, add_special_tokens=False)
        self.body_budget = self.max_length - len(self.prefix_ids) - len(self.suffix_ids)
        # the instruction and the <Instruct>/<Query>/<Document> tags are cut like text, so they must fit too
        fixed = len(self.prefix_ids) + len(self.suffix_ids) + len(self._text_ids(format_body(self.instruction, "", "")))
        if self.max_length - fixed < 16:
            raise InputError(
                f"--max_length {self.max_length} leaves {max(self.max_length - fixed, 0)} tokens for the query and "
                f"document after the {fixed} tokens of the prompt's fixed parts (system text, instruction, tags), "
                f"under the 16 they need at least: raise it to {fixed + 16} or more, or shorten --instruction"
            )

    def encode(self, queries: list[str], documents: list[str]) -> tuple[list[list[int]], int]:
        """Token ids of each full prompt, and how many bodies were cut to ``max_length``.

        The body is tokenized as one string and cut from its end, as the official code does
        (``truncation='longest_first'`` on a single sequence), so a long document loses its tail.
        Only where that would leave the document fewer than ``min(its tokens, a quarter of the
        room)`` (a very long query) is the query's tail cut first, by what it must (or a few tokens
        more, where the cut text tokenizes otherwise: _cut_query): cut from the end alone, the prompt
        would lose the "<Document>:" line and the document, and every candidate of the query would get
        the same score. A text far longer than the room is cut to a prefix first (clip_long_texts),
        which changes no token kept.
        """
        queries = clip_long_texts(self.tokenizer, queries, self.body_budget)
        documents = clip_long_texts(self.tokenizer, documents, self.body_budget)
        body_ids = self._text_ids([format_body(self.instruction, q, d) for q, d in zip(queries, documents)])
        long_rows = [row for row, ids in enumerate(body_ids) if len(ids) > self.body_budget]
        long_documents = self._text_ids([documents[row] for row in long_rows]) if long_rows else []
        document_length = {row: len(ids) for row, ids in zip(long_rows, long_documents)}
        prompts, truncated = [], 0
        for row, (query, document, ids) in enumerate(zip(queries, documents, body_ids)):
            if len(ids) > self.body_budget:
                truncated += 1
                document_tokens = document_length[row] + 1  # (+1: the space before it, a token of its own or not)
                excess = len(ids) - document_tokens + min(document_tokens, self.body_budget // 4) - self.body_budget
                if excess > 0:
                    ids = self._cut_query(query, document, excess, document_tokens)
                ids = ids[: self.body_budget]
            prompts.append(self.prefix_ids + ids + self.suffix_ids)
        return prompts, truncated

    def _cut_query(self, query: str, document: str, excess: int, document_tokens: int) -> list[int]:
        """Body token ids with the query's tail cut by at least ``excess`` tokens, more where its
        cut falls inside a character that is several tokens (byte-level BPE: an emoji or a CJK
        character), until the document keeps its share of the room."""
        query_tokens = self._tokens(query)
        kept_tokens = len(query_tokens) - excess
        while True:
            cut_at_character = query_tokens[kept_tokens - 1][1] if kept_tokens > 0 else 0
            body = format_body(self.instruction, query[:cut_at_character], document)
            ids = self._text_ids(body)
            over = len(ids) - document_tokens + min(document_tokens, self.body_budget // 4) - self.body_budget
            if over <= 0 or cut_at_character == 0:
                return ids
            kept_tokens -= over
            while kept_tokens > 0 and query_tokens[kept_tokens - 1][1] >= cut_at_character:  # one character's tokens
                kept_tokens -= 1

    def _tokens(self, text: str) -> list[tuple[int, int]]:
        """The (start, end) character span of each of ``text``'s tokens."""
        return self.tokenizer(text, add_special_tokens=False, split_special_tokens=True,
                              return_offsets_mapping=True)["offset_mapping"]

    def _text_ids(self, texts):
        """Token ids of text the user gave (a body, a document: one string or a list). Marker
        text in it ("<|im_end|>", "<|im_start|>") is read as text, not as the chat markers: a
        document quoting a chat template would otherwise close the user turn and open a
        fake answer of its own inside the prompt."""
        return self.tokenizer(texts, add_special_tokens=False, split_special_tokens=True,
                              return_attention_mask=False)["input_ids"]
