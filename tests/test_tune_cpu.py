"""The cpu-preset trial runner's table (no training here; the trials are benchmarks)."""

import importlib.util
import json

import pytest

from .conftest import REPO_ROOT


def load_tune_cpu():
    spec = importlib.util.spec_from_file_location(
        "tune_cpu", REPO_ROOT / "benchmarks" / "tune_cpu.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_trial(root, name, flags, fids):
    rows = [
        {"sampler": "ddim", "steps": steps, "fid": fid, "kid": 0.5}
        for steps, fid in zip((25, 50), fids, strict=True)
    ]
    record = {
        "name": name,
        "train_flags": flags,
        "epoch_time_s": 600.0,
        "final_val_loss": 0.05,
        "rows": rows,
    }
    (root / name).mkdir()
    (root / name / "trial.json").write_text(json.dumps(record))


def test_summarize_prints_one_row_per_trial(tmp_path, capsys):
    tune_cpu = load_tune_cpu()
    write_trial(tmp_path, "a-base", ["--epochs", "1"], (40.0, 41.5))
    write_trial(tmp_path, "b-cosine", ["--schedule", "cosine"], (30.25, 29.0))
    tune_cpu.main(["--root", str(tmp_path), "--summarize"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == ("| trial | flags | train min | val loss | FID ddim:25 | FID ddim:50 |")
    assert lines[2] == "| a-base | `--epochs 1` | 10.0 | 0.0500 | 40.00 | 41.50 |"
    assert lines[3].startswith("| b-cosine | `--schedule cosine` |")


def test_arguments_are_checked(tmp_path):
    tune_cpu = load_tune_cpu()
    with pytest.raises(SystemExit):
        tune_cpu.parse_args(["--root", str(tmp_path)])  # no --name, no --summarize
    args = tune_cpu.parse_args(["--root", "r", "--name", "n", "--", "--epochs", "3"])
    assert args.train_flags == ["--epochs", "3"]
    with pytest.raises(SystemExit, match="No trial.json"):
        tune_cpu.summarize(str(tmp_path))
