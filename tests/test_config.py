import dataclasses

import pytest

from ddpm_keras.config import (
    DEFAULT_OUTPUT_DIR,
    PRESETS,
    DiffusionConfig,
    detect_preset,
    get_config,
)


def test_defaults_are_valid_and_documented_paths():
    config = DiffusionConfig()
    assert config.output_dir == DEFAULT_OUTPUT_DIR == "artifacts/tensorflow_diffusion"
    assert config.model_path.endswith("tensorflow_diffusion/model.keras")
    assert config.metrics_path.endswith("metrics.json")
    assert config.samples_path.endswith("ddpm_samples.png")
    assert config.checkpoint_dir.endswith("checkpoints")


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_build(preset):
    config = get_config(preset)
    assert config.preset == preset


def test_smoke_preset_is_tiny():
    config = get_config("smoke")
    assert config.max_train_examples <= 512 and config.base_channels <= 16


def test_overrides_apply_and_none_is_ignored():
    config = get_config("smoke", epochs=3, batch_size=None, channel_multipliers=[1, 2])
    assert config.epochs == 3
    assert config.batch_size == PRESETS["smoke"]["batch_size"]
    assert config.channel_multipliers == (1, 2)


def test_no_preset_picks_one_for_the_machine(capsys):
    config = get_config(None)
    expected, reason = detect_preset()
    assert config.preset == expected
    assert f"using '{expected}' because {reason}" in capsys.readouterr().out


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
