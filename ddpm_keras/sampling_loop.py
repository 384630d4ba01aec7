"""The loop that runs a sampler: the network, then the sampler's step rule, T..0.

`reverse_step` is one step and `sample_loop` the whole reverse process as
one `tf.while_loop`. Both take the network as a `denoise(samples,
timesteps)` callable, so they know nothing of Keras models, labels or
guidance (`DiffusionModel.generate` supplies those).
"""

from __future__ import annotations

import functools

import tensorflow as tf


def reverse_step(denoise, sampler, index, samples, state, seed):
    """One step of `sampler` from `sampler.timesteps[index]`: the network, then the rule.

    Args:
        denoise: `denoise(samples, timesteps) -> network output` (the noise,
            x_0 or v, as `sampler.prediction` says).
        sampler: A `Sampler`.
        index: int32 scalar, the step number (0 is the noisiest).
        samples: x_t, float32 `[B, H, W, C]`.
        state: The sampler's carried tensors (`sampler.initial_state`).
        seed: int64 scalar; step i draws its noise from the stateless seed
            `(seed, i)`, so the result depends on nothing else.

    Returns:
        `(previous_samples, state)`.
    """
    timestep = tf.gather(sampler.timesteps, index)
    outputs = tf.cast(denoise(samples, tf.fill([tf.shape(samples)[0]], timestep)), "float32")
    if sampler.uses_noise:
        step_seed = tf.stack([seed, tf.cast(index, tf.int64)])
        noises = tf.random.stateless_normal(tf.shape(samples), seed=step_seed)
    else:
        noises = tf.zeros_like(samples)
    previous, state = sampler.step(outputs, index, samples, noises, state)
    # Keep the static shapes: the step's broadcasting loses the batch size.
    keep_shape = functools.partial(tf.ensure_shape, shape=samples.shape)
    return keep_shape(previous), tuple(map(keep_shape, state))


def sample_loop(denoise, sampler, initial_noises, seed):
    """Runs `sampler` from `initial_noises` down to x_0.

    The loop is an explicit `tf.while_loop`, so inside `tf.function` it is one
    graph rather than a Python loop of eager calls, without relying on
    AutoGraph (which re-reads source files and fails if they changed on disk
    while a long run was going).

    Args:
        denoise, sampler, seed: As for `reverse_step`.
        initial_noises: x_T, float32 `[B, H, W, C]`.

    Returns:
        The final samples, float32, roughly in [-1, 1].
    """

    def step(index, samples, state):
        return (index + 1, *reverse_step(denoise, sampler, index, samples, state, seed))

    _, samples, _ = tf.while_loop(
        lambda index, *_: index < sampler.num_steps,
        step,
        (tf.constant(0, tf.int32), initial_noises, sampler.initial_state(initial_noises)),
    )
    return samples
