"""Resume after `kill -9`: the same command continues where the run stopped."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from .conftest import REPO_ROOT


def train_command(output_dir, manual_dir, data_dir):
    return [
        sys.executable, str(REPO_ROOT / "scripts" / "train.py"), "--preset", "smoke",
        "--epochs", "3", "--max-train-examples", "512", "--output-dir", str(output_dir),
        "--manual-dir", manual_dir, "--data-dir", data_dir,
    ]  # fmt: skip


def recorded_epochs(output_dir):
    try:
        return [r["epoch"] for r in json.loads((output_dir / "metrics.json").read_text())]
    except FileNotFoundError:
        return []


@pytest.mark.slow
def test_kill_9_mid_epoch_then_resume(manual_dir, tfds_data_dir, tmp_path):
    env = dict(
        os.environ, PYTHONPATH=str(REPO_ROOT), TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1"
    )
    output_dir = tmp_path / "run"
    command = train_command(output_dir, manual_dir, tfds_data_dir)
    log = open(tmp_path / "first.log", "w")
    first = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300

    def in_epoch_2():
        # Keras' progress bar shows "2/16" once the second of 16 steps is done.
        text = (tmp_path / "first.log").read_text(errors="replace")
        return "Epoch 2/3" in text and "2/16" in text.split("Epoch 2/3", 1)[1]

    while not in_epoch_2() and time.monotonic() < deadline:
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=60)
    log.close()
    assert recorded_epochs(output_dir) == [1], "the kill did not land in epoch 2"
    assert not (output_dir / "model.keras").exists()

    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "Epoch 2/3" in second.stdout and "Epoch 1/3" not in second.stdout

    records = json.loads((output_dir / "metrics.json").read_text())
    assert [r["epoch"] for r in records] == [1, 2, 3]
    # best.keras is the best epoch of the whole run, the killed part included.
    best = min(records, key=lambda record: record["val_loss"])
    best_record = json.loads((output_dir / "checkpoints" / "best.json").read_text())
    assert best_record["epoch"] == best["epoch"]
    assert best_record["value"] == pytest.approx(best["val_loss"])
    # Same number of optimizer steps as an uninterrupted run: 3 epochs x 16 batches.
    from ddpm_keras.model import load_diffusion_model

    model = load_diffusion_model(output_dir / "model.keras")
    assert int(model.optimizer.iterations.numpy()) == 3 * 512 // 32
    assert not (output_dir / "backup").exists()  # removed once the run completed
