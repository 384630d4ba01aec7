"""Checkpoints: the last and the best model of a run, saved atomically."""

from __future__ import annotations

import json
import math
import os

import keras

from ddpm_keras.files import save_model, write_json


class ModelCheckpoints(keras.callbacks.Callback):
    """Saves `last.keras` every epoch and `best.keras` when `monitor` improves.

    Both are whole models (EMA weights and optimizer state included) that
    `keras.models.load_model` reads back. Unlike `keras.callbacks.ModelCheckpoint`
    each file is written under a temporary name and renamed, so a kill never
    leaves a truncated checkpoint.

    `best.json` records the best epoch and value. A resumed run (one that
    starts after epoch 1) reads it back, so a worse epoch after the restart
    cannot replace `best.keras`; a run that starts from epoch 1 begins anew.

    Args:
        directory: Folder for `last.keras` and `best.keras`.
        monitor: Log key to minimise (falls back to `loss` when absent, e.g.
            without validation data).
    """

    def __init__(self, directory, monitor="val_loss"):
        super().__init__()
        self.directory = os.fspath(directory)
        self.monitor = monitor
        self.best = math.inf
        self._starting = True

    @property
    def last_path(self):
        return os.path.join(self.directory, "last.keras")

    @property
    def best_path(self):
        return os.path.join(self.directory, "best.keras")

    @property
    def best_record_path(self):
        return os.path.join(self.directory, "best.json")

    def on_train_begin(self, logs=None):
        self._starting = True

    def on_epoch_begin(self, epoch, logs=None):
        # The first epoch of this fit: after BackupAndRestore (if resuming) set it.
        if not self._starting:
            return
        self._starting = False
        self.best = math.inf
        if epoch > 0 and os.path.exists(self.best_record_path):
            with open(self.best_record_path, encoding="utf-8") as file:
                record = json.load(file)
            if record["epoch"] <= epoch and record["monitor"] == self.monitor:
                self.best = record["value"]

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        save_model(self.model, self.last_path)
        value = logs.get(self.monitor, logs.get("loss"))
        if value is not None and math.isfinite(value) and value < self.best:
            self.best = float(value)
            save_model(self.model, self.best_path)
            record = {"epoch": epoch + 1, "monitor": self.monitor, "value": self.best}
            write_json(self.best_record_path, record)


def backup_and_restore(backup_dir):
    """`keras.callbacks.BackupAndRestore` for resuming an interrupted `fit`.

    Re-running the same `fit` after a crash restores the weights, optimizer
    and epoch counter from `backup_dir`; the backup is deleted when training
    completes.
    """
    return keras.callbacks.BackupAndRestore(backup_dir=os.fspath(backup_dir))
