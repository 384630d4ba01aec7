import numpy as np
import pytest

from ddpm_keras.config import get_config
from ddpm_keras.data import (
    MANUAL_FILES,
    DataUnavailableError,
    class_names,
    from_arrays,
    load_dataset,
    prepare_builder,
)
from ddpm_keras.errors import ConfigError
from tests.fakes import write_image, write_solid_folder


def folder_config(folder, tmp_path, **changes):
    values = dict(image_dir=str(folder), output_dir=str(tmp_path / "run"), batch_size=4)
    return get_config("smoke", **(values | changes))


def all_batches(dataset):
    batches = list(dataset.as_numpy_iterator())
    if isinstance(batches[0], tuple):
        return tuple(np.concatenate(parts) for parts in zip(*batches, strict=True))
    return np.concatenate(batches)


def test_loads_fashion_mnist_offline_in_unit_range(manual_dir, tfds_data_dir):
    config = get_config(
        "smoke",
        manual_dir=manual_dir,
        data_dir=tfds_data_dir,
        batch_size=16,
        max_train_examples=64,
        max_val_examples=40,
    )
    train_ds, val_ds, image_shape = load_dataset(config)
    assert image_shape == (28, 28, 1)
    train_batches = list(train_ds.as_numpy_iterator())
    assert len(train_batches) == 4
    assert all(batch.shape == (16, 28, 28, 1) for batch in train_batches)
    assert train_batches[0].dtype == np.float32
    values = np.concatenate(train_batches)
    assert values.min() == -1.0 and values.max() == 1.0
    val_sizes = [batch.shape[0] for batch in val_ds.as_numpy_iterator()]
    assert val_sizes == [16, 16, 8]  # the test split, last batch kept


def test_same_seed_same_order(manual_dir, tfds_data_dir):
    config = get_config(
        "smoke", manual_dir=manual_dir, data_dir=tfds_data_dir, max_train_examples=64
    )
    first = next(iter(load_dataset(config)[0])).numpy()
    again = next(iter(load_dataset(config)[0])).numpy()
    other = next(iter(load_dataset(config.replace(seed=1))[0])).numpy()
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_batch_larger_than_data_is_rejected(manual_dir, tfds_data_dir):
    config = get_config(
        "smoke",
        manual_dir=manual_dir,
        data_dir=tfds_data_dir,
        max_train_examples=8,
        batch_size=16,
    )
    with pytest.raises(ValueError, match="batch_size=16"):
        load_dataset(config)


def test_empty_manual_dir_lists_expected_files(tmp_path):
    with pytest.raises(DataUnavailableError) as info:
        prepare_builder("fashion_mnist", data_dir=str(tmp_path / "tfds"), manual_dir=str(tmp_path))
    message = str(info.value)
    for name in MANUAL_FILES["fashion_mnist"]:
        assert name in message
    assert str(tmp_path) in message


def test_manual_dir_that_is_not_a_directory(tmp_path):
    with pytest.raises(DataUnavailableError, match="not a directory"):
        prepare_builder("fashion_mnist", manual_dir=str(tmp_path / "nowhere"))


def test_unknown_and_non_image_datasets_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="dataset='no_such_dataset'") as info:
        prepare_builder("no_such_dataset", data_dir=str(tmp_path))
    assert len(str(info.value).splitlines()) == 1
    # imdb_reviews is text: its features are known without downloading anything.
    with pytest.raises(ValueError, match="not an image dataset"):
        prepare_builder("imdb_reviews", data_dir=str(tmp_path))


def test_class_conditional_batches_pair_images_with_labels(manual_dir, tfds_data_dir):
    config = get_config(
        "smoke",
        manual_dir=manual_dir,
        data_dir=tfds_data_dir,
        batch_size=16,
        max_train_examples=64,
        max_val_examples=16,
        class_conditional=True,
    )
    train_ds, val_ds, _ = load_dataset(config)
    images, labels = next(iter(train_ds))
    assert images.shape == (16, 28, 28, 1) and labels.shape == (16,)
    assert labels.dtype.name == "int32" and 0 <= labels.numpy().min() <= labels.numpy().max() < 10
    plain_images = next(iter(load_dataset(config.replace(class_conditional=False))[0]))
    np.testing.assert_array_equal(images.numpy(), plain_images.numpy())  # same order
    assert class_names(config)[:2] == ["T-shirt/top", "Trouser"] and len(class_names(config)) == 10


@pytest.mark.parametrize("preset, image_shape", [("mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))])
def test_other_dataset_presets_train_on_mock_data(preset, image_shape, monkeypatch):
    # No local copy of MNIST or CIFAR-10 here: TFDS mock data of the real
    # features. Mock builders have no split metadata, so the test adds it.
    import tensorflow_datasets as tfds

    from ddpm_keras import data
    from ddpm_keras.model import build_model

    config = get_config(preset, batch_size=8, max_train_examples=16, max_val_examples=8)
    with tfds.testing.mock_data(num_examples=16):
        builder = tfds.builder(config.dataset)
        splits = [
            tfds.core.SplitInfo(name=n, shard_lengths=[16], num_bytes=0) for n in ("train", "test")
        ]
        builder.info.set_splits(tfds.core.SplitDict(splits))
        monkeypatch.setattr(data, "prepare_builder", lambda *args, **kwargs: builder)
        train_ds, val_ds, shape = load_dataset(config)
        images = next(iter(train_ds)).numpy()
        assert shape == image_shape and images.shape == (8, *image_shape)
        assert -1.0 <= images.min() and images.max() <= 1.0
        assert len(class_names(config)) == 10
        # The preset's network is built for the shape; a small one trains a step.
        assert build_model(config, shape).network.output_shape == (None, *image_shape)
        small = config.replace(base_channels=8, channel_multipliers=(1, 2), norm_groups=4)
        model = build_model(small, shape)
        model.compile(optimizer="adam")
        history = model.fit(train_ds.take(1), epochs=1, verbose=0)
        assert np.isfinite(history.history["loss"][0])


def test_a_truncated_file_in_manual_dir_is_named(manual_dir, tmp_path):
    import shutil

    copy = tmp_path / "files"
    shutil.copytree(manual_dir, copy)
    truncated = copy / "t10k-images-idx3-ubyte.gz"
    truncated.write_bytes(truncated.read_bytes()[:100_000])
    with pytest.raises(DataUnavailableError) as error:
        prepare_builder("fashion_mnist", data_dir=str(tmp_path / "tfds"), manual_dir=str(copy))
    message = str(error.value)
    assert f"The file {truncated} in manual_dir is not the original" in message
    assert "expected 4.22 MiB, found 97.66 KiB" in message and "Without internet" not in message


def test_a_labelled_folder_trains_on_images_paired_with_their_subfolder(tmp_path):
    # Class i of the folder is solid grey level i / 2: labels can be checked
    # against pixels. The files are PNG, JPEG, BMP and GIF, grey and RGB.
    folder = write_solid_folder(str(tmp_path / "images"), ("black", "grey", "white"), 12)
    config = folder_config(folder, tmp_path, class_conditional=True, image_size=(8,))
    train_ds, val_ds, shape = load_dataset(config)
    assert shape == (8, 8, 1) and class_names(config) == ["black", "grey", "white"]
    images, labels = all_batches(train_ds)
    val_images, val_labels = all_batches(val_ds)
    assert images.shape[1:] == (8, 8, 1) and images.dtype == np.float32
    assert len(images) + len(val_images) == 36 and len(val_images) == 4  # one batch
    for batch_images, batch_labels in ((images, labels), (val_images, val_labels)):
        np.testing.assert_allclose(
            batch_images.mean(axis=(1, 2, 3)), batch_labels - 1.0, atol=2 / 255
        )


def test_a_resumed_folder_run_holds_out_the_same_images(tmp_path):
    rng = np.random.default_rng(0)
    for index in range(20):
        write_image(tmp_path / "images" / f"{index:02d}.png", rng.integers(0, 256, (8, 8)))
    config = folder_config(tmp_path / "images", tmp_path)
    first = all_batches(load_dataset(config)[1])
    second = all_batches(load_dataset(config)[1])
    np.testing.assert_array_equal(first, second)
    other_seed = all_batches(load_dataset(config.replace(seed=7))[1])
    assert not np.array_equal(np.sort(first.ravel()), np.sort(other_seed.ravel()))


def test_folder_errors_before_training(tmp_path):
    folder = tmp_path / "images"
    for index, size in enumerate([(8, 8)] * 5 + [(12, 10)] * 3):
        write_image(folder / f"{index}.png", np.zeros(size, np.uint8))
    with pytest.raises(ConfigError, match=r"differ in size: 8x8 \(5\), 12x10 \(3\).*--image-size"):
        load_dataset(folder_config(folder, tmp_path, batch_size=2))
    with pytest.raises(ConfigError, match="8 images: too few.*needs at least 10"):
        load_dataset(folder_config(folder, tmp_path, batch_size=5, image_size=(8,)))
    with pytest.raises(ConfigError, match="this folder is flat"):
        load_dataset(folder_config(folder, tmp_path, batch_size=2, class_conditional=True))
    with pytest.raises(ConfigError, match="nearest that work: height 8 or 12"):
        get_config(
            "smoke", image_dir=str(folder), image_size=(10, 8), channel_multipliers=(1, 2, 2)
        )
    # A size the data has, which the UNet cannot halve: named with the flag.
    odd = tmp_path / "odd"
    for index in range(8):
        write_image(odd / f"{index}.png", np.zeros((7, 7), np.uint8))
    with pytest.raises(ConfigError, match="image_shape.*height 6 or 8.*--image-size"):
        load_dataset(folder_config(odd, tmp_path, batch_size=2))


def test_unreadable_images_are_skipped_and_named(tmp_path, capsys):
    folder = tmp_path / "images"
    for index in range(10):
        write_image(folder / f"{index}.png", np.full((8, 8), 9, np.uint8))
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    train_ds, val_ds, _ = load_dataset(folder_config(folder, tmp_path, batch_size=2))
    assert len(all_batches(train_ds)) + len(all_batches(val_ds)) == 10
    out = capsys.readouterr().out
    assert "Skipped 1 of 11 files" in out and "broken.png" in out


def test_from_arrays_scales_splits_and_checks_its_input():
    images = np.tile(np.arange(40, dtype=np.uint8)[:, None, None], (1, 4, 4))  # [40, 4, 4]
    labels = np.arange(40) % 2
    train_ds, val_ds, shape = from_arrays(images, labels, ["even", "odd"], batch_size=8, seed=1)
    train_images, train_labels = all_batches(train_ds)
    val_images, val_labels = all_batches(val_ds)
    assert shape == (4, 4, 1) and len(val_images) == 8 and len(train_images) == 32
    values = np.concatenate([train_images, val_images])[:, 0, 0, 0]
    np.testing.assert_allclose(np.sort(values), np.arange(40) / 127.5 - 1.0, rtol=1e-6)
    # Each image keeps its own label: image value k has label k mod 2.
    pixels = np.round((np.concatenate([train_images, val_images])[:, 0, 0, 0] + 1) * 127.5)
    np.testing.assert_array_equal(pixels % 2, np.concatenate([train_labels, val_labels]))
    with pytest.raises(ConfigError, match=r"look like \[0, 1\]"):
        from_arrays(np.linspace(0.0, 1.0, 40 * 16).reshape(40, 4, 4))
    with pytest.raises(ConfigError, match="C 1 or 3"):
        from_arrays(np.zeros((40, 4, 4, 2), np.uint8))
    with pytest.raises(ConfigError, match="together"):
        from_arrays(images, labels)
    with pytest.raises(ConfigError, match=r"ids in \[0, 0\]"):
        from_arrays(images, labels, ["only"])
    with pytest.raises(ConfigError, match="needs at least 256"):
        from_arrays(images)


def mock_tfds(monkeypatch, dataset, examples):
    """`prepare_builder` returns a mock builder of `dataset` yielding `examples`."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    from ddpm_keras import data

    def as_dataset(self, split, *args, **kwargs):
        return tf.data.Dataset.from_tensor_slices(examples)

    mock = tfds.testing.mock_data(num_examples=len(examples["label"]), as_dataset_fn=as_dataset)
    mock.__enter__()
    builder = tfds.builder(dataset)
    splits = [
        tfds.core.SplitInfo(name=n, shard_lengths=[len(examples["label"])], num_bytes=0)
        for n in ("train", "test")
    ]
    builder.info.set_splits(tfds.core.SplitDict(splits))
    monkeypatch.setattr(data, "prepare_builder", lambda *args, **kwargs: builder)
    return mock


def test_emnist_letters_come_out_upright(monkeypatch):
    # An "L": a stroke down the left column and along the bottom row. EMNIST
    # stores its images transposed, so the file holds the L's transpose (a
    # stroke along the top row and down the right column... of the mirror).
    letter = np.zeros((28, 28, 1), np.uint8)
    letter[4:24, 6] = 255  # the vertical stroke, on the left
    letter[23, 6:20] = 255  # the foot, at the bottom
    stored = np.transpose(letter, (1, 0, 2))
    examples = {"image": np.stack([stored] * 8), "label": np.arange(8) % 2}
    mock = mock_tfds(monkeypatch, "emnist/letters", examples)
    try:
        config = get_config("emnist", batch_size=4, max_train_examples=8, max_val_examples=4)
        train_ds, _, shape = load_dataset(config)
        image = next(iter(train_ds)).numpy()[0]
    finally:
        mock.__exit__(None, None, None)
    assert shape == (28, 28, 1)
    np.testing.assert_array_equal(image > 0, letter > 0)


def test_tfds_images_are_resized_and_converted_as_asked(monkeypatch):
    images = np.zeros((8, 28, 28, 1), np.uint8)
    images[:, :, 14:] = 255  # right half white
    mock = mock_tfds(monkeypatch, "mnist", {"image": images, "label": np.arange(8) % 2})
    try:
        config = get_config(
            "mnist", batch_size=4, max_train_examples=8, image_size=(32,), channels=3
        )
        train_ds, val_ds, shape = load_dataset(config)
        batch = next(iter(train_ds)).numpy()
    finally:
        mock.__exit__(None, None, None)
    assert shape == (32, 32, 3) and batch.shape == (4, 32, 32, 3)
    np.testing.assert_allclose(batch[:, :, :14], -1.0)
    np.testing.assert_allclose(batch[:, :, 18:], 1.0)
