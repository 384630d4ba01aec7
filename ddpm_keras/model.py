"""`DiffusionModel`: a `keras.Model` that trains a noise predictor and samples.

Users drive it the Keras way: `compile(optimizer=...)`, `fit`, `evaluate`,
`save` / `keras.models.load_model`, then `generate`.
"""

from __future__ import annotations

import copy
import functools
import math
import os
import zipfile

import keras
import numpy as np
import tensorflow as tf

from ddpm_keras.config import DEFAULT_GUIDANCE_SCALE
from ddpm_keras.samplers import get_sampler
from ddpm_keras.sampling_loop import reverse_step, sample_loop
from ddpm_keras.schedule import NoiseSchedule, check_prediction

# Initial noise and per-step noise use distinct stateless seed streams.
_INITIAL_NOISE_STREAM = -1


class _SamplingFunction:
    """What `DiffusionModel` compiles for sampling: the whole loop or one step.

    A callable object rather than a closure: TensorFlow's retracing warning
    counts traces per Python code object, so closures made for different
    samplers would share one count and warn about tracing that is intended
    (one graph per sampler configuration).
    """

    def __init__(self, model, kind, sampler, guidance_scale):
        self.model, self.kind, self.sampler = model, kind, sampler
        self.guidance_scale = guidance_scale

    def __call__(self, *args):
        *args, labels = args
        denoise = functools.partial(
            self.model._denoise, labels=labels, guidance_scale=self.guidance_scale
        )
        if self.kind == "loop":
            initial_noises, seed = args
            return sample_loop(denoise, self.sampler, initial_noises, seed)
        index, samples, state, seed = args
        return reverse_step(denoise, self.sampler, index, samples, state, seed)


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
            (weights included); given when loading a saved model.
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
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(network, keras.Model):
            raise ValueError(f"`network` must be a keras.Model. Received: network={network!r}")
        if not isinstance(schedule, NoiseSchedule):
            raise ValueError(f"`schedule` must be a NoiseSchedule. Received: schedule={schedule!r}")
        if isinstance(ema_decay, bool) or not 0.0 <= ema_decay <= 1.0:
            raise ValueError(f"`ema_decay` must be in [0, 1]. Received: ema_decay={ema_decay!r}")
        check_prediction(prediction)
        if min_snr_gamma is not None and (
            isinstance(min_snr_gamma, bool)
            or not isinstance(min_snr_gamma, (int, float))
            or not min_snr_gamma > 0
        ):
            raise ValueError(
                f"`min_snr_gamma` must be a number > 0 or None. Received: "
                f"min_snr_gamma={min_snr_gamma!r}"
            )
        if isinstance(label_dropout, bool) or not (
            isinstance(label_dropout, (int, float)) and 0.0 <= label_dropout <= 1.0
        ):
            raise ValueError(
                f"`label_dropout` must be in [0, 1]. Received: label_dropout={label_dropout!r}"
            )
        conditional = len(network.inputs) == 3
        if class_names is not None:
            class_names = list(class_names)
            if not class_names or not all(isinstance(n, str) and n for n in class_names):
                raise ValueError(
                    "`class_names` must be a non-empty list of non-empty strings. "
                    f"Received: class_names={class_names!r}"
                )
        if conditional != (class_names is not None) or (
            conditional and network.get_layer("label_embedding").input_dim != len(class_names) + 1
        ):
            raise ValueError(
                "`class_names` must name the classes of a class-conditional network "
                "(one per label; the network's label embedding has one more row, for "
                "'no label'), and be None for an unconditional one. Received: "
                f"class_names={class_names!r} for a network with inputs "
                f"{[i.name for i in network.inputs]}"
            )
        image_shape = tuple(network.inputs[0].shape[1:])
        if None in image_shape or len(image_shape) != 3:
            raise ValueError(
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
        self.image_shape = image_shape
        if ema_network is None:
            ema_network = keras.models.clone_model(network)
            ema_network.set_weights(network.get_weights())
        if not isinstance(ema_network, keras.Model) or [
            tuple(w.shape) for w in ema_network.weights
        ] != [tuple(w.shape) for w in network.weights]:
            raise ValueError(
                "`ema_network` must be a copy of `network` (same weights and shapes). "
                f"Received: ema_network={ema_network!r}"
            )
        # The EMA copy is updated by `_update_ema`, never by the optimizer.
        ema_network.trainable = False
        self.ema_network = ema_network
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self._sample_functions = {}
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
            raise ValueError(
                f"Images must have shape (batch, {', '.join(map(str, self.image_shape))}) "
                f"to match the network. Received: images.shape={tuple(images.shape)}"
            )
        if self.num_classes is None:
            return tf.cast(images, "float32"), None
        if labels is None:
            raise ValueError(
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

    def _denoise(self, samples, timesteps, labels=None, guidance_scale=1.0):
        """The EMA network's output, with classifier-free guidance for labelled samples.

        Guidance mixes the conditional and unconditional ("no label")
        outputs: out = uncond + guidance_scale * (cond - uncond), so 0 is the
        unconditional model, 1 the conditional one and > 1 pushes samples
        further toward their class (Ho & Salimans 2022, eq. 6, with w + 1
        as the scale).
        """
        network = self.ema_network
        if labels is None:
            return network([samples, timesteps], training=False)
        if guidance_scale == 1.0:
            return network([samples, timesteps, labels], training=False)
        no_labels = tf.fill(tf.shape(labels), self.num_classes)
        if guidance_scale == 0.0:
            return network([samples, timesteps, no_labels], training=False)
        # One network call on the doubled batch: conditional, then unconditional.
        outputs = network(
            [
                tf.concat([samples, samples], 0),
                tf.concat([timesteps, timesteps], 0),
                tf.concat([labels, no_labels], 0),
            ],
            training=False,
        )
        conditional, unconditional = tf.split(tf.cast(outputs, "float32"), 2)
        return unconditional + guidance_scale * (conditional - unconditional)

    def _compiled(self, kind, sampler, guidance_scale=1.0):
        """One compiled graph per kind, sampler configuration and guidance scale."""
        key = (
            kind,
            type(sampler).__name__,
            sampler.num_steps,
            getattr(sampler, "eta", None),
            sampler.prediction,
            guidance_scale,
        )
        if key not in self._sample_functions:
            function = _SamplingFunction(self, kind, sampler, guidance_scale)
            self._sample_functions[key] = tf.function(function, autograph=False)
        return self._sample_functions[key]

    def label_ids(self, labels, num_images):
        """Class ids `[num_images]` from ids or names (one, broadcast, or one per image).

        Names match `class_names` ignoring case, with "_" for spaces
        (e.g. "ankle_boot").
        """
        if self.num_classes is None:
            raise ValueError(
                f"This model is unconditional; it takes no labels. Received: labels={labels!r}"
            )
        single = isinstance(labels, (str, int, np.integer))
        values = [labels] * num_images if single else list(np.asarray(labels).ravel())
        if len(values) != num_images:
            raise ValueError(
                f"`labels` must be one label or one per image ({num_images}). "
                f"Received: {len(values)} labels"
            )
        by_name = {name.lower().replace(" ", "_"): i for i, name in enumerate(self.class_names)}
        ids = []
        for value in values:
            if isinstance(value, (str, np.str_)):
                key = str(value).lower().replace(" ", "_")
                if key not in by_name:
                    raise ValueError(
                        f"Unknown class name. Expected one of {self.class_names}. "
                        f"Received: labels={value!r}"
                    )
                ids.append(by_name[key])
            elif (
                isinstance(value, (int, np.integer))
                and not isinstance(value, bool)
                and 0 <= value < self.num_classes
            ):
                ids.append(int(value))
            else:
                raise ValueError(
                    f"A label must be a class name or an id in [0, {self.num_classes - 1}]. "
                    f"Received: labels={value!r}"
                )
        return np.asarray(ids, np.int32)

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
        """Samples images with the EMA weights.

        Args:
            num_images: How many images, >= 1.
            steps: Denoising steps, 1..T. `None`: 50 for `"ddim"`, T for
                `"ddpm"` (which always runs all T steps).
            sampler: `"ddim"` or `"ddpm"` (ancestral).
            eta: DDIM noise level in [0, 1].
            seed: Integer seed; the same seed gives the same images. `None`
                draws a fresh one.
            batch_size: Images per sampling batch.
            callback: `None` runs each batch as one compiled loop. Otherwise
                the loop runs step by step (same result) and calls
                `callback(batch_index, step_index, samples)` after each step
                with the batch's current x_t as a NumPy array in about
                [-1, 1]: for progress bars and frames of the reverse process.
            labels: Class-conditional models only: a class name or id for
                all images, or one per image (see `label_ids`). `None`
                samples the unconditional model.
            guidance_scale: Classifier-free guidance for labelled samples,
                >= 0: 0 is unconditional, 1 conditional without guidance,
                larger values follow the label more closely (default 3,
                where FID was lowest for Fashion-MNIST; see README).

        Returns:
            NumPy float32 array `[num_images, H, W, C]` in [0, 1].
        """
        for name, value in (("num_images", num_images), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"`{name}` must be an integer >= 1. Received: {name}={value!r}")
        sampler = get_sampler(sampler, self.schedule, steps, eta, self.prediction)
        if (
            isinstance(guidance_scale, bool)
            or not isinstance(guidance_scale, (int, float))
            or not 0.0 <= guidance_scale < math.inf
        ):
            raise ValueError(
                f"`guidance_scale` must be a number >= 0. Received: guidance_scale={guidance_scale!r}"
            )
        guidance_scale = float(guidance_scale)
        if labels is not None:
            labels = self.label_ids(labels, num_images)
        elif self.num_classes is not None:
            # Unconditional samples of a conditional model: the "no label" id.
            labels = np.full(num_images, self.num_classes, np.int32)
            guidance_scale = 1.0
        if seed is None:
            seed = int(np.random.default_rng().integers(0, 2**31 - 1))
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"`seed` must be an integer >= 0. Received: seed={seed!r}")
        sample = self._compiled("loop", sampler, guidance_scale)
        step = None if callback is None else self._compiled("step", sampler, guidance_scale)
        batches = []
        for batch_index, start in enumerate(range(0, num_images, batch_size)):
            count = min(batch_size, num_images - start)
            # One stateless seed stream per batch: results depend only on seed.
            batch_seed = tf.constant(int(seed) * 1_000_003 + batch_index, tf.int64)
            initial_noises = tf.random.stateless_normal(
                (count,) + self.image_shape,
                seed=tf.stack([batch_seed, tf.constant(_INITIAL_NOISE_STREAM, tf.int64)]),
            )
            batch_labels = None if labels is None else tf.constant(labels[start : start + count])
            if step is None:
                batches.append(sample(initial_noises, batch_seed, batch_labels).numpy())
                continue
            samples, state = initial_noises, sampler.initial_state(initial_noises)
            for index in range(sampler.num_steps):
                index = tf.constant(index, tf.int32)
                samples, state = step(index, samples, state, batch_seed, batch_labels)
                callback(batch_index, int(index), samples.numpy())
            batches.append(samples.numpy())
        images = np.concatenate(batches, axis=0)
        return np.clip((images + 1.0) / 2.0, 0.0, 1.0).astype(np.float32)

    # Serialization --------------------------------------------------------

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "network": keras.saving.serialize_keras_object(self.network),
                "schedule": keras.saving.serialize_keras_object(self.schedule),
                "ema_decay": self.ema_decay,
                "ema_network": keras.saving.serialize_keras_object(self.ema_network),
                "prediction": self.prediction,
                "min_snr_gamma": self.min_snr_gamma,
                "class_names": self.class_names,
                "label_dropout": self.label_dropout,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        # Deep copy: deserialization consumes the nested dicts it is given.
        config = copy.deepcopy(config)
        for name in ("network", "schedule", "ema_network"):
            config[name] = keras.saving.deserialize_keras_object(config[name])
        # Saved weights (EMA included) are loaded after construction.
        return cls(**config)


def build_model(config, image_shape, class_names=None):
    """Builds an uncompiled `DiffusionModel` from a `DiffusionConfig`.

    Args:
        config: A `DiffusionConfig`.
        image_shape: `(H, W, C)` of the training images.
        class_names: The dataset's label names; required if
            `config.class_conditional` (see `data.class_names`), else unused.
    """
    if config.class_conditional and not class_names:
        raise ValueError(
            "A class-conditional model needs the dataset's class names. "
            f"Received: class_names={class_names!r}"
        )
    class_names = list(class_names) if config.class_conditional else None
    from ddpm_keras.unet import build_unet

    network = build_unet(
        image_shape,
        base_channels=config.base_channels,
        channel_multipliers=config.channel_multipliers,
        num_res_blocks=config.num_res_blocks,
        attention=config.attention,
        norm_groups=config.norm_groups,
        num_classes=None if class_names is None else len(class_names),
        dtype=config.precision,
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
        dtype=config.precision,
    )


def load_diffusion_model(path):
    """Loads a saved `DiffusionModel` (`.keras`) with a clear error on bad files.

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: `path` is not a readable `.keras` file of a DiffusionModel.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No saved model at this path. Received: path={path!r}")
    if not path.endswith(".keras") or not zipfile.is_zipfile(path):
        raise ValueError(
            "Expected a `.keras` file written by `model.save`; this one is not "
            f"a valid Keras archive (truncated or foreign?). Received: path={path!r}"
        )
    try:
        model = keras.models.load_model(path)
    except Exception as error:  # Keras raises many types for broken archives.
        raise ValueError(
            f"Could not load the model: {type(error).__name__}: {error}. Received: path={path!r}"
        ) from error
    if not isinstance(model, DiffusionModel):
        raise ValueError(
            "The file holds a Keras model, but not a DiffusionModel. "
            f"Received: path={path!r} ({type(model).__name__})"
        )
    return model
