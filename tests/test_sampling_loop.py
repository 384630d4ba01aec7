"""The loop that runs a sampler: `reverse_step` and `sample_loop`."""

import numpy as np
import pytest
import tensorflow as tf

from ddpm_keras.samplers import get_sampler
from ddpm_keras.sampling_loop import reverse_step, sample_loop
from ddpm_keras.schedule import NoiseSchedule

SCHEDULE = NoiseSchedule("linear", timesteps=50)


def toy_denoise(samples, timesteps):
    """A fixed 'network' that depends on both its inputs."""
    scale = tf.reshape(tf.cast(timesteps, tf.float32), (-1, 1, 1, 1)) / 50.0
    return tf.tanh(samples) * scale


def loop(sampler, initial, seed):
    function = tf.function(
        lambda noises, s: sample_loop(toy_denoise, sampler, noises, s), autograph=False
    )
    return function(initial, tf.constant(seed, tf.int64)).numpy()


@pytest.mark.parametrize(("name", "steps"), [("ddpm", 50), ("ddim", 7), ("dpmpp_2m", 7)])
def test_the_loop_equals_its_steps_one_by_one(name, steps):
    sampler = get_sampler(name, SCHEDULE, steps, eta=0.0)
    initial = tf.random.stateless_normal((3, 4, 4, 1), seed=[0, 1])
    samples, state = initial, sampler.initial_state(initial)
    for index in range(sampler.num_steps):
        samples, state = reverse_step(
            toy_denoise, sampler, tf.constant(index), samples, state, tf.constant(5, tf.int64)
        )
        assert samples.shape == (3, 4, 4, 1)
    np.testing.assert_allclose(loop(sampler, initial, 5), samples.numpy(), atol=1e-5)


def test_step_noise_depends_only_on_the_seed():
    sampler = get_sampler("ddpm", SCHEDULE, 50)
    initial = tf.random.stateless_normal((2, 4, 4, 1), seed=[0, 1])
    first, again, other = (loop(sampler, initial, seed) for seed in (3, 3, 4))
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - other).max() > 0.1
    # A deterministic sampler draws no noise, so the seed changes nothing.
    ddim = get_sampler("ddim", SCHEDULE, 10, eta=0.0)
    np.testing.assert_array_equal(loop(ddim, initial, 3), loop(ddim, initial, 4))
