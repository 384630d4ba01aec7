"""Sampling as a pipeline: settings, labels and guidance, batches, seeds, progress, graphs.

`DiffusionModel.generate` is a thin call into `SamplingPipeline`; the sample
grids, FID, `ddpm-sample` and `ddpm-evaluate` describe how to sample with one
`SamplingSettings` and share this code. The pipeline reads from the model
only what sampling needs: the EMA network, the schedule, the prediction
target, the class names and the image shape.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from ddpm_keras.checks import Integer
from ddpm_keras.config import DEFAULT_GUIDANCE_SCALE, SAMPLERS, check_eta, check_field
from ddpm_keras.errors import ConfigError
from ddpm_keras.files import tile_images
from ddpm_keras.samplers import get_sampler
from ddpm_keras.sampling_loop import reverse_step, sample_loop

# Initial noise and per-step noise use distinct stateless seed streams.
_INITIAL_NOISE_STREAM = -1


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
    """How to sample: the sampler and its steps, eta, guidance and seed; checked on creation.

    Attributes:
        sampler: `"ddim"`, `"ddpm"` (ancestral) or `"dpmpp_2m"` (DPM-Solver++(2M)).
        steps: Network evaluations, 1..T. `None`: the sampler's default
            (50 for `"ddim"`, 20 for `"dpmpp_2m"`, T for `"ddpm"`, which
            always runs all T).
        eta: DDIM's noise level in [0, 1]; 0 for the other samplers.
        guidance_scale: Classifier-free guidance of labelled samples, in [0, 100]:
            0 is the unconditional model, 1 the conditional one, larger
            values follow the label more closely. Unused without labels.
        seed: Integer seed; the same seed gives the same images. `None`
            draws a fresh one at each call.
    """

    sampler: str = "ddim"
    steps: int | None = None
    eta: float = 0.0
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE
    seed: int | None = None

    def __post_init__(self):
        check_field("sampler", self.sampler)
        Integer(1, optional=True).check("steps", self.steps)
        check_eta(self.eta, self.sampler)
        check_field("guidance_scale", self.guidance_scale)
        Integer(0, optional=True).check("seed", self.seed)

    @classmethod
    def from_config(cls, config, **changes):
        """The settings of a run's grids and FID (`config.sampler`, `sample_steps`, ...).

        `config.sample_steps` does not apply to `"ddpm"`, which runs all T
        steps. `changes` replace single settings (`None` values are ignored).
        """
        values = {
            "sampler": config.sampler,
            "steps": config.sample_steps,
            "eta": config.eta,
            "guidance_scale": config.guidance_scale,
            "seed": config.seed,
        }
        values.update({name: value for name, value in changes.items() if value is not None})
        if values["sampler"] == "ddpm" and changes.get("steps") is None:
            values["steps"] = None
        return cls(**values)

    @classmethod
    def parse(cls, text, **changes):
        """`"ddim:50"`, `"ddim:50:0.5"` (eta) or `"ddpm:1000"`, as `ddpm-evaluate --settings` takes."""
        parts = text.split(":")
        try:
            if len(parts) not in (2, 3) or parts[0] not in SAMPLERS:
                raise ValueError
            steps = int(parts[1])
            eta = float(parts[2]) if len(parts) == 3 else 0.0
        except ValueError:
            raise ConfigError(
                f"A sampler setting is SAMPLER:STEPS[:ETA] with SAMPLER in {SAMPLERS}, "
                f"e.g. ddim:50. Received: {text!r}"
            ) from None
        return cls(parts[0], steps, eta, **changes)

    @property
    def label(self):
        """E.g. `"ddim 50"` or `"ddim 50, eta 0.5"`."""
        eta = f", eta {self.eta:g}" if self.eta else ""
        steps = "" if self.steps is None else f" {self.steps}"
        return f"{self.sampler}{steps}{eta}"

    def make_sampler(self, schedule, prediction="epsilon"):
        """The `Sampler` these settings describe, on `schedule`."""
        return get_sampler(self.sampler, schedule, self.steps, self.eta, prediction)


def label_ids(class_names, labels, num_images):
    """Class ids `[num_images]` from ids or names (one, broadcast, or one per image).

    Names match `class_names` ignoring case, with "_" for spaces
    (e.g. "ankle_boot").
    """
    if class_names is None:
        raise ConfigError(
            f"This model is unconditional; it takes no labels. Received: labels={labels!r}"
        )
    num_classes = len(class_names)
    single = isinstance(labels, (str, int, np.integer))
    values = [labels] * num_images if single else list(np.asarray(labels).ravel())
    if len(values) != num_images:
        raise ConfigError(
            f"`labels` must be one label or one per image ({num_images}). "
            f"Received: {len(values)} labels"
        )
    by_name = {name.lower().replace(" ", "_"): i for i, name in enumerate(class_names)}
    ids = []
    for value in values:
        if isinstance(value, (str, np.str_)):
            key = str(value).lower().replace(" ", "_")
            if key not in by_name:
                raise ConfigError(
                    f"Unknown class name. Expected one of {list(class_names)}. "
                    f"Received: labels={value!r}"
                )
            ids.append(by_name[key])
        elif (
            isinstance(value, (int, np.integer))
            and not isinstance(value, bool)
            and 0 <= value < num_classes
        ):
            ids.append(int(value))
        else:
            raise ConfigError(
                f"A label must be a class name or an id in [0, {num_classes - 1}]. "
                f"Received: labels={value!r}"
            )
    return np.asarray(ids, np.int32)


def guided_output(network, num_classes, samples, timesteps, labels=None, guidance_scale=1.0):
    """The network's output, with classifier-free guidance for labelled samples.

    Guidance mixes the conditional and unconditional ("no label", id
    `num_classes`) outputs: out = uncond + guidance_scale * (cond - uncond),
    so 0 is the unconditional model, 1 the conditional one and > 1 pushes
    samples further toward their class (Ho & Salimans 2022, eq. 6, with
    w + 1 as the scale).
    """
    if labels is None:
        return network([samples, timesteps], training=False)
    if guidance_scale == 1.0:
        return network([samples, timesteps, labels], training=False)
    no_labels = tf.fill(tf.shape(labels), num_classes)
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


class _SamplingFunction:
    """What the pipeline compiles: the whole loop or one step, for one sampler and scale.

    A callable object rather than a closure: TensorFlow's retracing warning
    counts traces per Python code object, so closures made for different
    samplers would share one count and warn about tracing that is intended
    (one graph per sampler configuration).
    """

    def __init__(self, network, num_classes, kind, sampler, guidance_scale):
        self.network, self.num_classes = network, num_classes
        self.kind, self.sampler, self.guidance_scale = kind, sampler, guidance_scale

    def denoise(self, samples, timesteps, labels):
        return guided_output(
            self.network, self.num_classes, samples, timesteps, labels, self.guidance_scale
        )

    def __call__(self, *args):
        *args, labels = args

        def denoise(samples, timesteps):
            return self.denoise(samples, timesteps, labels)

        if self.kind == "loop":
            initial_noises, seed = args
            return sample_loop(denoise, self.sampler, initial_noises, seed)
        index, samples, state, seed = args
        return reverse_step(denoise, self.sampler, index, samples, state, seed)


class SamplingPipeline:
    """Draws images from a `DiffusionModel`'s EMA network.

    Keeps one compiled graph per kind (whole loop, or one step for
    progress callbacks), sampler configuration (`Sampler.get_config`) and
    guidance scale, so repeated calls with the same settings trace once.

    Args:
        model: A `DiffusionModel` (or anything with its `ema_network`,
            `schedule`, `prediction`, `class_names` and `image_shape`).
    """

    def __init__(self, model):
        self.model = model
        self.compiled_graphs = {}

    def _compiled(self, kind, sampler, guidance_scale):
        config = tuple(sorted(sampler.get_config().items()))
        key = (kind, type(sampler).__qualname__, config, guidance_scale)
        if key not in self.compiled_graphs:
            model = self.model
            num_classes = None if model.class_names is None else len(model.class_names)
            function = _SamplingFunction(
                model.ema_network, num_classes, kind, sampler, guidance_scale
            )
            self.compiled_graphs[key] = tf.function(function, autograph=False)
        return self.compiled_graphs[key]

    def __call__(
        self,
        num_images,
        settings=None,
        labels=None,
        batch_size=64,
        callback=None,
        batch_callback=None,
    ):
        """Samples `num_images` images.

        Args:
            num_images: How many images, >= 1.
            settings: `SamplingSettings` (`None`: the defaults).
            labels: Class-conditional models only: a class name or id for
                all images, or one per image (see `label_ids`). `None`
                samples the unconditional model.
            batch_size: Images per sampling batch.
            callback: `None` runs each batch as one compiled loop. Otherwise
                the loop runs step by step (same result) and calls
                `callback(batch_index, step_index, samples)` after each step
                with the batch's current x_t as a NumPy array in about
                [-1, 1]: for progress bars and frames of the reverse process.
            batch_callback: Optional `batch_callback(images_done)` after each
                batch (a progress bar over images; the loop stays compiled).

        Returns:
            NumPy float32 array `[num_images, H, W, C]` in [0, 1].
        """
        settings = SamplingSettings() if settings is None else settings
        Integer(1).check("num_images", num_images)
        Integer(1).check("batch_size", batch_size)
        model = self.model
        sampler = settings.make_sampler(model.schedule, model.prediction)
        guidance_scale = float(settings.guidance_scale)
        if labels is not None:
            labels = label_ids(model.class_names, labels, num_images)
        elif model.class_names is not None:
            # Unconditional samples of a conditional model: the "no label" id.
            labels = np.full(num_images, len(model.class_names), np.int32)
            guidance_scale = 1.0
        seed = settings.seed
        if seed is None:
            seed = int(np.random.default_rng().integers(0, 2**31 - 1))
        sample = self._compiled("loop", sampler, guidance_scale)
        step = None if callback is None else self._compiled("step", sampler, guidance_scale)
        batches = []
        for batch_index, start in enumerate(range(0, num_images, batch_size)):
            count = min(batch_size, num_images - start)
            # One stateless seed stream per batch: results depend only on seed.
            batch_seed = tf.constant(int(seed) * 1_000_003 + batch_index, tf.int64)
            initial_noises = tf.random.stateless_normal(
                (count,) + tuple(model.image_shape),
                seed=tf.stack([batch_seed, tf.constant(_INITIAL_NOISE_STREAM, tf.int64)]),
            )
            batch_labels = None if labels is None else tf.constant(labels[start : start + count])
            if step is None:
                batches.append(sample(initial_noises, batch_seed, batch_labels).numpy())
            else:
                samples, state = initial_noises, sampler.initial_state(initial_noises)
                for index in range(sampler.num_steps):
                    index = tf.constant(index, tf.int32)
                    samples, state = step(index, samples, state, batch_seed, batch_labels)
                    callback(batch_index, int(index), samples.numpy())
                batches.append(samples.numpy())
            if batch_callback is not None:
                batch_callback(start + count)
        images = np.concatenate(batches, axis=0)
        return np.clip((images + 1.0) / 2.0, 0.0, 1.0).astype(np.float32)


class ReverseProcessRecorder:
    """Progress bar and GIF frames for `SamplingPipeline(callback=...)` (`ddpm-sample`).

    Args:
        num_images: Images generated (over all batches).
        batch_size: Images per batch.
        steps: The sampler's steps.
        num_frames: Frames to keep for a GIF: x_t after evenly spaced steps,
            from the first step to the last (the final samples).
        columns: Images per row of each frame (`None`: a square grid).
    """

    def __init__(self, num_images, batch_size, steps, num_frames, columns=None):
        import keras

        self.num_batches = -(-num_images // batch_size)
        self.columns = columns
        # Step indices whose x_t becomes a frame; the last step always does.
        self.frame_steps = set(
            np.linspace(0, steps - 1, min(num_frames, steps)).round().astype(int)
        )
        self._batches = {}  # step -> list of per-batch arrays
        self._progbar = keras.utils.Progbar(self.num_batches * steps, unit_name="step")

    def progress(self, show_bar=True, keep_frames=False):
        def callback(batch_index, step_index, samples):
            if show_bar:
                self._progbar.add(1)
            if keep_frames and step_index in self.frame_steps:
                self._batches.setdefault(step_index, []).append(samples)

        return callback

    def frames(self):
        """Tiled uint8 grids of every kept step, in order of the reverse process."""
        return [
            tile_images((np.concatenate(self._batches[step]) + 1.0) / 2.0, self.columns, padding=2)
            for step in sorted(self._batches)
        ]
