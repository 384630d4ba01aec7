"""Samplers: rules that take one reverse-diffusion step.

A sampler owns its descending sequence of timesteps and a `step` rule

    step(model_output, index, sample, noise) -> previous sample

where `model_output` is the network's noise prediction at
`t = sampler.timesteps[index]`. The loop that drives a sampler
(`DiffusionModel.generate`) is therefore the same few lines for all of them.
"""

from __future__ import annotations

import numpy as np
from keras import ops

from ddpm_keras.schedule import NoiseSchedule

SAMPLER_NAMES = ("ddim", "ddpm")


def check_steps(value, timesteps, name="num_steps"):
    """Raises `ValueError` unless `value` is an integer in [1, timesteps]."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, np.integer))
        or not 1 <= value <= timesteps
    ):
        raise ValueError(
            f"`{name}` must be an integer in [1, {timesteps}] (the schedule's T). "
            f"Received: {name}={value!r}"
        )


def _take(table, index):
    return ops.take(ops.convert_to_tensor(table, dtype="float32"), index)


class Sampler:
    """Base class. Subclasses set `timesteps` and implement `step`."""

    #: Whether `step` uses its `noise` argument (the loop skips drawing it if not).
    uses_noise = True

    def __init__(self, schedule: NoiseSchedule, num_steps: int, clip_denoised=True):
        if not isinstance(schedule, NoiseSchedule):
            raise ValueError(f"`schedule` must be a NoiseSchedule. Received: schedule={schedule!r}")
        check_steps(num_steps, schedule.timesteps)
        self.schedule = schedule
        self.num_steps = int(num_steps)
        self.clip_denoised = clip_denoised

    def predict_x0(self, model_output, t, sample):
        """x_0 implied by a noise prediction, clipped to [-1, 1] if asked."""
        pred_x0 = self.schedule.predict_x0_from_noise(sample, t, model_output)
        if self.clip_denoised:
            pred_x0 = ops.clip(pred_x0, -1.0, 1.0)
        return pred_x0

    def step(self, model_output, index, sample, noise):
        raise NotImplementedError


class DDPMSampler(Sampler):
    """Ancestral sampling through all T steps (Ho et al. 2020, Algorithm 2).

    x_{t-1} = mu~(x_0, x_t) + sigma_t * z with sigma_t^2 = beta~_t (eq. 7), where
    x_0 is predicted from the noise and clipped to [-1, 1]; no noise at t = 0.
    """

    def __init__(self, schedule, num_steps=None, clip_denoised=True):
        num_steps = schedule.timesteps if num_steps is None else num_steps
        if num_steps != schedule.timesteps:
            raise ValueError(
                "The 'ddpm' sampler runs all T steps of the schedule; use 'ddim' "
                f"for fewer. Received: num_steps={num_steps} with "
                f"T={schedule.timesteps}"
            )
        super().__init__(schedule, num_steps, clip_denoised)
        self.timesteps = np.arange(schedule.timesteps - 1, -1, -1, dtype=np.int32)

    def step(self, model_output, index, sample, noise):
        t = ops.expand_dims(_take(self.timesteps, index), 0)
        t = ops.cast(t, "int32")
        pred_x0 = self.predict_x0(model_output, t, sample)
        mean, _, log_variance = self.schedule.q_posterior(pred_x0, sample, t)
        nonzero = ops.cast(t > 0, "float32")
        return mean + nonzero * ops.exp(0.5 * log_variance) * noise


class DDIMSampler(Sampler):
    """DDIM (Song, Meng & Ermon 2021, eq. 12) on any number of steps.

    x_{t'} = sqrt(a'_) x_0 + sqrt(1 - a' - sigma^2) eps + sigma z, with
    sigma = eta * sqrt((1 - a') / (1 - a)) * sqrt(1 - a / a') (eq. 16), where
    a and a' are alpha-bar at t and at the previous timestep t' (1 after t=0).

    Args:
        schedule: The `NoiseSchedule`.
        num_steps: Number of denoising steps, 1..T; timesteps are spread
            evenly over [T-1, 0].
        eta: 0 gives the deterministic DDIM, 1 the DDPM-like variance.
        clip_denoised: Clip the predicted x_0 to [-1, 1].
    """

    def __init__(self, schedule, num_steps=50, eta=0.0, clip_denoised=True):
        super().__init__(schedule, num_steps, clip_denoised)
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not (0.0 <= eta <= 1.0):
            raise ValueError(f"`eta` must be in [0, 1]. Received: eta={eta!r}")
        self.eta = float(eta)
        self.uses_noise = self.eta > 0.0
        timesteps = np.round(np.linspace(schedule.timesteps - 1, 0, self.num_steps)).astype(
            np.int32
        )
        self.timesteps = timesteps
        alphas_cumprod = schedule.alphas_cumprod
        self._alpha_bar = alphas_cumprod[timesteps]
        # After the last step (t = 0) the "previous" alpha-bar is 1: x_0 itself.
        self._alpha_bar_prev = np.append(alphas_cumprod[timesteps[1:]], 1.0)
        self._sigma = (
            self.eta
            * np.sqrt((1.0 - self._alpha_bar_prev) / (1.0 - self._alpha_bar))
            * np.sqrt(1.0 - self._alpha_bar / self._alpha_bar_prev)
        )

    def step(self, model_output, index, sample, noise):
        t = ops.cast(ops.expand_dims(_take(self.timesteps, index), 0), "int32")
        alpha_bar = _take(self._alpha_bar, index)
        alpha_bar_prev = _take(self._alpha_bar_prev, index)
        sigma = _take(self._sigma, index)
        pred_x0 = self.predict_x0(model_output, t, sample)
        # Re-derive eps from the (clipped) x_0 so that the two stay consistent.
        pred_noise = (sample - ops.sqrt(alpha_bar) * pred_x0) / ops.sqrt(1.0 - alpha_bar)
        direction = ops.sqrt(ops.maximum(1.0 - alpha_bar_prev - sigma**2, 0.0))
        prev_sample = ops.sqrt(alpha_bar_prev) * pred_x0 + direction * pred_noise
        if self.uses_noise:
            prev_sample = prev_sample + sigma * noise
        return prev_sample


def get_sampler(name, schedule, steps=None, eta=0.0):
    """Builds a sampler by name.

    Args:
        name: `"ddim"` or `"ddpm"`.
        schedule: The `NoiseSchedule`.
        steps: Steps; `None` means 50 for DDIM and T for DDPM.
        eta: DDIM's eta in [0, 1]; must be 0 (the default) for `"ddpm"`.
    """
    if steps is not None:
        check_steps(steps, schedule.timesteps, name="steps")
    if name == "ddim":
        return DDIMSampler(schedule, 50 if steps is None else steps, eta)
    if name == "ddpm":
        if eta != 0.0:
            raise ValueError(
                "`eta` applies to the 'ddim' sampler only. "
                f"Received: eta={eta!r} with sampler='ddpm'"
            )
        return DDPMSampler(schedule, steps)
    raise ValueError(
        f"Unknown sampler. Expected one of {list(SAMPLER_NAMES)}. Received: sampler={name!r}"
    )
