"""Input pipeline: a TFDS dataset, an image folder or NumPy arrays as `tf.data`, in [-1, 1].

Fashion-MNIST by default; any TFDS dataset with a fixed-shape `image`
feature works by name. Offline, point `manual_dir` at the dataset's original
download files (TFDS `DownloadConfig(manual_dir=...)`). `image_dir` trains on
a folder of images instead (`ddpm_keras.image_folder`), and `from_arrays`
on arrays. `image_size` and `channels` resize and convert any of them
(`ddpm_keras.transforms`).
"""

from __future__ import annotations

import os
import re

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from tensorflow_datasets.core.download.download_manager import NonMatchingChecksumError

from ddpm_keras.config import HOLDOUT_FIELDS, check_field, check_image_size
from ddpm_keras.errors import ConfigError, DataUnavailableError
from ddpm_keras.image_folder import decode_folder, find_images, holdout_split
from ddpm_keras.transforms import fit_image, scale_images, to_unit_range

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


# TFDS stores EMNIST's images transposed (NIST's column-major order): a
# letter comes out mirrored and turned a quarter. Transposing height and width
# presents it upright.
TRANSPOSED_DATASETS = ("emnist",)


def is_transposed(dataset):
    """Whether `dataset`'s images are stored transposed (EMNIST, any config)."""
    return dataset.split("/", 1)[0] in TRANSPOSED_DATASETS


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
    """Downloads (or reads from `config.manual_dir`) and prepares the run's dataset.

    For an image folder, checks its layout (see `image_folder.find_images`).
    """
    if config.image_dir is not None:
        find_images(config.image_dir)
    else:
        prepare_builder(config.dataset, config.data_dir, config.manual_dir)


def _split(name, max_examples):
    return name if max_examples is None else f"{name}[:{max_examples}]"


def load_split_arrays(
    dataset,
    split,
    data_dir=None,
    manual_dir=None,
    max_examples=None,
    image_size=None,
    channels=None,
):
    """A whole split in memory, for evaluation: images, labels and label names.

    Args:
        dataset: TFDS name, e.g. "fashion_mnist".
        split: "train", "test", ...
        data_dir: TFDS data dir (`None`: TFDS' default).
        manual_dir: Directory of the original download files (offline).
        max_examples: Keep only the first this many examples (`None`: all).
        image_size: `(H, W)` to crop and resize to, as in training (`None`: as stored).
        channels: 1 or 3, as in training (`None`: as stored).

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
    fit = _image_transform(dataset, image_size, channels)
    images = arrays["image"]
    if fit is not None:
        transformed = tf.data.Dataset.from_tensor_slices(images).map(
            fit, num_parallel_calls=tf.data.AUTOTUNE
        )
        images = np.concatenate(list(transformed.batch(1024).as_numpy_iterator()))
    images = images.astype(np.float32) / 127.5 - 1.0
    label_feature = builder.info.features["label"] if "label" in arrays else None
    labels = arrays["label"] if label_feature is not None else None
    names = list(label_feature.names) if label_feature is not None else None
    return images, labels, names


def _image_transform(dataset, image_size=None, channels=None):
    """The per-image function a TFDS dataset's images go through (`None`: none)."""
    if not (is_transposed(dataset) or image_size is not None or channels is not None):
        return None

    def transform(image):
        if is_transposed(dataset):
            image = tf.transpose(image, [1, 0, 2])
        return fit_image(image, image_size, channels)

    return transform


def class_names(config):
    """The label names of the run's data, or `None` if it has none.

    From TFDS metadata, or the class subfolders of `config.image_dir`.
    """
    if config.image_dir is not None:
        names = find_images(config.image_dir).class_names
        return None if names is None else list(names)
    builder = prepare_builder(config.dataset, config.data_dir, config.manual_dir)
    features = builder.info.features
    label = features["label"] if "label" in features.keys() else None
    return list(label.names) if isinstance(label, tfds.features.ClassLabel) else None


def load_dataset(config):
    """Builds the training and validation pipelines for a `DiffusionConfig`.

    Returns:
        `(train_ds, val_ds, image_shape)`: datasets of float32 image batches
        in [-1, 1] and the `(H, W, C)` shape of the images, for
        `build_model`. From TFDS, the train split trains and the test (or
        validation) split validates; from `config.image_dir`, a seeded
        `config.val_fraction` of the folder validates (see
        `load_image_folder`). With `config.class_conditional`, the batches
        are `(images, labels)` pairs with int32 labels.
    """
    if config.image_dir is not None:
        return load_image_folder(config)
    builder = prepare_builder(config.dataset, config.data_dir, config.manual_dir)
    stored_shape = tuple(int(d) for d in builder.info.features["image"].shape)
    if is_transposed(config.dataset):
        stored_shape = (stored_shape[1], stored_shape[0], stored_shape[2])
    image_shape = (
        *(config.image_size or stored_shape[:2]),
        config.channels or stored_shape[2],
    )
    check_image_size(image_shape, config.channel_multipliers, name="image_shape")
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
    transform = _image_transform(config.dataset, config.image_size, config.channels)

    def to_model_input(example):
        image = example["image"] if transform is None else transform(example["image"])
        image = to_unit_range(image)
        if config.class_conditional:
            return image, tf.cast(example["label"], tf.int32)
        return image

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
    return _shard_by_data(train_ds), _shard_by_data(val_ds), image_shape


def _shard_by_data(dataset):
    # Under MultiWorkerMirroredStrategy each worker reads the whole dataset
    # and keeps its share of every global batch. (TFDS keeps a split in few
    # files, too few to shard files between workers; arrays have no files.)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def array_datasets(images, labels, train_rows, val_rows, batch_size, seed):
    """Training and validation batches that gather rows of in-memory (or memory-mapped) arrays.

    Args:
        images: uint8 `[N, H, W, C]` (scaled to [-1, 1] per batch) or float32
            in [-1, 1]; a NumPy array or memory map.
        labels: int `[N]`, or `None` for image batches without labels.
        train_rows, val_rows: The rows of each split.
        batch_size: Images per batch; training batches are full ones.
        seed: Seeds the order of the training rows, reshuffled every epoch.

    Returns:
        `(train_ds, val_ds)`: float32 image batches, or `(images, labels)`.
    """
    image_shape = tuple(images.shape[1:])

    def gather(rows):
        # Sorted rows read a memory-mapped file in order; a batch is a set.
        rows = np.sort(rows)
        batch_labels = np.zeros(len(rows), np.int32) if labels is None else labels[rows]
        return np.asarray(images[rows]), np.asarray(batch_labels, np.int32)

    def to_batch(rows):
        batch, batch_labels = tf.numpy_function(
            gather, [rows], [tf.as_dtype(images.dtype), tf.int32], stateful=False
        )
        batch.set_shape((None, *image_shape))
        batch_labels.set_shape((None,))
        batch = to_unit_range(batch) if images.dtype == np.uint8 else batch
        return batch if labels is None else (batch, batch_labels)

    train_ds = (
        tf.data.Dataset.from_tensor_slices(np.asarray(train_rows, np.int64))
        .shuffle(len(train_rows), seed=seed, reshuffle_each_iteration=True)
        .batch(batch_size, drop_remainder=True)
        .map(to_batch, num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )
    val_ds = (
        tf.data.Dataset.from_tensor_slices(np.asarray(val_rows, np.int64))
        .batch(batch_size)
        .map(to_batch, num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )
    return _shard_by_data(train_ds), _shard_by_data(val_ds)


def folder_split(num_files, holdout):
    """The file indices a folder run trains and validates on: the seeded hold-out, then the limits.

    Args:
        num_files: The image files found (`image_folder.find_images`).
        holdout: The values of `config.HOLDOUT_FIELDS`, from a config or a
            model's `training_data`.
    """
    train_files, val_files = holdout_split(
        num_files, holdout["val_fraction"], holdout["batch_size"], holdout["seed"]
    )
    return train_files[: holdout["max_train_examples"]], val_files[: holdout["max_val_examples"]]


def folder_evaluation_images(training_data, image_shape, num_floor, seed, image_dir=None):
    """A folder-trained model's held-out images and a seeded sample of its training images.

    Args:
        training_data: The model's `training_data` record (with `image_dir`
            and the hold-out's settings).
        image_shape: The model's `(H, W, C)`; images are decoded to it as in
            training.
        num_floor: Training images wanted (a few more are decoded, in case
            some are unreadable); 0 for none.
        seed: Seeds the choice of training images.
        image_dir: Where the folder is now (`None`: where it was).

    Returns:
        `(held_out, training)`: float32 `[N, H, W, C]` in [0, 1] (`training`
        is `None` if `num_floor` is 0).
    """
    image_dir = image_dir or training_data["image_dir"]
    files = find_images(image_dir)
    train_files, val_files = folder_split(len(files.paths), training_data)

    def decode(indices):
        decoded = decode_folder(
            [files.paths[index] for index in indices], image_shape[:2], image_shape[2], 10**9
        )
        return decoded.images.astype(np.float32) / 255.0

    held_out = decode(val_files)
    if not num_floor:
        return held_out, None
    count = min(len(train_files), num_floor + 64)
    chosen = np.random.default_rng(seed).choice(train_files, count, replace=False)
    return held_out, decode(np.sort(chosen))


def load_image_folder(config):
    """`load_dataset` for `config.image_dir`: decode once, cache, hold out a seeded share.

    The hold-out is drawn over every image file found, before unreadable
    ones are skipped, so it depends only on the files, `val_fraction`,
    `batch_size` and `seed`: a resumed run holds out the same images. The
    decoded images stay in memory within `config.memory_cache_mb`, else go
    to a cache file under `<output_dir>/image_cache`; the output says which.
    """
    files = find_images(config.image_dir)
    if config.class_conditional and files.class_names is None:
        raise ConfigError(
            "`class_conditional` needs labelled images: one subfolder per class under "
            f"image_dir; this folder is flat. Received: image_dir={config.image_dir!r}"
        )
    holdout = {name: getattr(config, name) for name in HOLDOUT_FIELDS}
    train_files, val_files = folder_split(len(files.paths), holdout)
    used = np.concatenate([train_files, val_files])
    layout = (
        f"{len(files.class_names)} classes ({', '.join(files.class_names[:10])}"
        f"{', ...' if len(files.class_names) > 10 else ''})"
        if files.class_names
        else "no classes (a flat folder)"
    )
    print(
        f"Found {len(files.paths)} images in {config.image_dir}, {layout}: "
        f"{len(train_files)} to train on, {len(val_files)} held out for validation."
    )
    decoded = decode_folder(
        [files.paths[index] for index in used],
        config.image_size,
        config.channels,
        config.memory_cache_mb,
        config.image_cache_dir,
    )
    image_shape = tuple(int(d) for d in decoded.images.shape[1:])
    check_image_size(image_shape, config.channel_multipliers, name="image_shape")
    # Rows of the decoded array, per split; skipped files have none.
    row_of = {int(used[position]): row for row, position in enumerate(decoded.file_indices)}
    train_rows = [row_of[int(index)] for index in train_files if int(index) in row_of]
    val_rows = [row_of[int(index)] for index in val_files if int(index) in row_of]
    if len(train_rows) < config.batch_size or not val_rows:
        raise ConfigError(
            f"After skipping unreadable files, {len(train_rows)} training and {len(val_rows)} "
            f"validation images are left: fewer than one batch of {config.batch_size} to "
            f"train on. Received: batch_size={config.batch_size}"
        )
    labels = None
    if config.class_conditional:
        labels = files.labels[used[decoded.file_indices]]
    train_ds, val_ds = array_datasets(
        decoded.images, labels, train_rows, val_rows, config.batch_size, config.seed
    )
    return train_ds, val_ds, image_shape


def from_arrays(
    images,
    labels=None,
    class_names=None,
    batch_size=128,
    val_fraction=0.05,
    seed=42,
):
    """Training and validation datasets from NumPy arrays, scaled to [-1, 1].

    The same as an image folder's: a seeded `val_fraction` is held out (at
    least one batch), training batches are full and reshuffled every epoch.

        train_ds, val_ds, image_shape = ddpm_keras.data.from_arrays(images)
        model = ddpm_keras.build_model(config, image_shape)

    Args:
        images: `[N, H, W]` or `[N, H, W, C]` (C 1 or 3): uint8 in [0, 255],
            or float in [-1, 1].
        labels: Optional int class ids `[N]`, in [0, len(class_names)), for a
            class-conditional model; batches are then `(images, labels)`.
        class_names: The names of the classes (required with `labels`).
        batch_size: Images per batch.
        val_fraction: Share held out for validation, in (0, 0.5].
        seed: Seeds the hold-out and the training order.

    Returns:
        `(train_ds, val_ds, image_shape)`, as `load_dataset`.

    Raises:
        ConfigError: a bad shape, dtype, range, label or setting.
    """
    check_field("batch_size", batch_size)
    check_field("val_fraction", val_fraction)
    check_field("seed", seed)
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., np.newaxis]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ConfigError(
            "`images` must be [N, H, W] or [N, H, W, C] with C 1 or 3. "
            f"Received: images.shape={images.shape}"
        )
    images = scale_images(images)
    if (labels is None) != (class_names is None):
        raise ConfigError(
            "Give `labels` and `class_names` together (a class-conditional model needs "
            f"both). Received: labels={'None' if labels is None else '...'}, "
            f"class_names={class_names!r}"
        )
    if labels is not None:
        labels = np.asarray(labels)
        if (
            labels.shape != (len(images),)
            or not np.issubdtype(labels.dtype, np.integer)
            or labels.min() < 0
            or labels.max() >= len(class_names)
        ):
            raise ConfigError(
                f"`labels` must be {len(images)} integer ids in [0, {len(class_names) - 1}] "
                f"(one per image, class_names={list(class_names)}). "
                f"Received: labels.shape={labels.shape}, dtype={labels.dtype}"
            )
        labels = labels.astype(np.int32)
    train_rows, val_rows = holdout_split(len(images), val_fraction, batch_size, seed)
    train_ds, val_ds = array_datasets(images, labels, train_rows, val_rows, batch_size, seed)
    return train_ds, val_ds, tuple(int(d) for d in images.shape[1:])
