"""benchmarks/run_all.py gathers the benchmarks' targets into one table."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.pipelines.conftest import REPO

pytestmark = pytest.mark.slow


def test_run_all_prints_one_row_per_target_with_its_ratio() -> None:
    result = subprocess.run([sys.executable, str(REPO / "benchmarks/run_all.py"), "--quick", "--only", "data_filtering"],
                            capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr
    table = result.stdout.split("stage ")[-1].splitlines()
    assert table[0].split() == ["measure", "measured", "target", "ratio"]
    rows = [line for line in table if line.startswith("data_filtering")]
    assert [row.split()[1] for row in rows] == ["processes:", "dask:"]
    assert all("2 workers / 1 worker (samples/s)" in row and ">= 1.6" in row for row in rows)
