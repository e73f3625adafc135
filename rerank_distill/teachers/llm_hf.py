"""LLM judge on transformers (CPU or GPU): the next-token logits of a few answer tokens
("yes"/"no", or graded label words) after each judge prompt.

Three things make it fast without changing a score beyond float tolerance:
- the prompt prefix a query's documents share (system text, instruction, query) is run once and
  its key/value cache reused for every document of that query, and the part of it all queries
  share (system text, instruction) once for a wave of queries;
- only the final hidden state of each prompt goes through the output layer, and only through
  the rows of the answer tokens (the full vocabulary at every position is most of a small
  model's work);
- prompts are batched in length order, right-padded, so batches carry little padding (a causal
  model never attends to the padding that follows a sequence, so no mask is needed); a batch
  closes early rather than pad the long tail of a wave's lengths.
"""

from __future__ import annotations

import inspect
import logging
from collections import defaultdict

import numpy as np
import torch

from rerank_distill.batching import length_batches
from rerank_distill.errors import MODEL_LOAD_ERRORS, InputError, first_line
from rerank_distill.prompts import JudgePrompt

logger = logging.getLogger(__name__)

# Below this many shared tokens a separate prefix pass costs more than it saves.
MIN_SHARED_PREFIX = 8
# Pairs per wave, in batches: enough for full, length-sorted batches across queries.
WAVE_PAIRS_PER_BATCH = 8


def resolve_device(device: str | None) -> torch.device:
    """``device`` as given, or the GPU when there is one, else the CPU."""
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """The torch dtype for a --dtype name; ``auto`` is bfloat16 on a GPU and float32 elsewhere."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def dtype_name(dtype: str, device: str | None) -> str:
    """``dtype`` with ``auto`` resolved for this machine (``bfloat16`` on a GPU, ``float32`` on a
    CPU). Teachers record this name, so a run begun on a CPU is not resumed in bf16 on a GPU."""
    return str(resolve_dtype(dtype, resolve_device(device))).removeprefix("torch.")


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
        try:
            self.model = AutoModelForCausalLM.from_pretrained(
                model_path, dtype=resolve_dtype(dtype, self.device), attn_implementation="sdpa"
            )
        except MODEL_LOAD_ERRORS as error:
            raise InputError(f"cannot load a causal LM judge from '{model_path}' ({first_line(error)})") from None
        # The prefix cache's own attention mask and key/value copies see the whole prompt; a model with
        # sliding-window layers (Mistral, Gemma) sees a window only, so a prompt longer than it is scored
        # without the cache, as the model's own forward scores it.
        window = getattr(self.model.config, "sliding_window", None)
        if prefix_cache and isinstance(window, int) and window < prompt.max_length:
            logger.info("%s attends within a sliding window of %d tokens: no prefix cache", model_path, window)
            self.prefix_cache = False
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
    def _prefix_states(self, prefixes: list[list[int]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer, the keys and values of every prefix, ``[prefixes, kv_heads, longest, head_dim]``,
        each left-padded to the longest prefix. The part all prefixes share (the system text and
        instruction, about half of each) runs once; the rest runs in length-sorted, right-padded
        batches on top of it (padding after a sequence cannot touch it; see length_batches). Each
        prefix is copied into place once, so a batch of documents later gathers its rows'
        prefixes with one index_select per layer."""
        from transformers import DynamicCache

        longest = max(len(prefix) for prefix in prefixes)
        # Every prefix keeps at least one token of its own, so each batch below has input.
        shared = min(common_prefix_length(prefixes), min(len(prefix) for prefix in prefixes) - 1)
        shared_layers = []
        if len(prefixes) > 1 and shared >= MIN_SHARED_PREFIX:
            cache = DynamicCache(config=self.model.config)
            ids = torch.tensor([prefixes[0][:shared]], device=self.device)
            self.decoder(input_ids=ids, use_cache=True, **{self.cache_kwarg: cache})
            shared_layers = [(layer.keys, layer.values) for layer in cache.layers]
        else:
            shared = 0
        layers: list[tuple[torch.Tensor, torch.Tensor]] = []
        order = sorted(range(len(prefixes)), key=lambda i: len(prefixes[i]))
        for batch_rows in length_batches([len(prefixes[i]) - shared for i in order], self.batch_size):
            batch = order[batch_rows]
            ids, lengths = self._padded([prefixes[i][shared:] for i in batch])
            if shared_layers:
                expanded = [(keys.expand(len(batch), -1, -1, -1), values.expand(len(batch), -1, -1, -1))
                            for keys, values in shared_layers]  # fmt: skip
                cache = DynamicCache(ddp_cache_data=expanded)
            else:
                cache = DynamicCache(config=self.model.config)
            positions = shared + torch.arange(ids.shape[1], device=self.device).expand(len(batch), -1)
            self.decoder(input_ids=ids, position_ids=positions, use_cache=True, **{self.cache_kwarg: cache})
            if not layers:
                layers = [
                    tuple(t.new_zeros(len(prefixes), t.shape[1], longest, t.shape[-1]) for t in (layer.keys, layer.values))
                    for layer in cache.layers
                ]
            for row, index in enumerate(batch):
                length = shared + int(lengths[row])
                for (keys, values), layer in zip(layers, cache.layers):
                    keys[index, :, longest - length :] = layer.keys[row, :, :length]
                    values[index, :, longest - length :] = layer.values[row, :, :length]
        return layers

    @torch.inference_mode()
    def _score_rows(
        self, suffixes: list[list[int]], slots: list[int], prefix_lengths: list[int], prefix_states: list | None
    ) -> torch.Tensor:
        """Answer logits for rows that each continue their own cached prefix: row r continues
        prefix ``slots[r]`` of ``prefix_states`` (see _prefix_states), ``prefix_lengths[r]`` tokens
        long; a row with length 0 is a whole prompt.

        The prefixes stay left-padded in one cache, and a mask lets each row see its own prefix and
        its own earlier tokens only; position ids continue each row's prefix.
        """
        from transformers import DynamicCache

        ids, lengths = self._padded(suffixes)
        rows, width = ids.shape
        longest_prefix = max(prefix_lengths)
        prefix_lengths_t = torch.tensor(prefix_lengths, device=self.device)
        positions = prefix_lengths_t[:, None] + torch.arange(width, device=self.device)[None, :]
        if longest_prefix == 0:
            return self._last_logits(ids, lengths, position_ids=positions)
        mask = torch.zeros(rows, 1, width, longest_prefix + width, dtype=torch.bool, device=self.device)
        mask[:, 0, :, longest_prefix:] = torch.ones(width, width, dtype=torch.bool, device=self.device).tril()
        columns = torch.arange(longest_prefix, device=self.device)
        mask[:, 0, :, :longest_prefix] = (columns[None, :] >= longest_prefix - prefix_lengths_t[:, None])[:, None, :]
        # A row without a prefix borrows any slot: the mask hides it.
        slots_t = torch.tensor(slots, device=self.device)
        kept = slice(prefix_states[0][0].shape[2] - longest_prefix, None)
        layers = [(keys.index_select(0, slots_t)[:, :, kept], values.index_select(0, slots_t)[:, :, kept])
                  for keys, values in prefix_states]  # fmt: skip
        cache = DynamicCache(ddp_cache_data=layers)
        return self._last_logits(
            ids, lengths, attention_mask=mask, position_ids=positions, use_cache=True, **{self.cache_kwarg: cache}
        )

    def _score_wave(self, prompts: list[list[int]], groups: list[list[int]], out: np.ndarray, progress) -> None:
        """Score a few queries' prompts: each query's shared prefix once, then all their
        documents in one length-sorted order, so batches are full and carry little padding."""
        shared = []
        for group in groups:
            sequences = [prompts[i] for i in group]
            # Every prompt keeps at least its last token out of the prefix, to read the answer from.
            length = min(common_prefix_length(sequences), min(len(s) for s in sequences) - 1)
            worth_it = self.prefix_cache and len(group) > 1 and length >= MIN_SHARED_PREFIX
            shared.append(length if worth_it else 0)
        with_prefix = [g for g, length in enumerate(shared) if length]
        slot = {g: number for number, g in enumerate(with_prefix)}
        prefix_states = self._prefix_states([prompts[groups[g][0]][: shared[g]] for g in with_prefix]) if with_prefix else None
        rows = [(index, g) for g, group in enumerate(groups) for index in group]
        rows.sort(key=lambda row: len(prompts[row[0]]) - shared[row[1]])
        for batch_rows in length_batches([len(prompts[i]) - shared[g] for i, g in rows], self.batch_size):
            batch = rows[batch_rows]
            logits = self._score_rows(
                [prompts[i][shared[g] :] for i, g in batch], [slot.get(g, 0) for _, g in batch],
                [shared[g] for _, g in batch], prefix_states,
            )  # fmt: skip
            out[[i for i, _ in batch]] = logits.cpu().numpy()
            progress(len(batch))

    def answer_logits(self, queries: list[str], documents: list[str], progress=lambda n: None) -> tuple[np.ndarray, int]:
        """Logits of each answer token at the last position, shape ``[pairs, answers]``, and how
        many prompts were truncated. ``progress(n)`` is called as pairs finish."""
        prompts, truncated = self.prompt.encode(queries, documents)
        out = np.zeros((len(prompts), len(self.answer_ids)), dtype=np.float32)
        by_query: dict[str, list[int]] = defaultdict(list)
        for index, query in enumerate(queries):
            by_query[query].append(index)
        # A wave of queries shares the length-sorted batching; its size bounds the prefix
        # key/value states held at once.
        wave: list[list[int]] = []
        for group in by_query.values():
            wave.append(group)
            if sum(len(g) for g in wave) >= WAVE_PAIRS_PER_BATCH * self.batch_size:
                self._score_wave(prompts, wave, out, progress)
                wave = []
        if wave:
            self._score_wave(prompts, wave, out, progress)
        return out, truncated
