"""Test doubles shared by several test files."""

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
