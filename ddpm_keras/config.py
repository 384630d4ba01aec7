"""Hyperparameters and artifact paths: one dataclass, a few presets, validation.

Every knob of a run lives in `DiffusionConfig`. Presets are named starting
points (`smoke`, `cpu`, `default`); any field can be overridden on top of one.
"""

from __future__ import annotations

import dataclasses
import math
import os

DEFAULT_OUTPUT_DIR = os.path.join("artifacts", "tensorflow_diffusion")

SCHEDULES = ("linear", "cosine")
SAMPLERS = ("ddim", "ddpm", "dpmpp_2m")
STRATEGIES = ("auto", "default", "mirrored", "multiworker", "tpu")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
LEARNING_RATE_SCHEDULES = ("constant", "cosine")
PREDICTIONS = ("epsilon", "x0", "v")
# Classifier-free guidance of labelled samples unless a caller says otherwise:
# the lowest FID of the guidance sweep in README ("Class-conditional models").
DEFAULT_GUIDANCE_SCALE = 3.0


@dataclasses.dataclass(frozen=True)
class DiffusionConfig:
    """Everything a training or sampling run needs, validated on creation.

    Attributes:
        preset: Name of the preset this config started from (informational).
        dataset: TFDS dataset name with an `image` feature, e.g.
            `"fashion_mnist"` or `"mnist"`.
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
            guided; default 3).
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
        sampler: Sampler for grids, `"ddim"` or `"ddpm"`.
        sample_steps: Sampling steps for grids (`ddpm` always uses T).
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
            `"mixed_float16"` or `"mixed_bfloat16"`. The schedule, the loss
            and the samplers always run in float32.
        jit_compile: Compile the training step with XLA.
    """

    preset: str = "custom"
    # Data.
    dataset: str = "fashion_mnist"
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
        for name in ("channel_multipliers", "devices"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        validate_config(self)

    def replace(self, **changes) -> DiffusionConfig:
        """Returns a copy with some fields changed (validated again)."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ValueError(f"Unknown config field(s) {unknown}. Received: {changes}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """Returns the config as a JSON-serializable dict."""
        values = dataclasses.asdict(self)
        values["channel_multipliers"] = list(self.channel_multipliers)
        if self.devices is not None:
            values["devices"] = list(self.devices)
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
    def tensorboard_dir(self) -> str:
        return os.path.join(self.output_dir, "tensorboard")

    @property
    def model_path(self) -> str:
        return os.path.join(self.output_dir, "model.keras")

    @property
    def metrics_path(self) -> str:
        return os.path.join(self.output_dir, "metrics.json")

    @property
    def samples_path(self) -> str:
        return os.path.join(self.output_dir, "ddpm_samples.png")


def _fail(name, value, requirement):
    raise ValueError(f"`{name}` {requirement}. Received: {name}={value!r}")


def _check_int(config, name, minimum, allow_none=False):
    value = getattr(config, name)
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(name, value, "must be an integer")
    if value < minimum:
        _fail(name, value, f"must be >= {minimum}")


def _check_float(config, name, low, high, low_open=False):
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _fail(name, value, "must be a number")
    if not math.isfinite(value):
        _fail(name, value, "must be finite")
    too_low = value <= low if low_open else value < low
    if too_low or value > high:
        interval = f"{'(' if low_open else '['}{low}, {high}]"
        _fail(name, value, f"must be in {interval}")


def _check_choice(config, name, choices):
    value = getattr(config, name)
    if value not in choices:
        _fail(name, value, f"must be one of {list(choices)}")


def _check_optional_str(config, name, allow_none=True):
    value = getattr(config, name)
    if value is None and allow_none:
        return
    if not isinstance(value, str) or not value:
        _fail(name, value, "must be a non-empty string")


def validate_config(config: DiffusionConfig) -> None:
    """Checks every field; raises `ValueError` naming the first bad one."""
    _check_optional_str(config, "preset", allow_none=False)
    _check_optional_str(config, "dataset", allow_none=False)
    _check_optional_str(config, "data_dir")
    _check_optional_str(config, "manual_dir")
    _check_optional_str(config, "output_dir", allow_none=False)
    _check_int(config, "max_train_examples", 1, allow_none=True)
    _check_int(config, "max_val_examples", 1, allow_none=True)
    _check_int(config, "shuffle_buffer", 1)
    _check_choice(config, "schedule", SCHEDULES)
    _check_int(config, "timesteps", 2)
    _check_float(config, "beta_start", 0.0, 1.0, low_open=True)
    _check_float(config, "beta_end", 0.0, 1.0, low_open=True)
    if config.beta_start > config.beta_end:
        _fail("beta_start", config.beta_start, "must be <= beta_end")
    _check_int(config, "base_channels", 2)
    if config.base_channels % 2:
        # The sinusoidal timestep embedding has base_channels (sin, cos) pairs.
        _fail("base_channels", config.base_channels, "must be even")
    multipliers = config.channel_multipliers
    if (
        not isinstance(multipliers, tuple)
        or not multipliers
        or any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in multipliers)
    ):
        _fail(
            "channel_multipliers",
            multipliers,
            "must be a non-empty sequence of positive integers",
        )
    _check_int(config, "num_res_blocks", 1)
    if not isinstance(config.attention, bool):
        _fail("attention", config.attention, "must be True or False")
    _check_int(config, "norm_groups", 1)
    # The stem (base_channels) and every level feed a GroupNormalization.
    for multiplier in (1, *multipliers):
        if (config.base_channels * multiplier) % config.norm_groups:
            _fail(
                "norm_groups",
                config.norm_groups,
                "must divide base_channels and base_channels * every channel multiplier "
                f"(base_channels={config.base_channels}, "
                f"channel_multipliers={multipliers})",
            )
    _check_choice(config, "prediction", PREDICTIONS)
    if config.min_snr_gamma is not None:
        _check_float(config, "min_snr_gamma", 0.0, math.inf, low_open=True)
    if not isinstance(config.class_conditional, bool):
        _fail("class_conditional", config.class_conditional, "must be True or False")
    _check_float(config, "label_dropout", 0.0, 1.0)
    _check_float(config, "guidance_scale", 0.0, math.inf)
    _check_int(config, "batch_size", 1)
    _check_int(config, "epochs", 1)
    _check_float(config, "learning_rate", 0.0, 1.0, low_open=True)
    _check_choice(config, "learning_rate_schedule", LEARNING_RATE_SCHEDULES)
    _check_int(config, "warmup_steps", 0)
    if config.gradient_clip_norm is not None:
        _check_float(config, "gradient_clip_norm", 0.0, math.inf, low_open=True)
    _check_float(config, "ema_decay", 0.0, 1.0)
    _check_int(config, "seed", 0)
    _check_int(config, "sample_every", 0)
    _check_int(config, "num_samples", 1)
    _check_choice(config, "sampler", SAMPLERS)
    _check_int(config, "sample_steps", 1)
    if config.sample_steps > config.timesteps:
        _fail(
            "sample_steps",
            config.sample_steps,
            f"must be <= timesteps ({config.timesteps})",
        )
    _check_float(config, "eta", 0.0, 1.0)
    if config.sampler != "ddim" and config.eta != 0.0:
        # Only DDIM has an eta; without this check the run would fail only
        # at its first sample grid.
        _fail("eta", config.eta, f"must be 0 with sampler={config.sampler!r} (eta is DDIM's)")
    _check_int(config, "fid_every", 0)
    _check_int(config, "fid_num_samples", 2)
    if config.fid_every and config.dataset != "fashion_mnist":
        _fail(
            "fid_every",
            config.fid_every,
            f"needs dataset='fashion_mnist', not {config.dataset!r}: its features come "
            "from the committed Fashion-MNIST classifier. For other datasets add a "
            "FIDCallback with your own extractor",
        )
    _check_choice(config, "strategy", STRATEGIES)
    if config.devices is not None:
        if (
            not isinstance(config.devices, tuple)
            or not config.devices
            or any(not isinstance(d, str) or not d for d in config.devices)
        ):
            _fail("devices", config.devices, "must be a non-empty sequence of device names")
        if config.strategy != "mirrored":
            _fail("devices", config.devices, "applies only to strategy='mirrored'")
    if config.class_conditional and config.strategy == "multiworker":
        # Keras 3.15's multi-worker build fails on (image, label) batches.
        _fail(
            "class_conditional",
            config.class_conditional,
            "is not supported with strategy='multiworker' (see README)",
        )
    _check_choice(config, "precision", PRECISIONS)
    for name in ("jit_compile", "tensorboard"):
        if not isinstance(getattr(config, name), bool):
            _fail(name, getattr(config, name), "must be True or False")


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
# MNIST (28x28 grey digits) with the cpu preset's recipe.
PRESETS["mnist"] = dict(PRESETS["cpu"], dataset="mnist")


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


def get_config(preset: str | None = None, **overrides) -> DiffusionConfig:
    """Builds a validated config from a preset plus field overrides.

    Args:
        preset: `"smoke"`, `"cpu"`, `"default"`, `"mnist"` or `"cifar10"`
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
        raise ValueError(
            f"Unknown preset. Expected one of {sorted(PRESETS)}. Received: preset={preset!r}"
        )
    fields = {f.name for f in dataclasses.fields(DiffusionConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"Unknown config field(s) {unknown}. Received: {overrides}")
    values = dict(PRESETS[preset], preset=preset)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return DiffusionConfig(**values)
