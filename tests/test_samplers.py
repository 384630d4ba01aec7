import numpy as np
import pytest
import tensorflow as tf

from ddpm_keras.model import sample_loop
from ddpm_keras.samplers import DDIMSampler, DDPMSampler, get_sampler
from ddpm_keras.schedule import NoiseSchedule


def make_oracle(schedule, x_0):
    """A 'network' that returns the exact noise taking x_0 to x_t (eq. 4 solved for eps)."""
    x_0 = tf.constant(x_0)
    sqrt_alpha_bar = tf.constant(np.sqrt(schedule.alphas_cumprod), tf.float32)
    sqrt_one_minus = tf.constant(np.sqrt(1.0 - schedule.alphas_cumprod), tf.float32)

    def denoise(samples, timesteps):
        a = tf.reshape(tf.gather(sqrt_alpha_bar, timesteps), (-1, 1, 1, 1))
        b = tf.reshape(tf.gather(sqrt_one_minus, timesteps), (-1, 1, 1, 1))
        return (samples - a * x_0) / b

    return denoise


def run(sampler, denoise, shape, seed=0):
    initial = tf.random.stateless_normal(shape, seed=[seed, 1])
    loop = tf.function(lambda noise, s: sample_loop(denoise, sampler, noise, s), autograph=False)
    return loop(initial, tf.constant(seed, tf.int64)).numpy()


@pytest.fixture
def x_0():
    return np.random.default_rng(0).uniform(-0.9, 0.9, (4, 6, 6, 1)).astype(np.float32)


@pytest.mark.parametrize("schedule_name", ["linear", "cosine"])
@pytest.mark.parametrize("steps", [1, 2, 7, 50, 1000])
def test_ddim_eta0_with_oracle_returns_x0(schedule_name, steps, x_0):
    schedule = NoiseSchedule(schedule_name, timesteps=1000)
    sampler = DDIMSampler(schedule, steps, eta=0.0)
    result = run(sampler, make_oracle(schedule, x_0), x_0.shape)
    # x_0 = (x_t - sqrt(1 - a) eps) / sqrt(a) amplifies float32 rounding by
    # sqrt(1/a - 1) at the last timestep used; the cosine schedule's alpha-bar
    # at t = 999 is 2.4e-9 (amplification 2e4), which a 1-step DDIM pays.
    last_alpha_bar = schedule.alphas_cumprod[sampler.timesteps[-1]]
    float32_error = np.finfo(np.float32).eps * np.sqrt(1 / last_alpha_bar - 1)
    np.testing.assert_allclose(result, x_0, atol=max(1e-4, 4 * float32_error))


def test_ddim_eta1_with_oracle_returns_x0(x_0):
    # With the exact eps the predicted x_0 is exact at every step, and the
    # last step (alpha_bar_prev = 1, sigma = 0) returns it whatever the noise.
    schedule = NoiseSchedule("linear", timesteps=1000)
    result = run(DDIMSampler(schedule, 20, eta=1.0), make_oracle(schedule, x_0), x_0.shape)
    np.testing.assert_allclose(result, x_0, atol=1e-4)


def test_ancestral_with_oracle_lands_close_to_x0(x_0):
    schedule = NoiseSchedule("linear", timesteps=1000)
    result = run(DDPMSampler(schedule), make_oracle(schedule, x_0), x_0.shape)
    # The last step adds no noise; it returns the posterior mean at t = 0,
    # which for the exact x_0 is x_0 up to float32 error accumulated over steps.
    np.testing.assert_allclose(result, x_0, atol=5e-3)


def test_ancestral_step_matches_posterior_formula():
    schedule = NoiseSchedule("linear", timesteps=10)
    sampler = DDPMSampler(schedule)
    rng = np.random.default_rng(3)
    sample = rng.standard_normal((2, 3, 3, 1)).astype(np.float32)
    pred_noise = rng.standard_normal(sample.shape).astype(np.float32) * 0.1
    noise = rng.standard_normal(sample.shape).astype(np.float32)
    index = 4  # t = 5
    t = 5
    a_bar, a_bar_prev, beta = (
        schedule.alphas_cumprod[t],
        schedule.alphas_cumprod[t - 1],
        schedule.betas[t],
    )
    x_0 = np.clip((sample - np.sqrt(1 - a_bar) * pred_noise) / np.sqrt(a_bar), -1, 1)
    mean = (
        np.sqrt(a_bar_prev) * beta / (1 - a_bar) * x_0
        + np.sqrt(1 - beta) * (1 - a_bar_prev) / (1 - a_bar) * sample
    )
    expected = mean + np.sqrt(beta * (1 - a_bar_prev) / (1 - a_bar)) * noise
    result = sampler.step(pred_noise, index, sample, noise)
    np.testing.assert_allclose(np.asarray(result), expected, rtol=1e-4, atol=1e-5)


def test_ddim_timesteps_descend_and_cover_the_range():
    schedule = NoiseSchedule("linear", timesteps=1000)
    for steps in (1, 3, 50, 999, 1000):
        timesteps = DDIMSampler(schedule, steps).timesteps
        assert len(timesteps) == steps
        assert timesteps[0] == 999
        assert np.all(np.diff(timesteps) < 0)
        if steps > 1:
            assert timesteps[-1] == 0


def test_ddim_uses_noise_only_when_eta_positive():
    schedule = NoiseSchedule("linear", timesteps=100)
    assert not DDIMSampler(schedule, 10, eta=0.0).uses_noise
    assert DDIMSampler(schedule, 10, eta=0.5).uses_noise


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda s: get_sampler("ddim", s, steps=0), "steps=0"),
        (lambda s: get_sampler("ddim", s, steps=101), "steps=101"),
        (lambda s: get_sampler("ddim", s, steps=2.5), "steps=2.5"),
        (lambda s: get_sampler("ddim", s, steps=10, eta=1.5), "eta=1.5"),
        (lambda s: get_sampler("ddim", s, steps=10, eta=-0.1), "eta=-0.1"),
        (lambda s: get_sampler("ddpm", s, steps=10), "num_steps=10"),
        (lambda s: get_sampler("ddpm", s, eta=0.5), "eta=0.5"),
        (lambda s: get_sampler("euler", s), "sampler='euler'"),
        (lambda s: DDIMSampler("linear", 10), "schedule='linear'"),
    ],
)
def test_rejects_bad_arguments(call, message):
    with pytest.raises(ValueError, match=message):
        call(NoiseSchedule("linear", timesteps=100))
