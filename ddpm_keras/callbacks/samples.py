"""Sample grids during and after training."""

from __future__ import annotations

import os

import keras

from ddpm_keras.files import save_image_grid


class SampleGrid(keras.callbacks.Callback):
    """Writes a PNG grid of `model.generate` samples (EMA weights).

    Every `every` epochs it writes `<directory>/epoch_NNN.png`; at the end of
    training it writes `final_path`. The seed is fixed so that grids from
    successive epochs show the same starting noise.

    Args:
        directory: Folder of the per-epoch grids.
        final_path: Path of the grid written when training ends (`None`: none).
        every: Epoch interval (0: only the final grid).
        num_images: Images per grid.
        sampler: `"ddim"` or `"ddpm"`.
        steps: Sampling steps (`None`: the sampler's default).
        eta: DDIM eta.
        seed: Sampling seed.
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
    ):
        super().__init__()
        if isinstance(every, bool) or not isinstance(every, int) or every < 0:
            raise ValueError(f"`every` must be an integer >= 0. Received: every={every!r}")
        self.directory = os.fspath(directory)
        self.final_path = final_path
        self.every = every
        self.num_images = num_images
        self.sampler = sampler
        self.steps = steps
        self.eta = eta
        self.seed = seed

    def _write(self, path, title):
        images = self.model.generate(
            self.num_images,
            steps=self.steps,
            sampler=self.sampler,
            eta=self.eta,
            seed=self.seed,
        )
        save_image_grid(images, path, title=title)

    def on_epoch_end(self, epoch, logs=None):
        if self.every and (epoch + 1) % self.every == 0:
            path = os.path.join(self.directory, f"epoch_{epoch + 1:03d}.png")
            self._write(path, f"epoch {epoch + 1}, {self.sampler}")

    def on_train_end(self, logs=None):
        if self.final_path:
            self._write(self.final_path, f"{self.sampler} samples")
