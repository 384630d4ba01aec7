"""Runs you can trust: kills, full disks, changed flags and second runs lose nothing.

The training runs here use `fakes.fake_dataset` (3 batches an epoch), so
an uninterrupted 2-epoch run takes 6 optimizer steps. Faults are injected
at named write points (see `ddpm_keras.files.FAULT_VARIABLE`).
"""

import csv
import hashlib
import json
import os
import signal
import subprocess
import sys

import pytest

from ddpm_keras.cli import train_main
from ddpm_keras.files import FAULT_VARIABLE

from .conftest import REPO_ROOT
from .fakes import use_fake_data

# A small run: 2 epochs of 3 steps, grids of 4 images in 2 DDIM steps.
FLAGS = [
    "--preset", "smoke", "--epochs", "2", "--num-samples", "4", "--sample-steps", "2",
    "--batch-size", "16", "--channel-multipliers", "1", "--timesteps", "10",
]  # fmt: skip
STEPS_PER_EPOCH = 3


def run_training(output_dir, *extra, fault=None):
    """`ddpm-train` on the fake data in a fresh process; returns the CompletedProcess."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    env.pop(FAULT_VARIABLE, None)
    if fault:
        env[FAULT_VARIABLE] = fault
    command = [sys.executable, "-m", "tests.fake_data_train", *FLAGS, "--output-dir", str(output_dir), *extra]  # fmt: skip
    return subprocess.run(
        command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )


def recorded_epochs(output_dir):
    """The epochs of metrics.json and of history.csv."""
    records = json.loads((output_dir / "metrics.json").read_text())
    with open(output_dir / "history.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    return [r["epoch"] for r in records], [int(row["epoch"]) for row in rows]


def optimizer_steps(path):
    from ddpm_keras.model import load_diffusion_model

    return int(load_diffusion_model(path).optimizer.iterations.numpy())


def digests(output_dir):
    """Every file of the run but its lock, by relative path: path -> SHA-256."""
    return {
        str(path.relative_to(output_dir)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(output_dir.rglob("*"))
        if path.is_file() and path.name != ".lock"
    }


# Kills in the order a run reaches them, each run resuming from where the
# previous one was killed: before a rename (the temporary file complete) and
# after one, in the first epoch (nothing to replace yet) and the second, at
# the checkpoints, the records, the grids, both backups and the final model.
# The soak script (scripts/soak_resume.py --all-write-points) kills at every
# write point.
KILL_POINTS = [
    "samples/epoch_001.png:before",
    "backup/epoch-0001.weights.h5:before",
    "checkpoints/last.keras:after",
    "metrics.json:before",
    "history.csv:after",
    "backup/epoch-0002.weights.h5:after",
    "model.keras:before",
]


@pytest.mark.slow
def test_kills_at_seven_write_points_each_resume_to_the_uninterrupted_run(tmp_path):
    output_dir = tmp_path / "run"
    for point in KILL_POINTS:
        killed = run_training(output_dir, fault=f"kill@{point}")
        assert killed.returncode == -signal.SIGKILL, (point, killed.stderr[-2000:])
        # Whatever the kill hit, every file of the run is whole.
        json.loads((output_dir / "config.json").read_text())
        if (output_dir / "metrics.json").exists():
            json.loads((output_dir / "metrics.json").read_text())
    finished = run_training(output_dir)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "Resuming after epoch 2" in finished.stdout
    assert optimizer_steps(output_dir / "model.keras") == 2 * STEPS_PER_EPOCH
    assert recorded_epochs(output_dir) == ([1, 2], [1, 2])
    assert [p.name for p in (output_dir / "backup").iterdir()] == ["epoch-0002.weights.h5"]
    leftovers = [p for p in output_dir.rglob(".*") if p.name != ".lock"]
    assert leftovers == []


def test_a_full_disk_or_denied_write_is_one_line_and_the_rerun_resumes(
    tmp_path, monkeypatch, capsys
):
    use_fake_data(monkeypatch)
    argv = [*FLAGS, "--output-dir", str(tmp_path)]
    # A full disk at the first backup; then, as the rerun records epoch 1
    # again, no permission for metrics.json. Each is one line, and nothing
    # is lost.
    faults = [("enospc", "backup/epoch-0001.weights.h5:before"), ("eacces", "metrics.json:before")]
    for fault, point in faults:
        monkeypatch.setenv(FAULT_VARIABLE, f"{fault}@{point}")
        assert train_main(argv) == 2
        message = capsys.readouterr().err.strip()
        assert message.count("\n") == 0 and message.startswith("error: ")
        assert point.split(":")[0] in message and "re-run the same command" in message
    assert recorded_epochs(tmp_path) == ([1], [1])  # the first run's record, intact
    monkeypatch.delenv(FAULT_VARIABLE)
    assert train_main(argv) == 0
    assert optimizer_steps(tmp_path / "model.keras") == 2 * STEPS_PER_EPOCH
    assert recorded_epochs(tmp_path) == ([1, 2], [1, 2])


def test_a_finished_run_is_kept_refused_when_changed_and_extended_by_epochs(
    tmp_path, monkeypatch, capsys
):
    use_fake_data(monkeypatch)
    argv = [*FLAGS, "--epochs", "1", "--output-dir", str(tmp_path)]
    assert train_main(argv) == 0
    capsys.readouterr()
    finished = digests(tmp_path)

    # The identical command: complete, nothing changes.
    assert train_main(argv) == 0
    assert "is complete" in capsys.readouterr().out
    assert digests(tmp_path) == finished

    # Another architecture or seed: refused, naming both values; nothing changes.
    for flag, value, recorded in (("--base-channels", "16", "8"), ("--seed", "3", "42")):
        assert train_main([*argv, flag, value]) == 2
        message = capsys.readouterr().err
        field = flag[2:].replace("-", "_")
        assert f"{field} {recorded} -> {value}" in message and "--overwrite" in message
        assert digests(tmp_path) == finished

    # More epochs: the run continues from its final state.
    first_loss = json.loads((tmp_path / "metrics.json").read_text())[0]["loss"]
    assert train_main([*argv, "--epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert "Continuing the run" in out and f"optimizer step {STEPS_PER_EPOCH}" in out
    assert optimizer_steps(tmp_path / "model.keras") == 2 * STEPS_PER_EPOCH
    assert recorded_epochs(tmp_path) == ([1, 2], [1, 2])
    records = json.loads((tmp_path / "metrics.json").read_text())
    # A fresh start with the same seed would repeat epoch 1's loss exactly.
    assert records[0]["loss"] == first_loss and records[1]["loss"] != first_loss
    assert json.loads((tmp_path / "config.json").read_text())["epochs"] == 2

    # --overwrite starts a different run anew.
    assert train_main([*argv, "--seed", "3", "--overwrite"]) == 0
    assert "--overwrite: deleted" in capsys.readouterr().out
    assert json.loads((tmp_path / "config.json").read_text())["seed"] == 3
    assert recorded_epochs(tmp_path) == ([1], [1])


HOLD_LOCK = """
import sys, time
from ddpm_keras.run_dir import lock_output_dir
lock_output_dir(sys.argv[1])
print("locked", flush=True)
time.sleep(600)
"""


def test_a_second_run_on_a_directory_is_refused_and_a_killed_holder_frees_it(
    tmp_path, monkeypatch, capsys
):
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(tmp_path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        use_fake_data(monkeypatch)
        argv = [*FLAGS, "--epochs", "1", "--output-dir", str(tmp_path)]
        assert train_main(argv) == 2
        message = capsys.readouterr().err
        assert f"process {holder.pid}" in message and "--output-dir" in message
        assert not (tmp_path / "config.json").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    # kill -9 leaves no stale lock.
    from ddpm_keras.run_dir import lock_output_dir, unlock_output_dir

    lock_output_dir(tmp_path)
    unlock_output_dir(tmp_path)
