"""Image transforms every input shares: center crop, antialiased resize, grey or RGB, [-1, 1].

TFDS datasets, image folders and NumPy arrays go through the same
functions, so `--image-size` and `--channels` mean the same for each.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from ddpm_keras.errors import ConfigError


def convert_channels(image, channels):
    """uint8 `[H, W, C]` with C in 1..4 (grey, grey+alpha, RGB, RGBA) to `channels` (1 or 3).

    Alpha is dropped. Grey from colour is the luminance of
    `tf.image.rgb_to_grayscale` (ITU-R 601-2); colour from grey repeats it.
    """
    num_channels = tf.shape(image)[-1]
    is_colour = num_channels >= 3
    if channels == 3:
        return tf.cond(
            is_colour, lambda: image[..., :3], lambda: tf.repeat(image[..., :1], 3, axis=-1)
        )
    return tf.cond(
        is_colour, lambda: tf.image.rgb_to_grayscale(image[..., :3]), lambda: image[..., :1]
    )


def center_crop_and_resize(image, image_size):
    """uint8 `[H, W, C]` to uint8 `[image_size..., C]`, keeping the aspect ratio.

    Crops the middle of the image to the target's aspect ratio first, so
    nothing is stretched, then resizes with an antialiasing filter
    (`tf.image.resize(antialias=True)`), so shrinking does not alias.
    An image already of the target size is returned unchanged.
    """
    target_height, target_width = (int(size) for size in image_size)
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    # The largest centred window of the target's aspect ratio, rounded.
    crop_height = tf.minimum(
        height, (2 * width * target_height + target_width) // (2 * target_width)
    )
    crop_width = tf.minimum(
        width, (2 * height * target_width + target_height) // (2 * target_height)
    )
    cropped = tf.image.crop_to_bounding_box(
        image, (height - crop_height) // 2, (width - crop_width) // 2, crop_height, crop_width
    )

    def resize():
        resized = tf.image.resize(
            cropped, (target_height, target_width), method="bilinear", antialias=True
        )
        return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)

    same_size = tf.logical_and(
        tf.equal(crop_height, target_height), tf.equal(crop_width, target_width)
    )
    return tf.cond(same_size, lambda: cropped, resize)


def fit_image(image, image_size=None, channels=None):
    """One uint8 `[H, W, C]` image to the run's size and channels (`None`: unchanged)."""
    if channels is not None:
        image = convert_channels(image, channels)
    if image_size is not None:
        image = center_crop_and_resize(image, image_size)
    return image


def to_unit_range(images):
    """uint8 [0, 255] to float32 [-1, 1], the range the diffusion works in."""
    return tf.cast(images, tf.float32) / 127.5 - 1.0


def scale_images(images, name="images"):
    """NumPy images to float32 [-1, 1]: uint8 [0, 255] is scaled, float is taken as [-1, 1].

    Floats are taken to be in the model's range already (as a TFDS pipeline
    gives them); a float array in [0, 1] would train a model of
    washed-out images, so one that looks like it is refused.

    Raises:
        ConfigError: another dtype, non-finite values, or floats that look like [0, 1].
    """
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return images.astype(np.float32) / 127.5 - 1.0
    if not np.issubdtype(images.dtype, np.floating):
        raise ConfigError(
            f"`{name}` must be uint8 in [0, 255] or float in [-1, 1]. "
            f"Received: {name}.dtype={images.dtype}"
        )
    if not images.size:
        return images.astype(np.float32)
    low, high = float(np.min(images)), float(np.max(images))
    # Values a little outside [-1, 1] (added noise, say) are allowed, as before.
    if not (np.isfinite(low) and np.isfinite(high)):
        raise ConfigError(
            f"Float `{name}` must be finite, in about [-1, 1] (uint8 images in [0, 255] are "
            f"scaled to it). Received: values in [{low:g}, {high:g}]"
        )
    if low >= 0.0 and high > 0.5:
        raise ConfigError(
            f"Float `{name}` must be in [-1, 1], and these look like [0, 1] images (no "
            f"value below 0): pass `images * 2 - 1`, or uint8. Received: values in "
            f"[{low:g}, {high:g}]"
        )
    return images.astype(np.float32)
