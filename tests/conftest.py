"""Shared fixtures: tiny networks and the local Fashion-MNIST files."""

import os
import pathlib

import pytest
from hypothesis import settings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# What users get from ddpm_keras (see ddpm_keras/__init__.py), set before
# this file loads TensorFlow.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")


def _split_cpu_into_two_logical_devices():
    """Two logical CPUs ("CPU:0", "CPU:1") for the MirroredStrategy tests.

    Must run before TensorFlow initialises its devices, hence at import of
    this conftest. Single-device code still runs on CPU:0.
    """
    import tensorflow as tf

    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2
    )


_split_cpu_into_two_logical_devices()

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


def fashion_mnist_dir():
    """The four original Fashion-MNIST files: $DDPM_FASHION_MNIST_DIR or ../shared."""
    configured = os.environ.get("DDPM_FASHION_MNIST_DIR")
    if configured:
        return pathlib.Path(configured)
    return REPO_ROOT.parent / "shared" / "data" / "fashion-mnist"


@pytest.fixture(scope="session")
def manual_dir():
    path = fashion_mnist_dir()
    if not (path / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"Fashion-MNIST files not found at {path}; set DDPM_FASHION_MNIST_DIR")
    return str(path)


@pytest.fixture(scope="session")
def tfds_data_dir(tmp_path_factory):
    """A TFDS data dir shared by the session ($DDPM_TFDS_DATA_DIR reuses one)."""
    return os.environ.get("DDPM_TFDS_DATA_DIR") or str(tmp_path_factory.mktemp("tfds"))


def build_tiny_network(dtype=None, num_classes=None, attention=True, image_shape=(8, 8, 1)):
    """A UNet (8x8x1 by default) small enough to train in seconds.

    Class-conditional with `num_classes`.
    """
    from ddpm_keras.unet import build_unet

    return build_unet(
        image_shape,
        base_channels=8,
        channel_multipliers=(1, 2),
        num_res_blocks=1,
        attention=attention,
        norm_groups=4,
        num_classes=num_classes,
        dtype=dtype,
    )


CLASS_NAMES = ["T-shirt/top", "Trouser", "Ankle boot"]


def build_tiny_conditional_model(label_dropout=0.1):
    """A class-conditional 8x8x1 model with three classes."""
    from ddpm_keras.model import DiffusionModel
    from ddpm_keras.schedule import NoiseSchedule

    network = build_tiny_network(num_classes=len(CLASS_NAMES), attention=False)
    # Cosine: with T = 100 the default linear betas leave alpha_bar_T = 0.37,
    # so x_T would still show the image and the label would teach nothing.
    return DiffusionModel(
        network,
        NoiseSchedule("cosine", timesteps=100),
        ema_decay=0.9,
        class_names=CLASS_NAMES,
        label_dropout=label_dropout,
    )


def randomize_weights(network, seed=2):
    """Random weights everywhere (a new network's output layer starts at zero)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    for weight in network.weights:
        weight.assign(rng.normal(0, 0.3, weight.shape).astype(weight.dtype))


@pytest.fixture
def tiny_network():
    return build_tiny_network()


@pytest.fixture
def tiny_model(tiny_network):
    from ddpm_keras.model import DiffusionModel
    from ddpm_keras.schedule import NoiseSchedule

    return DiffusionModel(tiny_network, NoiseSchedule("linear", timesteps=100), ema_decay=0.9)


@pytest.fixture
def unwritable_dir(tmp_path):
    """A directory this process cannot write to, whoever runs the tests."""
    if os.geteuid() != 0:
        read_only = tmp_path / "read-only"
        read_only.mkdir()
        read_only.chmod(0o500)
        yield read_only
        read_only.chmod(0o700)
    elif os.path.isdir("/sys/kernel"):
        # root ignores permission bits, but not sysfs: mkdir there is refused.
        yield pathlib.Path("/sys/kernel/ddpm_keras_output")
    else:
        pytest.skip("no directory is unwritable for root on this system")


# CI runs a fixed set of examples (reproducible); locally each run explores anew.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
