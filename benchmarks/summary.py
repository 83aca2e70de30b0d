"""The targets the benchmarks measure against, gathered into one table by ``run_all.py``.

A benchmark calls ``record_target(stage, measure, measured, target, higher_is_better)`` for each of
its targets; when ``run_all.py`` runs it (``VTP_BENCHMARK_SUMMARY`` names a file), the row is
appended there as one JSON line. ``ratio`` is measured / target when higher is better and
target / measured otherwise, so a ratio >= 1 always means the target is met.
"""

from __future__ import annotations

import json
import os

SUMMARY_ENV = "VTP_BENCHMARK_SUMMARY"


def record_target(stage: str, measure: str, measured: float, target: float, higher_is_better: bool) -> None:
    path = os.environ.get(SUMMARY_ENV)
    if not path:
        return
    ratio = measured / target if higher_is_better else target / measured
    row = {"stage": stage, "measure": measure, "measured": measured,
           "target": f"{'>=' if higher_is_better else '<='} {target:g}", "ratio": ratio}
    with open(path, "a") as handle:
        handle.write(json.dumps(row) + "\n")
