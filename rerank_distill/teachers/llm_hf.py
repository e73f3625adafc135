"""LLM judge on transformers (CPU or GPU): the next-token logits of a few answer tokens
("yes"/"no", or graded label words) after each judge prompt.

Three things make it fast without changing a score beyond float tolerance:
- the prompt prefix a query's documents share (system text, instruction, query) is run once and
  its key/value cache reused for every document of that query;
- only the final hidden state of each prompt goes through the output layer, and only through
  the rows of the answer tokens (the full vocabulary at every position is most of a small
  model's work);
- prompts are batched in length order, right-padded, so batches carry little padding (a causal
  model never attends to the padding that follows a sequence, so no mask is needed).
"""

from __future__ import annotations

import inspect
import logging
from collections import defaultdict

import numpy as np
import torch

from rerank_distill.prompts import JudgePrompt

logger = logging.getLogger(__name__)

# Below this many shared tokens a separate prefix pass costs more than it saves.
MIN_SHARED_PREFIX = 8


def resolve_device(device: str | None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def common_prefix_length(sequences: list[list[int]]) -> int:
    """Length of the longest token prefix all sequences share."""
    first = sequences[0]
    length = min(len(s) for s in sequences)
    for other in sequences[1:]:
        i = 0
        while i < length and other[i] == first[i]:
            i += 1
        length = i
    return length


class HFJudge:
    """Answer-token logits of a causal LM at the last prompt position."""

    def __init__(
        self,
        model_path: str,
        prompt: JudgePrompt,
        answer_token_ids: list[int],
        batch_size: int = 32,
        device: str | None = None,
        dtype: str = "auto",
        prefix_cache: bool = True,
    ):
        from transformers import AutoModelForCausalLM

        self.prompt = prompt
        self.batch_size = batch_size
        self.prefix_cache = prefix_cache
        self.device = resolve_device(device)
        self.model = AutoModelForCausalLM.from_pretrained(
            model_path, dtype=resolve_dtype(dtype, self.device), attn_implementation="sdpa"
        )
        self.model.to(self.device).eval()
        self.decoder = self.model.get_decoder()
        self.cache_kwarg = "cache" if "cache" in inspect.signature(self.decoder.forward).parameters else "past_key_values"
        head = self.model.get_output_embeddings()
        self.answer_ids = list(answer_token_ids)
        self.answer_weight = head.weight[self.answer_ids].detach().float()  # [answers, hidden]
        self.answer_bias = None if getattr(head, "bias", None) is None else head.bias[self.answer_ids].detach().float()
        pad = prompt.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (prompt.tokenizer.eos_token_id or 0)
        self.full_head = False
        self._check_fast_head()

    # The shortcut above skips whatever a model does between its last hidden state and its
    # logits (soft-capping, scaling); compare once with the model's own forward and fall back.
    @torch.inference_mode()
    def _check_fast_head(self) -> None:
        probe, _ = self.prompt.encode(["probe query"], ["probe document"])
        ids = torch.tensor(probe, device=self.device)
        reference = self.model(input_ids=ids).logits[0, -1, self.answer_ids].float()
        hidden = self.decoder(input_ids=ids).last_hidden_state[:, -1]
        fast = self._project(hidden)[0]
        tolerance = 1e-3 if self.model.dtype == torch.float32 else 5e-2
        if not torch.allclose(fast, reference, atol=tolerance * max(1.0, reference.abs().max().item())):
            logger.warning("this model post-processes its logits; using its full output layer (slower)")
            self.full_head = True

    def _project(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = hidden.float() @ self.answer_weight.T
        return logits if self.answer_bias is None else logits + self.answer_bias

    def _last_logits(self, input_ids: torch.Tensor, lengths: torch.Tensor, **cache_args) -> torch.Tensor:
        rows = torch.arange(len(lengths), device=self.device)
        if self.full_head:
            logits = self.model(input_ids=input_ids, **cache_args).logits
            return logits[rows, lengths - 1][:, self.answer_ids].float()
        hidden = self.decoder(input_ids=input_ids, **cache_args).last_hidden_state
        return self._project(hidden[rows, lengths - 1])

    def _padded(self, sequences: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(s) for s in sequences)
        ids = torch.full((len(sequences), width), self.pad_id, dtype=torch.long)
        for row, sequence in enumerate(sequences):
            ids[row, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
        lengths = torch.tensor([len(s) for s in sequences], device=self.device)
        return ids.to(self.device), lengths

    @torch.inference_mode()
    def _score_plain(self, prompts: list[list[int]], out: np.ndarray, indices: list[int], progress) -> None:
        order = sorted(indices, key=lambda i: len(prompts[i]))
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            ids, lengths = self._padded([prompts[i] for i in batch])
            out[batch] = self._last_logits(ids, lengths).cpu().numpy()
            progress(len(batch))

    @torch.inference_mode()
    def _score_shared_prefix(self, prompts: list[list[int]], out: np.ndarray, indices: list[int], shared: int, progress) -> None:
        from transformers import DynamicCache

        prefix = torch.tensor([prompts[indices[0]][:shared]], device=self.device)
        prefix_cache = DynamicCache(config=self.model.config)
        self.decoder(input_ids=prefix, use_cache=True, **{self.cache_kwarg: prefix_cache})
        layers = [(layer.keys, layer.values) for layer in prefix_cache.layers]
        order = sorted(indices, key=lambda i: len(prompts[i]))
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            ids, lengths = self._padded([prompts[i][shared:] for i in batch])
            rows = len(batch)
            cache = DynamicCache(ddp_cache_data=[(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1)) for k, v in layers])
            positions = torch.arange(shared, shared + ids.shape[1], device=self.device).expand(rows, -1)
            cache_args = {self.cache_kwarg: cache, "position_ids": positions, "use_cache": True}
            out[batch] = self._last_logits(ids, lengths, **cache_args).cpu().numpy()
            progress(len(batch))

    def answer_logits(self, queries: list[str], documents: list[str], progress=lambda n: None) -> tuple[np.ndarray, int]:
        """Logits of each answer token at the last position, shape ``[pairs, answers]``, and how
        many prompts were truncated. ``progress(n)`` is called as pairs finish."""
        prompts, truncated = self.prompt.encode(queries, documents)
        out = np.zeros((len(prompts), len(self.answer_ids)), dtype=np.float32)
        by_query: dict[str, list[int]] = defaultdict(list)
        for index, query in enumerate(queries):
            by_query[query].append(index)
        unshared: list[int] = []
        for indices in by_query.values():
            group = [prompts[i] for i in indices]
            # Every prompt keeps at least its last token out of the shared prefix, so it has a
            # position of its own to read the answer logits from.
            shared = min(common_prefix_length(group), min(len(p) for p in group) - 1)
            if self.prefix_cache and len(indices) > 1 and shared >= MIN_SHARED_PREFIX:
                self._score_shared_prefix(prompts, out, indices, shared, progress)
            else:
                unshared.extend(indices)
        if unshared:
            self._score_plain(prompts, out, unshared, progress)
        return out, truncated
