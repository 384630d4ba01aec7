"""Property-based tests: random configs and command lines are either accepted
and usable, or rejected with a ValueError / usage error, never anything else."""

import dataclasses
import math
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ddpm_keras.cli import config_from_args, train_parser
from ddpm_keras.config import DiffusionConfig, get_config
from ddpm_keras.unet import build_unet

# `preset` is get_config's positional argument, not an override.
FIELDS = {f.name for f in dataclasses.fields(DiffusionConfig)} - {"preset"}

any_value = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.lists(st.integers(min_value=-3, max_value=5), max_size=4),
)
overrides = st.dictionaries(
    st.sampled_from(sorted(FIELDS | {"not_a_field"})), any_value, max_size=6
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(preset=st.sampled_from(["smoke", "cpu", "default", "huge", ""]), changes=overrides)
def test_random_configs_are_valid_or_rejected(preset, changes):
    try:
        config = get_config(preset, **changes)
    except ValueError:
        return
    # Accepted: the config is consistent and survives a round trip.
    assert math.isfinite(config.learning_rate) and config.epochs >= 1
    assert 1 <= config.sample_steps <= config.timesteps
    assert DiffusionConfig(**config.to_dict()) == config


@settings(max_examples=40, deadline=None)
@given(
    base_channels=st.integers(1, 16),
    multipliers=st.lists(st.integers(1, 3), min_size=1, max_size=3),
    groups=st.integers(1, 8),
    attention=st.booleans(),
)
def test_accepted_network_settings_build(base_channels, multipliers, groups, attention):
    try:
        config = get_config(
            "smoke",
            base_channels=base_channels,
            channel_multipliers=multipliers,
            norm_groups=groups,
            attention=attention,
        )
    except ValueError:
        return
    size = 2 ** (len(config.channel_multipliers) - 1) * 3
    network = build_unet(
        (size, size, 1),
        config.base_channels,
        config.channel_multipliers,
        config.num_res_blocks,
        config.attention,
        config.norm_groups,
    )
    assert network.output.shape[1:] == (size, size, 1)


flag_values = {
    "--preset": st.sampled_from(["smoke", "cpu", "default", "bogus"]),
    "--epochs": st.text(max_size=4) | st.integers(-5, 5).map(str),
    "--batch-size": st.integers(-2, 64).map(str),
    "--learning-rate": st.sampled_from(["1e-3", "0", "-1", "nan", "inf", "x"]),
    "--gradient-clip-norm": st.sampled_from(["1.0", "0", "-2", "nan"]),
    "--seed": st.integers(-3, 3).map(str),
    "--schedule": st.sampled_from(["linear", "cosine", "quadratic"]),
    "--max-train-examples": st.integers(-1, 100).map(str),
    "--dataset": st.sampled_from(["fashion_mnist", "mnist", ""]),
    "--output-dir": st.sampled_from(["out", ""]),
}
flag_pairs = st.lists(
    st.sampled_from(sorted(flag_values)).flatmap(
        lambda flag: flag_values[flag].map(lambda value: (flag, value))
    ),
    max_size=5,
)
# How each flag's text becomes its field's value (argparse: type=int/float).
FLAG_TYPES = {
    "--epochs": int,
    "--batch-size": int,
    "--learning-rate": float,
    "--gradient-clip-norm": float,
    "--seed": int,
    "--max-train-examples": int,
}


def parse_or_usage_error(argv):
    """The parsed flags, or None after checking argparse exited with a usage error."""
    try:
        return train_parser().parse_args(argv)
    except SystemExit as exit_:
        assert exit_.code == 2  # argparse usage error
        return None


@settings(max_examples=200, deadline=None)
@given(pairs=flag_pairs)
def test_random_command_lines_set_their_fields_or_fail_cleanly(pairs):
    args = parse_or_usage_error([token for pair in pairs for token in pair])
    if args is None:
        return
    try:
        config = config_from_args(args)
    except ValueError as error:
        assert "Received:" in str(error)
        return
    # Accepted: each flag's last value is its field's, and every other field
    # keeps the preset's value.
    given_values = dict(pairs)
    preset = given_values.pop("--preset", None)
    baseline = get_config(preset)
    expected = {
        flag[2:].replace("-", "_"): FLAG_TYPES.get(flag, str)(value)
        for flag, value in given_values.items()
    }
    for field in dataclasses.fields(DiffusionConfig):
        wanted = expected.get(field.name, getattr(baseline, field.name))
        assert getattr(config, field.name) == wanted, field.name


@settings(max_examples=100, deadline=None)
@given(argv=st.lists(st.text(max_size=8), max_size=4))
def test_arbitrary_tokens_parse_or_fail_cleanly(argv):
    # Any other exception (a TypeError, say) fails the test.
    args = parse_or_usage_error(argv)
    if args is None:
        return
    try:
        config_from_args(args)
    except ValueError as error:
        assert "Received:" in str(error)


run_settings = st.fixed_dictionaries(
    {
        "schedule": st.sampled_from(["linear", "cosine"]),
        "timesteps": st.integers(2, 1000),
        "learning_rate": st.floats(1e-5, 1e-2),
        "ema_decay": st.floats(0.0, 1.0),
        "sampler": st.sampled_from(["ddim", "ddpm"]),
        "sample_steps": st.integers(1, 60),
        "eta": st.floats(0.0, 1.0),
        "seed": st.integers(0, 2**31),
        "gradient_clip_norm": st.none() | st.floats(0.01, 10.0),
    }
)


@pytest.mark.slow
@settings(max_examples=3, deadline=None, suppress_health_check=list(HealthCheck))
@given(changes=run_settings)
def test_accepted_configs_run_the_smoke_path(changes, manual_dir, tfds_data_dir, tmp_path):
    from ddpm_keras.training import train

    try:
        config = get_config(
            "smoke",
            epochs=1,
            max_train_examples=32,
            batch_size=16,
            num_samples=2,
            sample_every=0,
            manual_dir=manual_dir,
            data_dir=tfds_data_dir,
            output_dir=str(tmp_path / f"run{changes['seed']}"),
            **changes,
        )
    except ValueError:
        return
    history = train(config)
    assert len(history["loss"]) == 1 and math.isfinite(history["loss"][0])
    assert os.path.isfile(config.model_path) and os.path.isfile(config.samples_path)
