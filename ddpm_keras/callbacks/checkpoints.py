"""Checkpoints: the last and the best model of a run, saved atomically."""

from __future__ import annotations

import math
import os

import keras

from ddpm_keras.files import save_model


class ModelCheckpoints(keras.callbacks.Callback):
    """Saves `last.keras` every epoch and `best.keras` when `monitor` improves.

    Both are whole models (EMA weights and optimizer state included) that
    `keras.models.load_model` reads back. Unlike `keras.callbacks.ModelCheckpoint`
    each file is written under a temporary name and renamed, so a kill never
    leaves a truncated checkpoint.

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

    @property
    def last_path(self):
        return os.path.join(self.directory, "last.keras")

    @property
    def best_path(self):
        return os.path.join(self.directory, "best.keras")

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        save_model(self.model, self.last_path)
        value = logs.get(self.monitor, logs.get("loss"))
        if value is not None and math.isfinite(value) and value < self.best:
            self.best = float(value)
            save_model(self.model, self.best_path)


def backup_and_restore(backup_dir):
    """`keras.callbacks.BackupAndRestore` for resuming an interrupted `fit`.

    Re-running the same `fit` after a crash restores the weights, optimizer
    and epoch counter from `backup_dir`; the backup is deleted when training
    completes.
    """
    return keras.callbacks.BackupAndRestore(backup_dir=os.fspath(backup_dir))
