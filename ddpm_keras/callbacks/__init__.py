"""Keras callbacks of ddpm_keras; ordinary Keras callbacks plug in beside them."""

import dataclasses

import keras

from ddpm_keras.callbacks.checkpoints import (
    AtomicBackupAndRestore,
    ModelCheckpoints,
    backup_and_restore,
)
from ddpm_keras.callbacks.fid import FIDCallback
from ddpm_keras.callbacks.guards import NonFiniteLossError, NonFiniteLossGuard
from ddpm_keras.callbacks.metrics import MetricsJSON
from ddpm_keras.callbacks.samples import SampleGrid
from ddpm_keras.distribute import is_chief, worker_backup_dir
from ddpm_keras.pipeline import SamplingSettings


def default_callbacks(config, strategy=None):
    """The callbacks a `DiffusionConfig` run uses, in order.

    The non-finite-loss guard, FID (with `config.fid_every`), checkpoints,
    `metrics.json` and `history.csv`, and sample grids (and, with
    `config.tensorboard`, `keras.callbacks.TensorBoard`), then
    `AtomicBackupAndRestore` last: an epoch counts as done for a resumed run only
    once everything else has recorded it, so a kill between two callbacks
    makes the rerun repeat that epoch rather than skip its record.

    Args:
        config: The run's `DiffusionConfig`.
        strategy: The run's `tf.distribute.Strategy` (`None`: one device). In
            a multi-worker run, only the chief writes artifacts; the other
            workers keep the guard and a private backup to resume from.
    """
    checkpoints = ModelCheckpoints(config.checkpoint_dir)
    if strategy is not None and not is_chief(strategy):
        return [
            NonFiniteLossGuard(checkpoint_hint=checkpoints.last_path),
            backup_and_restore(worker_backup_dir(config.backup_dir, strategy)),
        ]
    tensorboard_dir = config.tensorboard_dir if config.tensorboard else None
    callbacks = [NonFiniteLossGuard(checkpoint_hint=checkpoints.last_path)]
    if config.fid_every:
        # Before the callbacks that record the logs, so they see val_fid.
        callbacks.append(fashion_mnist_fid(config))
    callbacks += [
        checkpoints,
        MetricsJSON(config.metrics_path, csv_path=config.history_path),
        SampleGrid(
            config.samples_dir,
            final_path=config.samples_path,
            every=config.sample_every,
            num_images=config.num_samples,
            **dataclasses.asdict(SamplingSettings.from_config(config)),
            tensorboard_dir=tensorboard_dir,
        ),
    ]
    if tensorboard_dir is not None:
        # Epoch scalars: loss, val_loss, learning_rate, and any metric an
        # earlier callback adds to the logs.
        callbacks.append(keras.callbacks.TensorBoard(tensorboard_dir))
    return callbacks + [backup_and_restore(config.backup_dir)]


def fashion_mnist_fid(config):
    """The `FIDCallback` of `config.fid_every`: committed features and test statistics."""
    from ddpm_keras.features import fmnist_extractor, fmnist_reference_path
    from ddpm_keras.metrics import FeatureStatistics

    settings = SamplingSettings.from_config(config)
    return FIDCallback(
        fmnist_extractor(),
        FeatureStatistics.load(fmnist_reference_path("test")),
        num_samples=config.fid_num_samples,
        every=config.fid_every,
        sampler=settings.sampler,
        steps=settings.steps,
        eta=settings.eta,
        seed=settings.seed,
    )


__all__ = [
    "AtomicBackupAndRestore",
    "FIDCallback",
    "MetricsJSON",
    "ModelCheckpoints",
    "NonFiniteLossError",
    "NonFiniteLossGuard",
    "SampleGrid",
    "backup_and_restore",
    "default_callbacks",
]
