"""FID (and KID) of the model's samples during `fit`, as `val_fid` / `val_kid` in the logs."""

from __future__ import annotations

import time

import keras
import numpy as np

from ddpm_keras.errors import ConfigError
from ddpm_keras.evaluation import score_features
from ddpm_keras.metrics import FeatureStatistics
from ddpm_keras.pipeline import SamplingSettings


class FIDCallback(keras.callbacks.Callback):
    """Every `every` epochs, scores `num_samples` EMA samples against reference data.

    Adds `val_fid` (and, when reference images are given, `val_kid`) to the
    epoch logs, so `keras.callbacks.ModelCheckpoint(monitor="val_fid")`,
    `EarlyStopping`, `MetricsJSON` and TensorBoard all see them. Place it
    before those callbacks in the list: Keras calls callbacks in order. On
    other epochs the keys are absent, as `val_loss` is when validation is
    skipped.

    Args:
        extractor: A `ddpm_keras.features.FeatureExtractor`.
        reference: What samples are compared with: a `FeatureStatistics`
            (FID only, e.g. the committed Fashion-MNIST test statistics), or
            reference images `[N, H, W, C]` in [0, 1], whose features are
            computed once when training begins (FID and KID).
        num_samples: Samples per evaluation. FID is biased upwards with few
            samples (compare only values of one sample count); KID is not.
        every: Epoch interval, >= 1.
        sampler: `"ddim"`, `"ddpm"` or `"dpmpp_2m"`.
        steps: Sampling steps (`None`: the sampler's default).
        eta: DDIM eta.
        seed: Sampling seed; fixed, so epochs are compared on the same noise.
        kid_subsets: KID subsets (see `kernel_inception_distance`).
    """

    def __init__(
        self,
        extractor,
        reference,
        num_samples=1000,
        every=1,
        sampler="ddim",
        steps=None,
        eta=0.0,
        seed=0,
        kid_subsets=10,
    ):
        super().__init__()
        for name, value, minimum in (
            ("num_samples", num_samples, 2),
            ("every", every, 1),
            ("kid_subsets", kid_subsets, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ConfigError(
                    f"`{name}` must be an integer >= {minimum}. Received: {name}={value!r}"
                )
        if not isinstance(reference, FeatureStatistics):
            reference = np.asarray(reference, dtype=np.float32)
            if reference.ndim != 4 or len(reference) < 2:
                raise ConfigError(
                    "`reference` must be FeatureStatistics or [N, H, W, C] images "
                    f"(N >= 2). Received: reference with shape {reference.shape}"
                )
        self.extractor = extractor
        self.reference = reference
        self.num_samples = num_samples
        self.every = every
        # Checked now, not at the first evaluation an epoch later.
        self.settings = SamplingSettings(sampler, steps, eta, seed=seed)
        self.kid_subsets = kid_subsets
        self._reference_features = None
        self._reference_statistics = reference if isinstance(reference, FeatureStatistics) else None

    def on_train_begin(self, logs=None):
        if self._reference_statistics is None:
            self._reference_features = self.extractor(self.reference)
            self._reference_statistics = FeatureStatistics.from_features(self._reference_features)

    def evaluate(self):
        """`{"val_fid": ..., ["val_kid": ...,] "fid_seconds": ...}` for the current EMA weights."""
        if self._reference_statistics is None:
            self.on_train_begin()
        start = time.perf_counter()
        images = self.model.pipeline(self.num_samples, self.settings)
        scores = score_features(
            self.extractor(images),
            self._reference_features,
            self._reference_statistics,
            self.kid_subsets,
            self.settings.seed,
        )
        results = {"val_fid": scores["fid"]}
        if "kid" in scores:
            results["val_kid"] = scores["kid"]
        results["fid_seconds"] = time.perf_counter() - start
        return results

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or (epoch + 1) % self.every:
            return
        logs.update(self.evaluate())
