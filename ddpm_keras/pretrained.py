"""Released models, shipped inside the package and loaded by name, offline.

    model = ddpm_keras.load_pretrained("fashion-mnist")
    images = model.generate(16, seed=0)

Each released model is a sampling-only `.keras` file (its EMA weights, no
optimizer state; see `DiffusionModel.sampling_copy`) in
`ddpm_keras/assets/pretrained/`, beside its model card (`MODEL_CARD.md`) and
the `ddpm-evaluate` report its quality table comes from. A trained run
becomes one with `export_pretrained` (`scripts/export_pretrained.py`).
"""

from __future__ import annotations

import os

from ddpm_keras.errors import ConfigError, MissingFileError
from ddpm_keras.files import save_model

PRETRAINED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "pretrained")
MODEL_CARD = os.path.join(PRETRAINED_DIR, "MODEL_CARD.md")

# Name -> what it is. The file of each is `<name>.keras` in PRETRAINED_DIR and
# its evaluation `<name>.evaluation.json` (both written by scripts/release.py).
PRETRAINED = {
    "fashion-mnist": "Fashion-MNIST, 28x28 grey, unconditional: the `release` preset",
    "fashion-mnist-conditional": (
        "Fashion-MNIST, 28x28 grey, class-conditional (classifier-free guidance): "
        "the `release` preset with `--class-conditional`"
    ),
}


def _check_name(name):
    if name not in PRETRAINED:
        known = ", ".join(repr(n) for n in sorted(PRETRAINED)) or "none"
        raise ConfigError(f"Unknown pretrained model. Known: {known}. Received: name={name!r}")


def pretrained_path(name):
    """The `.keras` file of a released model.

    Raises:
        ConfigError: `name` is not a released model's (the message lists them).
    """
    _check_name(name)
    return os.path.join(PRETRAINED_DIR, f"{name}.keras")


def load_pretrained(name):
    """Loads a released model by name, from the installed package (no download).

    Args:
        name: One of `PRETRAINED` (e.g. `"fashion-mnist"`).

    Returns:
        A sampling-only `DiffusionModel` (it samples; it cannot be trained).

    Raises:
        ConfigError: `name` is unknown (the message lists the known ones).
        MissingFileError: the package was installed without its model files.
    """
    from ddpm_keras.model import load_diffusion_model

    path = pretrained_path(name)
    if not os.path.isfile(path):
        raise MissingFileError(
            f"The released model {name!r} is not in this installation (expected {path}); "
            f"reinstall ddpm-keras with its package data. Received: name={name!r}"
        )
    return load_diffusion_model(path)


def export_pretrained(model_path, name, directory=None):
    """Writes a trained model's sampling-only copy as the released model `name`.

    Args:
        model_path: The `.keras` file a training run saved (`model.keras`).
        name: One of `PRETRAINED`: add the entry first.
        directory: Where to write `<name>.keras` (`None`: `PRETRAINED_DIR`).

    Returns:
        The path written and its size in bytes.
    """
    from ddpm_keras.model import load_diffusion_model

    _check_name(name)
    path = os.path.join(directory or PRETRAINED_DIR, f"{name}.keras")
    model = load_diffusion_model(model_path).sampling_copy()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_model(model, path)
    return path, os.path.getsize(path)
