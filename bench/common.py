"""What the benchmarks share: alternating timed runs, medians, the machine's description and
writing results as JSON."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "semeval16b"


def machine() -> dict:
    import torch

    info = {"platform": platform.platform(), "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX-512 BF16 or AMX), where bf16 pays off."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next(line for line in cpuinfo if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def alternate(runs: dict[str, Callable[[], float]], repetitions: int) -> dict[str, list[float]]:
    """Call each run ``repetitions`` times, interleaved (A B A B ...; the order flips every
    repetition so neither side always runs on a warmer machine). Each run returns its own
    measured rate; returns the list of rates per run."""
    rates: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for repetition in range(repetitions):
        for name in names if repetition % 2 == 0 else reversed(names):
            rates[name].append(runs[name]())
    return rates


def timed(function: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def median(values: list[float]) -> float:
    return statistics.median(values)


def write_results(path: str | Path, results: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return path


def print_table(title: str, rows: list[tuple[str, float]], unit: str, baseline: str) -> None:
    base = dict(rows)[baseline]
    print(f"\n{title}")
    print(f"{'run':<34} {unit:>14} {'x baseline':>11}")
    for name, rate in rows:
        print(f"{name:<34} {rate:>14.2f} {rate / base:>11.2f}")
