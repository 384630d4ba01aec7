import keras
import numpy as np
import pytest
import tensorflow as tf

from ddpm_keras.unet import (
    GroupNorm,
    ResidualBlock,
    SelfAttention2D,
    SinusoidalEmbedding,
    build_unet,
)


def test_output_matches_images_and_is_float32(tiny_network):
    images = np.random.default_rng(0).standard_normal((3, 8, 8, 1)).astype(np.float32)
    output = tiny_network([images, np.array([0, 5, 99], np.int32)])
    assert tuple(output.shape) == (3, 8, 8, 1)
    assert output.dtype == "float32"
    assert tiny_network.get_layer("conv_out").dtype_policy.name == "float32"


def test_output_depends_on_timestep(tiny_network):
    # conv_out is the only layer between the last (zero-init) blocks and the
    # output; perturb weights so the time path reaches the output.
    for weight in tiny_network.weights:
        weight.assign(weight + 0.05)
    images = np.ones((2, 8, 8, 1), np.float32)
    output = keras.ops.convert_to_numpy(tiny_network([images, np.array([1, 900], np.int32)]))
    assert not np.allclose(output[0], output[1])


def test_width_depth_and_attention_are_configurable():
    small = build_unet((28, 28, 1), 8, (1, 2), 1, attention=False, norm_groups=4)
    large = build_unet((28, 28, 1), 16, (1, 2, 2), 2, attention=True, norm_groups=4)
    assert large.count_params() > small.count_params()
    assert any(isinstance(layer, SelfAttention2D) for layer in large.layers)
    assert not any(isinstance(layer, SelfAttention2D) for layer in small.layers)
    rgb = build_unet((32, 32, 3), 8, (1, 2, 2, 2), 1, norm_groups=4)
    assert rgb.output.shape[1:] == (32, 32, 3)


def test_attention_levels_follow_every_block_of_their_level():
    network = build_unet(
        (8, 8, 1), 8, (1, 2, 2), 2, attention=False, norm_groups=4, attention_levels=(0, 2)
    )
    attention = {
        layer.name: layer.output.shape[1:3]
        for layer in network.layers
        if isinstance(layer, SelfAttention2D)
    }
    # Two encoder blocks and three decoder blocks at each named level.
    assert attention == {
        **{f"down0_attention{i}": (8, 8) for i in range(2)},
        **{f"down2_attention{i}": (2, 2) for i in range(2)},
        **{f"up0_attention{i}": (8, 8) for i in range(3)},
        **{f"up2_attention{i}": (2, 2) for i in range(3)},
    }


def test_dropout_masks_only_in_training():
    keras.utils.set_random_seed(0)
    arguments = dict(image_shape=(8, 8, 1), base_channels=8, channel_multipliers=(1, 2))
    arguments.update(num_res_blocks=1, attention=False, norm_groups=4)
    plain = build_unet(**arguments)
    dropped = build_unet(**arguments, dropout=0.5)
    rng = np.random.default_rng(0)
    weights = [rng.normal(0, 0.3, w.shape).astype(np.float32) for w in plain.weights]
    plain.set_weights(weights)
    dropped.set_weights(weights)  # dropout adds no weights
    inputs = [rng.standard_normal((2, 8, 8, 1)).astype(np.float32), np.array([3, 40], np.int32)]
    # Inference ignores dropout: the same function as the network without it.
    np.testing.assert_array_equal(dropped(inputs), plain(inputs))
    first, second = dropped(inputs, training=True), dropped(inputs, training=True)
    assert not np.allclose(first, second)
    assert not np.allclose(first, plain(inputs, training=True))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"attention_levels": (2,)}, "attention_levels=\\(2,\\)"),
        ({"attention_levels": (0, 0)}, "distinct levels"),
        ({"dropout": 1.0}, "dropout=1.0"),
        ({"image_shape": (30, 30, 1), "channel_multipliers": (1, 2, 2)}, "divisible by 4"),
        ({"image_shape": (28, 28)}, "image_shape"),
        ({"norm_groups": 5}, "norm_groups=5"),
        ({"base_channels": 7, "norm_groups": 1}, "base_channels=7"),
    ],
)
def test_rejects_bad_arguments(kwargs, message):
    arguments = {"image_shape": (28, 28, 1), "base_channels": 8, "norm_groups": 4}
    arguments["channel_multipliers"] = (1, 2)
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=message):
        build_unet(**arguments)


def test_sinusoidal_embedding_values():
    embedding = SinusoidalEmbedding(4)
    values = keras.ops.convert_to_numpy(embedding(np.array([0, 3], np.int32)))
    frequencies = np.exp(-np.log(10_000) * np.arange(2) / 2)
    expected = np.concatenate([np.sin(3 * frequencies), np.cos(3 * frequencies)])
    # float32: -ln(10000) rounded (eps32 / 2), then exp of an argument of
    # size 4.6 multiplies that by 4.6, plus exp's, the product's and sin's own
    # roundings: ~5 eps32 = 6e-7 at worst (measured 0.4 eps32), under 1e-6.
    np.testing.assert_allclose(values[1], expected, rtol=1e-6)
    np.testing.assert_allclose(values[0], [0, 0, 1, 1])
    with pytest.raises(ValueError, match="dim=3"):
        SinusoidalEmbedding(3)


@pytest.mark.parametrize(
    "layer",
    [
        SinusoidalEmbedding(16, max_period=500),
        ResidualBlock(12, groups=3, dropout=0.25),
        SelfAttention2D(2),
    ],
)
def test_custom_layer_get_config_round_trip(layer):
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(restored) is type(layer)
    assert restored.get_config() == layer.get_config()


def test_saved_network_loads_in_safe_mode(tiny_network, tmp_path):
    path = tmp_path / "unet.keras"
    tiny_network.save(path)
    restored = keras.models.load_model(path, safe_mode=True)
    images = np.random.default_rng(1).standard_normal((2, 8, 8, 1)).astype(np.float32)
    timesteps = np.array([3, 40], np.int32)
    np.testing.assert_allclose(
        restored([images, timesteps]), tiny_network([images, timesteps]), rtol=1e-6
    )


def group_norm_pair(policy, shape, rng):
    """Our GroupNorm and Keras' GroupNormalization (4 groups) with the same random weights."""
    ours = GroupNorm(4, epsilon=1e-5, dtype=policy)
    reference = keras.layers.GroupNormalization(4, epsilon=1e-5, dtype=policy)
    ours.build(shape)
    reference.build(shape)
    channels = shape[-1]
    reference.gamma.assign(rng.standard_normal(channels).astype(np.float32) + 1.0)
    reference.beta.assign(rng.standard_normal(channels).astype(np.float32))
    ours.set_weights(reference.get_weights())
    return ours, reference


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_group_norm_equals_keras_group_normalization(policy):
    rng = np.random.default_rng(0)
    # A large mean: the two-pass variance must stay precise in float32.
    images = (5.0 + 0.5 * rng.standard_normal((3, 6, 5, 12))).astype(np.float32)
    ours, reference = group_norm_pair(policy, images.shape, rng)
    expected = keras.ops.convert_to_numpy(keras.ops.cast(reference(images), "float32"))
    got = keras.ops.convert_to_numpy(keras.ops.cast(ours(images), "float32"))
    assert ours(images).dtype == reference(images).dtype
    tolerance = 1e-5 if policy == "float32" else 2e-2  # bfloat16 outputs: 8-bit mantissa
    np.testing.assert_allclose(got, expected, atol=tolerance * np.abs(expected).max())
    # The same weights in the same order, so either layer loads the other's.
    assert [w.path.split("/")[-1] for w in ours.weights] == ["gamma", "beta"]


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_group_norm_gradients_equal_keras_group_normalization(policy):
    """The written-out gradient against automatic differentiation of Keras' layer."""
    rng = np.random.default_rng(1)
    # A large mean and a non-uniform upstream gradient: every term of the
    # backward formula matters.
    images = tf.constant((5.0 + 0.5 * rng.standard_normal((3, 6, 5, 12))).astype(np.float32))
    upstream = tf.constant(rng.standard_normal((3, 6, 5, 12)).astype(np.float32))
    ours, reference = group_norm_pair(policy, images.shape, rng)

    def gradients(layer):
        with tf.GradientTape() as tape:
            tape.watch(images)
            loss = tf.reduce_sum(tf.cast(layer(images), tf.float32) * upstream)
        return tape.gradient(loss, [images, layer.gamma.value, layer.beta.value])

    # float32: a few units of round-off on sums of 90 values (x_hat is O(1)).
    # Under mixed_bfloat16 both layers compute in float32 and round to
    # bfloat16 (8 mantissa bits, relative 2^-8 = 0.4%) where they meet the
    # bfloat16 outputs and gradients: 2e-2 is a few of those roundings.
    tolerance = 1e-5 if policy == "float32" else 2e-2
    for name, got, expected in zip(
        ("inputs", "gamma", "beta"), gradients(ours), gradients(reference), strict=True
    ):
        expected = np.asarray(expected, np.float32)
        np.testing.assert_allclose(
            np.asarray(got, np.float32),
            expected,
            atol=tolerance * np.abs(expected).max(),
            err_msg=f"gradient of {name}",
        )


def test_group_norm_config_round_trip_and_bad_arguments():
    layer = GroupNorm(4, epsilon=1e-3, name="norm")
    clone = GroupNorm.from_config(layer.get_config())
    assert (clone.groups, clone.epsilon, clone.name) == (4, 1e-3, "norm")
    with pytest.raises(ValueError, match="Received: axis=1"):
        GroupNorm(4, axis=1)
    with pytest.raises(ValueError, match=r"Received: input_shape=\(2, 8, 4\)"):
        GroupNorm(2).build((2, 8, 4))
