"""Hyperparameters and artifact paths: one dataclass, a few presets, validation.

Every knob of a run lives in `DiffusionConfig`. Presets are named starting
points (`smoke`, `cpu`, `default`); any field can be overridden on top of one.
"""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np

from ddpm_keras.checks import Choice, Flag, Integer, Number, Sequence, Text, fail
from ddpm_keras.errors import ConfigError

DEFAULT_OUTPUT_DIR = os.path.join("artifacts", "tensorflow_diffusion")

SCHEDULES = ("linear", "cosine")
SAMPLERS = ("ddim", "ddpm", "dpmpp_2m")
STRATEGIES = ("auto", "default", "mirrored", "multiworker", "tpu")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16", "auto")
LEARNING_RATE_SCHEDULES = ("constant", "cosine")
PREDICTIONS = ("epsilon", "x0", "v")
# Classifier-free guidance of labelled samples unless a caller says otherwise:
# the lowest FID of the `cpu` preset's sweep in docs/guidance.md. The longer
# trained fashion-mnist-conditional scores best at 2 (its model card), with
# less class agreement (97.1% against 99.3%); one default serves every model.
DEFAULT_GUIDANCE_SCALE = 3.0
# Far past the useful range (docs/guidance.md sweeps 0 to 8, and images
# saturate well before 100), yet far from overflowing float32 arithmetic.
MAX_GUIDANCE_SCALE = 100.0


@dataclasses.dataclass(frozen=True)
class DiffusionConfig:
    """Everything a training or sampling run needs, validated on creation.

    Attributes:
        preset: The preset the other fields start from: `smoke` (seconds),
            `cpu` (about 30 minutes on 2 CPU cores), `release` (the released
            models' recipe, about 2 hours), `default` (a GPU run),
            `mnist` and `emnist` (the cpu recipe on MNIST digits and EMNIST
            letters) or `cifar10` (GPU). Unset:
            `default` if a GPU is visible, else `cpu`.
        dataset: TFDS dataset name with an `image` feature, e.g.
            `"fashion_mnist"`, `"mnist"` or `"emnist/letters"` (unused with
            `image_dir`).
        image_dir: Train on the images under this folder instead of a TFDS
            dataset: PNG, JPEG, BMP and GIF (first frame), found
            recursively. One subfolder per class gives labels named after
            the subfolders; a flat folder is unlabelled (see docs/data.md).
        image_size: Resize every image to this size: one number (square) or
            height and width, after a center crop to its aspect ratio, with
            antialiasing (`None`: the data's own size, which must then be
            the same for every image).
        channels: Convert every image to 1 (grey) or 3 (RGB) channels
            (`None`: the data's own; for a folder, 1 if every image is grey,
            else 3).
        val_fraction: Share of an image folder held out for validation, by a
            split seeded with `seed` (at least one batch).
        memory_cache_mb: An image folder is decoded once and cached in memory
            if its decoded images fit in this many MB (and in half the
            available memory), else in a file under `output_dir`.
        data_dir: TFDS data directory (`None`: TFDS' default,
            `~/tensorflow_datasets`).
        manual_dir: Folder holding the dataset's original download files, for
            offline use (TFDS `DownloadConfig(manual_dir=...)`).
        max_train_examples: Use only the first N training images (`None`: all).
        max_val_examples: Use only the first N test images for validation.
        shuffle_buffer: Size of the `tf.data` shuffle buffer.
        schedule: Noise schedule name, `"linear"` or `"cosine"`.
        timesteps: Number of diffusion steps T.
        beta_start: First beta of the linear schedule.
        beta_end: Last beta of the linear schedule.
        base_channels: Channels of the UNet's first level.
        channel_multipliers: Channel multiplier per UNet level; the image is
            downsampled by 2 between levels.
        num_res_blocks: Residual blocks per UNet level.
        attention: Self-attention at the UNet's lowest resolution.
        attention_levels: UNet levels (0: full resolution) where every
            residual block is followed by self-attention, as Ho et al. did at
            16x16 of their 32x32 images. For 28x28 images and three levels, 1
            is 14x14. `None`: attention only where `attention` puts it.
        dropout: Dropout rate in every residual block, before its second
            convolution (Ho et al. used 0.1 on CIFAR-10, against overfitting).
        norm_groups: Groups of every GroupNormalization layer.
        prediction: What the network learns to output: `"epsilon"` (the
            noise, Ho et al. 2020), `"x0"` (the clean image) or `"v"`
            (Salimans & Ho 2022).
        min_snr_gamma: Weight the loss with min-SNR-gamma (Hang et al. 2023),
            e.g. 5.0 (`None`: unweighted).
        class_conditional: Train on (image, label) pairs with a label
            embedding, for classifier-free guidance (Ho & Salimans 2022). The
            saved model keeps the dataset's label names.
        label_dropout: Probability of training a labelled image as
            unlabelled (the unconditional model guidance needs).
        guidance_scale: Classifier-free guidance of the sample grids of a
            class-conditional model (0: unconditional, 1: conditional, > 1:
            guided; default 3, at most 100).
        batch_size: Global training batch size.
        epochs: Training epochs.
        learning_rate: Adam learning rate (the peak, after any warm-up).
        learning_rate_schedule: `"constant"`, or `"cosine"`: decay from
            `learning_rate` to 0 over the run's steps after the warm-up
            (Loshchilov & Hutter 2017, without restarts).
        warmup_steps: Optimizer steps of linear warm-up from 0 to
            `learning_rate` (0: none).
        gradient_clip_norm: Clip each gradient to this L2 norm (`None`: no
            clipping); Keras optimizer's `clipnorm`.
        ema_decay: Decay of the exponential moving average of the weights.
        seed: Seed for weights, data order, timesteps and noise.
        sample_every: Write a sample grid every N epochs (0: only at the end).
        num_samples: Images in each sample grid.
        sampler: Sampler of the sample grids and FID: `"ddim"`, `"ddpm"`
            (ancestral) or `"dpmpp_2m"` (DPM-Solver++(2M)).
        sample_steps: Sampling steps of the grids and FID (`ddpm` always
            runs all T).
        eta: DDIM eta in [0, 1] (0: deterministic, 1: DDPM-like noise).
        fid_every: Score the EMA model's samples every N epochs with the
            committed Fashion-MNIST features: `val_fid` in the epoch logs,
            `metrics.json` and TensorBoard (0: never). Fashion-MNIST only;
            for other data, add a `FIDCallback` with your own extractor.
        fid_num_samples: Samples per FID evaluation (with `sampler`,
            `sample_steps` and `eta`); FID is comparable only at one count.
        output_dir: Where checkpoints, samples, the model and metrics go.
        tensorboard: Also log scalars and sample grids for TensorBoard, under
            `<output_dir>/tensorboard`.
        strategy: Distribution strategy: `"auto"`, `"default"`, `"mirrored"`,
            `"multiworker"` or `"tpu"` (see `ddpm_keras.distribute`).
        devices: Devices for `strategy="mirrored"`, e.g. `("GPU:0", "GPU:1")`
            (`None`: all GPUs, else the CPU).
        precision: Keras dtype policy of the network: `"float32"`,
            `"mixed_float16"` or `"mixed_bfloat16"`, or `"auto"`: 16-bit
            where the hardware computes in 16 bits, else float32 (the rule
            is in `ddpm_keras.precision`). The schedule, the loss and the
            samplers always run in float32.
        jit_compile: Compile the training step with XLA.
    """

    preset: str = "custom"
    # Data.
    dataset: str = "fashion_mnist"
    image_dir: str | None = None
    image_size: tuple[int, ...] | None = None
    channels: int | None = None
    val_fraction: float = 0.05
    memory_cache_mb: int = 1024
    data_dir: str | None = None
    manual_dir: str | None = None
    max_train_examples: int | None = None
    max_val_examples: int | None = None
    shuffle_buffer: int = 10_000
    # Noise schedule.
    schedule: str = "linear"
    timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    # Network.
    base_channels: int = 64
    channel_multipliers: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 2
    attention: bool = True
    attention_levels: tuple[int, ...] | None = None
    dropout: float = 0.0
    norm_groups: int = 8
    # Objective.
    prediction: str = "epsilon"
    min_snr_gamma: float | None = None
    class_conditional: bool = False
    label_dropout: float = 0.1
    # Optimisation.
    batch_size: int = 128
    epochs: int = 50
    learning_rate: float = 2e-4
    learning_rate_schedule: str = "constant"
    warmup_steps: int = 0
    gradient_clip_norm: float | None = None
    ema_decay: float = 0.999
    seed: int = 42
    # Sampling during and after training.
    sample_every: int = 5
    num_samples: int = 36
    sampler: str = "ddim"
    sample_steps: int = 50
    eta: float = 0.0
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE
    fid_every: int = 0
    fid_num_samples: int = 500
    # Artifacts.
    output_dir: str = DEFAULT_OUTPUT_DIR
    tensorboard: bool = False
    # Devices and numerics.
    strategy: str = "auto"
    devices: tuple[str, ...] | None = None
    precision: str = "float32"
    jit_compile: bool = False

    def __post_init__(self):
        # Accept lists (JSON, argparse) for the tuple fields, then check all.
        for name in ("channel_multipliers", "attention_levels", "devices", "image_size"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        validate_config(self)
        if self.image_size is not None and len(self.image_size) == 1:
            # One number is a square: stored as (height, width), as recorded.
            object.__setattr__(self, "image_size", self.image_size * 2)

    def replace(self, **changes) -> DiffusionConfig:
        """Returns a copy with some fields changed (validated again)."""
        check_known_fields(changes)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """Returns the config as a JSON-serializable dict."""
        values = dataclasses.asdict(self)
        for name in ("channel_multipliers", "attention_levels", "devices", "image_size"):
            if values[name] is not None:
                values[name] = list(values[name])
        return values

    @property
    def checkpoint_dir(self) -> str:
        return os.path.join(self.output_dir, "checkpoints")

    @property
    def backup_dir(self) -> str:
        return os.path.join(self.output_dir, "backup")

    @property
    def samples_dir(self) -> str:
        return os.path.join(self.output_dir, "samples")

    @property
    def image_cache_dir(self) -> str:
        return os.path.join(self.output_dir, "image_cache")

    @property
    def tensorboard_dir(self) -> str:
        return os.path.join(self.output_dir, "tensorboard")

    @property
    def model_path(self) -> str:
        return os.path.join(self.output_dir, "model.keras")

    @property
    def metrics_path(self) -> str:
        return os.path.join(self.output_dir, "metrics.json")

    @property
    def history_path(self) -> str:
        return os.path.join(self.output_dir, "history.csv")

    @property
    def samples_path(self) -> str:
        return os.path.join(self.output_dir, "ddpm_samples.png")


# The rule on each field's own value, one per field. Rules that relate two
# fields are in `validate_config`. The parts (samplers, the model, the
# sampling pipeline) check their arguments with `check_field`, so each rule
# is written once, and the CLI takes its flags' choices from here.
FIELD_RULES = {
    "preset": Text(),
    "dataset": Text(),
    "image_dir": Text(optional=True),
    "image_size": Sequence(int, optional=True),
    "channels": Choice((1, 3), optional=True),
    "val_fraction": Number(0.0, 0.5, low_open=True),
    "memory_cache_mb": Integer(0),
    "data_dir": Text(optional=True),
    "manual_dir": Text(optional=True),
    "max_train_examples": Integer(1, optional=True),
    "max_val_examples": Integer(1, optional=True),
    "shuffle_buffer": Integer(1),
    "schedule": Choice(SCHEDULES),
    "timesteps": Integer(2),
    "beta_start": Number(0.0, 1.0, low_open=True),
    "beta_end": Number(0.0, 1.0, low_open=True),
    "base_channels": Integer(2),
    "channel_multipliers": Sequence(int),
    "num_res_blocks": Integer(1),
    "attention": Flag(),
    "attention_levels": Sequence(int, optional=True, minimum=0),
    "dropout": Number(0.0, 1.0, high_open=True),
    "norm_groups": Integer(1),
    "prediction": Choice(PREDICTIONS),
    "min_snr_gamma": Number(0.0, math.inf, low_open=True, optional=True),
    "class_conditional": Flag(),
    "label_dropout": Number(0.0, 1.0),
    "batch_size": Integer(1),
    "epochs": Integer(1),
    "learning_rate": Number(0.0, 1.0, low_open=True),
    "learning_rate_schedule": Choice(LEARNING_RATE_SCHEDULES),
    "warmup_steps": Integer(0),
    "gradient_clip_norm": Number(0.0, math.inf, low_open=True, optional=True),
    "ema_decay": Number(0.0, 1.0),
    "seed": Integer(0),
    "sample_every": Integer(0),
    "num_samples": Integer(1),
    "sampler": Choice(SAMPLERS),
    "sample_steps": Integer(1),
    "eta": Number(0.0, 1.0),
    "guidance_scale": Number(0.0, MAX_GUIDANCE_SCALE),
    "fid_every": Integer(0),
    "fid_num_samples": Integer(2),
    "output_dir": Text(),
    "tensorboard": Flag(),
    "strategy": Choice(STRATEGIES),
    "devices": Sequence(str, optional=True),
    "precision": Choice(PRECISIONS),
    "jit_compile": Flag(),
}


# Fields a run may change when it resumes or is extended in the same output
# directory: how long it trains, how often it samples and scores, what it
# logs, where the data files are and which devices run it. Every other field
# decides what is trained (the data, network, schedule, objective,
# optimisation, seed and numerics), so changing it needs a new run
# (`--output-dir`, or `--overwrite`); see `ddpm_keras.run_dir`.
RESUMABLE_FIELDS = frozenset(
    {
        "epochs",
        "sample_every",
        "num_samples",
        "fid_every",
        "fid_num_samples",
        "tensorboard",
        "data_dir",
        "manual_dir",
        "memory_cache_mb",
        "output_dir",
        "strategy",
        "devices",
        "jit_compile",
    }
)


# The fields that decide which images of an image folder a run holds out
# for validation (`data.folder_split`); a folder-trained model records them
# (`model.training_data_record`), so that `ddpm-evaluate` holds out the same.
HOLDOUT_FIELDS = (
    "val_fraction",
    "batch_size",
    "seed",
    "max_train_examples",
    "max_val_examples",
)


def check_field(name, value):
    """Checks one value against the rule of the config field `name` (see `FIELD_RULES`).

    Raises:
        ConfigError: naming the field and the value.
    """
    FIELD_RULES[name].check(name, value)


def check_network_widths(base_channels, channel_multipliers, norm_groups):
    """The UNet's widths: an even `base_channels`, and `norm_groups` dividing every level's."""
    check_field("base_channels", base_channels)
    check_field("channel_multipliers", tuple(channel_multipliers))
    check_field("norm_groups", norm_groups)
    if base_channels % 2:
        # The sinusoidal timestep embedding has base_channels (sin, cos) pairs.
        fail("base_channels", base_channels, "must be even")
    # The stem (base_channels) and every level feed a GroupNormalization.
    for multiplier in (1, *channel_multipliers):
        if (base_channels * multiplier) % norm_groups:
            fail(
                "norm_groups",
                norm_groups,
                "must divide base_channels and base_channels * every channel multiplier "
                f"(base_channels={base_channels}, "
                f"channel_multipliers={tuple(channel_multipliers)})",
            )


def check_attention_levels(attention_levels, channel_multipliers):
    """Each level of `attention_levels` is one of the UNet's, named once."""
    check_field("attention_levels", attention_levels)
    if attention_levels is None:
        return
    levels = tuple(attention_levels)
    if max(levels) >= len(channel_multipliers) or len(set(levels)) != len(levels):
        fail(
            "attention_levels",
            levels,
            f"must name distinct levels in 0..{len(channel_multipliers) - 1} "
            f"(channel_multipliers={tuple(channel_multipliers)})",
        )


def check_image_size(image_size, channel_multipliers, name="image_size"):
    """The UNet halves height and width between levels: both must divide by 2 ** (levels - 1).

    Args:
        image_size: `(H, W)` or `(H, W, C)`.
        channel_multipliers: One per UNet level.
        name: What the message calls `image_size`.

    Raises:
        ConfigError: naming the nearest sizes that work.
    """
    factor = 2 ** (len(channel_multipliers) - 1)
    nearest = []
    for side, size in zip(("height", "width"), tuple(image_size)[:2], strict=True):
        if size % factor:
            below, above = size // factor * factor, (size // factor + 1) * factor
            nearest.append(f"{side} {below} or {above}" if below else f"{side} {above}")
    if nearest:
        fail(
            name,
            tuple(image_size),
            f"must have a height and width divisible by {factor} for "
            f"{len(channel_multipliers)} UNet levels (channel_multipliers="
            f"{tuple(channel_multipliers)}); the nearest that work: {', '.join(nearest)} "
            "(--image-size resizes)",
        )


def check_steps(value, timesteps, name="num_steps"):
    """Sampling steps are an integer in [1, timesteps]."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, np.integer))
        or not 1 <= value <= timesteps
    ):
        fail(name, value, f"must be an integer in [1, {timesteps}] (the schedule's T)")


def check_devices(devices, strategy):
    """`devices` names the devices of a `"mirrored"` strategy, and of no other."""
    check_field("strategy", strategy)
    check_field("devices", None if devices is None else tuple(devices))
    if devices is not None and strategy != "mirrored":
        fail("devices", devices, f"applies only to strategy='mirrored', not {strategy!r}")


def check_eta(eta, sampler):
    """eta is DDIM's: in [0, 1] for `"ddim"`, and 0 for the other samplers."""
    check_field("eta", eta)
    if sampler != "ddim" and eta != 0.0:
        fail("eta", eta, f"must be 0 with sampler={sampler!r} (eta is DDIM's)")


def validate_config(config: DiffusionConfig) -> None:
    """Checks every field, then the rules between fields.

    Raises:
        ConfigError: naming the first bad field.
    """
    for field in dataclasses.fields(config):
        check_field(field.name, getattr(config, field.name))
    if config.beta_start > config.beta_end:
        fail("beta_start", config.beta_start, "must be <= beta_end")
    check_network_widths(config.base_channels, config.channel_multipliers, config.norm_groups)
    check_attention_levels(config.attention_levels, config.channel_multipliers)
    if config.image_size is not None:
        if len(config.image_size) not in (1, 2):
            fail("image_size", config.image_size, "must be one number (square) or two (H W)")
        check_image_size((config.image_size * 2)[:2], config.channel_multipliers)
    check_steps(config.sample_steps, config.timesteps, "sample_steps")
    # Without this check the run would fail only at its first sample grid.
    check_eta(config.eta, config.sampler)
    if config.fid_every and (config.dataset != "fashion_mnist" or config.image_dir):
        fail(
            "fid_every",
            config.fid_every,
            f"needs dataset='fashion_mnist', not {config.dataset!r}, and no image_dir "
            f"(image_dir={config.image_dir!r}): its features come "
            "from the committed Fashion-MNIST classifier. For other datasets add a "
            "FIDCallback with your own extractor",
        )
    check_devices(config.devices, config.strategy)
    if config.class_conditional and config.strategy == "multiworker":
        # Keras 3.15's multi-worker build fails on (image, label) batches.
        fail(
            "class_conditional",
            config.class_conditional,
            "is not supported with strategy='multiworker' (see docs/scaling.md)",
        )


def field_docs() -> dict[str, str]:
    """Each field's documentation, from the `Attributes:` section of `DiffusionConfig`.

    The CLI's help comes from here, so a field is documented once.
    """
    lines = DiffusionConfig.__doc__.split("Attributes:", 1)[1].splitlines()
    docs, name = {}, None
    for line in lines:
        text = line.strip()
        head, colon, rest = text.partition(": ")
        # A field starts a line at the first indentation level: "name: text".
        if colon and head.isidentifier() and len(line) - len(line.lstrip()) == 8:
            name = head
            docs[name] = rest
        elif text and name is not None:
            docs[name] += " " + text
    return docs


# Presets. `smoke` runs in seconds for tests; `cpu` takes about 30 minutes on
# 2 CPU cores and draws recognisable garments; `default` is the full run for
# a GPU; `mnist` and `cifar10` are the other datasets'.
PRESETS = {
    "smoke": dict(
        max_train_examples=256,
        max_val_examples=64,
        base_channels=8,
        channel_multipliers=(1, 2),
        num_res_blocks=1,
        attention=False,
        norm_groups=4,
        batch_size=32,
        epochs=2,
        learning_rate=1e-3,
        ema_decay=0.9,
        sample_every=1,
        num_samples=16,
        sample_steps=5,
    ),
    # Tuned for FID at a 30-minute budget on 2 cores: 5 epochs of 937 steps,
    # Adam 2e-3 with a 100-step warm-up and cosine decay to 0, the cosine
    # noise schedule and EMA 0.999 (BENCHMARKS.md has the trials).
    "cpu": dict(
        max_val_examples=2_000,
        schedule="cosine",
        base_channels=24,
        channel_multipliers=(1, 2, 2),
        num_res_blocks=1,
        attention=True,
        norm_groups=8,
        batch_size=64,
        epochs=5,
        learning_rate=2e-3,
        learning_rate_schedule="cosine",
        warmup_steps=100,
        ema_decay=0.999,
        sample_every=1,
        num_samples=36,
        sample_steps=50,
    ),
    "default": dict(),
    # CIFAR-10 (32x32 RGB), for a GPU: the shape of Ho et al.'s CIFAR-10 model
    # (128 channels, 4 levels, 2 blocks; attention only at 4x4 here), with a
    # warm-up as in their run. About 390 steps an epoch at batch 128.
    "cifar10": dict(
        dataset="cifar10",
        max_val_examples=2_000,
        base_channels=128,
        channel_multipliers=(1, 2, 2, 2),
        num_res_blocks=2,
        attention=True,
        norm_groups=32,
        batch_size=128,
        epochs=500,
        learning_rate=2e-4,
        warmup_steps=5_000,
        ema_decay=0.9999,
        sample_every=10,
        num_samples=64,
    ),
}
# The released Fashion-MNIST models' recipe (scripts/release.py): the cpu
# recipe with 32 channels, for about two hours of 2 cores. Its step takes
# about 0.6 s on an AMD EPYC Zen 4 (family 25, model 17), where the released
# models were trained, so 11 epochs (10,307 steps) are about two hours there;
# a Zen 3 takes longer. BENCHMARKS.md has the screening and the sizing.
PRESETS["release"] = dict(PRESETS["cpu"], base_channels=32, epochs=11)
# MNIST (28x28 grey digits) and EMNIST letters with the cpu preset's recipe.
PRESETS["mnist"] = dict(PRESETS["cpu"], dataset="mnist")
PRESETS["emnist"] = dict(PRESETS["cpu"], dataset="emnist/letters")


def detect_preset() -> tuple[str, str]:
    """Picks the preset that fits this machine.

    Returns:
        The preset name and a sentence saying why it was chosen.
    """
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        return "default", f"{len(gpus)} GPU(s) visible"
    return "cpu", "no GPU is visible"


def check_known_fields(values):
    """Raises `ConfigError` if `values` has a key that is not a `DiffusionConfig` field."""
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(DiffusionConfig)})
    if unknown:
        raise ConfigError(f"Unknown config field(s) {unknown}. Received: {values}")


def get_config(preset: str | None = None, **overrides) -> DiffusionConfig:
    """Builds a validated config from a preset plus field overrides.

    Args:
        preset: `"smoke"`, `"cpu"`, `"release"`, `"default"`, `"mnist"`, `"emnist"` or
            `"cifar10"`
            (see `PRESETS`). `None` picks the preset
            that fits the machine (see `detect_preset`) and logs which.
        **overrides: Field values that replace the preset's. `None` values
            are ignored, so argparse results can be passed straight through.

    Returns:
        A `DiffusionConfig`.
    """
    if preset is None:
        preset, reason = detect_preset()
        print(f"No preset named; using '{preset}' because {reason}.")
    if preset not in PRESETS:
        raise ConfigError(
            f"Unknown preset. Expected one of {sorted(PRESETS)}. Received: preset={preset!r}"
        )
    check_known_fields(overrides)
    values = dict(PRESETS[preset], preset=preset)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return DiffusionConfig(**values)
