"""Sample grids during and after training, as PNG files and in TensorBoard."""

from __future__ import annotations

import os

import keras
import numpy as np

from ddpm_keras.config import DEFAULT_GUIDANCE_SCALE
from ddpm_keras.errors import ConfigError
from ddpm_keras.files import save_image_grid, tile_images
from ddpm_keras.pipeline import SamplingSettings


class SampleGrid(keras.callbacks.Callback):
    """Writes a PNG grid of `model.generate` samples (EMA weights).

    Every `every` epochs it writes `<directory>/epoch_NNN.png` (and, with
    `tensorboard_dir`, the same grid as a TensorBoard image `samples` at step
    epoch); at the end of training it writes `final_path`. The seed is fixed
    so that grids from successive epochs show the same starting noise.

    Args:
        directory: Folder of the per-epoch grids.
        final_path: Path of the grid written when training ends (`None`: none).
        every: Epoch interval (0: only the final grid).
        num_images: Images per grid.
        sampler: `"ddim"`, `"ddpm"` or `"dpmpp_2m"`.
        steps: Sampling steps (`None`: the sampler's default).
        eta: DDIM eta.
        seed: Sampling seed.
        guidance_scale: For a class-conditional model, whose grid has one row
            per class: the classifier-free guidance scale (default 3).
        tensorboard_dir: TensorBoard log dir for the grids (`None`: none);
            they go to its `samples` subfolder, beside the `train` and
            `validation` scalars of `keras.callbacks.TensorBoard`.
    """

    def __init__(
        self,
        directory,
        final_path=None,
        every=1,
        num_images=36,
        sampler="ddim",
        steps=None,
        eta=0.0,
        seed=0,
        guidance_scale=DEFAULT_GUIDANCE_SCALE,
        tensorboard_dir=None,
    ):
        super().__init__()
        if isinstance(every, bool) or not isinstance(every, int) or every < 0:
            raise ConfigError(f"`every` must be an integer >= 0. Received: every={every!r}")
        self.directory = os.fspath(directory)
        self.final_path = final_path
        self.every = every
        self.num_images = num_images
        # Checked now, not at the first grid an epoch later.
        self.settings = SamplingSettings(sampler, steps, eta, guidance_scale, seed)
        self.tensorboard_dir = None if tensorboard_dir is None else os.fspath(tensorboard_dir)
        self._summary_writer = None

    def _write(self, path, title):
        num_images, labels, columns, row_labels = self.num_images, None, None, None
        if self.model.num_classes is not None:
            # One row per class, as many columns as num_images allows (>= 1).
            columns = max(1, self.num_images // self.model.num_classes)
            labels = np.repeat(np.arange(self.model.num_classes), columns)
            num_images = len(labels)
            row_labels = self.model.class_names
            title += f", guidance {self.settings.guidance_scale:g}"
        images = self.model.pipeline(num_images, self.settings, labels)
        save_image_grid(images, path, title=title, columns=columns, row_labels=row_labels)
        return images

    def _log_to_tensorboard(self, images, epoch):
        import tensorflow as tf

        if self._summary_writer is None:
            self._summary_writer = tf.summary.create_file_writer(
                os.path.join(self.tensorboard_dir, "samples")
            )
        with self._summary_writer.as_default():
            tf.summary.image(
                "samples",
                tile_images(images)[None],
                step=epoch,
                description=f"{self.settings.label} samples, EMA weights, seed {self.settings.seed}",
            )
        self._summary_writer.flush()

    def on_epoch_end(self, epoch, logs=None):
        if self.every and (epoch + 1) % self.every == 0:
            path = os.path.join(self.directory, f"epoch_{epoch + 1:03d}.png")
            images = self._write(path, f"epoch {epoch + 1}, {self.settings.label}")
            if self.tensorboard_dir is not None:
                # Step = epoch index, as keras.callbacks.TensorBoard's epoch scalars.
                self._log_to_tensorboard(images, epoch)

    def on_train_end(self, logs=None):
        if self.final_path:
            self._write(self.final_path, f"{self.settings.label} samples")
        if self._summary_writer is not None:
            self._summary_writer.close()
            self._summary_writer = None
