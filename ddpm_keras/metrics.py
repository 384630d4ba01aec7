"""Sample-quality metrics on feature vectors: Fréchet distance (FID) and KID.

Both compare two sets of feature vectors, one row per image, from the same
feature extractor (see `ddpm_keras.features`). Everything is computed in
float64 with NumPy; no SciPy is needed.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ddpm_keras.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class FeatureStatistics:
    """Mean and covariance of a set of feature vectors (what FID needs of a set).

    Attributes:
        mean: float64 `[D]`.
        covariance: float64 `[D, D]`, the unbiased sample covariance.
        count: How many feature vectors they summarise.
    """

    mean: np.ndarray
    covariance: np.ndarray
    count: int

    @classmethod
    def from_features(cls, features):
        """Statistics of a `[N, D]` feature matrix (N >= 2)."""
        features = _as_feature_matrix(features, "features")
        return cls(
            mean=features.mean(axis=0),
            covariance=np.cov(features, rowvar=False).reshape(features.shape[1], -1),
            count=len(features),
        )

    def save(self, path):
        """Writes the statistics as an `.npz` file, atomically."""
        from ddpm_keras.files import atomic_path

        with atomic_path(path) as temporary:
            with open(temporary, "wb") as file:
                np.savez(file, mean=self.mean, covariance=self.covariance, count=self.count)

    @classmethod
    def load(cls, path):
        """Reads statistics written by `save`."""
        with np.load(path) as data:
            return cls(
                mean=data["mean"].astype(np.float64),
                covariance=data["covariance"].astype(np.float64),
                count=int(data["count"]),
            )


def _as_feature_matrix(features, name):
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise ConfigError(
            f"`{name}` must be a [N, D] matrix with N >= 2. Received: {name}.shape={features.shape}"
        )
    if not np.all(np.isfinite(features)):
        raise ConfigError(f"`{name}` contains NaN or infinite values.")
    return features


def _sqrtm_psd(matrix):
    """Square root of a symmetric positive semi-definite matrix (eigendecomposition).

    Eigenvalues that round-off pushed slightly below zero are clipped to 0.
    """
    eigenvalues, eigenvectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T


def frechet_distance_from_statistics(stats_a, stats_b):
    """Fréchet distance between two Gaussians (Dowson & Landau 1982; FID, Heusel et al. 2017).

    d^2 = |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)).

    The trace of (S_a S_b)^(1/2) equals that of (S_a^(1/2) S_b S_a^(1/2))^(1/2),
    a symmetric positive semi-definite matrix whose square root comes from
    its eigenvalues. This needs no general (complex) matrix square root, so
    there is no imaginary part to discard, and a near-singular covariance
    (fewer samples than dimensions) is handled by clipping the round-off
    negative eigenvalues to zero instead of adding a diagonal offset.

    Args:
        stats_a: `FeatureStatistics` of the first set.
        stats_b: `FeatureStatistics` of the second set.

    Returns:
        The squared Fréchet distance, a float >= 0.
    """
    if stats_a.mean.shape != stats_b.mean.shape:
        raise ConfigError(
            "Both sets need features of the same dimension. Received: dimensions "
            f"{stats_a.mean.shape[0]} and {stats_b.mean.shape[0]}"
        )
    sqrt_a = _sqrtm_psd(stats_a.covariance)
    middle = sqrt_a @ stats_b.covariance @ sqrt_a
    eigenvalues = np.linalg.eigvalsh((middle + middle.T) / 2)
    trace_sqrt_product = np.sum(np.sqrt(np.clip(eigenvalues, 0.0, None)))
    mean_term = np.sum((stats_a.mean - stats_b.mean) ** 2)
    trace_term = np.trace(stats_a.covariance) + np.trace(stats_b.covariance)
    return float(max(mean_term + trace_term - 2.0 * trace_sqrt_product, 0.0))


def frechet_distance(features_a, features_b):
    """FID between two feature matrices `[N_a, D]` and `[N_b, D]`."""
    return frechet_distance_from_statistics(
        FeatureStatistics.from_features(_as_feature_matrix(features_a, "features_a")),
        FeatureStatistics.from_features(_as_feature_matrix(features_b, "features_b")),
    )


def _polynomial_kernel(x, y):
    # k(x, y) = (x.y / d + 1)^3, the kernel of Binkowski et al. (2018).
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def _unbiased_mmd2(x, y):
    """Unbiased estimate of MMD^2 (Gretton et al. 2012, eq. 3): no diagonal terms."""
    m, n = len(x), len(y)
    k_xx = _polynomial_kernel(x, x)
    k_yy = _polynomial_kernel(y, y)
    k_xy = _polynomial_kernel(x, y)
    return (
        (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
        + (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
        - 2.0 * k_xy.mean()
    )


def kernel_inception_distance(features_a, features_b, num_subsets=100, subset_size=1000, seed=0):
    """KID (Binkowski et al. 2018): unbiased MMD^2 with a cubic polynomial kernel.

    Averaged over `num_subsets` random subsets of `subset_size` rows drawn
    from each set (capped at the smaller set's size). Unlike FID it is an
    unbiased estimator, so it is meaningful with few samples; it can be
    slightly negative when the two sets come from one distribution.

    Args:
        features_a: `[N_a, D]` feature matrix.
        features_b: `[N_b, D]` feature matrix.
        num_subsets: How many subset pairs to average over.
        subset_size: Rows per subset.
        seed: Seed of the subset draws.

    Returns:
        `(mean, std)` of the per-subset estimates.
    """
    features_a = _as_feature_matrix(features_a, "features_a")
    features_b = _as_feature_matrix(features_b, "features_b")
    if features_a.shape[1] != features_b.shape[1]:
        raise ConfigError(
            "Both sets need features of the same dimension. Received: dimensions "
            f"{features_a.shape[1]} and {features_b.shape[1]}"
        )
    if num_subsets < 1 or subset_size < 2:
        raise ConfigError(
            "`num_subsets` must be >= 1 and `subset_size` >= 2. "
            f"Received: num_subsets={num_subsets}, subset_size={subset_size}"
        )
    size = min(subset_size, len(features_a), len(features_b))
    rng = np.random.default_rng(seed)
    estimates = [
        _unbiased_mmd2(
            features_a[rng.choice(len(features_a), size, replace=False)],
            features_b[rng.choice(len(features_b), size, replace=False)],
        )
        for _ in range(num_subsets)
    ]
    return float(np.mean(estimates)), float(np.std(estimates))
