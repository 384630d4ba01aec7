"""The building blocks of a run: the optimizer (learning-rate schedule, warm-up and
clipping), the saved step, and the policy `start_run` resolves `precision="auto"` to."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from ddpm_keras.config import get_config
from ddpm_keras.errors import ConfigError
from ddpm_keras.model import load_diffusion_model
from ddpm_keras.training import build_optimizer, learning_rate_schedule, steps_per_epoch


def rates(schedule, steps):
    return np.array([float(schedule(step)) for step in steps])


def test_constant_rate_without_warmup_is_a_plain_float():
    assert learning_rate_schedule(get_config("smoke", learning_rate=3e-4)) == 3e-4


def test_warmup_rises_linearly_then_holds_the_constant_rate():
    config = get_config("smoke", epochs=2, learning_rate=1e-3, warmup_steps=10)
    schedule = learning_rate_schedule(config, steps_per_epoch=8)
    np.testing.assert_allclose(rates(schedule, [0, 5, 10, 15, 16]), [0, 5e-4, 1e-3, 1e-3, 1e-3])


def test_cosine_decays_from_the_peak_to_zero_at_the_last_step():
    config = get_config(
        "smoke", epochs=2, learning_rate=1e-3, learning_rate_schedule="cosine", warmup_steps=4
    )
    schedule = learning_rate_schedule(config, steps_per_epoch=10)
    # 20 steps: 4 of warm-up, then lr/2 * (1 + cos(pi * s / 16)) for s = step - 4.
    steps = np.array([2, 4, 12, 20])
    expected = [5e-4, 1e-3, 5e-4, 0.0]
    # Float32 rates: a few roundings of about eps32 * lr each (eps32 = 1.2e-7).
    np.testing.assert_allclose(rates(schedule, steps), expected, atol=4 * 1.2e-7 * 1e-3)
    decay = rates(schedule, range(4, 21))
    assert np.all(np.diff(decay) < 0)


def test_cosine_without_warmup_starts_at_the_peak():
    config = get_config("smoke", epochs=1, learning_rate=2e-3, learning_rate_schedule="cosine")
    schedule = learning_rate_schedule(config, steps_per_epoch=10)
    np.testing.assert_allclose(
        rates(schedule, [0, 5, 10]), [2e-3, 1e-3, 0.0], atol=4 * 1.2e-7 * 2e-3
    )


def test_schedule_errors_are_clear():
    cosine = get_config("smoke", epochs=1, learning_rate_schedule="cosine")
    with pytest.raises(ValueError, match="steps_per_epoch=None"):
        learning_rate_schedule(cosine)
    too_long = get_config("smoke", epochs=1, warmup_steps=10)
    with pytest.raises(ValueError, match="warmup_steps=10"):
        learning_rate_schedule(too_long, steps_per_epoch=10)
    with pytest.raises(ValueError, match="learning_rate_schedule='step'"):
        get_config("smoke", learning_rate_schedule="step")
    with pytest.raises(ValueError, match="warmup_steps=-1"):
        get_config("smoke", warmup_steps=-1)


def test_steps_per_epoch_counts_full_batches_and_rejects_unknown_lengths():
    dataset = tf.data.Dataset.range(70).batch(32, drop_remainder=True)
    assert steps_per_epoch(dataset) == 2
    with pytest.raises(ValueError, match="cardinality=-1"):
        steps_per_epoch(dataset.repeat())


def test_gradient_clip_norm_reaches_the_optimizer():
    assert build_optimizer(get_config("smoke")).clipnorm is None
    optimizer = build_optimizer(get_config("smoke", gradient_clip_norm=0.5))
    assert optimizer.clipnorm == 0.5
    with pytest.raises(ValueError, match="gradient_clip_norm=0"):
        get_config("smoke", gradient_clip_norm=0)


def test_a_saved_model_keeps_its_schedule_and_step(tiny_model, tmp_path):
    # Resuming from a checkpoint must continue the schedule where it stopped.
    config = get_config(
        "smoke", epochs=2, learning_rate=1e-3, learning_rate_schedule="cosine", warmup_steps=2
    )
    tiny_model.compile(optimizer=build_optimizer(config, steps_per_epoch=3))
    images = np.random.default_rng(0).uniform(-1, 1, (24, 8, 8, 1)).astype("float32")
    tiny_model.fit(images, batch_size=8, epochs=1, verbose=0)
    path = tmp_path / "model.keras"
    tiny_model.save(path)
    loaded = load_diffusion_model(path)
    assert int(loaded.optimizer.iterations) == 3
    schedule = loaded.optimizer._learning_rate
    assert isinstance(schedule, keras.optimizers.schedules.CosineDecay)
    # 2 epochs x 3 steps - 2 warm-up steps = 4 decay steps; halfway at step 4.
    assert schedule.decay_steps == 4
    np.testing.assert_allclose(float(schedule(4)), 5e-4, rtol=1e-6)


def test_start_run_records_the_policy_precision_auto_resolves_to(tmp_path, monkeypatch):
    import ddpm_keras.training as training
    from ddpm_keras import precision

    monkeypatch.setattr(training, "prepare_data", lambda config: None)
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"amx_bf16"}))
    config = get_config("smoke", output_dir=str(tmp_path), precision="auto")
    try:
        run = training.start_run(config)
    finally:
        training.unlock_output_dir(config.output_dir)
    assert run.config.precision == "mixed_bfloat16"
    recorded = (tmp_path / "config.json").read_text()
    assert json.loads(recorded)["precision"] == "mixed_bfloat16"
    # The same command where `auto` means float32 would change the run's
    # numerics: refused, and config.json is left as it was.
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2"}))
    try:
        with pytest.raises(ConfigError, match="precision"):
            training.start_run(config)
    finally:
        training.unlock_output_dir(config.output_dir)
    assert (tmp_path / "config.json").read_text() == recorded
