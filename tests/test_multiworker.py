"""Two worker processes on localhost train through `fit` under MultiWorkerMirroredStrategy.

This is also the guard of the keras-team/keras#20585 workaround in
`DiffusionModel._step_logs`: without it, both workers fail in their first step.
"""

import json
import os
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

from .conftest import REPO_ROOT

TIMEOUT_SECONDS = 300


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("localhost", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


@pytest.mark.slow
def test_two_workers_train_to_equal_weights_and_only_the_chief_writes(
    manual_dir, tfds_data_dir, tmp_path
):
    from ddpm_keras.data import prepare_builder
    from ddpm_keras.model import load_diffusion_model

    # Prepare the data once, so the two workers do not race to write it.
    prepare_builder("fashion_mnist", tfds_data_dir, manual_dir)
    cluster = {"worker": [f"localhost:{port}" for port in free_ports(2)]}
    processes = []
    for index in range(2):
        env = dict(
            os.environ,
            PYTHONPATH=str(REPO_ROOT),
            TF_CPP_MIN_LOG_LEVEL="2",
            TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
        )
        command = [
            sys.executable,
            str(REPO_ROOT / "tests" / "multiworker_worker.py"),
            str(tmp_path / f"out{index}"),
            str(tmp_path / f"weights{index}.npz"),
            manual_dir,
            tfds_data_dir,
        ]
        log = open(tmp_path / f"worker{index}.log", "w")  # noqa: SIM115 (closed below)
        processes.append(
            (
                subprocess.Popen(
                    command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                ),
                log,
            )
        )
    codes = []
    for process, log in processes:
        try:
            codes.append(process.wait(timeout=TIMEOUT_SECONDS))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            codes.append(process.wait())
        log.close()
    logs = [(tmp_path / f"worker{index}.log").read_text()[-3000:] for index in range(2)]
    assert codes == [0, 0], logs

    chief, other = (np.load(tmp_path / f"weights{index}.npz") for index in range(2))
    assert int(chief["iterations"]) == int(other["iterations"]) == 256 // 32
    for name in chief.files:
        np.testing.assert_array_equal(chief[name], other[name])

    chief_files = {path.name for path in (tmp_path / "out0").iterdir()}
    assert {"config.json", "metrics.json", "model.keras", "ddpm_samples.png"} <= chief_files
    # The final training state is kept, so the run can be extended.
    epochs = len(json.loads((tmp_path / "out0" / "metrics.json").read_text()))
    backups = sorted(os.listdir(tmp_path / "out0" / "backup"))
    assert backups == [f"epoch-{epochs:04d}.weights.h5"]
    assert not (tmp_path / "out1").exists()  # worker 1 wrote no artifacts
    # The chief's saved model holds the trained weights and loads on one device.
    saved = load_diffusion_model(tmp_path / "out0" / "model.keras")
    saved_weights = saved.network.get_weights() + saved.ema_network.get_weights()
    for index, weight in enumerate(saved_weights):
        np.testing.assert_array_equal(weight, chief[f"arr_{index}"])
    metrics = json.loads((tmp_path / "out0" / "metrics.json").read_text())
    assert np.isfinite(metrics[0]["loss"]) and np.isfinite(metrics[0]["val_loss"])
