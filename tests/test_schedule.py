import keras
import numpy as np
import pytest

from ddpm_keras.schedule import NoiseSchedule, cosine_betas, linear_betas


def test_linear_betas_match_ho_et_al():
    schedule = NoiseSchedule("linear", timesteps=1000)
    assert schedule.betas.dtype == np.float64
    assert schedule.betas.shape == (1000,)
    assert schedule.betas[0] == pytest.approx(1e-4, abs=1e-15)
    assert schedule.betas[-1] == pytest.approx(0.02, abs=1e-15)
    np.testing.assert_allclose(np.diff(schedule.betas), (0.02 - 1e-4) / 999, rtol=1e-9)


def test_linear_golden_values():
    schedule = NoiseSchedule("linear", timesteps=1000)
    # alpha_bar_t = prod_{s<=t} (1 - beta_s), computed independently in closed form.
    betas = 1e-4 + (0.02 - 1e-4) * np.arange(1000) / 999
    np.testing.assert_allclose(schedule.alphas_cumprod, np.cumprod(1 - betas), rtol=1e-12)
    # Golden values: the product computed with Python's decimal module at 40
    # digits (beta_t = 1e-4 + (0.02 - 1e-4) * t / 999); float64 agrees to ~1e-13.
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
    # Before the clip at 0.999 bites, alpha_bar equals f(t)/f(0) exactly.
    unclipped = schedule.betas < 0.999
    np.testing.assert_allclose(
        schedule.alphas_cumprod[unclipped], expected_alpha_bar[unclipped], rtol=1e-9
    )
    assert schedule.betas.max() == pytest.approx(0.999)
    assert np.all(np.diff(schedule.alphas_cumprod) < 0)


def test_posterior_matches_eq7():
    schedule = NoiseSchedule("linear", timesteps=50)
    t = 10
    a_bar, a_bar_prev = schedule.alphas_cumprod[t], schedule.alphas_cumprod[t - 1]
    beta = schedule.betas[t]
    assert schedule.posterior_variance[t] == pytest.approx(
        (1 - a_bar_prev) / (1 - a_bar) * beta, rel=1e-12
    )
    x_0 = np.full((1, 2, 2, 1), 0.3, np.float32)
    x_t = np.full((1, 2, 2, 1), -0.7, np.float32)
    mean, variance, log_variance = schedule.q_posterior(x_0, x_t, np.array([t]))
    expected_mean = (
        np.sqrt(a_bar_prev) * beta / (1 - a_bar) * 0.3
        + np.sqrt(1 - beta) * (1 - a_bar_prev) / (1 - a_bar) * -0.7
    )
    np.testing.assert_allclose(keras.ops.convert_to_numpy(mean), expected_mean, rtol=1e-5)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(log_variance).ravel(),
        np.log(schedule.posterior_variance[t]),
        rtol=1e-5,
    )
    assert keras.ops.convert_to_numpy(variance).dtype == np.float32


def test_q_sample_mean_and_variance():
    schedule = NoiseSchedule("linear", timesteps=1000)
    rng = np.random.default_rng(0)
    t = 300
    x_0 = np.full((20_000, 2, 2, 1), 0.5, np.float32)
    noise = rng.standard_normal(x_0.shape).astype(np.float32)
    x_t = keras.ops.convert_to_numpy(schedule.q_sample(x_0, np.full(20_000, t), noise))
    a_bar = schedule.alphas_cumprod[t]
    assert x_t.mean() == pytest.approx(np.sqrt(a_bar) * 0.5, abs=0.01)
    assert x_t.var() == pytest.approx(1 - a_bar, rel=0.02)
    mean, variance = schedule.q_mean_variance(x_0[:1], np.array([t]))
    assert float(keras.ops.convert_to_numpy(variance).ravel()[0]) == pytest.approx(
        1 - a_bar, rel=1e-6
    )


def test_predict_x0_inverts_q_sample():
    schedule = NoiseSchedule("cosine", timesteps=100)
    rng = np.random.default_rng(1)
    x_0 = rng.uniform(-1, 1, (4, 3, 3, 1)).astype(np.float32)
    noise = rng.standard_normal(x_0.shape).astype(np.float32)
    t = np.array([0, 10, 50, 90])
    x_t = schedule.q_sample(x_0, t, noise)
    recovered = keras.ops.convert_to_numpy(schedule.predict_x0_from_noise(x_t, t, noise))
    np.testing.assert_allclose(recovered, x_0, atol=2e-4)


def test_helpers_are_float64():
    assert linear_betas(10).dtype == np.float64
    assert cosine_betas(10).dtype == np.float64


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name": "quadratic"}, "name='quadratic'"),
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
