"""The noise schedule: betas, alpha-bars, forward noising and the posterior.

A pure object that knows nothing about networks. Tables are computed in
float64 with NumPy and used as float32 tensors.

Equation numbers refer to Ho, Jain & Abbeel 2020, "Denoising Diffusion
Probabilistic Models" (arXiv:2006.11239).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

# What a network may predict: the noise "epsilon" (Ho et al. 2020), the clean
# image "x0", or "v" = sqrt(alpha_bar) * eps - sqrt(1 - alpha_bar) * x_0
# (Salimans & Ho 2022, section 4).
from ddpm_keras.config import check_field, fail


def linear_betas(timesteps, beta_start=1e-4, beta_end=0.02):
    """Linearly spaced betas (Ho et al. 2020, section 4), float64."""
    return np.linspace(beta_start, beta_end, timesteps, dtype=np.float64)


def cosine_betas(timesteps, s=0.008, max_beta=0.999):
    """Cosine schedule (Nichol & Dhariwal 2021, eq. 17), float64.

    alpha_bar(t) = f(t) / f(0), f(t) = cos(((t / T + s) / (1 + s)) * pi / 2)^2,
    and beta_t = 1 - alpha_bar(t) / alpha_bar(t - 1), clipped at `max_beta`.
    """
    steps = np.arange(timesteps + 1, dtype=np.float64)
    f = np.cos(((steps / timesteps + s) / (1 + s)) * np.pi / 2) ** 2
    alphas_cumprod = f / f[0]
    betas = 1.0 - alphas_cumprod[1:] / alphas_cumprod[:-1]
    return np.clip(betas, 0.0, max_beta)


@keras.saving.register_keras_serializable(package="ddpm_keras")
class NoiseSchedule:
    """Betas and alpha-bars of a diffusion process, and the maths on them.

    Args:
        name: `"linear"` or `"cosine"`.
        timesteps: Number of diffusion steps T.
        beta_start: First beta of the linear schedule.
        beta_end: Last beta of the linear schedule.
        cosine_s: Offset s of the cosine schedule.

    Attributes (NumPy float64 arrays of length T, indexed by t = 0..T-1):
        betas, alphas, alphas_cumprod, alphas_cumprod_prev,
        posterior_variance, posterior_log_variance_clipped,
        posterior_mean_coef1, posterior_mean_coef2.
    """

    def __init__(
        self,
        name="linear",
        timesteps=1000,
        beta_start=1e-4,
        beta_end=0.02,
        cosine_s=0.008,
    ):
        check_field("schedule", name)
        check_field("timesteps", timesteps)
        check_field("beta_start", beta_start)
        check_field("beta_end", beta_end)
        if beta_start > beta_end:
            fail("beta_start", beta_start, f"must be <= beta_end ({beta_end})")
        if not cosine_s > 0.0:
            fail("cosine_s", cosine_s, "must be > 0")
        self.name = name
        self.timesteps = timesteps
        self.beta_start = beta_start
        self.beta_end = beta_end
        self.cosine_s = cosine_s

        if name == "linear":
            betas = linear_betas(timesteps, beta_start, beta_end)
        else:
            betas = cosine_betas(timesteps, cosine_s)
        alphas = 1.0 - betas
        alphas_cumprod = np.cumprod(alphas)
        alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])

        self.betas = betas
        self.alphas = alphas
        self.alphas_cumprod = alphas_cumprod
        self.alphas_cumprod_prev = alphas_cumprod_prev
        # Eq. 7: variance and mean coefficients of q(x_{t-1} | x_t, x_0).
        self.posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        # The variance is 0 at t = 0; clip the log as in the reference code.
        self.posterior_log_variance_clipped = np.log(
            np.append(self.posterior_variance[1], self.posterior_variance[1:])
        )
        self.posterior_mean_coef1 = betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        self.posterior_mean_coef2 = (
            (1.0 - alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - alphas_cumprod)
        )

    def _gather(self, table, t, ndim=4):
        """Looks up `table[t]` as float32, shaped to broadcast over images."""
        values = ops.take(ops.convert_to_tensor(table, dtype="float32"), t)
        return ops.reshape(values, (-1,) + (1,) * (ndim - 1))

    def q_mean_variance(self, x_0, t):
        """Mean and variance of q(x_t | x_0) (eq. 4)."""
        mean = self._gather(np.sqrt(self.alphas_cumprod), t) * x_0
        variance = self._gather(1.0 - self.alphas_cumprod, t)
        return mean, variance

    def q_sample(self, x_0, t, noise):
        """Draws x_t ~ q(x_t | x_0) given the noise (eq. 4, reparameterised).

        x_t = sqrt(alpha_bar_t) * x_0 + sqrt(1 - alpha_bar_t) * noise.
        """
        x_0 = ops.convert_to_tensor(x_0, dtype="float32")
        return (
            self._gather(np.sqrt(self.alphas_cumprod), t) * x_0
            + self._gather(np.sqrt(1.0 - self.alphas_cumprod), t) * noise
        )

    def predict_x0_from_noise(self, x_t, t, noise):
        """Inverts eq. 4: x_0 = (x_t - sqrt(1 - alpha_bar_t) * eps) / sqrt(alpha_bar_t)."""
        return (
            self._gather(np.sqrt(1.0 / self.alphas_cumprod), t) * x_t
            - self._gather(np.sqrt(1.0 / self.alphas_cumprod - 1.0), t) * noise
        )

    def predict_x0(self, model_output, x_t, t, prediction="epsilon"):
        """The clean image implied by a network output of kind `prediction`.

        epsilon: eq. 4 inverted; x0: the output itself; v: with
        v = sqrt(a) eps - sqrt(1 - a) x_0 and x_t = sqrt(a) x_0 + sqrt(1 - a) eps,
        x_0 = sqrt(a) x_t - sqrt(1 - a) v (a = alpha_bar_t).
        """
        check_field("prediction", prediction)
        if prediction == "epsilon":
            return self.predict_x0_from_noise(x_t, t, model_output)
        if prediction == "x0":
            return model_output
        return (
            self._gather(np.sqrt(self.alphas_cumprod), t) * x_t
            - self._gather(np.sqrt(1.0 - self.alphas_cumprod), t) * model_output
        )

    def training_target(self, x_0, noise, t, prediction="epsilon"):
        """What a network of kind `prediction` should output for x_t = q_sample(x_0, t, noise)."""
        check_field("prediction", prediction)
        if prediction == "epsilon":
            return noise
        if prediction == "x0":
            return ops.convert_to_tensor(x_0, dtype="float32")
        return (
            self._gather(np.sqrt(self.alphas_cumprod), t) * noise
            - self._gather(np.sqrt(1.0 - self.alphas_cumprod), t) * x_0
        )

    def signal_to_noise(self, t):
        """SNR(t) = alpha_bar_t / (1 - alpha_bar_t), float32, shape [batch]."""
        snr = self.alphas_cumprod / (1.0 - self.alphas_cumprod)
        return ops.take(ops.convert_to_tensor(snr, dtype="float32"), t)

    def q_posterior(self, x_0, x_t, t):
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0) (eqs. 6-7)."""
        mean = (
            self._gather(self.posterior_mean_coef1, t) * x_0
            + self._gather(self.posterior_mean_coef2, t) * x_t
        )
        variance = self._gather(self.posterior_variance, t)
        log_variance = self._gather(self.posterior_log_variance_clipped, t)
        return mean, variance, log_variance

    def get_config(self):
        return {
            "name": self.name,
            "timesteps": self.timesteps,
            "beta_start": self.beta_start,
            "beta_end": self.beta_end,
            "cosine_s": self.cosine_s,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        return f"NoiseSchedule(name={self.name!r}, timesteps={self.timesteps})"
