"""The sampling pipeline: settings, labels and guidance, batches, seeds, graph caching."""

import numpy as np
import pytest
import tensorflow as tf

from ddpm_keras.config import get_config
from ddpm_keras.pipeline import SamplingSettings, guided_output

from .conftest import build_tiny_conditional_model as conditional_model
from .conftest import randomize_weights


def test_generate_shape_range_and_seed(tiny_model):
    first = tiny_model.generate(5, steps=4, seed=7, batch_size=2)
    assert first.shape == (5, 8, 8, 1) and first.dtype == np.float32
    assert first.min() >= 0.0 and first.max() <= 1.0
    np.testing.assert_array_equal(first, tiny_model.generate(5, steps=4, seed=7, batch_size=2))
    assert not np.array_equal(first, tiny_model.generate(5, steps=4, seed=8, batch_size=2))
    stochastic = tiny_model.generate(3, steps=4, eta=1.0, seed=7)
    np.testing.assert_array_equal(stochastic, tiny_model.generate(3, steps=4, eta=1.0, seed=7))
    ancestral = tiny_model.generate(2, sampler="ddpm", seed=1)
    assert ancestral.shape == (2, 8, 8, 1)


def test_generate_reuses_one_graph_per_sampler(tiny_model):
    tiny_model.generate(2, steps=3, seed=0)
    tiny_model.generate(4, steps=3, seed=1)
    tiny_model.generate(2, steps=5, seed=0)
    assert len(tiny_model.pipeline.compiled_graphs) == 2


@pytest.mark.parametrize("sampler, steps", [("ddim", 4), ("dpmpp_2m", 4), ("ddim_eta", 3)])
def test_step_by_step_generation_with_a_callback_gives_the_same_images(tiny_model, sampler, steps):
    eta = 0.5 if sampler == "ddim_eta" else 0.0
    sampler = sampler.removesuffix("_eta")
    calls = []
    expected = tiny_model.generate(5, steps=steps, sampler=sampler, eta=eta, seed=3, batch_size=3)
    images = tiny_model.generate(
        5,
        steps=steps,
        sampler=sampler,
        eta=eta,
        seed=3,
        batch_size=3,
        callback=lambda batch, step, samples: calls.append((batch, step, samples.shape[0])),
    )
    np.testing.assert_allclose(images, expected, atol=1e-5)
    assert calls == [(b, i, n) for b, n in ((0, 3), (1, 2)) for i in range(steps)]


def test_a_batch_callback_counts_the_images_done_and_changes_nothing(tiny_model):
    settings = SamplingSettings("ddim", 3, seed=2)
    done = []
    images = tiny_model.pipeline(7, settings, batch_size=3, batch_callback=done.append)
    assert done == [3, 6, 7]
    np.testing.assert_array_equal(images, tiny_model.pipeline(7, settings, batch_size=3))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_images": 0}, "num_images=0"),
        ({"num_images": 2, "steps": 0}, "steps=0"),
        ({"num_images": 2, "steps": 101}, "steps=101"),
        ({"num_images": 2, "eta": 2.0}, "eta=2.0"),
        ({"num_images": 2, "sampler": "plms"}, "sampler='plms'"),
        ({"num_images": 2, "seed": -1}, "seed=-1"),
        ({"num_images": 2, "batch_size": 0}, "batch_size=0"),
    ],
)
def test_generate_rejects_bad_arguments(tiny_model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_model.generate(**kwargs)


def test_generate_does_not_depend_on_autograph(tiny_model, monkeypatch):
    """A long run once crashed at its first sample grid: AutoGraph re-read the
    edited source of the sampling loop. The loop must not need its source."""
    import linecache

    monkeypatch.setattr(linecache, "getlines", lambda *args, **kwargs: [])
    images = tiny_model.generate(2, steps=3, seed=0)
    assert images.shape == (2, 8, 8, 1)


def test_guidance_mixes_conditional_and_unconditional_outputs():
    model = conditional_model()
    randomize_weights(model.ema_network)
    rng = np.random.default_rng(1)
    samples = tf.constant(rng.standard_normal((4, 8, 8, 1)), tf.float32)
    timesteps = tf.constant([5, 50, 90, 99], tf.int32)
    labels = tf.constant([0, 1, 2, 1], tf.int32)
    conditional = model.ema_network([samples, timesteps, labels]).numpy()
    unconditional = model.ema_network([samples, timesteps, tf.fill([4], 3)]).numpy()
    assert np.abs(conditional - unconditional).max() > 0.1
    for scale in (0.0, 1.0, 3.0):
        guided = guided_output(model.ema_network, 3, samples, timesteps, labels, scale).numpy()
        expected = unconditional + scale * (conditional - unconditional)
        np.testing.assert_allclose(guided, expected, atol=1e-5)


def test_guidance_scale_zero_reproduces_the_unconditional_sampler():
    model = conditional_model()
    randomize_weights(model.ema_network)
    unconditional = model.generate(3, steps=4, seed=7)
    for label in ("trouser", 1, [0, 2, 1]):
        guided = model.generate(3, steps=4, seed=7, labels=label, guidance_scale=0.0)
        np.testing.assert_array_equal(guided, unconditional)
    conditional = model.generate(3, steps=4, seed=7, labels="ankle_boot")
    assert np.abs(conditional - unconditional).max() > 0.05


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"labels": "sneaker"}, "labels='sneaker'"),
        ({"labels": 3}, "labels=3"),
        ({"labels": [0, 1]}, "Received: 2 labels"),
        ({"labels": 0, "guidance_scale": -1.0}, "guidance_scale=-1.0"),
    ],
)
def test_generate_rejects_bad_labels(kwargs, message):
    with pytest.raises(ValueError, match=message):
        conditional_model().generate(3, steps=2, **kwargs)


def test_a_new_graph_for_every_sampler_option_and_none_for_seeds_or_counts(tiny_model):
    pipeline = tiny_model.pipeline
    pipeline(2, SamplingSettings("ddim", 3, seed=0))
    pipeline(3, SamplingSettings("ddim", 3, seed=5))
    assert len(pipeline.compiled_graphs) == 1
    # eta, the sampler and its step count each change the graph.
    for settings in (
        SamplingSettings("ddim", 3, eta=0.5, seed=0),
        SamplingSettings("dpmpp_2m", 3, seed=0),
        SamplingSettings("ddim", 4, seed=0),
    ):
        before = len(pipeline.compiled_graphs)
        pipeline(2, settings)
        assert len(pipeline.compiled_graphs) == before + 1, settings
    # A stale graph would give the eta-0 images for eta 1.
    deterministic = pipeline(2, SamplingSettings("ddim", 3, seed=0))
    assert not np.array_equal(deterministic, pipeline(2, SamplingSettings("ddim", 3, 1.0, seed=0)))


@pytest.mark.parametrize(
    "sampler, sample_steps, expected_steps",
    [("ddim", 7, 7), ("dpmpp_2m", 9, 9), ("ddpm", 7, None)],
)
def test_a_runs_settings_come_from_its_config_and_ddpm_runs_all_steps(
    sampler, sample_steps, expected_steps
):
    config = get_config("smoke", sampler=sampler, sample_steps=sample_steps, seed=3)
    settings = SamplingSettings.from_config(config)
    assert (settings.sampler, settings.steps, settings.seed) == (sampler, expected_steps, 3)
    assert SamplingSettings.from_config(config, seed=9, steps=None).seed == 9
    # Asking for ddpm on a config of another sampler also runs all T steps.
    assert SamplingSettings.from_config(config, sampler="ddpm", steps=None).steps is None


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"sampler": "ddpm", "eta": 0.5}, "eta=0.5"),
        ({"guidance_scale": float("inf")}, "guidance_scale=inf"),
        ({"guidance_scale": -0.5}, "guidance_scale=-0.5"),
        ({"steps": 0}, "steps=0"),
        ({"sampler": "euler"}, "sampler='euler'"),
    ],
)
def test_settings_are_checked_when_made(arguments, message):
    with pytest.raises(ValueError, match=message):
        SamplingSettings(**arguments)
