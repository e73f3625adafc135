"""The benchmarks' baselines stay faithful where that is cheap to check (the benchmarks themselves
are run by hand)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_data_loading_baseline_patches_every_module_that_reads_columns():
    """bench/data_loading.py's baseline reads value by value wherever train.py's data work calls
    column_values: a module calling it that the baseline left unpatched would read through Arrow
    on both sides (and a module named that no longer has it stopped the benchmark)."""
    from bench.data_loading import column_value_readers

    callers = {f"rerank_distill.{path.stem}" for path in (REPO / "rerank_distill").glob("*.py")
               if re.search(r"\bcolumn_values\(", path.read_text(encoding="utf-8"))}
    readers = set(column_value_readers())
    assert {"rerank_distill.selection", "rerank_distill.samplers"} <= readers
    assert callers <= readers
