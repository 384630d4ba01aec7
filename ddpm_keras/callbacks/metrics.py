"""`metrics.json`: one record per epoch, rewritten atomically after each."""

from __future__ import annotations

import json
import os
import time

import keras
import numpy as np

from ddpm_keras.files import write_json


def current_learning_rate(optimizer):
    """The optimizer's learning rate now, as a float (schedules evaluated)."""
    learning_rate = optimizer.learning_rate
    if callable(learning_rate):  # A LearningRateSchedule not yet wrapped.
        learning_rate = learning_rate(optimizer.iterations)
    return float(np.asarray(keras.ops.convert_to_numpy(learning_rate)))


class MetricsJSON(keras.callbacks.Callback):
    """Keeps `path` a JSON list of per-epoch records.

    Each record holds `epoch` (1-based), every value in the epoch logs (e.g.
    `loss`, `val_loss`, and any metric other callbacks add), `learning_rate`
    and `time_s` (the epoch's wall time). Records of epochs at or after the
    current one are dropped first, so a resumed run continues the file
    without duplicates.

    Args:
        path: The JSON file.
    """

    def __init__(self, path):
        super().__init__()
        self.path = os.fspath(path)
        self._epoch_start = None

    def _read(self):
        if not os.path.exists(self.path):
            return []
        with open(self.path, encoding="utf-8") as file:
            return json.load(file)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        record = {"epoch": epoch + 1}
        record.update({key: float(value) for key, value in (logs or {}).items()})
        record["learning_rate"] = current_learning_rate(self.model.optimizer)
        record["time_s"] = round(time.perf_counter() - self._epoch_start, 3)
        records = [r for r in self._read() if r["epoch"] < record["epoch"]]
        records.append(record)
        write_json(self.path, records)
