"""`metrics.json` and `history.csv`: one record per epoch, rewritten atomically after each."""

from __future__ import annotations

import csv
import io
import json
import os
import time

import keras
import numpy as np

from ddpm_keras.files import write_json, write_text


def current_learning_rate(optimizer):
    """The optimizer's learning rate now, as a float (schedules evaluated)."""
    learning_rate = optimizer.learning_rate
    if callable(learning_rate):  # A LearningRateSchedule not yet wrapped.
        learning_rate = learning_rate(optimizer.iterations)
    return float(np.asarray(keras.ops.convert_to_numpy(learning_rate)))


def records_csv(records):
    """Per-epoch records as CSV text: an `epoch` column, then every key in sorted order."""
    keys = sorted({key for record in records for key in record} - {"epoch"})
    text = io.StringIO()
    writer = csv.DictWriter(text, ["epoch", *keys], lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    return text.getvalue()


def read_records(path):
    """The per-epoch records of a `metrics.json` (`[]` if it does not exist)."""
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as file:
        return json.load(file)


def recorded_history(path):
    """A `metrics.json` as a Keras-style history: key -> per-epoch values, epoch 1 first.

    Every key of the records but `epoch`; `{}` if the file does not exist.
    """
    records = read_records(path)
    keys = [key for key in records[0] if key != "epoch"] if records else []
    return {key: [record.get(key) for record in records] for key in keys}


class MetricsJSON(keras.callbacks.Callback):
    """Keeps `path` a JSON list of per-epoch records, and `csv_path` the same as CSV.

    Each record holds `epoch` (1-based), every value in the epoch logs (e.g.
    `loss`, `val_loss`, and any metric other callbacks add), `learning_rate`
    and `time_s` (the epoch's wall time). Records of epochs at or after the
    current one are dropped first, so a resumed or extended run continues
    the files, each epoch recorded once. Both files are rewritten whole,
    atomically (unlike `keras.callbacks.CSVLogger`, which appends).

    Args:
        path: The JSON file.
        csv_path: The CSV file (`None`: none), written from the same records.
    """

    def __init__(self, path, csv_path=None):
        super().__init__()
        self.path = os.fspath(path)
        self.csv_path = None if csv_path is None else os.fspath(csv_path)
        self._epoch_start = None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        record = {"epoch": epoch + 1}
        record.update({key: float(value) for key, value in (logs or {}).items()})
        record["learning_rate"] = current_learning_rate(self.model.optimizer)
        record["time_s"] = round(time.perf_counter() - self._epoch_start, 3)
        records = [r for r in read_records(self.path) if r["epoch"] < record["epoch"]]
        records.append(record)
        write_json(self.path, records)
        if self.csv_path is not None:
            write_text(self.csv_path, records_csv(records))
