"""Released models: sampling-only files, loading by name, `--pretrained`."""

import fnmatch
import os
import pathlib
import re

import keras
import numpy as np
import pytest
import tomllib

import ddpm_keras
from ddpm_keras import pretrained
from ddpm_keras.cli import sample_main
from ddpm_keras.errors import ConfigError
from ddpm_keras.files import save_model
from ddpm_keras.model import load_diffusion_model

from .conftest import REPO_ROOT, build_tiny_conditional_model, randomize_weights


@pytest.fixture
def toy_release(tmp_path, monkeypatch, tiny_model):
    """A registry of one released model, `toy`, exported from a trained tiny model."""
    randomize_weights(tiny_model.network, seed=1)
    randomize_weights(tiny_model.ema_network, seed=2)  # the EMA weights differ from the raw
    tiny_model.compile(optimizer=keras.optimizers.Adam(1e-3))
    tiny_model.fit(np.zeros((4, 8, 8, 1), np.uint8), epochs=1, batch_size=4, verbose=0)
    trained = tmp_path / "run" / "model.keras"
    save_model(tiny_model, trained)
    monkeypatch.setattr(pretrained, "PRETRAINED", {"toy": "a tiny model for tests"})
    monkeypatch.setattr(pretrained, "PRETRAINED_DIR", str(tmp_path / "pretrained"))
    os.makedirs(tmp_path / "pretrained")
    path, size = pretrained.export_pretrained(trained, "toy")
    return tiny_model, trained, path, size


def test_a_released_model_holds_the_ema_weights_once_and_nothing_else(toy_release):
    trained_model, trained_path, path, size = toy_release
    assert path.endswith(os.path.join("pretrained", "toy.keras")) and size == os.path.getsize(path)
    model = pretrained.load_pretrained("toy")
    assert model.sampling_only and model.ema_network is model.network
    for actual, wanted in zip(
        model.network.get_weights(), trained_model.ema_network.get_weights(), strict=True
    ):
        np.testing.assert_array_equal(actual, wanted)
    # The trained file holds the weights, their EMA copy and Adam's two moments:
    # four copies. One copy (and the same configs) is well under 40% of that.
    assert size < 0.4 * os.path.getsize(trained_path)
    np.testing.assert_array_equal(
        model.generate(3, steps=4, seed=5), trained_model.generate(3, steps=4, seed=5)
    )


def test_a_released_model_cannot_be_trained(toy_release):
    model = pretrained.load_pretrained("toy")
    model.compile(optimizer="adam")
    with pytest.raises(ConfigError, match="cannot be trained"):
        model.fit(np.zeros((4, 8, 8, 1), np.uint8), epochs=1, verbose=0)


def test_sampling_copy_keeps_a_conditional_models_classes_and_config(tmp_path):
    model = build_tiny_conditional_model()
    randomize_weights(model.ema_network)
    copy = model.sampling_copy()
    save_model(copy, tmp_path / "c.keras")
    loaded = load_diffusion_model(tmp_path / "c.keras")
    assert loaded.class_names == model.class_names and loaded.sampling_only
    config, loaded_config = model.get_config(), loaded.get_config()
    assert loaded_config["ema_network"] == "network"
    for name in ("schedule", "prediction", "class_names", "ema_decay", "training_data"):
        assert loaded_config[name] == config[name], name
    labels = [0, 1, 2]
    np.testing.assert_array_equal(
        loaded.generate(3, steps=3, seed=1, labels=labels, guidance_scale=2.0),
        model.generate(3, steps=3, seed=1, labels=labels, guidance_scale=2.0),
    )


def test_unknown_names_are_refused_with_the_known_ones(toy_release):
    with pytest.raises(ConfigError, match=r"Known: 'toy'. Received: name='fashion'"):
        pretrained.load_pretrained("fashion")
    with pytest.raises(ConfigError, match="Known: 'toy'"):
        pretrained.export_pretrained("model.keras", "other")


def test_a_missing_release_file_says_so(toy_release):
    os.remove(pretrained.pretrained_path("toy"))
    with pytest.raises(FileNotFoundError, match="not in this installation"):
        pretrained.load_pretrained("toy")


def test_ddpm_sample_draws_from_a_released_model_by_name(toy_release, tmp_path, capsys):
    grid = tmp_path / "grid.png"
    argv = ["--pretrained", "toy", "--num-images", "4", "--steps", "3", "--no-progress"]
    assert sample_main([*argv, "--output", str(grid)]) == 0
    assert "Wrote 4 samples" in capsys.readouterr().out and grid.exists()


@pytest.mark.parametrize("name", sorted(pretrained.PRETRAINED))
def test_each_released_model_loads_and_samples(name):
    model = ddpm_keras.load_pretrained(name)  # the package's own file, offline
    labels = None if model.num_classes is None else np.arange(4) % model.num_classes
    images = model.generate(4, steps=5, seed=3, labels=labels)
    assert images.shape == (4, *model.image_shape)
    assert np.all(np.isfinite(images)) and images.min() >= 0 and images.max() <= 1
    np.testing.assert_array_equal(images, model.generate(4, steps=5, seed=3, labels=labels))


def test_every_released_file_is_package_data():
    """A non-editable install (a wheel) carries the released files too."""
    patterns = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["ddpm_keras"]
    package = REPO_ROOT / "ddpm_keras"
    folder = pathlib.Path(pretrained.PRETRAINED_DIR)
    files = folder.iterdir() if folder.exists() else []
    released = [path.relative_to(package).as_posix() for path in files if path.is_file()]
    for name in pretrained.PRETRAINED:
        assert f"assets/pretrained/{name}.keras" in released
    for path in released:
        assert any(fnmatch.fnmatch(path, pattern) for pattern in patterns), path


def test_make_sample_draws_from_a_released_model():
    makefile = (REPO_ROOT / "Makefile").read_text()
    (sample_args,) = re.findall(r"^SAMPLE_ARGS \?= (.*)$", makefile, flags=re.MULTILINE)
    flags = sample_args.split()
    name = flags[flags.index("--pretrained") + 1]
    if not pretrained.PRETRAINED:
        pytest.skip("no released model yet")
    assert name in pretrained.PRETRAINED
