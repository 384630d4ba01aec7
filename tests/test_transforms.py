"""Transforms: center crop, antialiased resize, channel conversion, scaling of NumPy images."""

import numpy as np
import pytest
import tensorflow as tf

from ddpm_keras.errors import ConfigError
from ddpm_keras.transforms import (
    center_crop_and_resize,
    convert_channels,
    fit_image,
    scale_images,
    to_unit_range,
)


def test_a_wide_image_is_cropped_to_its_middle_not_squeezed():
    # Left quarter 0, middle half 128, right quarter 255: the square middle
    # crop is all 128; squeezing the whole width would bring in 0 and 255.
    image = np.full((20, 40, 1), 128, np.uint8)
    image[:, :10], image[:, 30:] = 0, 255
    resized = center_crop_and_resize(tf.constant(image), (8, 8)).numpy()
    assert resized.shape == (8, 8, 1) and resized.dtype == np.uint8
    np.testing.assert_array_equal(resized, 128)


def test_a_tall_image_is_cropped_to_the_target_aspect_ratio():
    # 40x20 to 10x10: the middle 20 rows, i.e. rows 10..29.
    image = np.zeros((40, 20, 1), np.uint8)
    image[10:30] = 200
    np.testing.assert_array_equal(center_crop_and_resize(tf.constant(image), (10, 10)), 200)


def test_an_image_of_the_target_size_is_returned_unchanged():
    image = np.random.default_rng(0).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    np.testing.assert_array_equal(center_crop_and_resize(tf.constant(image), (12, 16)), image)


def test_shrinking_is_antialiased():
    # A one-pixel checkerboard of 0 and 255 shrunk 4x: an antialiasing
    # filter averages it to mid-grey; point sampling would give 0s and 255s.
    board = (np.indices((32, 32)).sum(axis=0) % 2 * 255).astype(np.uint8)[..., None]
    shrunk = center_crop_and_resize(tf.constant(board), (8, 8)).numpy().astype(int)
    assert shrunk.min() >= 120 and shrunk.max() <= 135, (shrunk.min(), shrunk.max())


def test_grey_from_colour_is_the_luminance_and_colour_from_grey_repeats_it():
    # ITU-R 601-2 weights (0.2989, 0.5870, 0.1140) of pure red, green, blue.
    rgb = tf.constant(np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255]]], np.uint8))
    np.testing.assert_allclose(convert_channels(rgb, 1).numpy()[0, :, 0], [76, 150, 29], atol=1)
    grey = tf.constant(np.array([[[7], [200]]], np.uint8))
    np.testing.assert_array_equal(convert_channels(grey, 3).numpy()[0], [[7] * 3, [200] * 3])
    np.testing.assert_array_equal(convert_channels(grey, 1), grey)


@pytest.mark.parametrize("channels", [1, 3])
def test_alpha_is_dropped(channels):
    grey_alpha = tf.constant(np.array([[[90, 0]]], np.uint8))
    rgba = tf.constant(np.array([[[90, 90, 90, 0]]], np.uint8))
    for image in (grey_alpha, rgba):
        converted = convert_channels(image, channels).numpy()
        assert converted.shape == (1, 1, channels)
        np.testing.assert_allclose(converted, 90, atol=1)


def test_fit_image_resizes_and_converts_in_graph_mode_with_unknown_shapes():
    function = tf.function(
        lambda image: fit_image(image, (4, 4), 3),
        input_signature=[tf.TensorSpec((None, None, None), tf.uint8)],
    )
    for shape in ((8, 8, 1), (10, 6, 4)):
        assert function(tf.zeros(shape, tf.uint8)).shape == (4, 4, 3)


def test_scale_images_maps_uint8_to_the_unit_range_and_checks_floats():
    np.testing.assert_array_equal(
        scale_images(np.array([0, 255], np.uint8)), np.array([-1.0, 1.0], np.float32)
    )
    np.testing.assert_array_equal(to_unit_range(tf.constant([0, 255], tf.uint8)), [-1.0, 1.0])
    floats = np.array([-1.0, 0.25, 1.0], np.float32)
    np.testing.assert_array_equal(scale_images(floats), floats)
    with pytest.raises(ConfigError, match=r"look like \[0, 1\]"):
        scale_images(np.array([0.0, 0.9], np.float32))
    noisy = np.array([-1.02, 1.03], np.float32)  # a little outside, e.g. added noise
    np.testing.assert_array_equal(scale_images(noisy), noisy)
    with pytest.raises(ConfigError, match="finite"):
        scale_images(np.array([np.nan, 0.0]))
    with pytest.raises(ConfigError, match="dtype=int32"):
        scale_images(np.array([0, 1], np.int32))
