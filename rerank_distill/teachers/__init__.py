"""Teachers: models that give every (query, passage) pair a score on a logit scale.

``build_teacher`` turns the stage-1 flags into one; every teacher has ``name``, ``config``
(what makes its scores what they are, for resuming safely) and
``score(queries, passages, progress) -> TeacherScores``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np


@dataclass
class TeacherScores:
    """Scores for a list of pairs, in the order given."""

    scores: np.ndarray  # float64, one per pair: the teacher's logit-scale score
    fields: dict[str, list] = field(default_factory=dict)  # extra per-pair output fields
    truncated: int = 0  # inputs cut to --max_length


class Teacher(Protocol):
    name: str
    config: dict

    def score(self, queries: list[str], passages: list[str], progress: Callable[[int], None]) -> TeacherScores: ...


def yes_minus_no(answer_logits: np.ndarray) -> np.ndarray:
    """logit("yes") - logit("no") from ``[pairs, 2]`` logits ordered (yes, no); equal to
    log P(yes) - log P(no) under the softmax over the two tokens."""
    return answer_logits[:, 0].astype(np.float64) - answer_logits[:, 1].astype(np.float64)


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def vllm_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def choose_backend(backend: str) -> str:
    """``auto`` -> ``vllm`` when vLLM is installed and a CUDA GPU is present, else ``hf``."""
    from rerank_distill.errors import InputError

    if backend == "auto":
        return "vllm" if vllm_installed() and cuda_available() else "hf"
    if backend == "vllm" and not vllm_installed():
        raise InputError("--backend vllm needs vLLM: pip install -r requirements-gpu.txt (a CUDA GPU is required)")
    if backend == "vllm" and not cuda_available():
        raise InputError("--backend vllm needs a CUDA GPU; use --backend hf on this machine")
    if backend not in ("vllm", "hf"):
        raise InputError(f"unknown --backend '{backend}'; choose auto, vllm or hf")
    return backend


TEACHER_TYPES = ("llm_yesno",)


def build_teacher(teacher_type: str, model_path: str, backend: str, options) -> Teacher:
    """A teacher of the given type. ``options`` is stage 1's argument dataclass (instruction,
    max_length, batch_size, device, dtype, prefix_cache, vLLM parallelism)."""
    from rerank_distill.errors import InputError

    if teacher_type == "llm_yesno":
        from rerank_distill.teachers.llm_judge import YesNoJudge

        return YesNoJudge(
            model_path,
            backend,
            instruction=options.instruction,
            max_length=options.max_length,
            batch_size=options.batch_size,
            device=options.device,
            dtype=options.dtype,
            prefix_cache=options.prefix_cache,
            vllm_options={
                "tensor_parallel_size": options.tensor_parallel_size,
                "data_parallel_size": options.data_parallel_size,
                "gpu_memory_utilization": options.gpu_memory_utilization,
            },
        )
    raise InputError(f"unknown --teacher_type '{teacher_type}'; choose one of {', '.join(TEACHER_TYPES)}")
