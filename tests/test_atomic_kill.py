"""Kill a writer with SIGKILL mid-flight: every artifact is the old or the new one."""

import json
import os
import signal
import subprocess
import sys
import time
import zipfile

import pytest

from .conftest import REPO_ROOT

WRITER = """
import sys, numpy as np
from ddpm_keras.files import save_image_grid, save_model, write_json
from ddpm_keras.model import DiffusionModel
from ddpm_keras.schedule import NoiseSchedule
from ddpm_keras.unet import build_unet

out = sys.argv[1]
model = DiffusionModel(build_unet((8, 8, 1), 8, (1, 2), 1, norm_groups=4), NoiseSchedule())
version = 0
while True:
    write_json(f"{out}/metrics.json", {"version": version, "payload": [version] * 200_000})
    save_image_grid(np.full((16, 8, 8, 1), version % 2, np.float32), f"{out}/grid.png")
    save_model(model, f"{out}/model.keras")
    version += 1
    print(version, flush=True)
"""


def png_is_complete(path):
    data = path.read_bytes()
    return data.startswith(b"\x89PNG\r\n\x1a\n") and data.endswith(b"IEND\xaeB`\x82")


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.05, 0.3, 0.7])
def test_sigkill_leaves_old_or_new_artifacts(delay, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    # Wait for one complete round, then kill at some point of a later one.
    assert writer.stdout.readline().strip() == "1"
    time.sleep(delay)
    writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=30)

    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["payload"] == [metrics["version"]] * 200_000
    assert png_is_complete(tmp_path / "grid.png")
    with zipfile.ZipFile(tmp_path / "model.keras") as archive:
        assert archive.testzip() is None
    from ddpm_keras.model import load_diffusion_model

    assert load_diffusion_model(tmp_path / "model.keras").image_shape == (8, 8, 1)
