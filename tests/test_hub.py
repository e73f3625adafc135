"""Models and data sets named by hub id (rerank_distill/hub.py): what is fetched, from where,
and the one-line message, naming what to download, when it cannot be. Nothing here reaches a hub:
the session is offline (conftest), and a lost connection or a library's answer is simulated."""

import functools
import json
import sys
import types
from pathlib import Path

import pytest

from rerank_distill.errors import InputError
from rerank_distill.formats import iter_rows
from rerank_distill.hub import load_hub_dataset, looks_like_hub_id, resolve_model, split_revision


def test_a_hub_id_offline_says_what_to_download(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InputError, match="hf download someone/some-reranker"):
        resolve_model("someone/some-reranker")


def test_a_folder_not_made_yet_is_named_as_missing_before_the_hub_advice(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # no output/ here: "output/model" could be an organisation's model
    with pytest.raises(InputError, match="^no folder 'output/model' exists here, so it was taken as a hub id: could not fetch"):
        resolve_model("output/model")


@pytest.fixture
def no_connection(monkeypatch):
    """A machine with no proxy and no route to any host, whose user has not set HF_HUB_OFFLINE
    (the test session sets it, so that nothing else here can reach a hub)."""
    import datasets
    from huggingface_hub import constants

    from rerank_distill import hub

    def refuse(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(hub, "_connects", functools.cache(hub._connects.__wrapped__))  # nothing probed before counts

    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr("socket.create_connection", refuse)


def test_an_unreachable_hub_fails_at_once_without_retries(no_connection, monkeypatch):
    from urllib.parse import urlparse

    import datasets
    from huggingface_hub import constants

    attempts = []

    def refuse(address, *args, **kwargs):
        attempts.append(address)
        raise OSError("Name or service not known")

    monkeypatch.setattr("socket.create_connection", refuse)
    offline_before = constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE
    with pytest.raises(InputError, match="cannot be reached and there is no copy in the cache"):
        resolve_model("someone/some-reranker")
    host = urlparse(constants.ENDPOINT).hostname  # huggingface.co, or HF_ENDPOINT's
    assert [address[0] for address in attempts] == [host]  # one probe: the libraries' own tries (with backoff) never start
    with pytest.raises(InputError, match="hf download someone/some-data --repo-type dataset"):
        load_hub_dataset("someone/some-data", "test")
    assert [address[0] for address in attempts] == [host]  # (the host was found unreachable once for the run)
    assert (constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE) == offline_before


def test_a_hub_that_drops_packets_is_waited_for_once_a_run_not_once_an_item(no_connection, monkeypatch, tmp_path):
    """A firewall that drops packets makes each probe wait its whole timeout; a run loads many hub items
    (an MTEB v2 data set is four parts, read twice by stage 1, then its models): nine waits were 46 s."""
    attempts = []

    def drop(address, *args, **kwargs):
        attempts.append(address)
        raise TimeoutError("timed out")

    monkeypatch.setattr("socket.create_connection", drop)
    cached_snapshot(tmp_path, "someone/some-reranker")
    for _ in range(3):
        resolve_model("someone/some-reranker", cache_dir=str(tmp_path))
    with pytest.raises(InputError, match="cannot be reached"):
        load_hub_dataset("someone/some-data", "test", cache_dir=str(tmp_path))
    assert len(attempts) == 1


def test_an_unreachable_hub_still_serves_a_cached_model(no_connection, tmp_path):
    snapshot = tmp_path / "models--someone--some-reranker" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}", encoding="utf-8")
    (tmp_path / "models--someone--some-reranker" / "refs").mkdir()
    (tmp_path / "models--someone--some-reranker" / "refs" / "main").write_text("0" * 40, encoding="utf-8")
    assert resolve_model("someone/some-reranker", cache_dir=str(tmp_path)) == str(snapshot)


def test_an_empty_cache_dir_reads_the_default_cache_not_the_current_folder(no_connection, monkeypatch, tmp_path):
    """--cache_dir "$CACHE" with CACHE unset: the default cache, as the log and the messages say."""
    from huggingface_hub import constants

    snapshot = cached_snapshot(tmp_path / "hub", "someone/some-reranker")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)  # (huggingface_hub takes "" for this folder)
    assert resolve_model("someone/some-reranker", cache_dir="") == str(snapshot)


@pytest.mark.parametrize("endpoint", ["hf-mirror.com", ""])
def test_an_hf_endpoint_that_is_no_web_address_is_named_not_a_traceback(no_connection, monkeypatch, endpoint):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", endpoint)  # HF_ENDPOINT as exported
    with pytest.raises(InputError, match=f"^HF_ENDPOINT '{endpoint}' is not a web address"):
        resolve_model("someone/some-reranker")


def test_behind_a_proxy_the_hub_is_not_probed(no_connection, monkeypatch):
    from rerank_distill.hub import unreachable_hugging_face_host

    assert unreachable_hugging_face_host() is not None
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert unreachable_hugging_face_host() is None


def test_modelscope_without_its_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "modelscope", None)
    with pytest.raises(InputError, match="pip install modelscope"):
        resolve_model("someone/some-reranker", hub="modelscope")


def cached_snapshot(cache: Path, repo: str, ref: str = "main", commit: str = "0" * 40) -> Path:
    """A model in huggingface_hub's cache layout, as a download of ``repo`` at ``ref`` leaves it."""
    root = cache / f"models--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}", encoding="utf-8")
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / ref).write_text(commit, encoding="utf-8")
    return snapshot


def cached_data_set(cache: Path, repo: str, files: dict[str, list[dict]], ref: str = "main") -> Path:
    """A data set in huggingface_hub's cache layout, as ``hf download --repo-type dataset`` leaves it:
    ``files`` maps each JSONL file's path in the repository to its records."""
    root = cache / f"datasets--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / ("2" * 40)
    for name, records in files.items():
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        (snapshot / name).write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / ref).write_text("2" * 40, encoding="utf-8")
    return snapshot


@pytest.mark.parametrize("reached_as", ["unreachable", "HF_HUB_OFFLINE"])
def test_offline_a_data_set_in_the_hub_cache_is_read_from_there(request, monkeypatch, tmp_path, reached_as):
    """datasets, offline, reads only what it prepared in its own cache, not the hub cache's files."""
    from huggingface_hub import constants

    if reached_as == "unreachable":
        request.getfixturevalue("no_connection")
    record = {"query": "q", "positive": ["p"], "negative": ["n"]}
    cached_data_set(tmp_path / "hub", "someone/some-data", {"test.jsonl": [record], "train.jsonl": [record] * 2})
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert list(load_hub_dataset("someone/some-data", "test", cache_dir=str(tmp_path / "datasets"))) == [record]
    # --cache_dir pointed at a hub cache holding it (as for models)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    assert len(load_hub_dataset("someone/some-data", "train", cache_dir=str(tmp_path / "hub"))) == 2
    with pytest.raises(InputError, match=r"^could not load dataset 'someone/some-data' from its copy in the hub cache "
                                         r"\(.*snapshots.*\): ValueError: Unknown split \"dev\""):
        load_hub_dataset("someone/some-data", "dev", cache_dir=str(tmp_path / "hub"))
    with pytest.raises(InputError, match="hf download someone/other-data --repo-type dataset"):
        load_hub_dataset("someone/other-data", "test", cache_dir=str(tmp_path / "hub"))


def test_offline_the_one_split_a_cached_data_set_holds_is_read_with_a_warning_that_it_may_have_others(
        no_connection, monkeypatch, tmp_path, caplog):
    from huggingface_hub import constants

    record = {"query": "q", "positive": ["p"], "negative": ["n"]}
    cached_data_set(tmp_path / "hub", "someone/part-data", {"data/train.jsonl": [record]})  # its test split not fetched
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert list(load_hub_dataset("someone/part-data", None, cache_dir=str(tmp_path / "datasets"))) == [record]
    assert ("data set 'someone/part-data': reading split 'train', the only one in the cache (offline: the data set may "
            "have others); name the split meant, someone/part-data:SPLIT, to be sure") in caplog.text


def test_offline_an_id_the_cache_holds_in_another_case_or_spelling_is_named(no_connection, tmp_path):
    cached_snapshot(tmp_path, "BAAI/bge-reranker-v2-m3")
    cached_data_set(tmp_path, "mteb/stackoverflowdupquestions-reranking", {"test.jsonl": []})
    for model in ("baai/bge-reranker-v2-m3", "BAAI/bge-reranker-v2m3@v1"):
        with pytest.raises(InputError, match=rf"no copy in the cache {tmp_path}\)\..* The cache holds "
                                             r"'BAAI/bge-reranker-v2-m3': if that was meant, pass it as written\.$"):
            resolve_model(model, cache_dir=str(tmp_path))
    with pytest.raises(InputError, match=r"The cache holds 'mteb/stackoverflowdupquestions-reranking'"):
        load_hub_dataset("MTEB/stackoverflowdupquestions-reranking", "test", cache_dir=str(tmp_path))
    with pytest.raises(InputError) as error:  # nothing alike: no such sentence
        resolve_model("BAAI/bge-m3", cache_dir=str(tmp_path))
    assert "The cache holds" not in str(error.value)


@pytest.mark.parametrize("call, message", [
    (lambda: resolve_model("BAAI/bge-reranker-v2-m3 "), "^model id 'BAAI/bge-reranker-v2-m3 ' begins or ends with a space"),
    (lambda: resolve_model(" BAAI/bge-reranker-v2-m3"), "^model id ' BAAI/bge-reranker-v2-m3' begins or ends with a space"),
    (lambda: load_hub_dataset("mteb/some-data", "test "), "^split 'test ' of data set 'mteb/some-data' begins"),
])
def test_an_id_with_a_stray_space_says_so(call, message):
    with pytest.raises(InputError, match=message):
        call()


@pytest.mark.parametrize("call, message", [
    (lambda: resolve_model("https://huggingface.co/BAAI/bge-reranker-v2-m3"), "pass its id, BAAI/bge-reranker-v2-m3$"),
    (lambda: resolve_model("https://modelscope.cn/models/Qwen/Qwen3-Reranker-8B/files"),
     "pass its id, Qwen/Qwen3-Reranker-8B$"),
    (lambda: list(iter_rows("https://huggingface.co/datasets/mteb/some-data:test")), "pass its id, mteb/some-data:test$"),
    (lambda: resolve_model("https://huggingface.co/"), r"pass a hub id \(OWNER/NAME\) or a local path$"),
])
def test_a_hub_page_address_given_for_an_id_names_the_id(call, message):
    with pytest.raises(InputError, match="is a web address: " + message):
        call()


def test_a_revision_after_at_is_split_from_the_id():
    assert split_revision("BAAI/bge-reranker-v2-m3@v1.1") == ("BAAI/bge-reranker-v2-m3", "v1.1")
    assert split_revision("BAAI/bge-reranker-v2-m3") == ("BAAI/bge-reranker-v2-m3", None)
    assert looks_like_hub_id("BAAI/bge-reranker-v2-m3@0123abc")
    assert not looks_like_hub_id("./models/student@v2")


@pytest.mark.parametrize("path", ["my-model/", "my_data/"])
def test_a_missing_folder_written_with_a_trailing_slash_is_reported_missing_not_as_an_invalid_hub_id(
        monkeypatch, tmp_path, path):
    monkeypatch.chdir(tmp_path)  # (no such folder here: a hub id never ends in "/")
    assert not looks_like_hub_id(path)
    with pytest.raises(InputError, match=f"^model path '{path}' does not exist$"):
        resolve_model(path)
    with pytest.raises(InputError, match="file not found; check the path") as error:
        list(iter_rows(f"{path}:test"))
    assert "hub" not in str(error.value)


def test_a_model_id_with_a_revision_serves_that_revision_from_the_cache(no_connection, tmp_path):
    main = cached_snapshot(tmp_path, "someone/some-reranker")
    v2 = cached_snapshot(tmp_path, "someone/some-reranker", ref="v2", commit="1" * 40)
    assert resolve_model("someone/some-reranker", cache_dir=str(tmp_path)) == str(main)
    assert resolve_model("someone/some-reranker@v2", cache_dir=str(tmp_path)) == str(v2)


def test_a_missing_revision_says_how_to_download_it(no_connection, tmp_path):
    cached_snapshot(tmp_path, "someone/some-reranker")
    with pytest.raises(InputError, match=r"`hf download someone/some-reranker --revision v3 --local-dir DIR`"):
        resolve_model("someone/some-reranker@v3", cache_dir=str(tmp_path))


def test_an_invalid_id_is_one_line_not_a_traceback(monkeypatch):
    with pytest.raises(InputError, match="^could not load model 'someone/x..y' from huggingface: HFValidationError"):
        resolve_model("someone/x..y")


def test_a_local_folder_named_like_the_owner_does_not_hide_the_owners_other_models(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # (a developer's own may hold the model)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "BAAI" / "bge-m3").mkdir(parents=True)  # one model downloaded by hand; the one asked for is not
    with pytest.raises(InputError, match=r"^no folder 'BAAI/bge-reranker-v2-m3' exists here \(though 'BAAI/' does: if "
                                         r"a path was meant, check it, or make it first\), "
                                         r"so it was taken as a hub id: could not fetch .*hf download BAAI/bge-reranker-v2-m3"):
        resolve_model("BAAI/bge-reranker-v2-m3")


def test_a_model_download_leaves_out_weights_no_stage_loads(monkeypatch):
    calls = []
    monkeypatch.setattr("huggingface_hub.snapshot_download", lambda *args, **kwargs: calls.append((args, kwargs)) or "/x")
    assert resolve_model("someone/some-reranker@v2", cache_dir="/cache") == "/x"
    (args, kwargs), = calls
    assert args == ("someone/some-reranker",) and kwargs["revision"] == "v2" and kwargs["cache_dir"] == "/cache"
    assert {"*.onnx", "openvino/*", "*.h5", "*.msgpack"} <= set(kwargs["ignore_patterns"])


@pytest.mark.parametrize("raised, shown", [
    (ValueError('Unknown split "tset". Should be one of [\'test\', \'train\'].'), 'ValueError: Unknown split "tset"'),
    (ValueError("Config name is missing. Please pick one among the available configs: ['corpus', 'queries']"),
     "ValueError: Config name is missing"),
    (RuntimeError("Dataset scripts are no longer supported, but found some-data.py"),
     "RuntimeError: Dataset scripts are no longer supported"),
    (PermissionError(30, "Read-only file system"), "PermissionError: .*Read-only file system"),
])
def test_a_data_set_that_is_there_but_cannot_be_loaded_says_why_not_what_to_download(monkeypatch, raised, shown):
    def load_dataset(*args, **kwargs):
        raise raised

    monkeypatch.setattr("datasets.load_dataset", load_dataset)
    with pytest.raises(InputError, match=f"^could not load dataset 'someone/some-data' from huggingface: {shown}") as error:
        load_hub_dataset("someone/some-data", "tset")
    assert "hf download" not in str(error.value)


def test_a_data_set_of_several_configurations_and_no_default_names_them_and_what_to_pass(monkeypatch):
    def load_dataset(*args, **kwargs):  # datasets' own message names the configurations on lines of their own
        raise ValueError("Config name is missing.\nPlease pick one among the available configs: ['en', 'de']\n"
                         "Example of usage:\n\t`load_dataset('someone/some-data', 'en')`")

    monkeypatch.setattr("datasets.load_dataset", load_dataset)
    monkeypatch.setattr("datasets.get_dataset_config_names", lambda name, **kwargs: ["en", "de"])
    monkeypatch.setattr("rerank_distill.hub.unreachable_hugging_face_host", lambda: None)
    with pytest.raises(InputError, match=r"^could not load dataset 'someone/some-data' from huggingface: ValueError: it "
                                         r"has the configurations en, de and none is its default: .*`hf download someone/some-data "
                                         r"--repo-type dataset --local-dir DIR`.* pass the folder of the one meant"):
        load_hub_dataset("someone/some-data", "test")


def test_a_data_set_revision_and_split_reach_the_loader(monkeypatch):
    calls = []
    monkeypatch.setattr("datasets.load_dataset",
                        lambda name, config, **kwargs: calls.append((name, config, kwargs)) or [{"q": 1}])
    assert load_hub_dataset("someone/some-data@v2", "test", cache_dir="/cache") == [{"q": 1}]
    assert load_hub_dataset("someone/some-data@v2", "test", config="corpus") == [{"q": 1}]
    assert calls == [("someone/some-data", None, {"split": "test", "cache_dir": "/cache", "revision": "v2"}),
                     ("someone/some-data", "corpus", {"split": "test", "cache_dir": None, "revision": "v2"})]


def test_offline_a_modelscope_revision_that_cannot_be_checked_is_warned_about(monkeypatch, tmp_path, caplog):
    module = types.ModuleType("modelscope")
    module.snapshot_download = lambda name, **options: str(tmp_path)
    monkeypatch.setitem(sys.modules, "modelscope", module)
    monkeypatch.setattr("rerank_distill.hub.unreachable_modelscope_host", lambda: "www.modelscope.cn")
    assert resolve_model("someone/some-reranker@v1.0", hub="modelscope") == str(tmp_path)
    assert ("www.modelscope.cn cannot be reached, and ModelScope's cache keeps one copy of a model, not one a "
            "revision: the copy it holds of someone/some-reranker is used, whatever its revision (not checked to be v1.0)"
            in caplog.text)


def test_offline_modelscope_goes_straight_to_its_cache(monkeypatch, tmp_path):
    asked = {}

    def snapshot_download(name, **options):
        asked.update(options, name=name)
        return str(tmp_path)

    module = types.ModuleType("modelscope")
    module.snapshot_download = snapshot_download
    monkeypatch.setitem(sys.modules, "modelscope", module)
    monkeypatch.setattr("rerank_distill.hub.unreachable_modelscope_host", lambda: "www.modelscope.cn")
    assert resolve_model("someone/some-reranker", hub="modelscope", cache_dir="/ms") == str(tmp_path)
    assert asked == {"name": "someone/some-reranker", "revision": None, "cache_dir": "/ms", "local_files_only": True}
    monkeypatch.setattr("rerank_distill.hub.unreachable_modelscope_host", lambda: None)  # online: a normal download
    asked.clear()
    resolve_model("someone/some-reranker", hub="modelscope")
    assert "local_files_only" not in asked


def test_a_modelscope_id_not_at_hand_names_the_cache_looked_in(monkeypatch):
    def not_cached(name, **options):
        raise ValueError("Cannot find the requested files in the cached path and outgoing traffic has been disabled")

    module = types.ModuleType("modelscope")
    module.snapshot_download = not_cached
    monkeypatch.setitem(sys.modules, "modelscope", module)
    monkeypatch.setattr("rerank_distill.hub.unreachable_modelscope_host", lambda: "www.modelscope.cn")
    monkeypatch.delenv("MODELSCOPE_CACHE", raising=False)
    for cache_dir, env, named in (("/ms", "/env", "/ms"), (None, "/env", "/env"), (None, None, "~/.cache/modelscope")):
        if env:
            monkeypatch.setenv("MODELSCOPE_CACHE", env)
        with pytest.raises(InputError, match=f"www.modelscope.cn cannot be reached and there is no copy in the "
                                             f"cache {named}\\). .*modelscope download --model someone/some-reranker"):
            resolve_model("someone/some-reranker", hub="modelscope", cache_dir=cache_dir)
        monkeypatch.delenv("MODELSCOPE_CACHE", raising=False)

    def fails(*args, **kwargs):
        raise ConnectionError("connection refused")

    fake_modelscope_data_sets(monkeypatch, fails)
    with pytest.raises(InputError, match="connection refused; looked in the cache /ms"):
        load_hub_dataset("someone/some-data", "test", hub="modelscope", cache_dir="/ms")


def test_modelscope_data_sets_without_their_extras_say_what_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "modelscope", types.ModuleType("modelscope"))
    monkeypatch.setitem(sys.modules, "modelscope.msdatasets", None)  # importing it fails, as without its extras
    with pytest.raises(InputError, match=r"modelscope\[datasets\].*modelscope.msdatasets"):
        load_hub_dataset("someone/some-data", "test", hub="modelscope")


def test_a_modelscope_data_set_needs_its_split_named(monkeypatch):
    loaded = []
    module = types.ModuleType("modelscope.msdatasets")
    module.MsDataset = types.SimpleNamespace(load=lambda *args, **kwargs: loaded.append((args, kwargs)))
    monkeypatch.setitem(sys.modules, "modelscope", types.ModuleType("modelscope"))
    monkeypatch.setitem(sys.modules, "modelscope.msdatasets", module)
    with pytest.raises(InputError, match=r"name the split of ModelScope data set 'someone/some-data' as someone/some-data:SPLIT"):
        load_hub_dataset("someone/some-data", None, hub="modelscope")
    assert loaded == []  # never a default split: the test split trained on would leak into evaluation


def test_a_hub_data_sets_revision_stays_in_its_output_name():
    from rerank_distill.formats import source_stem

    assert source_stem("mteb/so-reranking@v1:test") == "so-reranking@v1_test"
    assert source_stem("mteb/so-reranking:test") == "so-reranking_test"
    # a revision whose name holds slashes (a pull request's, the Parquet conversion's branch) is one name too
    assert source_stem("mteb/so-reranking@refs/pr/1:test") == "so-reranking@refs-pr-1_test"
    assert source_stem("mteb/so-reranking@refs/convert/parquet") == "so-reranking@refs-convert-parquet"


def test_a_revision_the_hub_does_not_have_says_to_check_it_not_to_download_elsewhere(monkeypatch):
    from huggingface_hub.errors import RevisionNotFoundError

    try:
        import httpx2 as http  # huggingface_hub 2's HTTP library
    except ImportError:
        import httpx as http  # huggingface_hub 1's (requirements.txt admits both)

    url = "https://huggingface.co/api/models/someone/some-reranker/revision/v3"

    def snapshot_download(*args, **kwargs):
        raise RevisionNotFoundError(f"404 Client Error. Revision Not Found for url: {url}.",
                                    response=http.Response(404, request=http.Request("GET", url)))

    monkeypatch.setattr("huggingface_hub.snapshot_download", snapshot_download)
    monkeypatch.setattr("rerank_distill.hub.unreachable_hugging_face_host", lambda: None)  # the hub answered
    with pytest.raises(InputError, match=r"from huggingface: 404 Client Error\. Revision Not Found .* Check the id and "
                                         r"the revision after @; a gated or private repository needs `hf auth login`") as error:
        resolve_model("someone/some-reranker@v3")
    assert "On a machine with internet" not in str(error.value)


def test_a_data_set_the_hub_does_not_have_says_to_check_it(monkeypatch):
    def load_dataset(*args, **kwargs):
        raise FileNotFoundError("Dataset 'someone/some-data' doesn't exist on the Hub or cannot be accessed.")

    monkeypatch.setattr("datasets.load_dataset", load_dataset)
    monkeypatch.setattr("rerank_distill.hub.unreachable_hugging_face_host", lambda: None)
    with pytest.raises(InputError, match=r"could not fetch dataset 'someone/some-data' from huggingface: Dataset "
                                         r"'someone/some-data' doesn't exist on the Hub.* Check the id"):
        load_hub_dataset("someone/some-data", "test")


def test_a_revision_of_a_local_model_folder_is_refused_not_ignored(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    with pytest.raises(InputError, match=r"^'.*/model' is a local folder, and @v2 names a revision of a hub model: "
                                         r"pass the folder as .*/model, or move it away"):
        resolve_model(f"{tmp_path}/model@v2")


def test_a_hub_data_set_of_no_rows_is_refused_as_an_empty_file_is_not_read_as_no_queries(monkeypatch):
    monkeypatch.setattr("rerank_distill.hub.load_hub_dataset", lambda *args, **kwargs: [])
    with pytest.raises(InputError, match=r"^someone/some-data:validation: contains no records \(the data set is empty\)"):
        list(iter_rows("someone/some-data:validation"))


def test_a_training_run_folder_without_its_final_model_points_to_its_checkpoint(tmp_path):
    run = tmp_path / "model"  # train.py stopped before its final save: checkpoints and args.json, no config.json
    for step in (5, 10):
        (run / f"checkpoint-{step}").mkdir(parents=True)
        (run / f"checkpoint-{step}" / "config.json").write_text("{}", encoding="utf-8")
    (run / "args.json").write_text("{}", encoding="utf-8")
    with pytest.raises(InputError, match=rf"^'{run}' is a train.py output folder without its final model .*"
                                         rf"pass its newest checkpoint, {run / 'checkpoint-10'}, or finish the run"):
        resolve_model(str(run))


def test_a_data_file_given_as_a_model_is_named_a_file(tmp_path):
    data = tmp_path / "test.jsonl"
    data.write_text('{"query": "q", "positive": ["a"], "negative": ["b"]}\n', encoding="utf-8")
    with pytest.raises(InputError, match=rf"^'{data}' is a file, not a model: a model is a folder with a config.json"):
        resolve_model(str(data))


def fake_modelscope_data_sets(monkeypatch, load):
    """A ``modelscope.msdatasets`` whose MsDataset.load is ``load``."""
    module = types.ModuleType("modelscope.msdatasets")
    module.MsDataset = types.SimpleNamespace(load=load)
    monkeypatch.setitem(sys.modules, "modelscope", types.ModuleType("modelscope"))
    monkeypatch.setitem(sys.modules, "modelscope.msdatasets", module)


def test_a_modelscope_data_set_loaded_as_a_datasets_dataset_is_read(monkeypatch):
    """ModelScope's usual (general) data sets come back from MsDataset.load as a datasets.Dataset, which
    has no to_hf_dataset: it was reported as a failed download."""
    import datasets

    record = {"query": "q", "positive": ["p"], "negative": ["n"]}
    fake_modelscope_data_sets(monkeypatch, lambda *args, **kwargs: datasets.Dataset.from_list([record]))
    assert list(load_hub_dataset("someone/some-data", "test", hub="modelscope")) == [record]
    assert [row for _, _, row in iter_rows("someone/some-data:test", hub="modelscope")] == [record]


def test_a_modelscope_data_set_without_cache_dir_goes_to_modelscopes_own_cache(monkeypatch):
    """MsDataset.load's default cache_dir is ModelScope's (MODELSCOPE_CACHE): an explicit None sent its
    general data sets to datasets' cache instead, and failed its others (os.path.join(None, ...))."""
    import datasets

    asked = []

    def load(name, **kwargs):
        asked.append(kwargs)
        return datasets.Dataset.from_list([{"query": "q", "positive": ["p"], "negative": ["n"]}])

    fake_modelscope_data_sets(monkeypatch, load)
    for cache_dir in (None, ""):
        load_hub_dataset("someone/some-data", "test", hub="modelscope", cache_dir=cache_dir)
    load_hub_dataset("someone/some-data", "test", hub="modelscope", cache_dir="/ms")
    assert ["cache_dir" in kwargs for kwargs in asked] == [False, False, True]
    assert asked[-1]["cache_dir"] == "/ms"


def test_an_unreachable_hub_and_a_partly_downloaded_model_says_the_copy_is_incomplete_not_missing(no_connection,
                                                                                                   tmp_path):
    """A download cut off leaves config.json but not the weights, and the tree listing huggingface_hub 2
    keeps: the cache does hold a copy, so "there is no copy in the cache" sent the user to look for none."""
    from huggingface_hub import errors

    if not hasattr(errors, "IncompleteSnapshotError"):
        pytest.skip("huggingface_hub 1 keeps no tree listing: it serves the partial copy, which fails to load")
    snapshot = cached_snapshot(tmp_path, "someone/some-reranker")
    files = {name: {"size": 2, "blob_id": "a" * 40} for name in ("config.json", "model.safetensors")}
    trees = tmp_path / "models--someone--some-reranker" / "trees"
    trees.mkdir()
    (trees / f"{snapshot.name}.json").write_text(json.dumps({"format_version": 1, "files": files}), encoding="utf-8")
    with pytest.raises(InputError, match=r"cannot be reached and the copy in the cache .* is incomplete \(1 file\(s\) "
                                         r"are missing \(model\.safetensors\)\).*`hf download someone/some-reranker "
                                         r"--local-dir DIR`") as error:
        resolve_model("someone/some-reranker", cache_dir=str(tmp_path))
    assert "no copy" not in str(error.value)


def test_models_in_a_folder_named_snapshots_are_told_apart_and_a_hub_snapshot_is_one_whatever_its_cache(tmp_path):
    """Stage 1 reuses a finished output whose teachers have the same model_identity: two models under a
    folder of one's own named snapshots (snapshots/run1/a and b), or two subfolders of one hub
    snapshot, were one model, and the second was never scored."""
    from rerank_distill.scoring import model_identity

    mine = tmp_path / "snapshots" / "run1"
    assert model_identity(str(mine / "a")) != model_identity(str(mine / "b"))
    snapshot = Path("models--acme--rerankers") / "snapshots" / ("1" * 40)
    assert model_identity(str(tmp_path / "cache" / snapshot / "small")) != model_identity(
        str(tmp_path / "cache" / snapshot / "large"))
    # the same snapshot in two caches (--cache_dir, the default one) is one model, as recorded before
    assert model_identity(str(tmp_path / "cache" / snapshot)) == model_identity(str(tmp_path / "hub" / snapshot)) == (
        snapshot.as_posix())
