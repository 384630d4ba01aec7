"""Tests of ddpm_keras.distribute: strategies, and one distributed step equal to one device.

conftest.py splits the CPU into two logical devices, so MirroredStrategy runs
two replicas here.
"""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from ddpm_keras.distribute import check_jit_compile, is_chief, make_strategy, worker_backup_dir
from ddpm_keras.model import DiffusionModel
from ddpm_keras.schedule import NoiseSchedule

from .fakes import ImageDerivedNoiseModel

TWO_CPUS = ["CPU:0", "CPU:1"]


@pytest.fixture
def images():
    return np.random.default_rng(0).uniform(-1, 1, (8, 8, 8, 1)).astype("float32")


def fit_one_step(strategy, network, images, model_class=ImageDerivedNoiseModel, dataset=None):
    """One SGD step on one global batch of `images` (or the one batch of `dataset`) under `strategy`."""
    with strategy.scope():
        replica_network = keras.models.clone_model(network)
        replica_network.set_weights(network.get_weights())
        model = model_class(replica_network, NoiseSchedule("linear", timesteps=100), ema_decay=0.9)
        # SGD, not Adam: Adam's first step is nearly lr * sign(gradient), so it
        # would hide gradients that are N times too large.
        model.compile(optimizer=keras.optimizers.SGD(0.1))
    if dataset is None:
        dataset = tf.data.Dataset.from_tensor_slices(images).batch(len(images))
    history = model.fit(dataset, epochs=1, verbose=0)
    return model, history.history["loss"][0]


def max_difference(weights_a, weights_b):
    return max(float(np.abs(a - b).max()) for a, b in zip(weights_a, weights_b, strict=True))


def test_mirrored_step_equals_one_device_step(tiny_network, images):
    initial = tiny_network.get_weights()
    single, single_loss = fit_one_step(tf.distribute.get_strategy(), tiny_network, images)
    strategy = make_strategy("mirrored", TWO_CPUS)
    assert strategy.num_replicas_in_sync == 2
    mirrored, mirrored_loss = fit_one_step(strategy, tiny_network, images)

    # The step did move the weights, by the same amount on both paths.
    assert max_difference(single.network.get_weights(), initial) > 1e-3
    assert max_difference(mirrored.network.get_weights(), single.network.get_weights()) < 1e-5
    assert max_difference(mirrored.ema_network.get_weights(), single.ema_network.get_weights()) < (
        1e-5
    )
    # The logged loss is the global mean, not a replica's share of it (which
    # would be off by 2x). The same 8 positive per-example losses summed in
    # two groupings: <= 7 roundings (eps32 / 2 each) on each side, 7 eps32;
    # if the two batch shapes pick other oneDNN kernels, the per-example
    # losses differ by a few eps32 more. 16 eps32 = 1.9e-6 (measured: equal).
    float32_eps = float(np.finfo(np.float32).eps)
    assert mirrored_loss == pytest.approx(single_loss, rel=16 * float32_eps)
    # Sampling from mirrored variables (as SampleGrid does during fit).
    np.testing.assert_allclose(
        mirrored.generate(2, steps=3, seed=0), single.generate(2, steps=3, seed=0), atol=1e-5
    )


def test_replicas_draw_different_timesteps_and_noise(tiny_network, images):
    keras.utils.set_random_seed(0)  # as start_run does: must not make replicas agree
    strategy = make_strategy("mirrored", TWO_CPUS)
    with strategy.scope():
        model = DiffusionModel(tiny_network, NoiseSchedule("linear", timesteps=100))

    @tf.function
    def draw(batch):
        return strategy.run(model._draw_timesteps_and_noises, args=(batch,))

    timesteps, noises = draw(tf.constant(images))
    first_noises, second_noises = strategy.experimental_local_results(noises)
    first_timesteps, second_timesteps = strategy.experimental_local_results(timesteps)
    assert np.abs(first_noises.numpy() - second_noises.numpy()).max() > 0.1
    assert not np.array_equal(first_timesteps.numpy(), second_timesteps.numpy())


def test_make_strategy_names():
    assert make_strategy("default") is tf.distribute.get_strategy()
    # No GPU here: auto is the default strategy.
    assert make_strategy("auto").num_replicas_in_sync == 1
    mirrored = make_strategy("mirrored", ["CPU:0", "CPU:1"])
    assert isinstance(mirrored, tf.distribute.MirroredStrategy)
    assert mirrored.num_replicas_in_sync == 2


@pytest.mark.parametrize(
    ("name", "devices", "message"),
    [
        ("gloo", None, "strategy='gloo'"),
        ("default", ["CPU:0"], "applies only to strategy='mirrored'"),
        ("mirrored", ["CPU:0", "GPU:0"], "Unknown device 'GPU:0'"),
        ("mirrored", ["CPU:0", "CPU:7"], "Unknown device 'CPU:7'"),
        ("mirrored", ["toaster"], "Unknown device 'toaster'"),
    ],
)
def test_make_strategy_rejects_bad_arguments(name, devices, message):
    with pytest.raises(ValueError, match=message):
        make_strategy(name, devices)


@pytest.mark.parametrize("tf_config", [None, "not json", json.dumps({"task": {}})])
def test_multiworker_needs_a_valid_tf_config(monkeypatch, tf_config):
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(ValueError, match="TF_CONFIG"):
        make_strategy("multiworker")


def test_jit_compile_refused_with_replicas_on_cpu():
    check_jit_compile(tf.distribute.get_strategy(), True)  # one device: fine
    check_jit_compile(make_strategy("mirrored", TWO_CPUS), False)
    with pytest.raises(ValueError, match="jit_compile=True"):
        check_jit_compile(make_strategy("mirrored", TWO_CPUS), True)


def test_single_process_is_chief_and_keeps_the_backup_dir(tmp_path):
    strategy = make_strategy("mirrored", TWO_CPUS)
    assert is_chief(strategy)
    assert worker_backup_dir(str(tmp_path), strategy) == str(tmp_path)


def test_a_step_on_array_batches_is_the_same_on_two_replicas(tiny_network):
    # Folder and NumPy data gather their batches with a NumPy function; the
    # strategy must split those batches like any other.
    from ddpm_keras.data import from_arrays

    pixels = np.random.default_rng(1).integers(0, 256, (16, 8, 8, 1), dtype=np.uint8)
    train_ds, _, _ = from_arrays(pixels, batch_size=8, seed=0)  # one training batch
    mirrored, mirrored_loss = fit_one_step(
        make_strategy("mirrored", TWO_CPUS), tiny_network, None, dataset=train_ds
    )
    single, single_loss = fit_one_step(
        tf.distribute.get_strategy(), tiny_network, None, dataset=train_ds
    )
    assert max_difference(mirrored.network.get_weights(), single.network.get_weights()) < 1e-5
    # The tolerances of test_mirrored_step_equals_one_device_step, for the same reasons.
    assert mirrored_loss == pytest.approx(single_loss, rel=16 * float(np.finfo(np.float32).eps))
