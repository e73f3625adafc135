"""Cutting very long texts before a tokenizer sees them whole.

A model reads at most ``max_length`` tokens of a text, but a tokenizer asked to truncate still
tokenizes all of it first: one 20 MB document (a scraped book, a log dump) cost stage 1 4.5 GB
and 100 s, train.py 15.7 GB and 10 minutes (bench/long_document.py). A text is cut here to a
prefix that still holds more tokens than the model reads, so what the model sees, and whether it
counts as truncated, is the same as from the whole text.
"""

from __future__ import annotations

from collections.abc import Sequence

# Tokens kept beyond the limit, so a word split by the character cut (whose tokens may differ from
# the whole word's) lies far past any token the model reads.
MARGIN_TOKENS = 64
# Texts up to this many characters per token of the limit are never cut: whatever they hold costs
# little to tokenize, and most texts end here after one length check.
CHARACTERS_PER_TOKEN = 16


def clip_long_texts(tokenizer, texts: Sequence[str], max_tokens: int | None) -> list[str]:
    """``texts`` where each one that holds far more than ``max_tokens`` tokens is replaced by a
    prefix of it that still holds more than ``max_tokens + MARGIN_TOKENS``; the others as they are.

    A prefix is tried at ``CHARACTERS_PER_TOKEN`` characters a token of the limit, then four times
    as many, until it holds enough tokens or reaches the text's end (a text of long runs of
    whitespace or of very long tokens), and is cut after whitespace where it can be, so no word is
    split. Each distinct long text is tokenized once.
    """
    texts = list(texts)
    if max_tokens is None:
        return texts
    characters = CHARACTERS_PER_TOKEN * (max_tokens + MARGIN_TOKENS)
    pending = {text for text in texts if len(text) > characters}
    clipped: dict[str, str] = {}
    while pending:
        prefixes = {text: _prefix(text, characters) for text in pending}
        counts = tokenizer(list(prefixes.values()), add_special_tokens=False, return_attention_mask=False,
                           return_token_type_ids=False, verbose=False)["input_ids"]  # fmt: skip
        for (text, prefix), ids in zip(prefixes.items(), counts):
            if len(ids) > max_tokens + MARGIN_TOKENS:
                clipped[text] = prefix
        characters *= 4
        pending = {text for text in pending if text not in clipped and len(text) > characters}
    return [clipped.get(text, text) for text in texts] if clipped else texts


def _prefix(text: str, characters: int) -> str:
    """The first ``characters`` characters of ``text``, ended at its last space or line break in
    their second half where there is one."""
    cut = max(text.rfind(" ", characters // 2, characters), text.rfind("\n", characters // 2, characters))
    return text[: cut if cut > 0 else characters]
