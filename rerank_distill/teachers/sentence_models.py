"""Loading sentence-transformers models (CrossEncoder, SentenceTransformer) as teachers: the
device and dtype flags, the input length limit, and counting the inputs that limit cuts."""

from __future__ import annotations

from rerank_distill.errors import MODEL_LOAD_ERRORS, InputError, first_line


def load_model(model_class, model_path: str, device: str | None, dtype: str, **kwargs):
    """``model_class(model_path)`` on ``device`` in ``dtype`` (auto: bfloat16 on a GPU, float32 on
    the CPU); InputError when the folder holds no such model."""
    from rerank_distill.teachers.llm_hf import resolve_device, resolve_dtype

    torch_device = resolve_device(device)
    try:
        model = model_class(
            model_path,
            device=str(torch_device),
            model_kwargs={"dtype": resolve_dtype(dtype, torch_device)},
            **kwargs,
        )
    except MODEL_LOAD_ERRORS as error:
        raise InputError(f"cannot load a {model_class.__name__} from '{model_path}' ({first_line(error)})") from None
    refuse_tokenizer_without_vocabulary(model.tokenizer, model_path)
    return model


def refuse_tokenizer_without_vocabulary(tokenizer, model_path: str) -> None:
    """InputError where ``tokenizer`` knows its special tokens only: what transformers builds, with no
    error, for a model folder that lacks its tokenizer files (``save_pretrained`` of the model alone).
    Every word would become the unknown token, and the scores noise."""
    if len(tokenizer) <= len(set(tokenizer.all_special_ids)):
        raise InputError(f"'{model_path}' has no tokenizer files (tokenizer.json, tokenizer_config.json, vocab.txt "
                         "or the like), so every word would be read as unknown: copy in the tokenizer files of the "
                         "model it was made from")


def limit_length(model, max_length: int, pairs: bool = True) -> int:
    """Set and return the model's input limit in tokens: ``max_length`` or the model's own limit
    (its tokenizer's, capped at its position embeddings), whichever is smaller. InputError where
    ``max_length`` leaves no token for text beside the special tokens of an input (a pair, or one
    text where not ``pairs``): the tokenizer would not cut such inputs at all."""
    special = model.tokenizer.num_special_tokens_to_add(pair=pairs)
    if max_length <= special:
        raise InputError(f"--max_length {max_length} leaves no room for text: the special tokens of "
                         f"{'a pair' if pairs else 'an input'} take {special}; give a larger one")
    own = model.max_seq_length
    limit = max_length if own is None else min(max_length, own)
    model.max_seq_length = limit
    return limit


def token_lengths(tokenizer, texts: list[str], pairs_with: list[str] | None = None) -> list[int]:
    """Tokens in each text (or text pair) before any truncation, special tokens included."""
    encoded = tokenizer(texts, pairs_with, add_special_tokens=True, return_attention_mask=False, verbose=False)
    return [len(ids) for ids in encoded["input_ids"]]


def too_long(tokenizer, texts: list[str], pairs_with: list[str] | None = None, max_length: int = 512) -> list[bool]:
    """Whether each text (or text pair) is longer than ``max_length`` tokens, special tokens included."""
    return [length > max_length for length in token_lengths(tokenizer, texts, pairs_with)]
