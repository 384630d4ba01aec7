import json
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from ddpm_keras.config import get_config
from ddpm_keras.files import save_model
from ddpm_keras.model import DiffusionModel, build_model, load_diffusion_model
from ddpm_keras.schedule import NoiseSchedule

from .conftest import CLASS_NAMES, REPO_ROOT, build_tiny_network
from .conftest import build_tiny_conditional_model as conditional_model
from .fakes import ImageDerivedNoiseModel


@pytest.fixture
def images():
    # A fixed tiny batch: two smooth patterns in [-1, 1].
    grid = np.linspace(-1, 1, 8, dtype=np.float32)
    pattern = np.outer(grid, grid)[None, :, :, None]
    return np.concatenate([pattern, -pattern] * 8, axis=0)


def compiled(model, learning_rate=3e-3):
    model.compile(optimizer=keras.optimizers.Adam(learning_rate))
    return model


def test_train_step_drives_loss_down(tiny_model, images):
    keras.utils.set_random_seed(0)
    model = compiled(tiny_model)
    first = model.evaluate(images, batch_size=16, verbose=0)
    history = model.fit(images, batch_size=16, epochs=60, verbose=0)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses))
    assert np.mean(losses[-10:]) < 0.5 * first, (first, losses[-10:])


def test_one_step_moves_the_ema_and_evaluate_moves_nothing(tiny_model, images):
    model = compiled(tiny_model)
    ema_before = [w.copy() for w in model.ema_network.get_weights()]
    model.fit(images, batch_size=16, epochs=1, verbose=0)  # one step
    decay = model.ema_decay
    for ema_old, weight, ema_new in zip(
        ema_before, model.network.get_weights(), model.ema_network.get_weights(), strict=True
    ):
        np.testing.assert_allclose(ema_new, decay * ema_old + (1 - decay) * weight, atol=1e-6)
    assert not model.ema_network.trainable
    assert len(model.trainable_weights) == len(model.network.trainable_weights)

    # test_step: a finite loss, and no weight (network, EMA, optimizer) changes.
    before = [w.copy() for w in model.get_weights()]
    optimizer_before = [v.numpy().copy() for v in model.optimizer.variables]
    loss = model.evaluate(images, batch_size=16, verbose=0)
    assert np.isfinite(loss) and loss > 0
    for old, new in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)
    for old, new in zip(optimizer_before, model.optimizer.variables, strict=True):
        np.testing.assert_array_equal(old, new.numpy())


def test_train_step_scales_loss_through_optimizer(tiny_model, images):
    """Loss scaling (mixed_float16) must reach the gradients: scale_loss is called."""
    calls = []

    class RecordingAdam(keras.optimizers.Adam):
        def scale_loss(self, loss):
            calls.append(loss)
            return super().scale_loss(loss)

    tiny_model.compile(optimizer=RecordingAdam(1e-3), run_eagerly=True)
    tiny_model.fit(images[:4], batch_size=4, epochs=1, verbose=0)
    assert len(calls) == 1


def test_wrong_image_shape_is_rejected(tiny_model):
    model = compiled(tiny_model)
    wrong = np.zeros((4, 8, 8, 3), np.float32)
    with pytest.raises(ValueError, match=r"Images must have shape \(batch, 8, 8, 1\)"):
        model.fit(wrong, batch_size=4, epochs=1, verbose=0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"network": "unet"}, "network='unet'"),
        ({"schedule": "linear"}, "schedule='linear'"),
        ({"ema_decay": 1.5}, "ema_decay=1.5"),
        ({"ema_network": "copy"}, "ema_network='copy'"),
        ({"prediction": "score"}, "prediction='score'"),
        ({"min_snr_gamma": 0}, "min_snr_gamma=0"),
        ({"min_snr_gamma": "5"}, "min_snr_gamma='5'"),
    ],
)
def test_constructor_rejects_bad_arguments(tiny_network, kwargs, message):
    arguments = {"network": tiny_network, "schedule": NoiseSchedule(timesteps=10)}
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=message):
        DiffusionModel(**arguments)


@pytest.mark.parametrize("objective", [{}, {"prediction": "v", "min_snr_gamma": 5.0}])
def test_get_config_round_trip(tiny_network, objective):
    model = DiffusionModel(tiny_network, NoiseSchedule("linear", timesteps=100), **objective)
    config = json.loads(json.dumps(model.get_config()))  # as stored in a .keras file
    restored = DiffusionModel.from_config(config)
    assert json.loads(json.dumps(restored.get_config())) == config
    assert restored.image_shape == model.image_shape
    assert restored.schedule.get_config() == model.schedule.get_config()
    assert (restored.prediction, restored.min_snr_gamma) == (
        objective.get("prediction", "epsilon"),
        objective.get("min_snr_gamma"),
    )


@pytest.mark.parametrize("prediction", ["epsilon", "x0", "v"])
@pytest.mark.parametrize("min_snr_gamma", [None, 5.0])
def test_loss_regresses_the_target_with_min_snr_weights(prediction, min_snr_gamma):
    # Timesteps and noise are derived from each image, so a NumPy copy of the
    # loss can be computed from the same t, noise and network output.
    schedule = NoiseSchedule("linear", timesteps=100)
    model = ImageDerivedNoiseModel(
        build_tiny_network(), schedule, prediction=prediction, min_snr_gamma=min_snr_gamma
    )
    images = np.random.default_rng(0).uniform(-1, 1, (6, 8, 8, 1)).astype(np.float32)
    losses = model._prediction_losses(images, None, training=False).numpy()

    timesteps, noises = (np.asarray(x) for x in model._draw_timesteps_and_noises(images))
    a = np.sqrt(schedule.alphas_cumprod[timesteps])[:, None, None, None]
    s = np.sqrt(1.0 - schedule.alphas_cumprod[timesteps])[:, None, None, None]
    noisy_images = a * images + s * noises
    outputs = model.network([noisy_images.astype(np.float32), timesteps]).numpy()
    target = {"epsilon": noises, "x0": images, "v": a * noises - s * images}[prediction]
    expected = np.mean((target - outputs) ** 2, axis=(1, 2, 3))
    if min_snr_gamma is not None:
        snr = (a**2 / s**2).ravel()
        clipped = np.minimum(snr, min_snr_gamma)
        # Hang et al. 2023: min(SNR, gamma) / SNR for epsilon, / (SNR + 1) for v.
        expected *= {"epsilon": clipped / snr, "x0": clipped, "v": clipped / (snr + 1)}[prediction]
    assert len(set(timesteps.tolist())) > 1
    np.testing.assert_allclose(losses, expected, rtol=2e-5, atol=1e-7)


LOAD_AND_SAMPLE = """
import sys, numpy as np, keras
from ddpm_keras.model import DiffusionModel
model = keras.models.load_model(sys.argv[1])  # default safe_mode=True
assert isinstance(model, DiffusionModel), type(model)
np.save(sys.argv[2], model.generate(4, steps=5, seed=11))
np.savez(sys.argv[3], *model.ema_network.get_weights())
"""


def test_save_then_load_in_new_process(tiny_model, images, tmp_path):
    model = compiled(tiny_model)
    model.fit(images, batch_size=16, epochs=2, verbose=0)
    # EMA and training weights differ after training; the EMA ones must be saved.
    assert any(
        not np.allclose(a, b)
        for a, b in zip(model.network.get_weights(), model.ema_network.get_weights(), strict=True)
    )
    path = tmp_path / "model.keras"
    save_model(model, path)
    expected = model.generate(4, steps=5, seed=11)

    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    outputs = tmp_path / "generated.npy", tmp_path / "ema.npz"
    subprocess.run(
        [sys.executable, "-c", LOAD_AND_SAMPLE, str(path), *map(str, outputs)],
        check=True,
        env=env,
        timeout=300,
    )
    np.testing.assert_array_equal(np.load(outputs[0]), expected)
    loaded_ema = np.load(outputs[1])
    for index, weight in enumerate(model.ema_network.get_weights()):
        np.testing.assert_array_equal(loaded_ema[f"arr_{index}"], weight)


def test_load_errors_are_clear(tiny_network, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.keras"):
        load_diffusion_model(tmp_path / "missing.keras")

    truncated = tmp_path / "truncated.keras"
    model = DiffusionModel(tiny_network, NoiseSchedule(timesteps=10))
    save_model(model, tmp_path / "good.keras")
    truncated.write_bytes((tmp_path / "good.keras").read_bytes()[:2000])
    with pytest.raises(ValueError, match="truncated.keras"):
        load_diffusion_model(truncated)

    foreign = tmp_path / "foreign.keras"
    plain = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    plain.save(foreign)
    with pytest.raises(ValueError, match="not a DiffusionModel"):
        load_diffusion_model(foreign)

    text = tmp_path / "notes.keras"
    text.write_text("hello")
    with pytest.raises(ValueError, match="notes.keras"):
        load_diffusion_model(text)


def test_same_seed_same_losses_and_samples(images):

    def run():
        keras.utils.set_random_seed(123)
        network = build_tiny_network()
        model = compiled(DiffusionModel(network, NoiseSchedule(timesteps=100), ema_decay=0.9))
        history = model.fit(images, batch_size=8, epochs=2, shuffle=False, verbose=0)
        return history.history["loss"], model.generate(3, steps=4, seed=0)

    first_losses, first_images = run()
    second_losses, second_images = run()
    np.testing.assert_allclose(first_losses, second_losses, rtol=1e-5)
    np.testing.assert_allclose(first_images, second_images, atol=1e-5)


def test_loaded_model_rejects_images_of_another_shape(tiny_model, tmp_path):
    save_model(tiny_model, tmp_path / "m.keras")
    loaded = compiled(load_diffusion_model(tmp_path / "m.keras"))
    with pytest.raises(ValueError, match=r"Received: images.shape=\(4, 16, 16, 1\)"):
        loaded.fit(np.zeros((4, 16, 16, 1), np.float32), batch_size=4, epochs=1, verbose=0)


def test_reloaded_model_keeps_optimizer_state_and_frozen_ema(tiny_model, images, tmp_path):
    model = compiled(tiny_model)
    model.fit(images, batch_size=8, epochs=1, verbose=0)
    save_model(model, tmp_path / "m.keras")
    loaded = load_diffusion_model(tmp_path / "m.keras")
    assert len(loaded.trainable_weights) == len(loaded.network.trainable_weights)
    assert int(loaded.optimizer.iterations.numpy()) == int(model.optimizer.iterations.numpy())
    for saved, original in zip(loaded.optimizer.variables, model.optimizer.variables, strict=True):
        np.testing.assert_array_equal(saved.numpy(), original.numpy())


# Precision and XLA ---------------------------------------------------------


def tiny_model_with_policy(policy, model_class=DiffusionModel):
    keras.utils.set_random_seed(0)
    network = build_tiny_network(dtype=policy)
    schedule = NoiseSchedule("linear", timesteps=100)
    return model_class(network, schedule, ema_decay=0.9, dtype=policy)


def one_sgd_step_delta(policy, images):
    """How far one SGD step moves the network's weights (global L2 norm)."""
    model = tiny_model_with_policy(policy, ImageDerivedNoiseModel)
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    before = model.network.get_weights()
    model.fit(images, batch_size=len(images), epochs=1, verbose=0)
    after = model.network.get_weights()
    return model, np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(after, before, strict=True)))


def test_mixed_float16_step_matches_float32_step(images):
    _, float32_delta = one_sgd_step_delta("float32", images)
    model, mixed_delta = one_sgd_step_delta("mixed_float16", images)
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    # Without optimizer.scale_loss in train_step, the loss-scale optimizer
    # would unscale unscaled gradients: a step about 32768 times too small.
    assert mixed_delta == pytest.approx(float32_delta, rel=0.05)


def test_loss_scale_optimizer_skips_overflowing_steps(images):
    model = tiny_model_with_policy("mixed_float16")
    # A loss scale so large that float16 gradients overflow to inf.
    optimizer = keras.optimizers.LossScaleOptimizer(
        keras.optimizers.SGD(0.1), initial_scale=2.0**100
    )
    model.compile(optimizer=optimizer)
    before = model.network.get_weights()
    history = model.fit(images, batch_size=len(images), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])  # the loss itself is float32
    for weight_before, weight_after in zip(before, model.network.get_weights(), strict=True):
        np.testing.assert_array_equal(weight_after, weight_before)
    assert float(optimizer.dynamic_scale.numpy()) == 2.0**99


@pytest.mark.parametrize(
    ("policy", "reload_policy"),
    # float32 training is covered above; here it is the policy reloaded into.
    [("mixed_float16", "float32"), ("mixed_bfloat16", "float32")],
)
def test_each_precision_trains_and_reloads_under_another(policy, reload_policy, images, tmp_path):
    model = tiny_model_with_policy(policy)
    assert model.network.get_layer("conv_in").compute_dtype == policy.removeprefix("mixed_")
    assert model.network.output.dtype == "float32"
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    losses = model.fit(images, batch_size=16, epochs=8, verbose=0).history["loss"]
    assert np.all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < 0.7 * losses[0], losses
    path = tmp_path / "model.keras"
    save_model(model, path)
    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(reload_policy)
    try:
        reloaded = load_diffusion_model(path)
        samples = reloaded.generate(4, steps=3, seed=0)
    finally:
        keras.config.set_dtype_policy(previous_policy)
    assert reloaded.dtype_policy.name == policy  # the saved policy, not the global one
    assert samples.shape == (4, 8, 8, 1)
    assert np.all(np.isfinite(samples))


def test_xla_gives_the_graph_mode_loss_trajectory(images):
    trajectories = {}
    for jit_compile in (False, True):
        model = tiny_model_with_policy("float32", ImageDerivedNoiseModel)
        model.compile(optimizer=keras.optimizers.Adam(3e-3), jit_compile=jit_compile)
        trajectories[jit_compile] = model.fit(images, batch_size=16, epochs=3, verbose=0).history[
            "loss"
        ]
    np.testing.assert_allclose(trajectories[True], trajectories[False], rtol=1e-4)


def test_conditional_model_trains_on_labelled_batches_and_keeps_its_class_names(tmp_path):
    model = compiled(conditional_model())
    images = np.random.default_rng(0).uniform(-1, 1, (16, 8, 8, 1)).astype(np.float32)
    labels = np.arange(16) % 3
    history = model.fit(images, labels, batch_size=8, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    with pytest.raises(ValueError, match="trains on \\(images, labels\\) batches"):
        model.fit(images, batch_size=8, epochs=1, verbose=0)
    save_model(model, tmp_path / "c.keras")
    loaded = load_diffusion_model(tmp_path / "c.keras")
    assert loaded.class_names == CLASS_NAMES and loaded.num_classes == 3
    assert loaded.label_dropout == 0.1


def test_label_dropout_replaces_labels_by_the_no_label_id():
    labels = tf.constant(np.arange(4000) % 3, tf.int32)
    assert np.all(conditional_model(0.0)._drop_labels(labels).numpy() == labels.numpy())
    assert np.all(conditional_model(1.0)._drop_labels(labels).numpy() == 3)
    dropped = conditional_model(0.1)._drop_labels(labels).numpy()
    kept = dropped != 3
    assert np.all(dropped[kept] == labels.numpy()[kept])
    assert 0.08 < np.mean(~kept) < 0.12  # 4000 draws: 0.1 +- 3 standard deviations


def test_labels_and_class_names_must_fit_the_network(tiny_network, tiny_model):
    with pytest.raises(ValueError, match="unconditional; it takes no labels"):
        tiny_model.generate(2, steps=2, labels=0)
    with pytest.raises(ValueError, match="class_names=\\['a'\\]"):
        DiffusionModel(tiny_network, NoiseSchedule(timesteps=10), class_names=["a"])
    conditional_network = conditional_model().network
    with pytest.raises(ValueError, match="class_names=\\['a', 'b'\\]"):
        DiffusionModel(conditional_network, NoiseSchedule(timesteps=10), class_names=["a", "b"])
    with pytest.raises(ValueError, match="label_dropout=1.5"):
        DiffusionModel(
            conditional_network,
            NoiseSchedule(timesteps=10),
            class_names=CLASS_NAMES,
            label_dropout=1.5,
        )


def bright_region_images(labels, rng):
    """8x8 images whose bright region is the class: 0 top, 1 bottom, 2 left half."""
    images = np.full((len(labels), 8, 8, 1), -0.8, np.float32)
    for image, label in zip(images, labels, strict=True):
        region = [
            (slice(0, 4), slice(None)),
            (slice(4, 8), slice(None)),
            (slice(None), slice(0, 4)),
        ]
        image[region[label]] = 0.8
    return images + rng.normal(0, 0.05, images.shape).astype(np.float32)


def bright_region_classes(images):
    """The class a bright-region image shows: the brightest of the three regions."""
    top = images[:, :4].mean(axis=(1, 2, 3))
    bottom = images[:, 4:].mean(axis=(1, 2, 3))
    left = images[:, :, :4].mean(axis=(1, 2, 3))
    return np.argmax(np.stack([top, bottom, left], axis=1), axis=1)


def test_short_conditional_training_draws_the_requested_classes():
    # The classes share pixels (top and left overlap), so only the label tells
    # the network which image to draw; its samples must follow the label.
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 512)
    model = compiled(conditional_model(label_dropout=0.2), learning_rate=3e-3)
    model.ema_decay = 0.8
    model.fit(bright_region_images(labels, rng), labels, batch_size=32, epochs=30, verbose=0)
    requested = np.repeat(np.arange(3), 10)
    for guidance_scale in (1.0, 3.0):
        images = model.generate(
            30, steps=10, seed=1, labels=requested, guidance_scale=guidance_scale
        )
        agreement = np.mean(bright_region_classes(images) == requested)
        assert agreement >= 0.9, (guidance_scale, agreement)
    # Without labels the model draws all three classes.
    unconditional = bright_region_classes(model.generate(30, steps=10, seed=1))
    assert len(set(unconditional.tolist())) == 3


FIXTURES = pathlib.Path(__file__).parent / "fixtures"


@pytest.mark.parametrize("name", ["legacy_smoke", "legacy_smoke_conditional"])
def test_models_saved_by_the_first_release_load_and_sample_the_same_images(name):
    # Written by tests/fixtures/make_legacy_models.py with the code of commit
    # eae7bb0, before the sampling pipeline left DiffusionModel. The samples
    # are float32 results of 5 to 50 network calls; across CPUs (AVX2 against
    # AVX-512 kernels) each call may round differently, a few float32 ulps
    # relative, which the steps can grow to ~1e-5 but not to 1e-3. A model
    # whose EMA weights were lost (sampling with the raw weights instead)
    # moves them by more than 1e-2 (checked below), so 1e-3 tells the two apart.
    model = load_diffusion_model(FIXTURES / f"{name}.keras")
    expected = np.load(FIXTURES / f"{name}_samples.npz")
    labels = {"labels": [0, 1, 2, 0], "guidance_scale": 2.0} if model.num_classes else {}
    for sampler in ("ddim", "ddpm", "dpmpp_2m"):
        steps = None if sampler == "ddpm" else 5
        images = model.generate(4, steps=steps, sampler=sampler, seed=3, **labels)
        np.testing.assert_allclose(images, expected[sampler], atol=1e-3, err_msg=sampler)
    model.ema_network.set_weights(model.network.get_weights())
    raw = model.generate(4, steps=5, sampler="ddim", seed=3, **labels)
    assert np.max(np.abs(raw - expected["ddim"])) > 1e-2


def test_the_training_data_record_is_saved_with_the_model(tiny_network, tmp_path):
    record = {"image_dir": "/data/cats", "val_fraction": 0.1, "batch_size": 8, "seed": 3}
    model = DiffusionModel(tiny_network, NoiseSchedule(timesteps=10), training_data=record)
    config = json.loads(json.dumps(model.get_config()))
    assert DiffusionModel.from_config(config).training_data == record
    model.save(tmp_path / "model.keras")
    assert load_diffusion_model(tmp_path / "model.keras").training_data == record
    with pytest.raises(ValueError, match="training_data="):
        DiffusionModel(tiny_network, NoiseSchedule(timesteps=10), training_data="cats")


def test_build_model_records_a_folder_run_and_its_hold_out():
    config = get_config("smoke", image_dir="images", image_size=(8,), val_fraction=0.2)
    record = build_model(config, (8, 8, 1)).training_data
    assert record["image_dir"] == os.path.abspath("images")
    assert (record["val_fraction"], record["batch_size"], record["seed"]) == (0.2, 32, 42)
    assert record["image_size"] == [8, 8]
    assert build_model(get_config("smoke"), (8, 8, 1)).training_data["dataset"] == "fashion_mnist"


def test_fit_scales_uint8_images_as_the_data_pipeline_does(images):
    pixels = np.round((images + 1.0) * 127.5).astype(np.uint8)
    weights = []
    for batch in (pixels, pixels.astype(np.float32) / 127.5 - 1.0):
        keras.utils.set_random_seed(0)
        model = compiled(DiffusionModel(build_tiny_network(), NoiseSchedule(timesteps=100)))
        model.fit(batch, batch_size=16, epochs=1, shuffle=False, verbose=0)
        weights.append(model.network.get_weights())
    for uint8_weight, float_weight in zip(*weights, strict=True):
        np.testing.assert_array_equal(uint8_weight, float_weight)
    with pytest.raises(ValueError, match=r"look like \[0, 1\]"):
        model.fit((images + 1.0) / 2.0, batch_size=16, epochs=1, verbose=0)
