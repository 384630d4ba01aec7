import numpy as np
import pytest
import tensorflow as tf

from ddpm_keras.samplers import (
    DDIMSampler,
    DDPMSampler,
    DPMSolverPlusPlus2MSampler,
    get_sampler,
)
from ddpm_keras.sampling_loop import sample_loop
from ddpm_keras.schedule import NoiseSchedule

FLOAT32_EPS = float(np.finfo(np.float32).eps)  # 1.2e-7


def make_oracle(schedule, x_0, prediction="epsilon"):
    """A 'network' that returns the exact target for x_0 at (x_t, t): eps, x_0 or v."""
    x_0 = tf.constant(x_0)
    sqrt_alpha_bar = tf.constant(np.sqrt(schedule.alphas_cumprod), tf.float32)
    sqrt_one_minus = tf.constant(np.sqrt(1.0 - schedule.alphas_cumprod), tf.float32)

    def denoise(samples, timesteps):
        a = tf.reshape(tf.gather(sqrt_alpha_bar, timesteps), (-1, 1, 1, 1))
        b = tf.reshape(tf.gather(sqrt_one_minus, timesteps), (-1, 1, 1, 1))
        noises = (samples - a * x_0) / b  # eq. 4 solved for eps
        if prediction == "epsilon":
            return noises
        if prediction == "x0":
            return x_0 + 0.0 * samples
        return a * noises - b * x_0  # v

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
    result, _ = sampler.step(pred_noise, index, sample, noise)
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


@pytest.mark.parametrize(
    "name, eta", [("ddim", 0.0), ("ddim", 0.5), ("ddpm", 0.0), ("dpmpp_2m", 0.0)]
)
def test_uses_noise_says_whether_the_step_reads_its_noise(name, eta):
    # The loop draws no noise for a sampler with uses_noise False, so a step
    # that read it anyway would get zeros and silently lose its randomness.
    schedule = NoiseSchedule("linear", timesteps=100)
    sampler = get_sampler(name, schedule, 100 if name == "ddpm" else 10, eta=eta)
    rng = np.random.default_rng(6)
    sample, output, noise = (rng.standard_normal((2, 3, 3, 1)).astype(np.float32) for _ in range(3))
    state = sampler.initial_state(sample)
    index = 3  # a middle step: DDPM and DDIM add noise at every step but the last
    with_noise, _ = sampler.step(output, index, sample, noise, state)
    without, _ = sampler.step(output, index, sample, np.zeros_like(noise), state)
    changed = np.abs(np.asarray(with_noise) - np.asarray(without)).max()
    assert (changed > 0.01) == sampler.uses_noise == (name == "ddpm" or eta > 0), changed


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
        (lambda s: get_sampler("dpmpp_2m", s, eta=0.5), "eta=0.5"),
        (lambda s: get_sampler("dpmpp_2m", s, steps=101), "steps=101"),
        (lambda s: get_sampler("ddim", s, prediction="score"), "prediction='score'"),
        (lambda s: get_sampler("euler", s), "sampler='euler'"),
        (lambda s: DDIMSampler("linear", 10), "schedule='linear'"),
    ],
)
def test_rejects_bad_arguments(call, message):
    with pytest.raises(ValueError, match=message):
        call(NoiseSchedule("linear", timesteps=100))


PREDICTIONS = ["epsilon", "x0", "v"]


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("name, steps", [("ddim", 10), ("dpmpp_2m", 10), ("dpmpp_2m", 1)])
def test_oracle_of_each_target_makes_deterministic_samplers_return_x0(name, steps, prediction, x_0):
    schedule = NoiseSchedule("linear", timesteps=1000)
    sampler = get_sampler(name, schedule, steps, prediction=prediction)
    result = run(sampler, make_oracle(schedule, x_0, prediction), x_0.shape)
    np.testing.assert_allclose(result, x_0, atol=1e-4)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_oracle_of_each_target_makes_ancestral_land_close_to_x0(prediction, x_0):
    schedule = NoiseSchedule("linear", timesteps=1000)
    sampler = get_sampler("ddpm", schedule, prediction=prediction)
    result = run(sampler, make_oracle(schedule, x_0, prediction), x_0.shape)
    np.testing.assert_allclose(result, x_0, atol=5e-3)


def gaussian_denoiser(schedule, mean, std):
    """The exact eps-network for data ~ N(mean, std^2) per pixel.

    E[x_0 | x_t] = mean + a std^2 / (a^2 std^2 + s^2) (x_t - a mean), with
    a = sqrt(alpha_bar_t) and s = sqrt(1 - alpha_bar_t); eps = (x_t - a E[x_0 | x_t]) / s.
    """
    sqrt_alpha_bar = tf.constant(np.sqrt(schedule.alphas_cumprod), tf.float32)
    sqrt_one_minus = tf.constant(np.sqrt(1.0 - schedule.alphas_cumprod), tf.float32)

    def denoise(samples, timesteps):
        a = tf.reshape(tf.gather(sqrt_alpha_bar, timesteps), (-1, 1, 1, 1))
        s = tf.reshape(tf.gather(sqrt_one_minus, timesteps), (-1, 1, 1, 1))
        pred_x0 = mean + a * std**2 / (a**2 * std**2 + s**2) * (samples - a * mean)
        return (samples - a * pred_x0) / s

    return denoise


def gaussian_ode_problem(schedule, mean=0.3, std=0.5):
    """The exact denoiser of N(mean, std^2) data, a start x_T, and the exact x_0.

    For Gaussian data the probability-flow ODE is solved in closed form: the
    standardised value z = (x_t - a_t mean) / sqrt(a_t^2 std^2 + s_t^2) stays
    constant. The samplers end with E[x_0 | x_t] at t = 0, so the exact
    output is mean + a_0 std^2 z / sqrt(a_0^2 std^2 + s_0^2).

    Returns:
        `(denoise, initial, exact)`: the eps-network, float64 x_T of shape
        [4, 6, 6, 1], and the float64 exact result from it.
    """
    last = schedule.timesteps - 1
    a = np.sqrt(schedule.alphas_cumprod)
    s = np.sqrt(1.0 - schedule.alphas_cumprod)
    initial = tf.random.stateless_normal((4, 6, 6, 1), seed=[0, 1]).numpy().astype(np.float64)
    z = (initial - a[last] * mean) / np.sqrt(a[last] ** 2 * std**2 + s[last] ** 2)
    exact = mean + a[0] * std**2 * z / np.sqrt(a[0] ** 2 * std**2 + s[0] ** 2)
    return gaussian_denoiser(schedule, mean, std), initial, exact


@pytest.mark.parametrize("schedule_name", ["linear", "cosine"])
def test_dpm_solver_beats_ddim_on_gaussian_data(schedule_name):
    # The exact ODE solution of Gaussian data (gaussian_ode_problem) against
    # each sampler's result.
    schedule = NoiseSchedule(schedule_name, timesteps=1000)
    denoise, initial, exact = gaussian_ode_problem(schedule)

    def error(sampler_class, steps):
        sampler = sampler_class(schedule, steps, clip_denoised=False)
        result = run(sampler, denoise, initial.shape)
        return np.sqrt(np.mean((result - exact) ** 2))

    ddim = {n: error(DDIMSampler, n) for n in (10, 20, 40)}
    dpm = {n: error(DPMSolverPlusPlus2MSampler, n) for n in (10, 20)}
    # DDIM (first order): halving the step size halves the error.
    assert 1.7 < ddim[10] / ddim[20] < 2.3 and 1.7 < ddim[20] / ddim[40] < 2.3, ddim
    # Measured RMS errors, linear / cosine: DDIM 0.137 / 0.078 at 10 steps and
    # 0.069 / 0.038 at 20; DPM-Solver++(2M) 0.106 / 0.030 and 0.023 / 0.0016.
    assert dpm[10] < 0.8 * ddim[10], (dpm, ddim)
    assert dpm[20] < ddim[20] / 2.5, (dpm, ddim)
    # Still better with half the network evaluations.
    assert dpm[20] < ddim[40], (dpm, ddim)


def test_dpm_solver_is_ddim_at_the_first_and_last_two_steps_only():
    # DPM-Solver++(2M)'s step with D = x0_t (first order) is DDIM's step; on
    # the second-order steps D also mixes in the previous x_0 prediction. An
    # exact oracle of fixed x_0 predicts the same x_0 at every step, which
    # would hide the difference; the exact denoiser of Gaussian data predicts
    # a different x_0 at each t. From the same sample and network output, the
    # two rules must then agree to float32 rounding exactly on the first step
    # and the last two, and differ on the others.
    schedule = NoiseSchedule("cosine", timesteps=100)
    dpm = DPMSolverPlusPlus2MSampler(schedule, 8)
    ddim = DDIMSampler(schedule, 8)
    denoise = gaussian_denoiser(schedule, mean=0.3, std=0.5)
    alpha_bar = np.append(schedule.alphas_cumprod[ddim.timesteps], 1.0)
    sample = tf.random.stateless_normal((2, 3, 3, 1), seed=[5, 1])
    state = dpm.initial_state(sample)
    zeros = tf.zeros_like(sample)
    ratios = []
    for index, timestep in enumerate(dpm.timesteps):
        output = denoise(sample, tf.fill([2], timestep))
        ddim_next, _ = ddim.step(output, index, sample, zeros)
        dpm_next, state = dpm.step(output, index, sample, zeros, state)
        # Rounding of the two float32 routes: a few eps32 of the terms, plus
        # DDIM's sqrt(1 - alpha_bar) of a float32 alpha_bar: its rounding
        # (eps32 / 2) becomes an absolute error in 1 - alpha_bar, i.e. an error
        # of eps32 / (2 sqrt(1 - alpha_bar)) on the noise term (alpha_bar at t
        # and at the next timestep; the next is 1 after the last step, where
        # the noise term is exactly 0).
        amplification = 1 / np.sqrt(1 - alpha_bar[index])
        if alpha_bar[index + 1] < 1:
            amplification += 1 / np.sqrt(1 - alpha_bar[index + 1])
        tolerance = FLOAT32_EPS * (
            8 * (np.abs(sample).max() + 1) + np.abs(output).max() * amplification
        )
        ratios.append(np.abs(np.asarray(dpm_next) - np.asarray(ddim_next)).max() / tolerance)
        sample = dpm_next
    first_order = [0, 6, 7]
    assert all(ratios[i] <= 1 for i in first_order), ratios  # measured <= 0.05
    assert all(ratios[i] > 10 for i in range(1, 6)), ratios  # measured >= 500
    # The last step goes to sigma = 0 and returns its x_0 prediction (the
    # state) exactly: 0 * x_t + 1 * x_0.
    np.testing.assert_array_equal(np.asarray(sample), np.asarray(state[0]))


@pytest.mark.parametrize("schedule_name", ["linear", "cosine"])
def test_ddim_noise_direction_coefficient_is_exact_onto_t0_with_eta_1(schedule_name):
    # With eta = 1, eq. 12's sqrt(1 - a' - sigma^2) simplifies to
    # (1 - a') sqrt(a / (a' (1 - a))). At 10 steps of T = 1000, on the step
    # onto t = 0 the radicand is about 7e-8 (linear) or 5e-8 (cosine), near
    # float32's resolution of 1 - a' (6e-8): computed in float32 from float32
    # alpha-bars the coefficient is 10-25% off. From the float64 tables, the
    # float32 value in use must be within float32 rounding (eps32 / 2) plus
    # float64's cancellation error (2 eps64 / 5e-8 in the radicand, half that
    # after the square root: 5e-9) of the closed form.
    schedule = NoiseSchedule(schedule_name, timesteps=1000)
    sampler = DDIMSampler(schedule, 10, eta=1.0)
    alpha_bar = schedule.alphas_cumprod[sampler.timesteps]
    alpha_bar_prev = np.append(schedule.alphas_cumprod[sampler.timesteps[1:]], 1.0)
    closed_form = (1 - alpha_bar_prev) * np.sqrt(alpha_bar / (alpha_bar_prev * (1 - alpha_bar)))
    assert 1e-8 < closed_form[-2] ** 2 < 1e-7  # the step onto t = 0
    used = np.asarray(sampler._direction, np.float32).astype(np.float64)
    np.testing.assert_allclose(used[:-1], closed_form[:-1], rtol=FLOAT32_EPS / 2 + 5e-9, atol=0)
    assert used[-1] == 0.0  # from t = 0 to x_0: no noise direction


@pytest.mark.parametrize("schedule_name", ["linear", "cosine"])
def test_dpm_solver_first_order_onto_t0_beats_second_order(schedule_name):
    # The step onto t = 0 is taken at first order (see the sampler's
    # docstring). The alternative, second order there as well (first order at
    # the final step only), measured against the exact ODE solution of
    # Gaussian data at 20 steps: RMS error 0.119 against 0.023 (linear),
    # 0.050 against 0.0016 (cosine).
    schedule = NoiseSchedule(schedule_name, timesteps=1000)
    denoise, initial, exact = gaussian_ode_problem(schedule)
    steps = 20
    first_order = DPMSolverPlusPlus2MSampler(schedule, steps, clip_denoised=False)
    second_order = DPMSolverPlusPlus2MSampler(schedule, steps, clip_denoised=False)
    t = second_order.timesteps
    alpha_bar = schedule.alphas_cumprod[t]
    lambdas = 0.5 * np.log(alpha_bar / (1.0 - alpha_bar))  # log(alpha_t / sigma_t)
    # Algorithm 2's weight of x0_prev, -h / (2 h_prev), on the step onto t = 0.
    h, h_prev = lambdas[-1] - lambdas[-2], lambdas[-2] - lambdas[-3]
    second_order._previous_weight[steps - 2] = -0.5 * h / h_prev

    def error(sampler):
        return np.sqrt(np.mean((run(sampler, denoise, initial.shape) - exact) ** 2))

    assert error(first_order) < error(second_order) / 3
