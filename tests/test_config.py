import dataclasses
import os
import re

import pytest

from ddpm_keras.config import PRESETS, DiffusionConfig, get_config

ARTIFACT_PATHS = (
    "checkpoint_dir",
    "backup_dir",
    "samples_dir",
    "tensorboard_dir",
    "image_cache_dir",
    "model_path",
    "metrics_path",
    "history_path",
    "samples_path",
)


def test_default_artifacts_go_where_the_readme_says():
    config = DiffusionConfig()
    assert config.model_path == os.path.join("artifacts", "tensorflow_diffusion", "model.keras")
    assert config.tensorboard_dir == os.path.join(
        "artifacts", "tensorflow_diffusion", "tensorboard"
    )


def test_every_artifact_path_follows_output_dir(tmp_path):
    config = get_config("smoke", output_dir=str(tmp_path / "run"))
    paths = [getattr(config, name) for name in ARTIFACT_PATHS]
    # Each one inside output_dir, and no two artifacts share a path.
    assert all(os.path.dirname(path) == str(tmp_path / "run") for path in paths), paths
    assert len(set(paths)) == len(paths), paths


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_build(preset):
    config = get_config(preset)
    assert config.preset == preset


def test_overrides_apply_and_none_is_ignored():
    config = get_config("smoke", epochs=3, batch_size=None, channel_multipliers=[1, 2])
    assert config.epochs == 3
    assert config.batch_size == PRESETS["smoke"]["batch_size"]
    assert config.channel_multipliers == (1, 2)


@pytest.mark.parametrize(
    ("gpus", "preset", "reason"),
    [(0, "cpu", "no GPU is visible"), (2, "default", "2 GPU(s) visible")],
)
def test_no_preset_picks_one_for_the_machine(monkeypatch, capsys, gpus, preset, reason):
    import tensorflow as tf

    def list_physical_devices(device_type=None):
        assert device_type == "GPU"
        return [
            tf.config.PhysicalDevice(name=f"/physical_device:GPU:{i}", device_type="GPU")
            for i in range(gpus)
        ]

    monkeypatch.setattr(tf.config, "list_physical_devices", list_physical_devices)
    config = get_config(None, epochs=3)
    assert config.preset == preset and config.epochs == 3
    assert config.base_channels == PRESETS[preset].get(
        "base_channels", DiffusionConfig().base_channels
    )
    assert capsys.readouterr().out == f"No preset named; using '{preset}' because {reason}.\n"


def test_unknown_preset_and_field_are_rejected():
    with pytest.raises(ValueError, match="preset='huge'"):
        get_config("huge")
    with pytest.raises(ValueError, match="learning_rat"):
        get_config("smoke", learning_rat=0.1)
    with pytest.raises(ValueError, match="colour"):
        get_config("smoke").replace(colour="red")


@pytest.mark.parametrize(
    "field, value",
    [
        ("epochs", 0),
        ("epochs", -3),
        ("epochs", 2.5),
        ("epochs", True),
        ("batch_size", 0),
        ("learning_rate", 0.0),
        ("learning_rate", float("nan")),
        ("ema_decay", 1.5),
        ("timesteps", 1),
        ("schedule", "quadratic"),
        ("sampler", "euler"),
        ("sample_steps", 0),
        ("sample_steps", 1001),
        ("eta", -0.1),
        ("eta", 1.1),
        ("beta_start", 0.0),
        ("beta_end", 1.5),
        ("channel_multipliers", ()),
        ("channel_multipliers", (1, 0)),
        ("channel_multipliers", False),
        ("base_channels", 7),
        ("norm_groups", 7),
        ("norm_groups", 16),  # smoke: base_channels 8, levels 8 and 16
        ("attention", "yes"),
        ("dataset", ""),
        ("output_dir", None),
        ("max_train_examples", 0),
        ("seed", -1),
        ("sample_every", -1),
        ("num_samples", 0),
        ("strategy", "gpu"),
        ("devices", ("CPU:0",)),  # smoke's strategy is auto, not mirrored
        ("precision", "float16"),
        ("jit_compile", "yes"),
        ("image_dir", ""),
        ("image_size", (0,)),
        ("image_size", (8, 8, 8)),
        ("image_size", (9,)),  # smoke's two levels halve once
        ("channels", 2),
        ("channels", True),
        ("val_fraction", 0.0),
        ("val_fraction", 0.6),
        ("memory_cache_mb", -1),
    ],
)
def test_each_bad_field_is_named(field, value):
    with pytest.raises(ValueError, match=f"Received: {field}="):
        get_config("smoke", **{field: value}) if value is not None else dataclasses.replace(
            get_config("smoke"), **{field: value}
        )


def test_eta_only_with_ddim():
    assert get_config("smoke", sampler="ddpm").eta == 0.0
    with pytest.raises(ValueError, match="eta=0.5"):
        get_config("smoke", sampler="ddpm", eta=0.5)


def test_beta_order_is_checked():
    with pytest.raises(ValueError, match="beta_start"):
        get_config("smoke", beta_start=0.05, beta_end=0.01)


def test_to_dict_round_trip():
    config = get_config("cpu", epochs=2)
    assert DiffusionConfig(**config.to_dict()) == config


def test_devices_go_with_mirrored_and_survive_the_round_trip():
    config = get_config("smoke", strategy="mirrored", devices=["CPU:0", "CPU:1"])
    assert config.devices == ("CPU:0", "CPU:1")
    assert DiffusionConfig(**config.to_dict()) == config
    for devices in ((), ("",), ("CPU:0", 1)):
        with pytest.raises(ValueError, match="Received: devices="):
            get_config("smoke", strategy="mirrored", devices=devices)


def test_guidance_scale_is_bounded_far_below_float_overflow():
    assert get_config("smoke", guidance_scale=100.0).guidance_scale == 100.0
    for value in (1e308, 100.5):
        with pytest.raises(
            ValueError, match=re.escape(f"[0.0, 100.0]. Received: guidance_scale={value}")
        ):
            get_config("smoke", guidance_scale=value)


def test_image_size_is_square_or_height_width_and_survives_the_round_trip():
    square = get_config("smoke", image_size=[16])
    assert square.image_size == (16, 16)
    assert DiffusionConfig(**square.to_dict()) == square
    assert get_config("smoke", image_size=(16, 24)).image_size == (16, 24)


def test_an_image_size_the_unet_cannot_halve_names_the_nearest_that_work():
    with pytest.raises(ValueError, match="height 28 or 32, width 36 or 40.*--image-size"):
        get_config("cpu", image_size=(30, 38))


def test_fid_during_training_needs_the_fashion_mnist_dataset():
    with pytest.raises(ValueError, match="Received: fid_every=1"):
        get_config("smoke", fid_every=1, image_dir="images")
