"""FID and KID on feature matrices: closed forms, an independent oracle, bad input."""

import numpy as np
import pytest

from ddpm_keras.metrics import (
    FeatureStatistics,
    frechet_distance,
    frechet_distance_from_statistics,
    kernel_inception_distance,
)


def scipy_frechet_distance(features_a, features_b):
    """The textbook computation (as pytorch-fid): scipy's general sqrtm of S_a S_b."""
    linalg = pytest.importorskip("scipy.linalg")
    mean_a, mean_b = features_a.mean(0), features_b.mean(0)
    cov_a = np.cov(features_a, rowvar=False)
    cov_b = np.cov(features_b, rowvar=False)
    sqrt_product = linalg.sqrtm(cov_a @ cov_b).real
    return np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a + cov_b - 2 * sqrt_product)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_fid_of_a_set_with_itself_is_zero(rng):
    features = rng.normal(size=(500, 16))
    assert frechet_distance(features, features) == pytest.approx(0.0, abs=1e-9)


def test_fid_matches_the_closed_form_of_two_gaussians(rng):
    # N(0, I) against N(m, s^2 I) in D dims: |m|^2 + D (1 - s)^2.
    dims, shift, scale = 8, 0.5, 2.0
    features_a = rng.normal(size=(200_000, dims))
    features_b = shift + scale * rng.normal(size=(200_000, dims))
    expected = dims * shift**2 + dims * (1 - scale) ** 2
    assert frechet_distance(features_a, features_b) == pytest.approx(expected, rel=0.01)
    # Exactly, from the true statistics.
    exact = frechet_distance_from_statistics(
        FeatureStatistics(np.zeros(dims), np.eye(dims), 1),
        FeatureStatistics(np.full(dims, shift), scale**2 * np.eye(dims), 1),
    )
    assert exact == pytest.approx(expected, rel=1e-12)


def test_fid_matches_scipy_on_correlated_features(rng):
    mixing = rng.normal(size=(32, 32))
    features_a = rng.normal(size=(2000, 32)) @ mixing
    features_b = rng.normal(size=(1500, 32)) @ (mixing + 0.3 * rng.normal(size=(32, 32))) + 0.2
    ours = frechet_distance(features_a, features_b)
    assert ours == pytest.approx(scipy_frechet_distance(features_a, features_b), rel=1e-6)


def test_fid_with_fewer_samples_than_dimensions_is_finite(rng):
    # Singular covariances: the case where a general sqrtm goes complex.
    features_a = rng.normal(size=(20, 64))
    features_b = rng.normal(size=(20, 64)) + 1.0
    distance = frechet_distance(features_a, features_b)
    assert np.isfinite(distance) and distance > 0
    assert distance == pytest.approx(scipy_frechet_distance(features_a, features_b), rel=1e-4)


def test_statistics_round_trip_through_a_file(rng, tmp_path):
    stats = FeatureStatistics.from_features(rng.normal(size=(50, 4)))
    stats.save(tmp_path / "stats.npz")
    loaded = FeatureStatistics.load(tmp_path / "stats.npz")
    np.testing.assert_array_equal(loaded.mean, stats.mean)
    np.testing.assert_array_equal(loaded.covariance, stats.covariance)
    assert loaded.count == 50
    assert [p.name for p in tmp_path.iterdir()] == ["stats.npz"]


def test_kid_is_unbiased_on_two_draws_of_one_distribution(rng):
    means = []
    for _ in range(20):
        features_a = rng.normal(size=(100, 16))
        features_b = rng.normal(size=(100, 16))
        means.append(kernel_inception_distance(features_a, features_b, num_subsets=5)[0])
    # Unbiased: the estimates scatter around 0, both signs occur.
    standard_error = np.std(means) / np.sqrt(len(means))
    assert abs(np.mean(means)) < 3 * standard_error
    assert min(means) < 0 < max(means)


def test_kid_grows_with_the_distance_between_sets(rng):
    features_a = rng.normal(size=(300, 16))
    near = kernel_inception_distance(features_a, rng.normal(size=(300, 16)) + 0.2, num_subsets=10)
    far = kernel_inception_distance(features_a, rng.normal(size=(300, 16)) + 1.0, num_subsets=10)
    assert 0 < near[0] < far[0]
    assert near[1] >= 0


@pytest.mark.parametrize(
    ("features_a", "features_b", "message"),
    [
        (np.zeros((1, 4)), np.zeros((5, 4)), r"N >= 2. Received: features_a.shape=\(1, 4\)"),
        (np.zeros((5,)), np.zeros((5, 4)), r"features_a.shape=\(5,\)"),
        (np.zeros((5, 4)), np.zeros((5, 3)), "same dimension"),
        (np.full((5, 4), np.nan), np.zeros((5, 4)), "NaN"),
    ],
)
def test_bad_feature_matrices_are_rejected(features_a, features_b, message):
    with pytest.raises(ValueError, match=message):
        frechet_distance(features_a, features_b)
    with pytest.raises(ValueError, match=message):
        kernel_inception_distance(features_a, features_b)


def test_kid_rejects_bad_subset_arguments(rng):
    features = rng.normal(size=(10, 4))
    with pytest.raises(ValueError, match="Received: num_subsets=0"):
        kernel_inception_distance(features, features, num_subsets=0)
