"""Stop at the first non-finite loss, before anything bad is saved."""

from __future__ import annotations

import math

import keras


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


class NonFiniteLossGuard(keras.callbacks.Callback):
    """Raises `NonFiniteLossError` at the first batch whose loss is not finite.

    Keras' `TerminateOnNaN` only sets `stop_training`, after which the epoch
    still ends normally and checkpoint callbacks save the broken weights. By
    raising instead, `fit` stops at once: no epoch-end callback runs, the last
    good checkpoint and the `BackupAndRestore` state stay as they were, and
    re-running resumes from the last completed epoch.

    Args:
        checkpoint_hint: Where the last good checkpoint is, for the message.
    """

    def __init__(self, checkpoint_hint=None):
        super().__init__()
        self.checkpoint_hint = checkpoint_hint
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            where = ""
            if self.checkpoint_hint:
                where = f" The last good checkpoint is {self.checkpoint_hint}."
            raise NonFiniteLossError(
                f"Training stopped: the loss became {float(loss)} at epoch "
                f"{self._epoch + 1}, step {batch + 1}.{where} Lower the learning "
                "rate or set gradient_clip_norm, then re-run the same command to "
                "resume from the last completed epoch."
            )
