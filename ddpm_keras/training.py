"""The training flow, `train(config)`, its building blocks, and `generate_samples`.

`scripts/train.py` spells out the same building blocks (`start_run`,
`build_optimizer`, `steps_per_epoch`, `save_final_model`) as a script to copy.
"""

from __future__ import annotations

import dataclasses
import os

import keras

from ddpm_keras.callbacks import default_callbacks
from ddpm_keras.callbacks.metrics import recorded_history
from ddpm_keras.config import DiffusionConfig
from ddpm_keras.data import class_names, load_dataset, prepare_data
from ddpm_keras.distribute import check_jit_compile, is_chief, make_strategy, worker_backup_dir
from ddpm_keras.errors import ConfigError
from ddpm_keras.files import (
    ensure_writable_dir,
    remove_temporaries,
    save_image_grid,
    save_model,
    write_json,
)
from ddpm_keras.model import build_model, load_diffusion_model
from ddpm_keras.pipeline import SamplingSettings
from ddpm_keras.precision import resolve_precision
from ddpm_keras.run_dir import (
    RunProgress,
    check_same_run,
    clear_run,
    lock_output_dir,
    recorded_config,
    unlock_output_dir,
)


@dataclasses.dataclass(frozen=True)
class Run:
    """A started run: what `start_run` returns.

    Attributes:
        config: The config the run trains with: the one given, with
            `precision="auto"` resolved to a dtype policy (as recorded in
            `config.json`).
        strategy: The `tf.distribute.Strategy` to train under.
        complete: The output directory already holds this run, trained to
            `config.epochs` with its model saved: there is nothing to do.
        completed_epochs: Epochs already trained (0 for a new run); training
            resumes after them.
    """

    config: DiffusionConfig
    strategy: object
    complete: bool
    completed_epochs: int


def start_run(config: DiffusionConfig, strategy=None, overwrite=False) -> Run:
    """Prepares a run: takes its output directory, records the config, seeds.

    On the chief (the only process, unless multi-worker), before anything is
    written: locks the output directory (see `run_dir.lock_output_dir`),
    removes temporary files of killed writers, and compares `config` with
    the directory's `config.json`. Only `config.RESUMABLE_FIELDS` may
    differ; any other difference is refused (`run_dir.check_same_run`), or,
    with `overwrite`, the old run is deleted first. A run already trained to
    `config.epochs` is reported complete and nothing is written. Otherwise
    `config.json` is written, the data prepared (TFDS' first preparation
    uses Python's `random`) and then Python, NumPy and TensorFlow seeded
    with `config.seed`, so a seed gives the same run either way.

    Args:
        config: The run's `DiffusionConfig`.
        strategy: The `tf.distribute.Strategy` (`None`: the one
            `config.strategy` names, created here before any other
            TensorFlow work, as `MultiWorkerMirroredStrategy` requires).
        overwrite: Delete a different run in `config.output_dir` instead of
            refusing to start.

    Returns:
        A `Run`.

    Raises:
        ConfigError: `config.jit_compile` is impossible under the strategy,
            another process holds the directory, or it holds a different run.
    """
    if strategy is None:
        strategy = make_strategy(config.strategy, config.devices)
    check_jit_compile(strategy, config.jit_compile)
    config = _resolve_auto_precision(config, strategy)
    if is_chief(strategy):
        progress = _take_output_dir(config, overwrite)
    else:
        progress = RunProgress.of(config, worker_backup_dir(config.backup_dir, strategy))
    complete = progress.is_complete(config.epochs)
    if complete:
        print(
            f"The run in {config.output_dir} is complete: {progress.completed_epochs} epochs "
            f"trained and {config.model_path} saved. Nothing to do; pass a larger --epochs "
            "to train it further."
        )
    else:
        prepare_data(config)
        keras.utils.set_random_seed(config.seed)
    return Run(config, strategy, complete, progress.completed_epochs)


def _resolve_auto_precision(config, strategy):
    # Resolved before the same-run check, so config.json records the policy
    # the run trains with: resuming on devices that resolve `auto`
    # differently is then refused like any other change of numerics.
    if config.precision != "auto":
        return config
    try:
        devices = strategy.extended.worker_devices
    except RuntimeError:  # the default strategy: the visible devices
        devices = None
    policy, reason = resolve_precision("auto", devices)
    if is_chief(strategy):
        print(f"Precision auto: {policy} ({reason}).")
    return config.replace(precision=policy)


def _take_output_dir(config, overwrite):
    """The chief's part of `start_run`: lock, check, clear or record. Returns the progress."""
    ensure_writable_dir(config.output_dir)
    lock_output_dir(config.output_dir)
    remove_temporaries(config.output_dir)
    recorded = recorded_config(config.output_dir)
    if recorded is not None and overwrite:
        print(f"--overwrite: deleted {', '.join(clear_run(config))} of the old run.")
        recorded = None
    elif recorded is not None:
        check_same_run(recorded, config)
    progress = RunProgress.of(config)
    if progress.has_model and progress.completed_epochs == 0:
        raise ConfigError(
            "The output directory holds a finished run without its training state "
            f"(no backup in {config.backup_dir}), so it can be neither resumed nor "
            "extended; its model.keras is complete. Pass another --output-dir, or "
            f"--overwrite to train anew. Received: output_dir={config.output_dir!r}"
        )
    if progress.is_complete(config.epochs):
        return progress
    if recorded is not None and recorded.get("epochs") != config.epochs:
        print(
            f"Continuing the run in {config.output_dir} to {config.epochs} epochs (it was "
            f"set to {recorded.get('epochs')}; {progress.completed_epochs} are done). "
            + _schedule_note(config)
        )
    if recorded != config.to_dict():
        write_json(os.path.join(config.output_dir, "config.json"), config.to_dict())
    return progress


def _schedule_note(config):
    # What an extended run's learning rate does: the schedule is a function of
    # the step and the run's length, so it is recomputed for the new length.
    if config.learning_rate_schedule == "cosine":
        return (
            "The cosine learning-rate schedule is recomputed over the new length, so the "
            "rate rises from where the old schedule ended to the new curve's value at "
            "this step, then decays to 0 at the new end."
        )
    return f"The learning rate stays at {config.learning_rate:g}."


def steps_per_epoch(train_ds) -> int:
    """Batches in one epoch of a finite training dataset (from its cardinality)."""
    cardinality = int(train_ds.cardinality())
    if cardinality < 1:
        raise ConfigError(
            "The training dataset must be finite with a known number of batches, to "
            f"schedule the learning rate. Received: cardinality={cardinality}"
        )
    return cardinality


def learning_rate_schedule(config: DiffusionConfig, steps_per_epoch: int | None = None):
    """The learning rate Adam gets: a float, or a serializable Keras schedule.

    Args:
        config: Reads `learning_rate`, `learning_rate_schedule`,
            `warmup_steps` and `epochs`.
        steps_per_epoch: Optimizer steps per epoch; needed when the rate
            changes over the run (`"cosine"`, or any warm-up).
    """
    if config.learning_rate_schedule == "constant" and config.warmup_steps == 0:
        return config.learning_rate
    if steps_per_epoch is None:
        raise ConfigError(
            "`steps_per_epoch` is needed for a warm-up or a 'cosine' learning-rate "
            f"schedule. Received: steps_per_epoch={steps_per_epoch}"
        )
    decay_steps = config.epochs * steps_per_epoch - config.warmup_steps
    if decay_steps < 1:
        raise ConfigError(
            f"`warmup_steps` must be shorter than the run ({config.epochs} epochs x "
            f"{steps_per_epoch} steps). Received: warmup_steps={config.warmup_steps}"
        )
    # alpha is the final rate as a fraction of the peak: 1 keeps it constant.
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if config.warmup_steps else config.learning_rate,
        decay_steps=decay_steps,
        alpha=0.0 if config.learning_rate_schedule == "cosine" else 1.0,
        warmup_target=config.learning_rate if config.warmup_steps else None,
        warmup_steps=config.warmup_steps,
    )


def build_optimizer(config: DiffusionConfig, steps_per_epoch: int | None = None):
    """Adam with the config's learning-rate schedule and optional gradient clipping.

    Args:
        config: The run's `DiffusionConfig`.
        steps_per_epoch: Optimizer steps per epoch (see `steps_per_epoch`),
            needed by a warm-up or a `"cosine"` schedule.
    """
    return keras.optimizers.Adam(
        learning_rate_schedule(config, steps_per_epoch), clipnorm=config.gradient_clip_norm
    )


def save_final_model(model, config: DiffusionConfig, strategy) -> None:
    """Writes `model.keras` (EMA weights included), on the chief only."""
    if is_chief(strategy):
        save_model(model, config.model_path)


def train(config: DiffusionConfig, callbacks=(), strategy=None, overwrite=False) -> dict:
    """Trains a `DiffusionModel` as `config` says and saves its artifacts.

    The same steps as `scripts/train.py`: start the run, load the data, build
    and compile the model under the strategy, `fit` with the default
    callbacks and `callbacks`, save. Writes `config.json`, `checkpoints/`,
    `backup/`, `samples/`, `metrics.json`, `history.csv`, `ddpm_samples.png`
    and `model.keras` (EMA weights included) under `config.output_dir`.

    Re-running after an interruption resumes after the last completed epoch;
    re-running a finished run does nothing, and with a larger `epochs`
    continues it. A different run in the directory is refused (see
    `start_run`).

    Args:
        config: A `DiffusionConfig`.
        callbacks: Extra Keras callbacks, run after the default ones.
        strategy: The `tf.distribute.Strategy` to train under (`None`: the
            one `config.strategy` names, see `make_strategy`).
        overwrite: Delete a different run in `config.output_dir` first,
            instead of refusing.

    Returns:
        The history of the whole run, as Keras' `History.history`: metric
        name -> per-epoch values from `metrics.json` (`loss`, `val_loss`,
        `learning_rate`, `time_s`), the epochs of earlier, interrupted
        calls included; on a multi-worker run's other workers, the epochs
        this call trained.
    """
    try:
        run = start_run(config, strategy, overwrite=overwrite)
        history = {}
        if not run.complete:
            history = _fit(run.config, run.strategy, callbacks)
        return recorded_history(config.metrics_path) if is_chief(run.strategy) else history
    finally:
        unlock_output_dir(config.output_dir)


def _fit(config, strategy, callbacks):
    train_ds, val_ds, image_shape = load_dataset(config)
    with strategy.scope():
        model = build_model(config, image_shape, class_names(config))
        optimizer = build_optimizer(config, steps_per_epoch(train_ds))
        model.compile(optimizer=optimizer, jit_compile=config.jit_compile)
    history = model.fit(
        train_ds,
        validation_data=val_ds,
        epochs=config.epochs,
        callbacks=default_callbacks(config, strategy) + list(callbacks),
    )
    save_final_model(model, config, strategy)
    return history.history


def generate_samples(
    config: DiffusionConfig, num_images=36, output_path=None, model_path=None, **changes
):
    """Samples from a trained model and saves the grid.

    Args:
        config: The `DiffusionConfig` of the run (default paths and the
            sampling settings of its grids, `SamplingSettings.from_config`).
        num_images: Number of images.
        output_path: PNG path; default `config.samples_path`.
        model_path: `.keras` model; default `config.model_path`.
        **changes: `SamplingSettings` fields that replace the config's
            (`sampler`, `steps`, `eta`, `guidance_scale`, `seed`).

    Returns:
        NumPy array `[num_images, H, W, C]` in [0, 1].
    """
    settings = SamplingSettings.from_config(config, **changes)
    model = load_diffusion_model(model_path or config.model_path)
    images = model.pipeline(num_images, settings)
    save_image_grid(images, output_path or config.samples_path, title=f"{settings.label} samples")
    return images
