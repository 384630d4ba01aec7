"""Checkpoints: the last and the best model of a run, saved atomically."""

from __future__ import annotations

import json
import math
import os
import sys

import keras

from ddpm_keras.callbacks.metrics import current_learning_rate
from ddpm_keras.errors import ConfigError
from ddpm_keras.files import save_model, save_model_weights, write_json


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


# The backup of the state after epoch N is `epoch-000N.weights.h5`: the epoch
# is in the name, so the weights and their epoch are written in one rename.
_BACKUP_PREFIX, _BACKUP_SUFFIX = "epoch-", ".weights.h5"


def backup_path(backup_dir, epoch):
    """The backup file of the training state after `epoch` completed epochs."""
    return os.path.join(os.fspath(backup_dir), f"{_BACKUP_PREFIX}{epoch:04d}{_BACKUP_SUFFIX}")


# What keras.callbacks.BackupAndRestore (used before AtomicBackupAndRestore)
# leaves: the weights and, beside them, the completed epochs.
_KERAS_BACKUP, _KERAS_METADATA = "latest.weights.h5", "training_metadata.json"


def backup_states(backup_dir):
    """The backups in `backup_dir`, newest first, as `(completed_epochs, path)` pairs.

    A backup that Keras' `BackupAndRestore` wrote (earlier versions of
    ddpm-keras used it) counts too, so such an interrupted run resumes.
    """
    backup_dir = os.fspath(backup_dir)
    if not os.path.isdir(backup_dir):
        return []
    states = []
    metadata = os.path.join(backup_dir, _KERAS_METADATA)
    if os.path.exists(os.path.join(backup_dir, _KERAS_BACKUP)) and os.path.exists(metadata):
        try:
            with open(metadata, encoding="utf-8") as file:
                epoch = int(json.load(file)["epoch"])
            states.append((epoch, os.path.join(backup_dir, _KERAS_BACKUP)))
        except (OSError, ValueError, KeyError, TypeError):
            pass  # unreadable metadata: not a state to resume from
    for name in os.listdir(backup_dir):
        number = name[len(_BACKUP_PREFIX) : -len(_BACKUP_SUFFIX)]
        if name.startswith(_BACKUP_PREFIX) and name.endswith(_BACKUP_SUFFIX) and number.isdigit():
            states.append((int(number), os.path.join(backup_dir, name)))
    return sorted(states, reverse=True)


class AtomicBackupAndRestore(keras.callbacks.Callback):
    """Backs up the training state every epoch; a re-run `fit` resumes from it.

    Like `keras.callbacks.BackupAndRestore` (weights, optimizer state and the
    epoch counter), with three differences:

    - Each backup is a new file, `epoch-000N.weights.h5`, written atomically
      (see `files.atomic_path`), and the previous one is deleted only after
      it. A kill at any moment leaves at least one complete backup.
    - At the start of `fit` the newest backup is restored; if it cannot be
      read (say, damaged on disk), the previous one is, and the message says
      so. If none can be read, `fit` stops with a `ConfigError` naming them.
    - The last backup is kept when training completes, so a finished run can
      be continued with more epochs.

    Args:
        backup_dir: Folder for the backups, used by nothing else.
        keep: Backups kept during training (at least 2: the newest and a
            fallback); 1 is kept after training.
    """

    def __init__(self, backup_dir, keep=2):
        super().__init__()
        if keep < 2:
            raise ConfigError(f"`keep` must be at least 2. Received: keep={keep}")
        self.backup_dir = os.fspath(backup_dir)
        self.keep = keep

    def on_train_begin(self, logs=None):
        states = backup_states(self.backup_dir)
        if not states:
            return
        if self.model.optimizer is not None and not self.model.optimizer.built:
            # The optimizer's variables must exist before they can be loaded.
            self.model.optimizer.build(self.model.trainable_variables)
        unreadable = []
        for epoch, path in states:
            try:
                self.model.load_weights(path)
            except Exception as error:  # h5py raises OSError, Keras ValueError.
                unreadable.append(f"{path} ({type(error).__name__}: {error})")
                continue
            if unreadable:
                print(
                    f"warning: could not read the newest backup {unreadable[0]}; resuming "
                    f"from the previous one, {path}.",
                    file=sys.stderr,
                )
            self.model._initial_epoch = epoch  # what keras.callbacks.BackupAndRestore sets
            step = int(self.model.optimizer.iterations.numpy())
            rate = current_learning_rate(self.model.optimizer)
            print(
                f"Resuming after epoch {epoch} (optimizer step {step}, learning rate "
                f"{rate:.3g}) from {path}."
            )
            return
        raise ConfigError(
            f"No backup in {self.backup_dir} can be read, so the run cannot resume: "
            f"{'; '.join(unreadable)}. Start it anew with --overwrite, or in a new "
            "--output-dir."
        )

    def on_epoch_end(self, epoch, logs=None):
        save_model_weights(self.model, backup_path(self.backup_dir, epoch + 1))
        self._prune(self.keep)

    def on_train_end(self, logs=None):
        self._prune(1)

    def _prune(self, keep):
        for _, path in backup_states(self.backup_dir)[keep:]:
            os.remove(path)
            if os.path.basename(path) == _KERAS_BACKUP:
                os.remove(os.path.join(self.backup_dir, _KERAS_METADATA))


def backup_and_restore(backup_dir):
    """The `AtomicBackupAndRestore` of a run's `backup_dir`."""
    return AtomicBackupAndRestore(backup_dir)
