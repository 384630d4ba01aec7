import numpy as np
import pytest

from ddpm_keras.config import get_config
from ddpm_keras.data import (
    MANUAL_FILES,
    DataUnavailableError,
    class_names,
    load_dataset,
    prepare_builder,
)


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
