"""The benchmark script runs (a smoke run; no timing is asserted)."""

import json
import os
import subprocess
import sys

import pytest

from .conftest import REPO_ROOT

BENCH = REPO_ROOT / "benchmarks" / "bench.py"


def run_bench(*args):
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(
        [sys.executable, str(BENCH), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.mark.slow
def test_bench_smoke_writes_a_result_table(tmp_path):
    pytest.importorskip("torch")
    output = tmp_path / "bench.json"
    variants = ["tf-float32", "torch-eager", "torch-bf16"]
    result = run_bench("--smoke", "--variants", *variants, "--output", str(output))
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(output.read_text())
    assert [row["variant"] for row in report["rows"]] == variants
    for row in report["rows"]:
        assert row["timed_steps"] == 2 and row["step_s_min"] > 0
        assert row["peak_rss_mib"] >= row["train_peak_rss_mib"] > 0
        assert row["train_gflops"] > 0
    # The script asserts the twins' sizes are equal; the report says it.
    assert len({row["parameters"] for row in report["rows"]}) == 1
    assert report["flops"]["train_flop_per_image"] > 2 * report["flops"]["forward_flop_per_image"]
    for variant in variants:
        assert f"| {variant} |" in report["table"] and f"| {variant} |" in result.stdout


def test_bench_rejects_the_real_pipeline_without_data():
    result = run_bench("--variants", "tf-float32-real")
    assert result.returncode == 2
    assert "--manual-dir" in result.stderr
