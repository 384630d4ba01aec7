"""Train a DDPM the Keras way: flags -> config -> dataset -> model -> compile -> fit.

Copy this script to start your own: add Keras callbacks to `callbacks`, swap
the optimizer, change the config. It is `ddpm_keras.train(config)` written
out step by step. Run `python scripts/train.py --help`.
"""

import os
import sys

# Read when TensorFlow loads, so before `import keras` (see ddpm_keras/__init__.py).
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

from ddpm_keras.callbacks import default_callbacks
from ddpm_keras.cli import config_from_args, train_parser, user_errors_exit
from ddpm_keras.data import class_names, load_dataset
from ddpm_keras.model import build_model
from ddpm_keras.training import build_optimizer, save_final_model, start_run, steps_per_epoch


@user_errors_exit
def main(argv=None):
    args = train_parser().parse_args(argv)
    config = config_from_args(args)
    print(f"Preset '{config.preset}', writing to {config.output_dir}")
    # The distribution strategy comes first (multi-worker needs that); then the
    # output dir is locked and checked against its config.json (a different
    # run is refused unless --overwrite), the data prepared and the seed set.
    run = start_run(config, overwrite=args.overwrite)
    if run.complete:  # trained to --epochs already: nothing to do
        return 0
    config, strategy = run.config, run.strategy  # config: --precision auto resolved
    train_ds, val_ds, image_shape = load_dataset(config)
    with strategy.scope():  # model, optimizer and metrics live on every replica
        # A class-conditional model keeps the dataset's label names.
        model = build_model(config, image_shape, class_names(config))
        # Adam with the config's learning-rate schedule (warm-up, cosine decay).
        optimizer = build_optimizer(config, steps_per_epoch(train_ds))
        model.compile(optimizer=optimizer, jit_compile=config.jit_compile)
    # Checkpoints, metrics.json, history.csv, sample grids, resume; your own
    # Keras callbacks go after them, e.g. keras.callbacks.EarlyStopping(...).
    callbacks = default_callbacks(config, strategy)
    model.fit(train_ds, validation_data=val_ds, epochs=config.epochs, callbacks=callbacks)
    save_final_model(model, config, strategy)  # model.keras, EMA weights included
    print(f"Saved {config.model_path}, {config.samples_path}, {config.metrics_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
