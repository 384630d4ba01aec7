import keras
import numpy as np
import pytest

from ddpm_keras.schedule import NoiseSchedule

FLOAT32_EPS = float(np.finfo(np.float32).eps)  # 1.2e-7


def closed_form_linear(timesteps):
    """Linear betas, alpha-bar and 1 - alpha-bar, computed without the library.

    1 - alpha_bar = -expm1(sum log1p(-beta)) has no cancellation, unlike
    1 - prod(1 - beta) near t = 0.
    """
    betas = 1e-4 + (0.02 - 1e-4) * np.arange(timesteps) / (timesteps - 1)
    log_alpha_bar = np.cumsum(np.log1p(-betas))
    return betas, np.exp(log_alpha_bar), -np.expm1(log_alpha_bar)


def test_linear_betas_match_ho_et_al():
    schedule = NoiseSchedule("linear", timesteps=1000)
    assert schedule.betas.shape == (1000,)
    # np.linspace returns both end points exactly.
    assert schedule.betas[0] == pytest.approx(1e-4, abs=1e-15)
    assert schedule.betas[-1] == pytest.approx(0.02, abs=1e-15)
    # Each beta (<= 0.02) is within half a float64 ulp (1.7e-18 at 0.02) of
    # exact, so the steps of 2e-5 are exact to 2e-13 relative; 1e-9 still
    # catches a step of (0.02 - 1e-4) / 1000 (relative 1e-3).
    np.testing.assert_allclose(np.diff(schedule.betas), (0.02 - 1e-4) / 999, rtol=1e-9)


def test_linear_golden_values():
    schedule = NoiseSchedule("linear", timesteps=1000)
    # alpha_bar_t = prod_{s<=t} (1 - beta_s), computed independently in closed form.
    betas = 1e-4 + (0.02 - 1e-4) * np.arange(1000) / 999
    # float64 (eps = 2.2e-16): up to 1000 roundings of 1 - beta and 1000 of the
    # product, each <= eps / 2, bound the relative error by 2.2e-13 at t = 999
    # (a float32 table would be off by ~1e-5, a shifted t by beta_t >= 1e-4).
    np.testing.assert_allclose(schedule.alphas_cumprod, np.cumprod(1 - betas), rtol=1e-12)
    # Golden values: the product computed with Python's decimal module at 40
    # digits (beta_t = 1e-4 + (0.02 - 1e-4) * t / 999); the same 2.2e-13
    # bound applies.
    golden = {
        0: 9.999000000000000e-1,
        99: 8.970181456749604e-1,
        499: 7.858724288177824e-2,
        999: 4.035829765375683e-5,
    }
    for t, value in golden.items():
        assert schedule.alphas_cumprod[t] == pytest.approx(value, rel=1e-12)


def test_cosine_matches_nichol_dhariwal():
    timesteps, s = 1000, 0.008
    schedule = NoiseSchedule("cosine", timesteps=timesteps)

    def f(t):
        return np.cos((t / timesteps + s) / (1 + s) * np.pi / 2) ** 2

    expected_alpha_bar = f(np.arange(1, timesteps + 1)) / f(0)
    # Before the clip at 0.999 bites, the cumulative product of the ratios
    # alpha_bar_t / alpha_bar_{t-1} telescopes to f(t) / f(0): the same np.cos
    # values on both sides, and <= 2 roundings (eps / 2 each) per step, so
    # <= 2.2e-13 relative at t = 999. 1e-9 still catches t off by one (>= 4e-5).
    unclipped = schedule.betas < 0.999
    np.testing.assert_allclose(
        schedule.alphas_cumprod[unclipped], expected_alpha_bar[unclipped], rtol=1e-9
    )
    assert schedule.betas.max() == pytest.approx(0.999)
    assert np.all(np.diff(schedule.alphas_cumprod) < 0)


def test_posterior_is_bayes_rule_on_the_forward_process():
    # q(x_{t-1} | x_t, x_0) is proportional to q(x_t | x_{t-1}) q(x_{t-1} | x_0),
    # i.e. N(sqrt(alpha_t) x_{t-1}, beta_t) times N(sqrt(a') x_0, 1 - a')
    # with a' = alpha_bar_{t-1}: precision 1 / (1 - a') + alpha_t / beta_t and
    # mean variance * (sqrt(a') x_0 / (1 - a') + sqrt(alpha_t) x_t / beta_t).
    # A different route from eq. 7's closed form, on independent tables.
    timesteps = 50
    schedule = NoiseSchedule("linear", timesteps=timesteps)
    betas, alpha_bar, one_minus_alpha_bar = closed_form_linear(timesteps)
    t = np.array([1, 10, 25, 49])
    rng = np.random.default_rng(4)
    x_0 = rng.uniform(-1, 1, (4, 2, 2, 1)).astype(np.float32)
    x_t = rng.standard_normal((4, 2, 2, 1)).astype(np.float32)

    beta, prev, one_minus_prev = betas[t], alpha_bar[t - 1], one_minus_alpha_bar[t - 1]
    variance = 1.0 / (1.0 / one_minus_prev + (1.0 - beta) / beta)
    coef_x0 = (variance * np.sqrt(prev) / one_minus_prev).reshape(-1, 1, 1, 1)
    coef_xt = (variance * np.sqrt(1.0 - beta) / beta).reshape(-1, 1, 1, 1)

    mean, got_variance, log_variance = map(
        keras.ops.convert_to_numpy, schedule.q_posterior(x_0, x_t, t)
    )
    got_variance, log_variance = got_variance.ravel(), log_variance.ravel()
    # float32: both coefficients are rounded to float32, then two products
    # and a sum, each rounding <= eps32 / 2 of its value: 4 eps32 covers it.
    # The float64 tables agree with this route to ~1e-12, far below.
    terms = np.abs(coef_x0 * x_0) + np.abs(coef_xt * x_t)
    error = np.abs(mean - (coef_x0 * x_0 + coef_xt * x_t))
    assert np.all(error <= 4 * FLOAT32_EPS * terms), np.max(error / terms)
    # One rounding to float32 each (the log's argument error adds
    # 1e-12 / |log variance|).
    np.testing.assert_allclose(got_variance, variance, rtol=FLOAT32_EPS)
    np.testing.assert_allclose(log_variance, np.log(variance), rtol=FLOAT32_EPS)


def test_posterior_at_t0_returns_x0_with_the_clipped_log_variance():
    schedule = NoiseSchedule("linear", timesteps=50)
    rng = np.random.default_rng(5)
    x_0 = rng.uniform(-1, 1, (2, 2, 2, 1)).astype(np.float32)
    x_t = rng.standard_normal((2, 2, 2, 1)).astype(np.float32)
    mean, variance, log_variance = (
        keras.ops.convert_to_numpy(v) for v in schedule.q_posterior(x_0, x_t, np.array([0, 1]))
    )
    # alpha_bar_{-1} = 1: nothing is left to denoise, the mean is x_0 (one
    # float32 rounding) and the variance 0 ...
    np.testing.assert_allclose(mean[0], x_0[0], rtol=FLOAT32_EPS)
    assert variance.ravel()[0] == 0.0
    # ... whose log would be -inf: it is clipped to the log-variance at t = 1.
    assert log_variance.ravel()[0] == log_variance.ravel()[1]
    assert np.isfinite(log_variance).all()


def test_q_sample_draws_have_the_moments_of_q_mean_variance():
    schedule = NoiseSchedule("linear", timesteps=1000)
    rng = np.random.default_rng(0)
    t = 300
    x_0 = np.full((20_000, 2, 2, 1), 0.5, np.float32)
    noise = rng.standard_normal(x_0.shape).astype(np.float32)
    x_t = keras.ops.convert_to_numpy(schedule.q_sample(x_0, np.full(20_000, t), noise))
    mean, variance = map(keras.ops.convert_to_numpy, schedule.q_mean_variance(x_0[:1], [t]))
    mean, variance = float(mean.ravel()[0]), float(variance.ravel()[0])
    # 80,000 draws: the sample mean's standard error is 0.003, the variance's 0.5%.
    assert x_t.mean() == pytest.approx(mean, abs=0.01)
    assert x_t.var() == pytest.approx(variance, rel=0.02)
    # Eq. 4 on independent tables: mean sqrt(alpha_bar) x_0, variance
    # 1 - alpha_bar; one float32 rounding each (eps32 / 2).
    _, alpha_bar, one_minus_alpha_bar = closed_form_linear(1000)
    assert mean == pytest.approx(np.sqrt(alpha_bar[t]) * 0.5, rel=FLOAT32_EPS)
    assert variance == pytest.approx(one_minus_alpha_bar[t], rel=FLOAT32_EPS)


def test_predict_x0_inverts_q_sample():
    schedule = NoiseSchedule("cosine", timesteps=100)
    rng = np.random.default_rng(1)
    x_0 = rng.uniform(-1, 1, (4, 3, 3, 1)).astype(np.float32)
    noise = rng.standard_normal(x_0.shape).astype(np.float32)
    t = np.array([0, 10, 50, 90])
    x_t = schedule.q_sample(x_0, t, noise)
    recovered = keras.ops.convert_to_numpy(schedule.predict_x0_from_noise(x_t, t, noise))
    np.testing.assert_allclose(recovered, x_0, atol=2e-4)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name": "quadratic"}, "schedule='quadratic'"),
        ({"timesteps": 1}, "timesteps=1"),
        ({"timesteps": 10.5}, "timesteps=10.5"),
        ({"beta_start": 0.1, "beta_end": 0.01}, "beta_start=0.1"),
        ({"cosine_s": 0.0}, "cosine_s=0.0"),
    ],
)
def test_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        NoiseSchedule(**kwargs)


def test_get_config_round_trip():
    schedule = NoiseSchedule("cosine", timesteps=123, cosine_s=0.01)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert isinstance(restored, NoiseSchedule)
    assert restored.get_config() == schedule.get_config()
    np.testing.assert_array_equal(restored.alphas_cumprod, schedule.alphas_cumprod)
