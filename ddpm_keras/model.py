"""`DiffusionModel`: a `keras.Model` that trains a noise predictor and samples.

Users drive it the Keras way: `compile(optimizer=...)`, `fit`, `evaluate`,
`save` / `keras.models.load_model`, then `generate`.
"""

from __future__ import annotations

import copy
import os
import zipfile

import keras
import numpy as np
import tensorflow as tf

from ddpm_keras.config import DEFAULT_GUIDANCE_SCALE, HOLDOUT_FIELDS, check_field
from ddpm_keras.errors import ConfigError, MissingFileError
from ddpm_keras.pipeline import SamplingPipeline, SamplingSettings, label_ids
from ddpm_keras.precision import resolve_precision
from ddpm_keras.schedule import NoiseSchedule
from ddpm_keras.transforms import scale_images

# What `get_config` writes as `ema_network` for a sampling-only model.
SHARED_EMA = "network"


@keras.saving.register_keras_serializable(package="ddpm_keras")
class DiffusionModel(keras.Model):
    """Denoising diffusion probabilistic model (Ho et al. 2020).

    Trains `network` to predict the noise added by `schedule` (the "simple"
    epsilon loss, eq. 14), or the clean image or v, at uniformly drawn
    timesteps, keeps an exponential moving average (EMA) of its weights in
    `ema_network`, and samples with the EMA weights.

    Args:
        network: A Keras model mapping `[noisy_images, timesteps]` to an
            output of the images' shape (see `build_unet`).
        schedule: The `NoiseSchedule`.
        ema_decay: EMA decay in [0, 1] (e.g. 0.999).
        ema_network: The EMA copy of `network`. `None` clones `network`
            (weights included); given when loading a saved model. `network`
            itself makes a sampling-only model: it samples with the
            network's own weights and keeps no second copy (see
            `sampling_copy`); it cannot be trained.
        prediction: What the network learns to output: `"epsilon"` (the
            noise), `"x0"` (the clean image) or `"v"` (Salimans & Ho 2022).
        min_snr_gamma: If set, weight each example's loss by the min-SNR-gamma
            rule (Hang et al. 2023): min(SNR(t), gamma) over SNR(t) for
            epsilon, over 1 for x0 and over SNR(t) + 1 for v. `None`: the
            unweighted MSE.
        class_names: For a class-conditional network (built with
            `num_classes`), the names of its classes, in label order; saved
            with the model. `None` for an unconditional network.
        label_dropout: Probability of replacing a training label by "no
            label", so that one network learns the conditional and the
            unconditional model (classifier-free guidance, Ho & Salimans 2022).
        training_data: What the model was trained on, saved with it so that
            `ddpm-evaluate` compares it with the same data: a dict with
            `"dataset"` (TFDS) or `"image_dir"` and its hold-out
            (`"val_fraction"`, `"batch_size"`, `"seed"`), plus
            `"image_size"` and `"channels"` (see `build_model`). `None`:
            unknown (models saved before it was recorded).
    """

    def __init__(
        self,
        network,
        schedule,
        ema_decay=0.999,
        ema_network=None,
        prediction="epsilon",
        min_snr_gamma=None,
        class_names=None,
        label_dropout=0.1,
        training_data=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(network, keras.Model):
            raise ConfigError(f"`network` must be a keras.Model. Received: network={network!r}")
        if not isinstance(schedule, NoiseSchedule):
            raise ConfigError(
                f"`schedule` must be a NoiseSchedule. Received: schedule={schedule!r}"
            )
        for name, value in (
            ("ema_decay", ema_decay),
            ("prediction", prediction),
            ("min_snr_gamma", min_snr_gamma),
            ("label_dropout", label_dropout),
        ):
            check_field(name, value)
        conditional = len(network.inputs) == 3
        if class_names is not None:
            class_names = list(class_names)
            if not class_names or not all(isinstance(n, str) and n for n in class_names):
                raise ConfigError(
                    "`class_names` must be a non-empty list of non-empty strings. "
                    f"Received: class_names={class_names!r}"
                )
        if conditional != (class_names is not None) or (
            conditional and network.get_layer("label_embedding").input_dim != len(class_names) + 1
        ):
            raise ConfigError(
                "`class_names` must name the classes of a class-conditional network "
                "(one per label; the network's label embedding has one more row, for "
                "'no label'), and be None for an unconditional one. Received: "
                f"class_names={class_names!r} for a network with inputs "
                f"{[i.name for i in network.inputs]}"
            )
        image_shape = tuple(network.inputs[0].shape[1:])
        if None in image_shape or len(image_shape) != 3:
            raise ConfigError(
                "`network` must take images of a fixed (height, width, channels) "
                f"shape. Received: network input shape={image_shape}"
            )
        self.network = network
        self.schedule = schedule
        self.ema_decay = float(ema_decay)
        self.prediction = prediction
        self.min_snr_gamma = None if min_snr_gamma is None else float(min_snr_gamma)
        self.class_names = class_names
        self.label_dropout = float(label_dropout)
        if training_data is not None and not isinstance(training_data, dict):
            raise ConfigError(
                f"`training_data` must be a dict or None. Received: training_data={training_data!r}"
            )
        self.training_data = None if training_data is None else dict(training_data)
        self.image_shape = image_shape
        if ema_network is None:
            ema_network = keras.models.clone_model(network)
            ema_network.set_weights(network.get_weights())
        self.sampling_only = ema_network is network
        if not isinstance(ema_network, keras.Model) or [
            tuple(w.shape) for w in ema_network.weights
        ] != [tuple(w.shape) for w in network.weights]:
            raise ConfigError(
                "`ema_network` must be a copy of `network` (same weights and shapes). "
                f"Received: ema_network={ema_network!r}"
            )
        if not self.sampling_only:
            # The EMA copy is updated by `_update_ema`, never by the optimizer.
            ema_network.trainable = False
        self.ema_network = ema_network
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self._pipeline = None
        # The networks are functional and already built; building here keeps
        # `fit` under a distribution strategy from tracing a symbolic build.
        self.built = True

    @property
    def metrics(self):
        return [self.loss_tracker]

    @property
    def num_classes(self):
        """Number of classes of a class-conditional model, else `None`."""
        return None if self.class_names is None else len(self.class_names)

    def call(self, inputs, training=False):
        """The network's output for `[noisy_images, timesteps]` (`+ [labels]`)."""
        return self.network(inputs, training=training)

    # Training -------------------------------------------------------------

    def fit(self, x=None, y=None, *args, validation_data=None, **kwargs):
        """`keras.Model.fit`; NumPy images may be uint8 in [0, 255] (scaled to [-1, 1]).

        Float images must already be in [-1, 1]; see `transforms.scale_images`
        for the checks. Datasets pass through unchanged.
        """
        if self.sampling_only:
            raise ConfigError(
                "This model holds only its sampling weights (no EMA copy, no optimizer "
                "state), e.g. a released model, and cannot be trained. To fine-tune it, "
                "build a model with the same settings and copy them: "
                "`new.network.set_weights(model.network.get_weights())`. "
                f"Received: model={self.name!r}"
            )
        x = _scaled_if_array(x, "x")
        if isinstance(validation_data, tuple) and validation_data:
            validation_data = (
                _scaled_if_array(validation_data[0], "validation_data"),
                *validation_data[1:],
            )
        else:
            validation_data = _scaled_if_array(validation_data, "validation_data")
        return super().fit(x, y, *args, validation_data=validation_data, **kwargs)

    def evaluate(self, x=None, y=None, *args, **kwargs):
        """`keras.Model.evaluate`, with NumPy images scaled as in `fit`."""
        return super().evaluate(_scaled_if_array(x, "x"), y, *args, **kwargs)

    def _images_and_labels(self, data):
        """Splits a batch (images, `(images, labels)` or a dict) for this model.

        Returns float32 images and, for a class-conditional model, int32
        labels (`None` for an unconditional model, which ignores labels).
        """
        labels = None
        if isinstance(data, (tuple, list)):
            images = data[0]
            labels = data[1] if len(data) > 1 else None
        else:
            images = data
        if isinstance(images, dict):
            images, labels = images["image"], images.get("label", labels)
        shape = tuple(images.shape[1:])
        if shape != self.image_shape:
            raise ConfigError(
                f"Images must have shape (batch, {', '.join(map(str, self.image_shape))}) "
                f"to match the network. Received: images.shape={tuple(images.shape)}"
            )
        if self.num_classes is None:
            return tf.cast(images, "float32"), None
        if labels is None:
            raise ConfigError(
                "A class-conditional model trains on (images, labels) batches. "
                "Received: images without labels"
            )
        return tf.cast(images, "float32"), tf.cast(tf.reshape(labels, [-1]), "int32")

    def _drop_labels(self, labels):
        """Replaces each label by "no label" (index num_classes) with probability label_dropout."""
        dropped = tf.random.uniform(tf.shape(labels)) < self.label_dropout
        return tf.where(dropped, tf.fill(tf.shape(labels), self.num_classes), labels)

    def _draw_timesteps_and_noises(self, images):
        """t ~ Uniform{0..T-1} and noise ~ N(0, I) for each image (Algorithm 1).

        `tf.random`, not a Keras `SeedGenerator`: under `tf.distribute` every
        replica must draw its own timesteps and noise.
        """
        timesteps = tf.random.uniform(
            [tf.shape(images)[0]], minval=0, maxval=self.schedule.timesteps, dtype=tf.int32
        )
        return timesteps, tf.random.normal(tf.shape(images))

    def _loss_weights(self, timesteps):
        """min-SNR-gamma weights (Hang et al. 2023, eq. 9 and its v/x0 forms)."""
        snr = self.schedule.signal_to_noise(timesteps)
        clipped_snr = tf.minimum(snr, self.min_snr_gamma)
        if self.prediction == "epsilon":
            return clipped_snr / snr
        if self.prediction == "v":
            return clipped_snr / (snr + 1.0)
        return clipped_snr

    def _prediction_losses(self, images, labels, training):
        """Per-example MSE to the target at uniformly drawn t (Algorithm 1, eq. 14)."""
        timesteps, noises = self._draw_timesteps_and_noises(images)
        noisy_images = self.schedule.q_sample(images, timesteps, noises)
        targets = self.schedule.training_target(images, noises, timesteps, self.prediction)
        inputs = [noisy_images, timesteps]
        if labels is not None:
            inputs.append(self._drop_labels(labels) if training else labels)
        outputs = self.network(inputs, training=training)
        outputs = tf.cast(outputs, "float32")
        losses = tf.reduce_mean(tf.square(targets - outputs), axis=[1, 2, 3])
        if self.min_snr_gamma is not None:
            losses = losses * self._loss_weights(timesteps)
        return losses

    def train_step(self, data):
        images, labels = self._images_and_labels(data)
        with tf.GradientTape() as tape:
            per_example_losses = self._prediction_losses(images, labels, training=True)
            # Sum / global batch size: Keras sums gradients over replicas, so
            # this gives the gradient of the global mean.
            loss = tf.nn.compute_average_loss(per_example_losses)
            # Loss scaling for mixed_float16 (no-op otherwise).
            scaled_loss = self.optimizer.scale_loss(loss)
        trainable_weights = self.network.trainable_weights
        gradients = tape.gradient(scaled_loss, trainable_weights)
        self.optimizer.apply_gradients(zip(gradients, trainable_weights, strict=True))
        self._update_ema()
        self.loss_tracker.update_state(per_example_losses)
        return self._step_logs()

    def test_step(self, data):
        images, labels = self._images_and_labels(data)
        per_example_losses = self._prediction_losses(images, labels, training=False)
        self.loss_tracker.update_state(per_example_losses)
        return self._step_logs()

    def _step_logs(self):
        loss = self.loss_tracker.result()
        strategy = tf.distribute.get_strategy()
        if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and (
            strategy.num_replicas_in_sync > len(strategy.extended.worker_devices)
        ):
            # Workaround for keras-team/keras#20585 (Keras 3.15): with several
            # workers, fit/evaluate reduce every step output with
            # strategy.reduce("MEAN", value, axis=0), which rejects a scalar.
            # A [1] tensor reduces back to the scalar mean over replicas.
            # tests/test_multiworker.py fails if this stops working.
            loss = tf.reshape(loss, [1])
        return {"loss": loss}

    def _update_ema(self):
        """ema <- decay * ema + (1 - decay) * weight, for every weight.

        Runs in cross-replica context through `merge_call`, like the Keras
        optimizer's own updates: under `tf.distribute`, a replica may not
        assign to a mirrored variable, and `extended.update` applies the same
        update on every device (the weights are equal across replicas after
        `apply_gradients`). On one device this is a plain loop of assigns.
        """
        decay = self.ema_decay

        def update(ema_weight, weight):
            return ema_weight.assign(decay * ema_weight + (1.0 - decay) * weight)

        def update_all(strategy, pairs):
            for ema_weight, weight in pairs:
                strategy.extended.update(ema_weight, update, args=(weight,), group=False)

        pairs = [
            (ema_weight.value, weight.value)
            for ema_weight, weight in zip(
                self.ema_network.weights, self.network.weights, strict=True
            )
        ]
        tf.distribute.get_replica_context().merge_call(update_all, args=(pairs,))

    # Sampling -------------------------------------------------------------

    @property
    def pipeline(self):
        """The `SamplingPipeline` of this model (created on first use, then reused)."""
        if self._pipeline is None:
            self._pipeline = SamplingPipeline(self)
        return self._pipeline

    def label_ids(self, labels, num_images):
        """Class ids `[num_images]` from ids or names (see `pipeline.label_ids`)."""
        return label_ids(self.class_names, labels, num_images)

    def generate(
        self,
        num_images,
        steps=None,
        sampler="ddim",
        eta=0.0,
        seed=None,
        batch_size=64,
        callback=None,
        labels=None,
        guidance_scale=DEFAULT_GUIDANCE_SCALE,
    ):
        """Samples images with the EMA weights (see `SamplingPipeline`).

        Args:
            num_images: How many images, >= 1.
            steps: Denoising steps, 1..T. `None`: 50 for `"ddim"`, 20 for
                `"dpmpp_2m"`, T for `"ddpm"` (which always runs all T steps).
            sampler: `"ddim"`, `"ddpm"` (ancestral) or `"dpmpp_2m"`.
            eta: DDIM noise level in [0, 1].
            seed: Integer seed; the same seed gives the same images. `None`
                draws a fresh one.
            batch_size: Images per sampling batch.
            callback: `callback(batch_index, step_index, samples)` after
                every step, for progress bars and frames (`None`: one
                compiled loop per batch; same images).
            labels: Class-conditional models only: a class name or id for
                all images, or one per image. `None` samples the
                unconditional model.
            guidance_scale: Classifier-free guidance of labelled samples,
                >= 0 (default 3, the lowest FID of the Fashion-MNIST sweep
                in docs/guidance.md).

        Returns:
            NumPy float32 array `[num_images, H, W, C]` in [0, 1].
        """
        settings = SamplingSettings(sampler, steps, eta, guidance_scale, seed)
        return self.pipeline(num_images, settings, labels, batch_size, callback)

    def sampling_copy(self):
        """A sampling-only copy: the EMA weights as its network, nothing else.

        What a released model holds: the same settings, schedule and classes,
        one copy of the weights (the EMA ones) instead of two, and no
        optimizer state, so its file is about half as large as one written
        by `save` after training. It samples exactly like this model.
        """
        network = keras.models.clone_model(self.ema_network)
        network.set_weights(self.ema_network.get_weights())
        network.trainable = True
        return DiffusionModel(
            network,
            self.schedule,
            ema_decay=self.ema_decay,
            ema_network=network,
            prediction=self.prediction,
            min_snr_gamma=self.min_snr_gamma,
            class_names=self.class_names,
            label_dropout=self.label_dropout,
            training_data=self.training_data,
            dtype=self.dtype_policy,
            name=self.name,
        )

    # Serialization --------------------------------------------------------

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "network": keras.saving.serialize_keras_object(self.network),
                "schedule": keras.saving.serialize_keras_object(self.schedule),
                "ema_decay": self.ema_decay,
                # A sampling-only model's EMA network is its network: saved once.
                "ema_network": SHARED_EMA
                if self.sampling_only
                else keras.saving.serialize_keras_object(self.ema_network),
                "prediction": self.prediction,
                "min_snr_gamma": self.min_snr_gamma,
                "class_names": self.class_names,
                "label_dropout": self.label_dropout,
                "training_data": self.training_data,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        # Deep copy: deserialization consumes the nested dicts it is given.
        config = copy.deepcopy(config)
        shared = config.get("ema_network") == SHARED_EMA
        for name in ("network", "schedule") + (() if shared else ("ema_network",)):
            config[name] = keras.saving.deserialize_keras_object(config[name])
        if shared:
            config["ema_network"] = config["network"]
        # Saved weights (EMA included) are loaded after construction.
        return cls(**config)


def _scaled_if_array(images, name):
    """NumPy images to float32 [-1, 1] (see `transforms.scale_images`); anything else as is."""
    return scale_images(images, name) if isinstance(images, np.ndarray) else images


def build_model(config, image_shape, class_names=None):
    """Builds an uncompiled `DiffusionModel` from a `DiffusionConfig`.

    Args:
        config: A `DiffusionConfig`.
        image_shape: `(H, W, C)` of the training images.
        class_names: The dataset's label names; required if
            `config.class_conditional` (see `data.class_names`), else unused.
    """
    if config.class_conditional and not class_names:
        raise ConfigError(
            "A class-conditional model needs the dataset's class names. "
            f"Received: class_names={class_names!r}"
        )
    class_names = list(class_names) if config.class_conditional else None
    from ddpm_keras.unet import build_unet

    policy, _ = resolve_precision(config.precision)
    network = build_unet(
        image_shape,
        base_channels=config.base_channels,
        channel_multipliers=config.channel_multipliers,
        num_res_blocks=config.num_res_blocks,
        attention=config.attention,
        norm_groups=config.norm_groups,
        num_classes=None if class_names is None else len(class_names),
        dtype=policy,
        attention_levels=config.attention_levels,
        dropout=config.dropout,
    )
    schedule = NoiseSchedule(config.schedule, config.timesteps, config.beta_start, config.beta_end)
    # The model's own policy decides whether `compile` wraps the optimizer in
    # a LossScaleOptimizer (it does for mixed_float16).
    return DiffusionModel(
        network,
        schedule,
        ema_decay=config.ema_decay,
        prediction=config.prediction,
        min_snr_gamma=config.min_snr_gamma,
        class_names=class_names,
        label_dropout=config.label_dropout,
        training_data=training_data_record(config),
        dtype=policy,
    )


def training_data_record(config):
    """What `DiffusionModel.training_data` records of a run's data (see there)."""
    record = {
        "image_size": None if config.image_size is None else list(config.image_size),
        "channels": config.channels,
    }
    if config.image_dir is None:
        return {"dataset": config.dataset, **record}
    # What reproduces the run's hold-out (`data.folder_split`).
    holdout = {name: getattr(config, name) for name in HOLDOUT_FIELDS}
    return {"image_dir": os.path.abspath(config.image_dir), **holdout, **record}


def load_diffusion_model(path):
    """Loads a saved `DiffusionModel` (`.keras`) with a clear error on bad files.

    Raises:
        MissingFileError: `path` does not exist (a `FileNotFoundError`).
        ConfigError: `path` is not a readable `.keras` file of a DiffusionModel.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MissingFileError(f"No saved model at this path. Received: path={path!r}")
    if not path.endswith(".keras") or not zipfile.is_zipfile(path):
        raise ConfigError(
            "Expected a `.keras` file written by `model.save`; this one is not "
            f"a valid Keras archive (truncated or foreign?). Received: path={path!r}"
        )
    try:
        model = keras.models.load_model(path)
    except Exception as error:  # Keras raises many types for broken archives.
        raise ConfigError(
            f"Could not load the model: {type(error).__name__}: {error}. Received: path={path!r}"
        ) from error
    if not isinstance(model, DiffusionModel):
        raise ConfigError(
            "The file holds a Keras model, but not a DiffusionModel. "
            f"Received: path={path!r} ({type(model).__name__})"
        )
    return model
