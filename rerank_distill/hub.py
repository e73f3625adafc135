"""Models and data sets named by hub id: fetched through Hugging Face or ModelScope into a cache
the user chooses; offline, the run stops at once with a message that says what to download."""

from __future__ import annotations

import difflib
import functools
import logging
import os
import re
import socket
from contextlib import contextmanager, nullcontext
from urllib.parse import urlparse

from rerank_distill.errors import InputError, first_line

logger = logging.getLogger(__name__)

HUBS = ("huggingface", "modelscope")


def split_revision(hub_id: str) -> tuple[str, str | None]:
    """``owner/name@REVISION`` -> ``("owner/name", "REVISION")`` (a branch, tag or commit); without
    ``@``, ``(hub_id, None)``. Hub ids cannot hold ``@``, so the split is unambiguous."""
    name, at, revision = hub_id.partition("@")
    return (name, revision) if at and revision else (hub_id, None)


def refuse_revision_of_a_folder(name_or_id: str, kind: str, folder_as: str = "{folder}") -> None:
    """InputError where ``name_or_id`` is ``NAME@REVISION`` and NAME a local folder: a revision
    cannot apply to it (``kind``: model or data set; ``folder_as``: how to pass the folder instead)."""
    name, revision = split_revision(name_or_id)
    if revision and os.path.exists(name):
        raise InputError(f"'{name}' is a local folder, and @{revision} names a revision of a hub {kind}: pass the "
                         f"folder as {folder_as.format(folder=name)}, or move it away to fetch {name_or_id} from "
                         "the hub")


def looks_like_hub_id(name: str) -> bool:
    """True for ``owner/name`` (or a bare ``name``), either with ``@REVISION``; false for anything
    shaped like a file path. (A path that does not exist but could be an id, such as
    ``output/model`` before training has made it, is tried as an id; the error then says so. One ending
    in ``/``, ``my-model/``, is a folder: no id does.)"""
    if not name or name.startswith((".", "/", "~")) or name.endswith("/") or "\\" in name:
        return False
    if name.endswith((".json", ".jsonl", ".gz", ".parquet", ".tsv", ".csv")):
        return False
    return split_revision(name)[0].count("/") <= 1


def refuse_stray_spaces(text: str, what: str, of: str = "") -> None:
    """InputError where ``text`` (``what``: a hub id, a split ``of`` a data set) begins or ends with
    white space, as one copied or quoted with its neighbour's space does: the hub's own error would
    not point at it."""
    if text != text.strip():
        raise InputError(f"{what} '{text}'{of} begins or ends with a space: remove it")


def refuse_web_address(text: str, what: str) -> None:
    """InputError where ``text`` is a hub page's web address (https://huggingface.co/BAAI/x),
    which neither hub's library takes for an id: say which id to pass."""
    if not text.lower().startswith(("https://", "http://")):
        return
    parts = [part for part in urlparse(text).path.split("/") if part]
    if parts[:1] in (["models"], ["datasets"]):  # modelscope.cn/models/OWNER/NAME, huggingface.co/datasets/OWNER/NAME
        parts = parts[1:]
    hint = f"pass its id, {'/'.join(parts[:2])}" if len(parts) >= 2 else "pass a hub id (OWNER/NAME) or a local path"
    raise InputError(f"{what} '{text}' is a web address: {hint}")


def _offline_message(kind: str, hub_id: str, hub: str, reason: str, look_alike: str | None = None) -> str:
    """What to download and where to put it, for a hub id that could not be fetched (``look_alike``:
    an id the cache holds that differs from it in case or a letter or two)."""
    name, revision = split_revision(hub_id)
    if hub == "modelscope":
        how = f"modelscope download --{kind} {name}{f' --revision {revision}' if revision else ''} --local_dir DIR"
    else:
        how = (f"hf download {name}{' --repo-type dataset' if kind == 'dataset' else ''}"
               f"{f' --revision {revision}' if revision else ''} --local-dir DIR")
    pass_it = "DIR:SPLIT (e.g. DIR:test)" if kind == "dataset" else "its path"
    return _not_here(hub_id) + (
        f"could not fetch {kind} '{hub_id}' from {hub} ({reason}). On a machine with internet run "
        f"`{how}`, copy DIR here and pass {pass_it} instead of the hub id "
        f"(or point the cache at a copy with --cache_dir)."
    ) + (f" The cache holds '{look_alike}': if that was meant, pass it as written." if look_alike else "")


def _hugging_face_caches(cache_dir: str | None, kind: str) -> list[str]:
    """The hub caches a Hugging Face id of ``kind`` is looked up in: ``cache_dir``, else HF_HUB_CACHE
    (a data set's files are in HF_HUB_CACHE whatever ``cache_dir``, which may hold a copy too)."""
    from huggingface_hub import constants

    if not cache_dir:
        return [constants.HF_HUB_CACHE]
    return [cache_dir, constants.HF_HUB_CACHE] if kind == "dataset" else [cache_dir]


def _cached_look_alike(kind: str, hub_id: str, caches: list[str]) -> str | None:
    """An id held in ``caches`` that differs from ``hub_id`` in case only or by a letter or two: offline
    the cache is read letter for letter (``baai/...`` misses ``BAAI/...``), though the hub ignores case."""
    name = split_revision(hub_id)[0]
    prefix = "datasets--" if kind == "dataset" else "models--"  # models--OWNER--NAME (ids never hold "--")
    held = {}  # lower-cased id -> id
    for cache in caches:
        try:
            entries = [entry.name for entry in os.scandir(cache) if entry.name.startswith(prefix)]
        except OSError:  # no cache there yet
            continue
        held.update({entry[len(prefix):].replace("--", "/").lower(): entry[len(prefix):].replace("--", "/")
                     for entry in entries})
    close = difflib.get_close_matches(name.lower(), list(held), n=1, cutoff=0.9)
    return held[close[0]] if close and held[close[0]] != name else None


def _load_failure(kind: str, hub_id: str, hub: str, error: Exception) -> InputError:
    """A hub item that exists (or may) but could not be loaded, for a reason other than being
    unreachable: a split or configuration the data set lacks, an unwritable cache, an invalid id."""
    return InputError(_not_here(hub_id, only_beside_a_folder=True) + f"could not load {kind} '{hub_id}' from {hub}: "
                      f"{type(error).__name__}: {first_line(error)}")


def _refused_by_hub(kind: str, hub_id: str, error: Exception) -> str:
    """The message for a hub that was reached and answered no: downloading elsewhere would not help."""
    return _not_here(hub_id) + (
        f"could not fetch {kind} '{hub_id}' from huggingface: {first_line(error)}. Check the id and the revision "
        "after @; a gated or private repository needs `hf auth login` (or HF_TOKEN) first."
    )


def _not_here(name: str, only_beside_a_folder: bool = False) -> str:
    """The error's first words for an ``owner/name`` that may have been meant as a folder
    (``output/model`` before training has made it, or a typo): no such folder exists here. With
    ``only_beside_a_folder``, nothing unless the owner part is a folder here (a likely typo)."""
    parent = name.split("/", 1)[0]
    beside_a_folder = "/" in name and os.path.isdir(parent)
    if only_beside_a_folder and not beside_a_folder:
        return ""
    though = f" (though '{parent}/' does: if a path was meant, check it, or make it first)" if beside_a_folder else ""
    return f"no folder '{name}' exists here{though}, so it was taken as a hub id: "


def unreachable_host(url: str) -> str | None:
    """``url``'s host when it cannot be connected to, else None (also behind a proxy, where a
    direct connection proves nothing).

    Offline, the hub libraries retry with backoff for about half a minute before giving up; one
    short connection attempt lets the run go straight to the cache, or stop with its message, instead.
    """
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    endpoint = urlparse(url)
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    return None if _connects(endpoint.hostname, port) else endpoint.hostname


@functools.cache
def _connects(host: str, port: int) -> bool:
    """Whether ``host`` takes a connection on ``port``; asked once a run: where a firewall drops packets
    each try waits the whole timeout, and a run loads many hub items (an MTEB v2 data set is four)."""
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError:
        return False
    return True


def unreachable_hugging_face_host() -> str | None:
    """The Hugging Face endpoint's host (``HF_ENDPOINT`` or its default) when it cannot be connected to;
    InputError where HF_ENDPOINT is no http(s) address (``hf-mirror.com``, or empty)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return None  # the user asked for the cache only (HF_HUB_OFFLINE=1): the libraries try nothing
    endpoint = urlparse(constants.ENDPOINT)
    if endpoint.scheme not in ("http", "https") or not endpoint.hostname:  # the libraries' error would not name it
        raise InputError(f"HF_ENDPOINT '{constants.ENDPOINT}' is not a web address such as https://hf-mirror.com: "
                         "correct it, or unset it for huggingface.co")
    return unreachable_host(constants.ENDPOINT)


def unreachable_modelscope_host() -> str | None:
    """ModelScope's host when it cannot be connected to: ``MODELSCOPE_DOMAIN`` where set, else
    its Chinese site when neither it nor the international one (which the library may prefer) answers."""
    domains = [os.environ["MODELSCOPE_DOMAIN"]] if os.environ.get("MODELSCOPE_DOMAIN") else [
        "www.modelscope.cn", "www.modelscope.ai"]
    unreachable = [unreachable_host(f"https://{domain}") for domain in domains]
    return unreachable[0] if all(unreachable) else None


def _modelscope_cache(cache_dir: str | None) -> str:
    """The folder ModelScope looks in for a copy: ``cache_dir``, else its own cache (MODELSCOPE_CACHE,
    else ~/.cache/modelscope), which its library finds without our help: named so a user can look."""
    return cache_dir or os.environ.get("MODELSCOPE_CACHE") or os.path.join("~", ".cache", "modelscope")


def _failure_reason(error: Exception, down_host: str | None, caches: list[str] | None = None) -> str:
    """Why a hub item is not at hand: the host down and no copy in ``caches`` (where known), or the
    hub's own answer (unknown id, gated repo, no such revision)."""
    where = f"the cache {' or '.join(caches)}" if caches else "the cache"
    if down_host and type(error).__name__ == "IncompleteSnapshotError":  # (huggingface_hub 2: a download cut off)
        missing = re.search(r"\d+ file\(s\) are missing \(.*?\)(?=\. )", str(error))
        return f"{down_host} cannot be reached and the copy in {where} is incomplete" + (
            f" ({missing.group(0)})" if missing else "")
    if down_host:
        return f"{down_host} cannot be reached and there is no copy in {where}"
    return first_line(error) + (f"; looked in {where}" if caches else "")


# Weights in formats no stage loads: left out of a model's download (some repos carry ONNX,
# OpenVINO, TensorFlow and Flax copies several times the size of the PyTorch weights).
SKIPPED_MODEL_FILES = ["*.onnx", "*.onnx_data", "onnx/*", "openvino/*", "*.h5", "*.msgpack", "*.ot", "coreml/*"]


@contextmanager
def _hugging_face_offline():
    """Cache-only mode of huggingface_hub and datasets, as HF_HUB_OFFLINE=1 would give at startup."""
    import datasets
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE = saved


def resolve_model(name_or_path: str, hub: str = "huggingface", cache_dir: str | None = None) -> str:
    """Return a local folder for a model: the path itself if it exists, else a hub download.

    Raises InputError for a path that does not exist or holds no model, and for a hub id that
    cannot be fetched (offline, unknown id, missing ``modelscope`` package).
    """
    if os.path.exists(name_or_path):
        if os.path.isfile(name_or_path):  # a data file, say, given where the model goes
            raise InputError(f"'{name_or_path}' is a file, not a model: a model is a folder with a config.json "
                             "(transformers) or modules.json (sentence-transformers); pass that folder")
        if not any(os.path.isfile(os.path.join(name_or_path, name)) for name in ("config.json", "modules.json")):
            steps = [int(name.split("-")[1]) for name in os.listdir(name_or_path)
                     if re.fullmatch(r"checkpoint-\d+", name)]
            if steps:  # train.py's --output_dir of a run that has not saved its final model (yet)
                newest = os.path.join(name_or_path, f"checkpoint-{max(steps)}")
                raise InputError(f"'{name_or_path}' is a train.py output folder without its final model (its run "
                                 f"stopped, or is still training): pass its newest checkpoint, {newest}, or finish "
                                 "the run (train.py with the same flags and --resume_from_checkpoint last)")
            raise InputError(
                f"'{name_or_path}' holds no model: a model folder has a config.json (transformers) "
                "or modules.json (sentence-transformers); pass that folder"
            )
        return name_or_path
    refuse_web_address(name_or_path, "model")
    refuse_revision_of_a_folder(name_or_path, "model")
    if not looks_like_hub_id(name_or_path):
        raise InputError(f"model path '{name_or_path}' does not exist")
    refuse_stray_spaces(name_or_path, "model id")
    if hub not in HUBS:
        raise InputError(f"unknown hub '{hub}'; choose one of {', '.join(HUBS)}")
    name, revision = split_revision(name_or_path)
    cache_dir = cache_dir or None  # an empty one (--cache_dir "$UNSET"): the default, which "" is not to the hubs
    logger.info("fetching model %s from %s (cache: %s)", name_or_path, hub, cache_dir or "default")
    if hub == "modelscope":
        try:
            from modelscope import snapshot_download as modelscope_download
        except ImportError as error:
            raise InputError(f"--hub modelscope needs the modelscope package (pip install modelscope): "
                             f"{first_line(error)}") from None
        unreachable = unreachable_modelscope_host()
        if unreachable and revision:
            logger.warning("%s cannot be reached, and ModelScope's cache keeps one copy of a model, not one a "
                           "revision: the copy it holds of %s is used, whatever its revision (not checked to be %s)",
                           unreachable, name, revision)
        try:  # (host down: straight to the copy ModelScope's cache may hold)
            return modelscope_download(name, revision=revision, cache_dir=cache_dir,
                                       **({"local_files_only": True} if unreachable else {}))
        except Exception as error:  # modelscope raises many unrelated types for network problems
            raise InputError(_offline_message("model", name_or_path, hub, _failure_reason(
                error, unreachable, [_modelscope_cache(cache_dir)]))) from None
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    down_host = unreachable_hugging_face_host()
    try:
        return snapshot_download(name, revision=revision, cache_dir=cache_dir, ignore_patterns=SKIPPED_MODEL_FILES,
                                 local_files_only=down_host is not None)
    except LocalEntryNotFoundError as error:  # offline, and not in the cache
        caches = _hugging_face_caches(cache_dir, "model")
        raise InputError(_offline_message("model", name_or_path, hub, _failure_reason(error, down_host, caches),
                                          _cached_look_alike("model", name_or_path, caches))) from None
    except HfHubHTTPError as error:  # the hub answered: no such id or revision, or gated or private
        raise InputError(_refused_by_hub("model", name_or_path, error)) from None
    except Exception as error:  # an invalid id, an unwritable cache, a download cut off: one line, not a traceback
        raise _load_failure("model", name_or_path, hub, error) from None


def _configuration_names(name: str, revision: str | None) -> list[str]:
    """The configurations of hub data set ``name``; none where they cannot be found out, so that
    the error that made the caller ask is the one reported."""
    import datasets

    try:
        return datasets.get_dataset_config_names(name, revision=revision)
    except Exception:  # offline, gated, ...: the loader's own error says more
        return []


def _load_dataset(name: str, config: str | None, split: str | None, cache_dir: str | None, revision: str | None):
    """``datasets.load_dataset`` of a hub id or a folder; for a data set in parts with no default
    configuration (several, none the default), its qrels one: the entry of such a data set. Another
    data set of several configurations and no default is a ValueError that names them and what to pass."""
    import datasets

    try:
        return datasets.load_dataset(name, config, split=split, cache_dir=cache_dir, revision=revision)
    except ValueError as error:
        configs = [] if config is not None else _configuration_names(name, revision)
        if "qrels" in configs:
            return datasets.load_dataset(name, "qrels", split=split, cache_dir=cache_dir, revision=revision)
        # datasets names the configurations on lines of their own, which a one-line error leaves out; and
        # there is no flag to name one: a source is one data set
        if len(configs) > 1 and str(error).startswith("Config name is missing"):
            if os.path.isdir(name):  # a copy in the hub cache: a folder already
                what_to_do = f"pass the folder of the one meant as {name}/FOLDER:SPLIT"
            else:
                revision_flag = f" --revision {revision}" if revision else ""
                what_to_do = (f"download it (`hf download {name} --repo-type dataset{revision_flag} --local-dir DIR`) "
                              "and pass the folder of the one meant as DIR/FOLDER:SPLIT")
            raise ValueError(f"it has the configurations {', '.join(configs)} and none is its default: "
                             f"{what_to_do}") from None
        raise


def _hub_cache_copy(name: str, revision: str | None, cache_dir: str | None) -> str | None:
    """The folder of a copy of hub data set ``name`` in a Hugging Face hub cache (``cache_dir``, then
    HF_HUB_CACHE: see _hugging_face_caches), where there is one: ``hf download --repo-type dataset``
    leaves it there, and so does ``datasets`` online (whatever its own cache_dir), but offline
    ``datasets`` reads only what it has prepared in its own cache (another --cache_dir, or none yet,
    and the data set was reported missing)."""
    from huggingface_hub import snapshot_download

    for cache in _hugging_face_caches(cache_dir, "dataset"):
        try:
            return snapshot_download(name, repo_type="dataset", revision=revision, cache_dir=cache,
                                     local_files_only=True)
        except Exception:  # not in this cache (or no cache there at all)
            continue
    return None


def _load_hub_cache_copy(copy: str, hub_id: str, config: str | None, split: str | None, cache_dir: str | None):
    """Hub data set ``hub_id`` loaded from its copy in the hub cache (the snapshot folder ``copy``)."""
    logger.info("the hub cannot be reached: reading data set %s from its copy in the hub cache, %s", hub_id, copy)
    try:
        with _hugging_face_offline():  # a folder: nothing to fetch
            return _load_dataset(copy, config, split, cache_dir, None)
    except Exception as error:  # a split the copy lacks (only the files of others were fetched), ...
        raise _load_failure("dataset", hub_id, f"its copy in the hub cache ({copy})", error) from None


def load_hub_dataset(hub_id: str, split: str | None, hub: str = "huggingface", cache_dir: str | None = None,
                     config: str | None = None):
    """Load a data set split from a hub as an iterable of dict rows (a ``datasets.Dataset``);
    ``hub_id`` may end in ``@REVISION``; ``config``: one of its configurations (subsets), else its
    default one, or, for a data set in parts with none (MTEB v2: see rerank_distill.qrels), its qrels.

    With no split, the data set's only split is used (with several, InputError lists them).
    ModelScope cannot list them without downloading, so there the split must be named.
    """
    refuse_revision_of_a_folder(hub_id, "data set", "{folder}:SPLIT")  # datasets would read the folder, no revision
    refuse_stray_spaces(hub_id, "data set id")
    refuse_stray_spaces(split or "", "split", f" of data set '{hub_id}'")
    name, revision = split_revision(hub_id)
    cache_dir = cache_dir or None  # an empty one (--cache_dir "$UNSET"): the default, as for models
    if hub == "modelscope":
        try:
            from modelscope.msdatasets import MsDataset
        except ImportError as error:  # (its data sets need extras the package alone lacks)
            raise InputError(f"--hub modelscope data sets need the modelscope package with its data-set extras "
                             f"(pip install 'modelscope[datasets]'): {first_line(error)}") from None
        if not split:  # never a silent default: training on a test split would leak it
            raise InputError(f"name the split of ModelScope data set '{hub_id}' as {hub_id}:SPLIT (e.g. :train, :test)")
        try:
            # no cache_dir: MsDataset.load's own default, ModelScope's cache (None would be datasets')
            loaded = MsDataset.load(name, subset_name=config, split=split,
                                    **({"cache_dir": cache_dir} if cache_dir else {}),
                                    **({"version": revision} if revision else {}))
        except Exception as error:  # modelscope raises many unrelated types for network problems
            raise InputError(_offline_message("dataset", hub_id, hub, _failure_reason(
                error, None, [_modelscope_cache(cache_dir)]))) from None
        # its general data sets (most) come back as a datasets.Dataset already; others as an MsDataset
        return loaded.to_hf_dataset() if hasattr(loaded, "to_hf_dataset") else loaded
    import datasets

    down_host = unreachable_hugging_face_host()
    try:
        with _hugging_face_offline() if down_host else nullcontext():
            loaded = _load_dataset(name, config, split, cache_dir, revision)
    except ConnectionError as error:  # offline, and not in the datasets cache: maybe in the hub cache
        if not (copy := _hub_cache_copy(name, revision, cache_dir)):
            caches = _hugging_face_caches(cache_dir, "dataset")
            raise InputError(_offline_message("dataset", hub_id, hub, _failure_reason(error, down_host, caches),
                                              _cached_look_alike("dataset", hub_id, caches))) from None
        loaded = _load_hub_cache_copy(copy, hub_id, config, split, cache_dir)
    except FileNotFoundError as error:  # the hub answered: no such data set or revision, or gated or private
        raise InputError(_refused_by_hub("dataset", hub_id, error)) from None
    except Exception as error:  # no such split or configuration, a loading script, an unwritable cache, ...
        raise _load_failure("dataset", hub_id, hub, error) from None
    if isinstance(loaded, datasets.DatasetDict):
        if len(loaded) != 1:
            raise InputError(f"data set '{hub_id}' has splits {sorted(loaded)}; name one as {hub_id}:SPLIT")
        (only,) = loaded
        if down_host:  # a cache may hold part of a data set (one split fetched): its others would go unseen
            logger.warning("data set '%s': reading split '%s', the only one in the cache (offline: the data set may "
                           "have others); name the split meant, %s:SPLIT, to be sure", hub_id, only, hub_id)
        else:
            logger.info("data set '%s': reading its one split, '%s'", hub_id, only)
        loaded = loaded[only]
    return loaded
