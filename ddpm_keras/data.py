"""Input pipeline: a TFDS image dataset as `tf.data`, scaled to [-1, 1].

Fashion-MNIST by default; any TFDS dataset with a fixed-shape `image`
feature works by name. Offline, point `manual_dir` at the dataset's original
download files (TFDS `DownloadConfig(manual_dir=...)`).
"""

from __future__ import annotations

import os
import re

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from tensorflow_datasets.core.download.download_manager import NonMatchingChecksumError

from ddpm_keras.errors import ConfigError, DataUnavailableError

# The original files TFDS expects for the datasets we document offline use for.
MANUAL_FILES = {
    "fashion_mnist": (
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ),
}
MANUAL_FILES["mnist"] = MANUAL_FILES["fashion_mnist"]
MANUAL_FILES["cifar10"] = ("cifar-10-binary.tar.gz",)


def check_manual_dir(dataset, manual_dir):
    """Fails early, listing the expected files, if `manual_dir` cannot work."""
    expected = MANUAL_FILES.get(dataset)
    if not os.path.isdir(manual_dir):
        hint = f" It should hold: {', '.join(expected)}." if expected else ""
        raise DataUnavailableError(
            f"`manual_dir` is not a directory.{hint} Received: manual_dir={manual_dir!r}"
        )
    if expected:
        missing = [name for name in expected if not os.path.isfile(os.path.join(manual_dir, name))]
        if missing:
            raise DataUnavailableError(
                f"`manual_dir` lacks {len(missing)} of the {len(expected)} original "
                f"{dataset} files: {', '.join(missing)}. Expected all of: "
                f"{', '.join(expected)}. Received: manual_dir={manual_dir!r}"
            )


def prepare_builder(dataset, data_dir=None, manual_dir=None):
    """Returns a prepared TFDS builder for an image dataset.

    Raises:
        ValueError: Unknown dataset, or one without a fixed-shape `image`.
        DataUnavailableError: The data can be neither downloaded nor read
            from `manual_dir`; the message says how to fix it.
    """
    if manual_dir is not None:
        check_manual_dir(dataset, manual_dir)
    try:
        builder = tfds.builder(dataset, data_dir=data_dir)
    except Exception as error:  # TFDS raises DatasetNotFoundError and others.
        # TFDS appends the list of all its datasets; keep the first line.
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConfigError(
            f"Unknown TFDS dataset ({reason}). Received: dataset={dataset!r}"
        ) from error
    features = builder.info.features
    is_dict = isinstance(features, tfds.features.FeaturesDict)
    image_feature = features["image"] if is_dict and "image" in features.keys() else None
    if not isinstance(image_feature, tfds.features.Image):
        raise ConfigError(
            "The dataset has no `image` feature, so it is not an image dataset. "
            f"Received: dataset={dataset!r}"
        )
    if None in tuple(image_feature.shape):
        raise ConfigError(
            "Images of a fixed (height, width, channels) shape are needed; this "
            f"dataset's shape is {tuple(image_feature.shape)}. "
            f"Received: dataset={dataset!r}"
        )
    download_config = tfds.download.DownloadConfig(manual_dir=manual_dir)
    try:
        builder.download_and_prepare(download_config=download_config)
    except Exception as error:
        raise DataUnavailableError(
            _preparation_failure(dataset, manual_dir, data_dir, error)
        ) from error
    return builder


def _preparation_failure(dataset, manual_dir, data_dir, error):
    """The message for a dataset TFDS could not prepare: what failed and what to do."""
    received = f"Received: manual_dir={manual_dir!r}, data_dir={data_dir!r}"
    expected = f" ({', '.join(MANUAL_FILES[dataset])})" if dataset in MANUAL_FILES else ""
    if isinstance(error, NonMatchingChecksumError) and manual_dir is not None:
        # TFDS' message: "Artifact <url>, downloaded to <path>, has wrong checksum: ..."
        text = str(error)
        path = text.split("downloaded to ", 1)[-1].split(", has wrong checksum", 1)[0]
        sizes = re.findall(r"size=([^,]+),", text)
        size = f" (expected {sizes[0]}, found {sizes[1]})" if len(sizes) == 2 else ""
        return (
            f"The file {path} in manual_dir is not the original {dataset} file: its "
            f"size or checksum does not match{size}. It may be truncated or corrupt; "
            f"copy the original again. {received}"
        )
    reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    if manual_dir is not None:
        return (
            f"Could not prepare {dataset!r} from manual_dir ({reason}). It should hold "
            f"the dataset's original download files{expected}. {received}"
        )
    return (
        f"Could not download or prepare {dataset!r} ({reason}). Without internet, pass "
        "manual_dir (CLI: --manual-dir) pointing at a folder with the dataset's original "
        f"download files{expected}. {received}"
    )


def prepare_data(config):
    """Downloads (or reads from `config.manual_dir`) and prepares the run's dataset."""
    prepare_builder(config.dataset, config.data_dir, config.manual_dir)


def _split(name, max_examples):
    return name if max_examples is None else f"{name}[:{max_examples}]"


def load_split_arrays(dataset, split, data_dir=None, manual_dir=None, max_examples=None):
    """A whole split in memory, for evaluation: images, labels and label names.

    Args:
        dataset: TFDS name, e.g. "fashion_mnist".
        split: "train", "test", ...
        data_dir: TFDS data dir (`None`: TFDS' default).
        manual_dir: Directory of the original download files (offline).
        max_examples: Keep only the first this many examples (`None`: all).

    Returns:
        `(images, labels, label_names)`: float32 `[N, H, W, C]` images in
        [-1, 1], int64 `[N]` labels (`None` if the dataset has none) and the
        label names (`None` likewise).
    """
    builder = prepare_builder(dataset, data_dir, manual_dir)
    if split not in builder.info.splits:
        raise ConfigError(
            f"`split` must be one of {sorted(builder.info.splits)}. Received: split={split!r}"
        )
    arrays = tfds.as_numpy(builder.as_dataset(split=_split(split, max_examples), batch_size=-1))
    images = arrays["image"].astype(np.float32) / 127.5 - 1.0
    label_feature = builder.info.features["label"] if "label" in arrays else None
    labels = arrays["label"] if label_feature is not None else None
    names = list(label_feature.names) if label_feature is not None else None
    return images, labels, names


def _to_unit_range(example):
    # uint8 [0, 255] -> float32 [-1, 1], the range the diffusion works in.
    return tf.cast(example["image"], tf.float32) / 127.5 - 1.0


def _to_unit_range_with_label(example):
    return _to_unit_range(example), tf.cast(example["label"], tf.int32)


def class_names(config):
    """The label names of `config.dataset` (from TFDS metadata), or `None` if it has none."""
    builder = prepare_builder(config.dataset, config.data_dir, config.manual_dir)
    features = builder.info.features
    label = features["label"] if "label" in features.keys() else None
    return list(label.names) if isinstance(label, tfds.features.ClassLabel) else None


def load_dataset(config):
    """Builds the training and validation pipelines for a `DiffusionConfig`.

    Returns:
        `(train_ds, val_ds, image_shape)`: datasets of float32 image batches
        in [-1, 1] (train split for training, test split for validation) and
        the `(H, W, C)` shape read from the data. With
        `config.class_conditional`, the batches are `(images, labels)` pairs
        with int32 labels.
    """
    builder = prepare_builder(config.dataset, config.data_dir, config.manual_dir)
    image_shape = tuple(int(d) for d in builder.info.features["image"].shape)
    splits = builder.info.splits
    val_split = next((name for name in ("test", "validation") if name in splits), None)
    if "train" not in splits or val_split is None:
        raise ConfigError(
            "The dataset needs a 'train' split and a 'test' or 'validation' split. "
            f"Received: dataset={config.dataset!r} with splits {sorted(splits)}"
        )
    if config.class_conditional and class_names(config) is None:
        raise ConfigError(
            "`class_conditional` needs a dataset with a 'label' class feature. "
            f"Received: dataset={config.dataset!r}"
        )
    to_model_input = _to_unit_range_with_label if config.class_conditional else _to_unit_range
    num_train = splits["train"].num_examples
    if config.max_train_examples is not None:
        num_train = min(num_train, config.max_train_examples)
    if num_train < config.batch_size:
        raise ConfigError(
            f"`batch_size` exceeds the {num_train} training images, so an epoch "
            f"would have no full batch. Received: batch_size={config.batch_size}"
        )
    # Seeded file order so that a seed gives the same data order.
    read_config = tfds.ReadConfig(shuffle_seed=config.seed)
    train_ds = builder.as_dataset(
        split=_split("train", config.max_train_examples), read_config=read_config
    )
    val_ds = builder.as_dataset(split=_split(val_split, config.max_val_examples))
    train_ds = (
        train_ds.map(to_model_input, num_parallel_calls=tf.data.AUTOTUNE)
        .cache()
        .shuffle(config.shuffle_buffer, seed=config.seed)
        .batch(config.batch_size, drop_remainder=True)
        .prefetch(tf.data.AUTOTUNE)
    )
    val_ds = (
        val_ds.map(to_model_input, num_parallel_calls=tf.data.AUTOTUNE)
        .cache()
        .batch(config.batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )
    # Under MultiWorkerMirroredStrategy each worker reads the whole dataset
    # and keeps its share of every global batch. (TFDS keeps a split in few
    # files, too few to shard files between workers.)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return train_ds.with_options(options), val_ds.with_options(options), image_shape
