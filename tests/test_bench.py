"""The benchmark script runs (a smoke run; no timing is asserted)."""

import json
import os
import subprocess
import sys

import pytest

from .conftest import REPO_ROOT


@pytest.mark.slow
def test_bench_smoke_writes_a_result_table(tmp_path):
    output = tmp_path / "bench.json"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "benchmarks" / "bench.py"),
            "--smoke",
            "--output",
            str(output),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(output.read_text())
    (row,) = report["results"]
    assert row["precision"] == "float32" and row["jit_compile"] is False
    assert row["parameters"] > 0 and row["peak_rss_mib"] > 0
    assert "| float32 | off |" in report["table"] and "| float32 | off |" in result.stdout
