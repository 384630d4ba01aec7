"""The training flow, `train(config)`, its building blocks, and `generate_samples`.

`scripts/train.py` spells out the same building blocks (`start_run`,
`build_optimizer`, `steps_per_epoch`, `save_final_model`) as a script to copy.
"""

from __future__ import annotations

import os

import keras

from ddpm_keras.callbacks import default_callbacks
from ddpm_keras.config import DiffusionConfig
from ddpm_keras.data import class_names, load_dataset
from ddpm_keras.distribute import check_jit_compile, is_chief, make_strategy
from ddpm_keras.errors import ConfigError
from ddpm_keras.files import ensure_writable_dir, save_image_grid, save_model, write_json
from ddpm_keras.model import build_model, load_diffusion_model
from ddpm_keras.pipeline import SamplingSettings


def start_run(config: DiffusionConfig, strategy=None):
    """Prepares a run: checks the output dir, records the config, seeds.

    Writes `<output_dir>/config.json` (on the chief only, in a multi-worker
    run) and seeds Python, NumPy and TensorFlow with `config.seed`.

    Returns:
        The `tf.distribute.Strategy` to train under: `strategy`, or the one
        `config.strategy` names (created here, before any other TensorFlow
        work, as `MultiWorkerMirroredStrategy` requires).

    Raises:
        ValueError: `config.jit_compile` is impossible under the strategy.
    """
    if strategy is None:
        strategy = make_strategy(config.strategy, config.devices)
    check_jit_compile(strategy, config.jit_compile)
    if is_chief(strategy):
        ensure_writable_dir(config.output_dir)
        write_json(os.path.join(config.output_dir, "config.json"), config.to_dict())
    keras.utils.set_random_seed(config.seed)
    return strategy


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


def train(config: DiffusionConfig, callbacks=(), strategy=None) -> dict:
    """Trains a `DiffusionModel` as `config` says and saves its artifacts.

    The same steps as `scripts/train.py`: start the run, load the data, build
    and compile the model under the strategy, `fit` with the default
    callbacks and `callbacks`, save. Writes `config.json`, `checkpoints/`,
    `backup/`, `samples/`, `metrics.json`, `history.csv`, `ddpm_samples.png`
    and `model.keras` (EMA weights included) under `config.output_dir`.
    Re-running after an interruption resumes from the last completed epoch.

    Args:
        config: A `DiffusionConfig`.
        callbacks: Extra Keras callbacks, run after the default ones.
        strategy: The `tf.distribute.Strategy` to train under (`None`: the
            one `config.strategy` names, see `make_strategy`).

    Returns:
        The Keras history dict: metric name -> list of per-epoch values.
    """
    strategy = start_run(config, strategy)
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
