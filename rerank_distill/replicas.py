"""One teacher replica per GPU: stage 1 re-launches itself as N processes, each scoring a
deterministic share of the queries (``--shard i/N``) on its own GPU(s); stage 1 then joins the
shards in input order (merge_shards). Every worker resumes its own shard, so rerunning the command after a crash
continues all of them. (vLLM's own data parallelism needs a multi-process launch as well:
``LLM(data_parallel_size>1)`` refuses single-process use.)"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

from rerank_distill.errors import InputError
from rerank_distill.scoring import Shard, beside, is_finished, output_path_for

logger = logging.getLogger(__name__)


def without_flag(argv: list[str], flag: str) -> list[str]:
    """``argv`` without ``--flag VALUE`` / ``--flag=VALUE``, the flag spelled with underscores or
    dashes (the parser takes ``--data-parallel-size`` for ``--data_parallel_size``)."""
    spellings = {flag, "--" + flag[2:].replace("_", "-")}
    kept, skip = [], False
    for token in argv:
        if skip:
            skip = False
        elif token in spellings:
            skip = True
        elif token.split("=", 1)[0] not in spellings:
            kept.append(token)
    return kept


def visible_gpus() -> list[str]:
    """The GPU ids replicas may use: CUDA_VISIBLE_DEVICES when set, else every GPU torch sees."""
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return [gpu for gpu in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if gpu.strip()]
    import torch

    return [str(index) for index in range(torch.cuda.device_count())]


def gpu_groups(num_replicas: int, gpus_per_replica: int, on_cpu: bool = False) -> list[str | None]:
    """The CUDA_VISIBLE_DEVICES value of each replica (None everywhere when they run on the CPU:
    asked for, or on a machine without GPUs)."""
    gpus = [] if on_cpu else visible_gpus()
    if not gpus:
        if not on_cpu:
            logger.warning("no GPU found: running %d replicas on the CPU", num_replicas)
        return [None] * num_replicas
    needed = num_replicas * gpus_per_replica
    if len(gpus) < needed:
        raise InputError(
            f"--data_parallel_size {num_replicas} x --tensor_parallel_size {gpus_per_replica} needs {needed} GPUs, "
            f"but {len(gpus)} are visible ({','.join(gpus)})"
        )
    return [",".join(gpus[i * gpus_per_replica : (i + 1) * gpus_per_replica]) for i in range(num_replicas)]


def _pairs_done(inputs: list[tuple[str, int]], output_dir: str, shards: list[Shard], counted: dict) -> int:
    """The pairs the replicas have written so far: a finished shard file's lines (counted once per
    size and time of the file, in ``counted``), else what an unfinished one's progress file says."""
    done = 0
    for source, passages_as_queries in inputs:
        for shard in shards:
            path = output_path_for(source, output_dir, shard, passages_as_queries)
            progress = beside(path, ".progress.json")
            try:
                if is_finished(path):
                    stat = path.stat()
                    version = (stat.st_size, stat.st_mtime_ns)  # (--overwrite replaces a finished file)
                    if counted.get(path, (None, 0))[0] != version:
                        with open(path, "rb") as lines:
                            counted[path] = (version, sum(1 for _ in lines))
                    done += counted[path][1]
                elif progress.exists():
                    done += json.loads(progress.read_text(encoding="utf-8"))["done"]["pairs"]
            except (OSError, ValueError, KeyError):  # being replaced at this moment
                pass
    return done


# set in each replica's environment to the launching process's id (see stop_with_launcher)
LAUNCHER_PID = "RERANK_DISTILL_LAUNCHER_PID"


def stop_with_launcher() -> None:
    """In a replica run_replicas started, or a worker torchrun started: have the kernel send it
    SIGTERM when the launching process dies, even by SIGKILL, which gives the launcher no chance
    to stop it (an orphan would hold its shard or output folder, and its GPU, and make the rerun of
    the command fail; torchrun starts each worker in a session of its own, so even killing
    torchrun's process group leaves them training). Nothing elsewhere, and nothing where the
    kernel has no prctl (not Linux): there a SIGKILLed launcher leaves its workers to finish."""
    launcher = os.environ.get(LAUNCHER_PID)
    if not launcher and "TORCHELASTIC_RUN_ID" in os.environ:  # torchrun's agent is the worker's parent
        launcher = str(os.getppid())
    if not launcher:
        return
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return
    pr_set_pdeathsig = 1
    prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != int(launcher):  # it died before the line above could take effect
        os.kill(os.getpid(), signal.SIGTERM)


def _stop(processes: list[subprocess.Popen], grace_seconds: float = 10) -> None:
    """Terminate each running process, then kill any still running after ``grace_seconds``. A
    replica may stop anywhere: its progress is recorded only after a whole chunk is on disk, and
    the next run cuts any half-written one. (SIGTERM, not SIGINT: a job started in the background
    ignores SIGINT, and so do the replicas it starts.)"""
    running = [process for process in processes if process.poll() is None]
    for process in running:
        process.terminate()
    deadline = time.monotonic() + grace_seconds
    for process in running:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run_replicas(
    script: str, argv: list[str], num_replicas: int, gpus_per_replica: int, output_dir: str,
    inputs: list[tuple[str, int]], total_pairs: int, show_progress: bool = True, on_cpu: bool = False,
) -> None:
    """Run ``script`` once per replica with ``--shard i/N`` and its own GPUs, showing one progress
    bar over all of them; raise InputError naming the log of any replica that failed. ``inputs``
    are the (source, passages_as_queries) streams the replicas score (see output_path_for)."""
    from tqdm.auto import tqdm

    worker_argv = without_flag(argv, "--data_parallel_size") + ["--no_show_progress"]
    log_dir = Path(output_dir) / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    shards = [Shard(i, num_replicas) for i in range(num_replicas)]
    workers, counted = [], {}
    # A stop of this process (Ctrl-C, or SIGTERM as a scheduler sends it, which run_main turns into
    # one) stops the replicas too: left running, they would race the next run of the same command for
    # the same files.
    with ExitStack() as open_logs, tqdm(total=total_pairs, unit="pair", desc=f"{num_replicas} replicas",
                                        disable=not show_progress) as bar:
        try:
            for shard, gpus in zip(shards, gpu_groups(num_replicas, gpus_per_replica, on_cpu)):
                env = {**os.environ, LAUNCHER_PID: str(os.getpid())}
                if gpus is not None:
                    env["CUDA_VISIBLE_DEVICES"] = gpus
                log_path = log_dir / f"shard-{shard.index}-of-{shard.count}.log"
                log = open_logs.enter_context(open(log_path, "a", encoding="utf-8"))
                command = [sys.executable, script, *worker_argv, "--shard", f"{shard.index}/{shard.count}"]
                process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
                workers.append((shard, log_path, process))
                logger.info("replica %d/%d on GPU %s, log %s", shard.index, shard.count, gpus or "none (CPU)", log_path)
            while any(process.poll() is None for _, _, process in workers):
                bar.n = _pairs_done(inputs, output_dir, shards, counted)
                bar.refresh()
                time.sleep(2)
        except BaseException as error:  # Ctrl-C, SIGTERM, or a replica that could not start: none runs on
            _stop([process for _, _, process in workers])
            if isinstance(error, KeyboardInterrupt):
                logger.warning("stopped %d replicas; each saved its finished chunks: run the same command again%s to "
                               "continue", num_replicas, " without --overwrite" if "--overwrite" in argv else "")
            raise
        bar.n = _pairs_done(inputs, output_dir, shards, counted)
    failed = []
    for shard, log_path, process in workers:
        if process.returncode != 0:
            failed.append(f"replica {shard.index} (exit {process.returncode}: {_last_line(log_path)}; see {log_path})")
    if failed:
        raise InputError(
            "these replicas stopped: " + "; ".join(failed) + ". The others' work is kept: mend what stopped them and "
            "rerun the command to resume."
        )


def _last_line(log_path: Path) -> str:
    """A replica's last log line: its error, where it stopped on one."""
    lines = [line.strip() for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else "no output"
