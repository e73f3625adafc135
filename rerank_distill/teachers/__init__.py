"""Teachers: models that give every (query, passage) pair a score.

``build_teachers`` turns the stage-1 flags into a list of them, one per ``--model_path``; every
teacher has ``name``, ``config`` (what makes its scores what they are, for resuming safely) and
``score(queries, passages, progress) -> TeacherScores``. One module per kind:

- ``llm_judge``: an LLM asked the Qwen3-Reranker question (``llm_yesno``: logit(yes) - logit(no))
  or asked for a graded label word (``llm_labels``: expected grade), on transformers or vLLM;
- ``cross_encoder``: a sentence-transformers CrossEncoder's raw output logit;
- ``embedding``: a SentenceTransformer's cosine similarity of query and document, scaled.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from rerank_distill.errors import InputError
from rerank_distill.formats import label_word_grades


@dataclass
class TeacherScores:
    """Scores for a list of pairs, in the order given."""

    scores: np.ndarray  # float64, one per pair: the teacher's score (logit, expected grade or scaled cosine)
    fields: dict[str, list] = field(default_factory=dict)  # extra per-pair output fields
    truncated: int = 0  # inputs cut to --max_length


class Teacher(Protocol):
    """What stage 1 needs of a teacher, whatever its kind."""

    name: str  # the key of its score in a several-teacher file: the model path or hub id as given, its last part
    # What makes its scores what they are: a resumed or finished output must match it key for key, so a
    # new key makes every earlier output differ; add one only where its value is not the old default.
    config: dict

    def load(self) -> None:
        """Load the weights now where they would load on first use (an LLM judge's): generate_logits.py
        calls it before it writes or deletes anything, so a load error leaves every output as it was."""
        ...

    def score(self, queries: list[str], passages: list[str], progress: Callable[[int], None]) -> TeacherScores:
        """One score per (queries[i], passages[i]) pair, in that order; ``progress(n)`` after n pairs."""
        ...


def yes_minus_no(answer_logits: np.ndarray) -> np.ndarray:
    """logit("yes") - logit("no") from ``[pairs, 2]`` logits ordered (yes, no); equal to
    log P(yes) - log P(no) under the softmax over the two tokens."""
    return answer_logits[:, 0].astype(np.float64) - answer_logits[:, 1].astype(np.float64)


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def check_device(device: str | None, data_parallel_size: int = 1) -> None:
    """InputError where --device names no device torch knows, a GPU this machine does not have
    (found here, before any input is read, not as a traceback once the teacher loads), or one GPU
    for ``data_parallel_size`` replicas that each get GPUs of their own."""
    if device is None:
        return
    import torch

    try:
        wanted = torch.device(device)
    except RuntimeError:
        raise InputError(f"--device {device!r} is not a device name; pass cpu, cuda or cuda:N") from None
    if wanted.type != "cuda":
        return
    if wanted.index is not None and data_parallel_size > 1:  # each replica sees its own GPUs from cuda:0 on
        raise InputError(f"--device {device} names one GPU, but --data_parallel_size {data_parallel_size} gives each "
                         "replica GPUs of its own: pass --device cuda, and choose the GPUs with CUDA_VISIBLE_DEVICES")
    count = torch.cuda.device_count() if cuda_available() else 0
    if count == 0:
        raise InputError(f"--device {device}: no CUDA GPU is visible here; pass --device cpu, or leave --device out")
    if wanted.index is not None and wanted.index >= count:
        raise InputError(f"--device {device}: only {count} CUDA GPU(s) are visible here (cuda:0 to cuda:{count - 1})")


def vllm_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


# The oldest vLLM whose API llm_vllm.py uses: LLM(runner="pooling") and PoolingParams(use_activation=False)
# for the raw logit (0.11.0 and before named it otherwise and would fail with a bare TypeError).
# requirements-gpu.txt asks for more (0.33, the release the path was checked against); versions in
# between have the same API, so a user who has one installed is not stopped.
OLDEST_VLLM = "0.11.1"


def check_vllm_version() -> None:
    """InputError where the installed vLLM is older than OLDEST_VLLM (release candidates and
    development builds of that release count as it; a build without package metadata passes)."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.version import InvalidVersion, Version

    try:
        installed = version("vllm")
        too_old = Version(installed).release < Version(OLDEST_VLLM).release
    except (PackageNotFoundError, InvalidVersion):  # a source checkout: its API is the user's to know
        return
    if too_old:
        raise InputError(f"vLLM {installed} is older than {OLDEST_VLLM}, the oldest whose pooling API this backend "
                         "uses: pip install -r requirements-gpu.txt to upgrade, or pass --backend hf")


def choose_backend(backend: str) -> str:
    """``auto`` -> ``vllm`` when vLLM is installed and a CUDA GPU is present, else ``hf``. A vLLM
    older than OLDEST_VLLM stops the run, with ``auto`` too: quietly scoring on the slower backend
    instead would hide a broken install for hours."""
    if backend not in ("auto", "vllm", "hf"):
        raise InputError(f"unknown --backend '{backend}'; choose auto, vllm or hf")
    if backend == "auto":
        backend = "vllm" if vllm_installed() and cuda_available() else "hf"
    elif backend == "vllm" and not vllm_installed():
        raise InputError("--backend vllm needs vLLM: pip install -r requirements-gpu.txt (a CUDA GPU is required)")
    elif backend == "vllm" and not cuda_available():
        raise InputError("--backend vllm needs a CUDA GPU; use --backend hf on this machine")
    if backend == "vllm":
        check_vllm_version()
    return backend


@dataclass(frozen=True)
class TeacherKind:
    """What stage 1 knows of a --teacher_type before it loads anything."""

    checkpoints: tuple[str, ...]  # the model kinds (see model_kind) it can load, the one it needs first
    flags: tuple[str, ...] = ()  # the generate_logits.py flags only some teacher types read, those it reads
    llm: bool = False  # an LLM judge: runs on --backend, loads its weights on first use


_JUDGE_FLAGS = ("instruction", "backend", "prefix_cache", "gpu_memory_utilization")
# (--tensor_parallel_size is read by any teacher: it sizes the GPU groups of --data_parallel_size)
TEACHER_KINDS = {
    "llm_yesno": TeacherKind(("llm",), _JUDGE_FLAGS, llm=True),
    "llm_labels": TeacherKind(("llm",), (*_JUDGE_FLAGS, "label_words", "label_grades"), llm=True),
    "cross_encoder": TeacherKind(("cross_encoder",)),
    # embedding LLMs such as Qwen3-Embedding keep an LM's config
    "embedding": TeacherKind(("embedding", "llm"), ("score_scale", "query_prompt")),
}
TEACHER_TYPES = tuple(TEACHER_KINDS)
LLM_TEACHER_TYPES = tuple(name for name, kind in TEACHER_KINDS.items() if kind.llm)
DEFAULT_TEACHER_TYPE = "llm_yesno"


def teacher_types_for(model_paths: list[str], teacher_types: list[str] | None) -> list[str]:
    """The teacher type of each model: no type means ``llm_yesno`` for all, one type applies to
    every model, several are matched to the models in order."""
    types = list(teacher_types or [DEFAULT_TEACHER_TYPE])
    for teacher_type in types:
        if teacher_type not in TEACHER_TYPES:
            raise InputError(f"unknown --teacher_type '{teacher_type}'; choose from {', '.join(TEACHER_TYPES)}")
    if len(types) == 1:
        return types * len(model_paths)
    if len(types) != len(model_paths):
        raise InputError(
            f"--teacher_type has {len(types)} values for {len(model_paths)} --model_path values; give one type "
            "for every model, or one type per model in the same order"
        )
    return types


def check_teacher_options(teacher_types: list[str], options) -> None:
    """Refuse flag values the chosen teacher types cannot use, before any input is read; fill in
    ``options.label_grades`` where it is None (see label_word_grades)."""
    if "llm_labels" in teacher_types:
        options.label_grades = list(label_word_grades(options.label_words, options.label_grades).values())
    if "embedding" in teacher_types and not 0 < options.score_scale < math.inf:
        raise InputError(f"--score_scale must be positive and finite, got {options.score_scale}")


def unread_teacher_flags(teacher_types: list[str]) -> dict[str, str]:
    """The generate_logits.py flags no teacher of these types reads, each with why (flag -> reason)."""
    read = {flag for kind in teacher_types for flag in TEACHER_KINDS[kind].flags}
    unread = {}
    for flag in dict.fromkeys(flag for kind in TEACHER_KINDS.values() for flag in kind.flags):
        if flag not in read:
            readers = [name for name, kind in TEACHER_KINDS.items() if flag in kind.flags]
            unread[flag] = f"only {' and '.join(readers)} teachers read it, not {', '.join(teacher_types)}"
    return unread


def unread_backend_flags(backend: str, data_parallel_size: int, teacher_types: tuple[str, ...] | list[str] = ()
                         ) -> dict[str, str]:
    """The generate_logits.py flags the chosen ``backend`` (vllm, hf, or sentence-transformers for
    teachers that are no LLM judge) never reads with these ``teacher_types``, each with why; those no
    teacher type reads are unread_teacher_flags'."""
    unread = {}
    if backend == "vllm" and teacher_types and all(kind in LLM_TEACHER_TYPES for kind in teacher_types):
        # (a cross_encoder or embedding teacher beside the judges still runs where --device says)
        unread["device"] = ("the vllm backend places the teacher itself, on the GPUs CUDA_VISIBLE_DEVICES shows "
                            "(CUDA_VISIBLE_DEVICES=1 for the second GPU); --backend hf runs on --device")
    if backend != "vllm" and data_parallel_size == 1:  # (with replicas it sizes each one's GPU group)
        unread["tensor_parallel_size"] = f"only the vllm backend splits a teacher over GPUs, and this run uses {backend}"
    if backend == "hf":
        unread["gpu_memory_utilization"] = "only the vllm backend reads it, and this run uses hf"
    if backend == "vllm":
        unread["prefix_cache"] = "only the hf backend reads it (vLLM's own prefix cache is always on)"
    return unread


def teacher_name(model_path: str) -> str:
    """A teacher's name: the last part of its model's path or hub id (the key of its score among
    several teachers' ``teacher_scores``)."""
    return os.path.basename(os.path.normpath(model_path))


def unique_names(names: list[str]) -> list[str]:
    """The names with repeats numbered from the second on: ``[m, m, x] -> [m, m-2, x]``."""
    taken: set[str] = set()
    out = []
    for name in names:
        candidate, number = name, 1
        while candidate in taken:
            number += 1
            candidate = f"{name}-{number}"
        taken.add(candidate)
        out.append(candidate)
    return out


GENERATIVE_HEADS = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")
# An encoder as pre-trained (bert-base-uncased: BertForMaskedLM) has no relevance head, so a
# CrossEncoder built on it adds a random one; sentence-transformers drops the head and pools the encoder.
PRETRAINING_HEADS = ("ForMaskedLM", "ForPreTraining")


def model_config(model_path: str, name: str = "config.json") -> dict:
    """A model folder's JSON config file ``name``, or {} where it has none (a GGUF file, say)."""
    try:
        config = json.loads((Path(model_path) / name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def model_kind(model_path: str) -> str | None:
    """What a model folder plainly holds, by its config files: "llm" (a generative head),
    "cross_encoder" (a classification head, or sentence-transformers' CrossEncoder), "embedding"
    (a sentence-transformers embedding model or a bare encoder, its pre-training head or not), or
    None where they do not tell."""
    architectures = model_config(model_path).get("architectures") or []
    sentence_transformers_type = model_config(model_path, "config_sentence_transformers.json").get("model_type")
    if sentence_transformers_type == "CrossEncoder" or any(a.endswith("ForSequenceClassification") for a in architectures):
        return "cross_encoder"
    if any(a.endswith(GENERATIVE_HEADS) for a in architectures):
        return "llm"
    if architectures and (sentence_transformers_type == "SentenceTransformer" or (Path(model_path) / "modules.json").exists()
                          or all(a.endswith(("Model", *PRETRAINING_HEADS)) for a in architectures)):
        return "embedding"
    return None


# For check_model_kind: how each kind of checkpoint is named.
KIND_NAMES = {"llm": "an LLM with its generative head", "cross_encoder": "a cross-encoder with its classification head",
               "embedding": "an embedding model"}  # fmt: skip
_TEACHER_TYPE_FOR = {"llm": "llm_yesno (or llm_labels)", "cross_encoder": "cross_encoder", "embedding": "embedding"}


def check_model_kind(teacher_type: str, model_path: str) -> None:
    """InputError where a checkpoint is plainly another kind of model than ``teacher_type`` needs:
    loaded anyway, it would get a new random head (or lose its own) and score noise."""
    kind = model_kind(model_path)
    needed = TEACHER_KINDS[teacher_type].checkpoints
    if teacher_type == "embedding" and kind == "llm" and not any(
            (Path(model_path) / name).exists() for name in ("modules.json", "config_sentence_transformers.json")):
        # an embedding LLM (Qwen3-Embedding) ships its pooling in those files; a chat or reranker LLM without them
        # would be mean-pooled into vectors it was never trained to give, and score noise with no error
        raise InputError(f"{model_path} holds {KIND_NAMES['llm']} and no sentence-transformers files (modules.json), "
                         "so it is no embedding model; pass --teacher_type llm_yesno (or llm_labels), or an embedding "
                         "model's folder")
    if kind is None or kind in needed:
        return
    architectures = model_config(model_path).get("architectures") or []
    if teacher_type in LLM_TEACHER_TYPES and any(a.endswith(GENERATIVE_HEADS) for a in architectures):
        return  # a generative head serves a judge, whatever sentence-transformers layout the folder also has
    raise InputError(
        f"{model_path} holds {KIND_NAMES[kind]}, but --teacher_type {teacher_type} needs {KIND_NAMES[needed[0]]} "
        f"(loaded anyway, its scores would mean nothing); pass --teacher_type {_TEACHER_TYPE_FOR[kind]}"
    )


def build_teacher(teacher_type: str, model_path: str, backend: str, options) -> Teacher:
    """A teacher of the given type (build_teachers checks its checkpoint's kind first).
    ``options`` is stage 1's argument dataclass (instruction, max_length, batch_size, device,
    dtype, prefix_cache, vLLM parallelism, label words and grades, score scale, query prompt)."""
    from rerank_distill.teachers.llm_hf import dtype_name

    # vLLM's own "auto" is the model's dtype, the same on any machine; transformers' is ours (dtype_name).
    on_vllm = backend == "vllm" and teacher_type in LLM_TEACHER_TYPES
    dtype = options.dtype if on_vllm else dtype_name(options.dtype, options.device)
    common = {"max_length": options.max_length, "batch_size": options.batch_size, "device": options.device, "dtype": dtype}
    if teacher_type in LLM_TEACHER_TYPES:
        from rerank_distill.teachers.llm_judge import LabelJudge, YesNoJudge

        llm = {
            **common,
            "instruction": options.instruction,
            "prefix_cache": options.prefix_cache,
            "vllm_options": {
                "tensor_parallel_size": options.tensor_parallel_size,
                "gpu_memory_utilization": options.gpu_memory_utilization,
            },
        }
        if teacher_type == "llm_yesno":
            return YesNoJudge(model_path, backend, **llm)
        return LabelJudge(model_path, backend, label_words=options.label_words, label_grades=options.label_grades, **llm)
    if teacher_type == "cross_encoder":
        from rerank_distill.teachers.cross_encoder import CrossEncoderTeacher

        return CrossEncoderTeacher(model_path, **common)
    if teacher_type == "embedding":
        from rerank_distill.teachers.embedding import EmbeddingTeacher

        return EmbeddingTeacher(model_path, score_scale=options.score_scale, query_prompt=options.query_prompt, **common)
    raise InputError(f"unknown --teacher_type '{teacher_type}'; choose from {', '.join(TEACHER_TYPES)}")


def build_teachers(model_paths: list[str], teacher_types: list[str], backend: str, options,
                   given_names: list[str] | None = None) -> list[Teacher]:
    """One teacher per model (``teacher_types`` as from ``teacher_types_for``), each named after the
    last part of the path or hub id the user gave (``given_names``; a hub id's download folder is a
    commit hash) or else of its folder; teachers that share a name are numbered (``model``,
    ``model-2``) so every ``teacher_scores`` entry is kept."""
    for kind, path in zip(teacher_types, model_paths):  # every one before any loads
        check_model_kind(kind, path)
    teachers = [build_teacher(kind, path, backend, options) for kind, path in zip(teacher_types, model_paths)]
    names = unique_names([teacher_name(path) for path in given_names or model_paths])
    for teacher, name in zip(teachers, names):
        teacher.name = name
    return teachers
