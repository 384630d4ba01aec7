"""Test doubles shared by several test files."""

import numpy as np
import tensorflow as tf

from ddpm_keras.model import DiffusionModel


class ImageDerivedNoiseModel(DiffusionModel):
    """A DiffusionModel whose timesteps and noise are computed from each image.

    Each example gets the same t and noise wherever and however it runs (one
    device or several replicas, graph or XLA), so two runs of the same batch
    face exactly the same training problem.
    """

    def _draw_timesteps_and_noises(self, images):
        sums = tf.reduce_sum(images, axis=[1, 2, 3])
        timesteps = tf.cast(
            tf.math.floormod(tf.abs(sums) * 1000.0, float(self.schedule.timesteps)), tf.int32
        )
        return timesteps, tf.sin(images * 37.0 + 1.0)


def fake_dataset(config):
    """What `load_dataset` returns, from 64 random 8x8 images: no TFDS, no files.

    Three training batches of 16 and one validation batch, whatever the
    config says.
    """
    images = np.random.default_rng(0).uniform(-1, 1, (64, 8, 8, 1)).astype(np.float32)
    train = tf.data.Dataset.from_tensor_slices(images[:48]).batch(16, drop_remainder=True)
    return train, tf.data.Dataset.from_tensor_slices(images[48:]).batch(16), (8, 8, 1)


def use_fake_data(monkeypatch, *modules):
    """Makes `modules` (default: `ddpm_keras.training`) train on `fake_dataset`."""
    import ddpm_keras.training

    for module in modules or (ddpm_keras.training,):
        monkeypatch.setattr(module, "load_dataset", fake_dataset)
        monkeypatch.setattr(module, "class_names", lambda config: None)
        if hasattr(module, "prepare_data"):
            monkeypatch.setattr(module, "prepare_data", lambda config: None)


def write_image(path, pixels):
    """Writes uint8 `[H, W]` or `[H, W, C]` pixels as an image file (format from the suffix)."""
    import os

    from PIL import Image

    os.makedirs(os.path.dirname(path), exist_ok=True)
    pixels = np.asarray(pixels, np.uint8)
    Image.fromarray(pixels[..., 0] if pixels.ndim == 3 and pixels.shape[-1] == 1 else pixels).save(
        path
    )


def write_solid_folder(root, classes=("black", "white"), per_class=12, size=(12, 16)):
    """Class subfolders of solid images: class i is grey level 255 * i / (classes - 1).

    PNG, JPEG, BMP and GIF in turn, grey and RGB in turn, so that a label can be
    checked against the pixels of its image.
    """
    suffixes = (".png", ".jpg", ".bmp", ".gif")
    for label, name in enumerate(classes):
        level = round(255 * label / max(len(classes) - 1, 1))
        for index in range(per_class):
            shape = size if index % 2 else (*size, 3)
            write_image(
                f"{root}/{name}/{index:03d}{suffixes[index % 4]}", np.full(shape, level, np.uint8)
            )
    return root
