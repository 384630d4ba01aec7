"""Train the Fashion-MNIST classifier whose features give the domain FID ("fmnist").

Deterministic (seeded, TensorFlow op determinism): the same command gives the
same weights. Writes into `--output-dir` (default: the package's assets):

- `fmnist_classifier.weights.h5`: the weights (architecture in
  `ddpm_keras.features.build_fmnist_classifier`);
- `fmnist_classifier.json`: test accuracy, recipe and the command;
- `fmnist_train_statistics.npz`, `fmnist_test_statistics.npz`: mean and
  covariance of the "features" layer over each whole split, what FID
  compares samples against.

    python scripts/train_classifier.py --manual-dir ../shared/data/fashion-mnist
"""

import argparse
import os
import sys
import time

import keras
import tensorflow as tf

from ddpm_keras.cli import user_errors_exit
from ddpm_keras.data import load_split_arrays
from ddpm_keras.features import ASSETS_DIR, build_fmnist_classifier
from ddpm_keras.files import save_model_weights, write_json
from ddpm_keras.metrics import FeatureStatistics


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manual-dir", help="directory of the 4 original Fashion-MNIST .gz files")
    parser.add_argument("--data-dir", help="TFDS data directory")
    parser.add_argument("--output-dir", default=ASSETS_DIR)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--max-train-examples", type=int, help="for quick trials")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("epochs", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


@user_errors_exit
def main(argv=None):
    args = parse_args(argv)
    parser_defaults = vars(build_parser().parse_args([]))
    keras.utils.set_random_seed(args.seed)
    tf.config.experimental.enable_op_determinism()
    load = dict(data_dir=args.data_dir, manual_dir=args.manual_dir)
    train_images, train_labels, names = load_split_arrays(
        "fashion_mnist", "train", max_examples=args.max_train_examples, **load
    )
    test_images, test_labels, _ = load_split_arrays("fashion_mnist", "test", **load)

    classifier = build_fmnist_classifier()
    steps = args.epochs * (len(train_images) // args.batch_size)
    classifier.compile(
        optimizer=keras.optimizers.Adam(
            keras.optimizers.schedules.CosineDecay(args.learning_rate, steps)
        ),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    # Horizontal flips only: garments are left-right symmetric, and the
    # features must not learn to ignore what generated images get wrong.
    flip = keras.layers.RandomFlip("horizontal", seed=args.seed)
    train_ds = (
        tf.data.Dataset.from_tensor_slices((train_images, train_labels))
        .shuffle(len(train_images), seed=args.seed)
        .batch(args.batch_size, drop_remainder=True)
        .map(lambda images, labels: (flip(images, training=True), labels))
        .prefetch(tf.data.AUTOTUNE)
    )
    start = time.perf_counter()
    classifier.fit(train_ds, epochs=args.epochs, validation_data=(test_images, test_labels))
    train_seconds = time.perf_counter() - start
    _, accuracy = classifier.evaluate(test_images, test_labels, batch_size=512, verbose=0)

    os.makedirs(args.output_dir, exist_ok=True)
    save_model_weights(classifier, os.path.join(args.output_dir, "fmnist_classifier.weights.h5"))
    features = keras.Model(classifier.input, classifier.get_layer("features").output)
    for split, images in (("train", train_images), ("test", test_images)):
        split_features = features.predict(images, batch_size=512, verbose=0)
        FeatureStatistics.from_features(split_features).save(
            os.path.join(args.output_dir, f"fmnist_{split}_statistics.npz")
        )
    card = {
        "test_accuracy": round(float(accuracy), 4),
        "test_examples": len(test_images),
        "train_examples": len(train_images),
        "parameters": classifier.count_params(),
        "feature_dim": int(features.output.shape[-1]),
        "label_names": names,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "seed": args.seed,
        "train_seconds": round(train_seconds, 1),
        # The flags that decide the result (not where data and outputs live).
        "command": " ".join(
            ["python scripts/train_classifier.py --manual-dir DIR"]
            + [
                f"--{name.replace('_', '-')} {getattr(args, name)}"
                for name in ("epochs", "batch_size", "learning_rate", "seed")
                if getattr(args, name) != parser_defaults[name]
            ]
        ),
    }
    write_json(os.path.join(args.output_dir, "fmnist_classifier.json"), card)
    print(f"Test accuracy {accuracy:.4f}; wrote {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
