"""Feature extractors: the committed Fashion-MNIST classifier and the InceptionV3 path."""

import numpy as np
import pytest

from ddpm_keras.features import (
    FMNIST_WEIGHTS,
    FeatureExtractor,
    build_fmnist_classifier,
    default_extractor,
    fmnist_card,
    fmnist_classifier_for,
    fmnist_extractor,
    fmnist_reference_path,
    get_feature_extractor,
    inception_extractor,
)
from ddpm_keras.metrics import FeatureStatistics, frechet_distance_from_statistics


@pytest.fixture(scope="module")
def fmnist_test_split(manual_dir, tfds_data_dir):
    from ddpm_keras.data import load_split_arrays

    images, labels, names = load_split_arrays("fashion_mnist", "test", tfds_data_dir, manual_dir)
    return images, labels, names


@pytest.mark.slow
def test_committed_classifier_reaches_its_stated_accuracy(fmnist_test_split):
    images, labels, names = fmnist_test_split
    card = fmnist_card()
    classifier = build_fmnist_classifier()
    classifier.load_weights(FMNIST_WEIGHTS)
    logits = classifier.predict(images, batch_size=500, verbose=0)
    accuracy = float(np.mean(np.argmax(logits, axis=1) == labels))
    assert accuracy >= 0.92
    assert accuracy == pytest.approx(card["test_accuracy"], abs=2e-3)
    assert card["test_examples"] == len(images) == 10_000
    assert card["label_names"] == names


@pytest.mark.slow
def test_test_split_is_close_to_the_train_statistics(fmnist_test_split):
    images, _, _ = fmnist_test_split
    features = fmnist_extractor()((images + 1) / 2)
    test_statistics = FeatureStatistics.from_features(features)
    committed_test = FeatureStatistics.load(fmnist_reference_path("test"))
    # The committed statistics are those of this split under these weights.
    np.testing.assert_allclose(test_statistics.mean, committed_test.mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        test_statistics.covariance, committed_test.covariance, rtol=1e-3, atol=1e-5
    )
    train = FeatureStatistics.load(fmnist_reference_path("train"))
    real_vs_real = frechet_distance_from_statistics(test_statistics, train)
    # Shuffled pixels keep the intensity histogram but not the garments.
    shuffled = np.random.default_rng(0).permuted(images.reshape(len(images), -1), axis=1)
    shuffled_features = fmnist_extractor()((shuffled.reshape(images.shape) + 1) / 2)
    garbage = frechet_distance_from_statistics(
        FeatureStatistics.from_features(shuffled_features), train
    )
    assert real_vs_real < 0.01 * garbage, (real_vs_real, garbage)


def test_extractor_rejects_images_outside_zero_one_and_bad_shapes():
    extractor = fmnist_extractor()
    assert extractor.feature_dim == 128 and extractor.image_shape == (28, 28, 1)
    features = extractor(np.full((3, 28, 28, 1), 0.5, np.float32))
    assert features.shape == (3, 128) and features.dtype == np.float64
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        extractor(np.full((2, 28, 28, 1), -1.0, np.float32))
    with pytest.raises(ValueError, match=r"Received: images.shape=\(2, 32, 32, 3\)"):
        extractor(np.zeros((2, 32, 32, 3), np.float32))


def test_get_feature_extractor_validates_its_arguments(tmp_path):
    with pytest.raises(ValueError, match="extractor='clip'"):
        get_feature_extractor("clip")
    with pytest.raises(ValueError, match=r"grey or RGB.*image_shape=\(32, 32, 2\)"):
        get_feature_extractor("fmnist", (32, 32, 2))
    with pytest.raises(FileNotFoundError, match="no-weights.h5"):
        inception_extractor(weights=str(tmp_path / "no-weights.h5"))
    with pytest.raises(FileNotFoundError, match="train_classifier.py"):
        fmnist_extractor(weights_path=str(tmp_path / "none.weights.h5"))
    with pytest.raises(ValueError, match="batch_size=0"):
        FeatureExtractor(build_fmnist_classifier(), "x", batch_size=0)


def test_inception_path_with_random_weights_gives_2048_features():
    # Offline here: random weights exercise the resize, grey-to-RGB and pooling.
    extractor = inception_extractor((28, 28, 1), weights=None, batch_size=2)
    images = np.random.default_rng(0).uniform(0, 1, (3, 28, 28, 1)).astype(np.float32)
    features = extractor(images)
    assert features.shape == (3, 2048)
    assert np.all(np.isfinite(features))
    assert not np.allclose(features[0], features[1])


@pytest.mark.slow
def test_garments_at_another_size_and_order_are_classified_as_fashion_mnist(fmnist_test_split):
    # The test images as a folder export would give them: 32x32 RGB, classes
    # named like folders ("T-shirt_top") and sorted by name. Resizing back
    # and reordering the logits must keep the classifier's accuracy.
    import tensorflow as tf

    images, labels, names = fmnist_test_split
    images, labels = images[:1000], labels[:1000]
    resized = tf.image.resize(images, (32, 32), antialias=True).numpy()
    rgb = np.repeat(resized, 3, axis=-1)
    folder_names = sorted(name.replace("/", "_") for name in names)
    classifier = fmnist_classifier_for((32, 32, 3), folder_names)
    predicted = np.argmax(classifier.predict(rgb, batch_size=250, verbose=0), axis=-1)
    folder_labels = np.array([folder_names.index(names[i].replace("/", "_")) for i in labels])
    accuracy = np.mean(predicted == folder_labels)
    # Resizing twice blurs a little; a wrong order or a broken resize gives ~0.1.
    assert accuracy >= fmnist_card()["test_accuracy"] - 0.05, accuracy
    assert fmnist_classifier_for((32, 32, 3), ["cat", "dog"]) is None
    features = fmnist_extractor(image_shape=(32, 32, 3))((rgb[:200] + 1) / 2)
    assert features.shape == (200, 128) and np.isfinite(features).all()


def test_the_default_extractor_is_fmnist_only_for_fashion_mnist_models():
    assert default_extractor((28, 28, 1), None) == "fmnist"  # models saved before the record
    assert default_extractor((28, 28, 1), {"dataset": "fashion_mnist"}) == "fmnist"
    with pytest.raises(ValueError, match="dataset='mnist'.*--extractor inception"):
        default_extractor((28, 28, 1), {"dataset": "mnist"})
    with pytest.raises(ValueError, match="image_dir='/data/cats'.*--extractor fmnist"):
        default_extractor((32, 32, 3), {"image_dir": "/data/cats"})
