"""The denoising network: a Keras UNet that maps (noisy images, t) to noise.

It knows nothing about diffusion beyond taking an integer timestep. Built
from Keras layers and `keras.ops`, with four small registered custom layers,
so that a saved model loads with Keras' default `safe_mode=True`.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf
from keras import layers, ops

from ddpm_keras.config import (
    check_attention_levels,
    check_field,
    check_image_size,
    check_network_widths,
)
from ddpm_keras.errors import ConfigError


def _sublayer_kwargs(parent):
    """Sublayers inherit the parent's dtype policy and `trainable` flag.

    A layer rebuilt from a saved config gets `trainable` in its constructor,
    before its sublayers exist; without this, a frozen block (the EMA copy)
    would come back with trainable sublayers.
    """
    return {"dtype": parent.dtype_policy, "trainable": parent.trainable}


def _group_means(channel_values, groups):
    """`[B, C]` per-channel values -> `[B, 1, 1, C]`: each channel's group mean.

    Every channel of a group has H x W values, so the mean of the channel
    means is the mean over the group.
    """
    channels = channel_values.shape[-1]
    per_group = channels // groups
    group_means = ops.mean(
        ops.reshape(channel_values, (-1, groups, per_group)), axis=-1, keepdims=True
    )
    group_means = ops.repeat(group_means, per_group, axis=-1)
    return ops.reshape(group_means, (-1, 1, 1, channels))


def group_norm(features, gamma, beta, groups, epsilon):
    """Group normalization of float32 `[B, H, W, C]` features, with its gradient written out.

    Forward: `x_hat = (x - mean) / sqrt(var + epsilon)` per sample and group
    (two passes: the mean, then the variance of the centred values, which
    keeps float32 precise when the mean is large), `y = gamma * x_hat + beta`.

    Backward, for `g = dL/dy` and `N = H x W x C/G` values per group (the
    standard batch-norm derivation, applied per group):
    `dL/dx = inv_std * (gamma g - mean(gamma g) - x_hat mean(gamma g x_hat))`,
    `dL/dgamma = sum(g x_hat)`, `dL/dbeta = sum(g)`, the means over a
    group's N values. Written out, it is one product, two reductions and one
    multiply-add chain over the activations: fewer passes than the automatic
    gradient, which differentiates every mean, broadcast and product of the
    forward on its own. On a CPU this layer is bound by memory traffic, so
    passes are what it costs.
    """

    @ops.custom_gradient
    def normalize(features, gamma, beta):
        shape = ops.shape(features)
        pixels = ops.cast(shape[1] * shape[2], "float32")  # H and W may be unknown until run
        centered = features - _group_means(ops.mean(features, axis=(1, 2)), groups)
        variance = _group_means(ops.mean(ops.square(centered), axis=(1, 2)), groups)
        inv_std = ops.rsqrt(variance + epsilon)  # [B, 1, 1, C], constant within a group
        scale = inv_std * gamma

        def gradient(*args, upstream=None):
            upstream = args[0] if upstream is None else upstream
            mean_upstream = ops.mean(upstream, axis=(1, 2))  # [B, C]
            # mean(g x_hat) per channel: inv_std is constant over H and W.
            mean_upstream_normed = ops.mean(upstream * centered, axis=(1, 2)) * ops.reshape(
                inv_std, (-1, inv_std.shape[-1])
            )
            gamma_gradient = pixels * ops.sum(mean_upstream_normed, axis=0)
            beta_gradient = pixels * ops.sum(mean_upstream, axis=0)
            mean_term = _group_means(mean_upstream * gamma, groups)
            normed_term = _group_means(mean_upstream_normed * gamma, groups)
            # x_hat = centered * inv_std, so x_hat * inv_std = centered * inv_std^2.
            features_gradient = (
                scale * upstream
                - inv_std * mean_term
                - centered * (inv_std * inv_std * normed_term)
            )
            return features_gradient, gamma_gradient, beta_gradient

        return centered * scale + beta, gradient

    return normalize(features, gamma, beta)


@keras.saving.register_keras_serializable(package="ddpm_keras")
class GroupNorm(layers.GroupNormalization):
    """`keras.layers.GroupNormalization` for channels-last images, computed faster.

    The same weights (`gamma`, `beta`), config and results (to float32
    round-off), for 4-D `[B, H, W, C]` inputs. Keras computes the group
    statistics as one reduction over axes (1, 2, 4) of a `[B, H, W, G, C/G]`
    view, which TensorFlow's CPU kernels run slowly; `group_norm` reduces
    contiguous per-channel means first and writes its gradient out (see
    BENCHMARKS.md for what each step saves).
    """

    def __init__(self, groups=32, axis=-1, **kwargs):
        if axis not in (-1, 3):
            raise ConfigError(f"GroupNorm normalizes channels-last inputs. Received: axis={axis}")
        super().__init__(groups=groups, axis=-1, **kwargs)

    def build(self, input_shape):
        if len(input_shape) != 4:
            raise ConfigError(
                f"GroupNorm takes [B, H, W, C] inputs. Received: input_shape={input_shape}"
            )
        super().build(input_shape)

    def call(self, inputs):
        # Statistics in float32 even under mixed precision, as Keras does.
        features = ops.cast(inputs, "float32")
        channels = features.shape[-1]
        gamma = ops.cast(self.gamma, "float32") if self.scale else ops.ones((channels,), "float32")
        beta = ops.cast(self.beta, "float32") if self.center else ops.zeros((channels,), "float32")
        outputs = group_norm(features, gamma, beta, self.groups, self.epsilon)
        return ops.cast(outputs, self.compute_dtype)


@keras.saving.register_keras_serializable(package="ddpm_keras")
class SinusoidalEmbedding(layers.Layer):
    """Transformer-style sinusoidal embedding of integer timesteps.

    Args:
        dim: Embedding size (even).
        max_period: Longest wavelength, as in Vaswani et al. 2017.
    """

    def __init__(self, dim, max_period=10_000, **kwargs):
        super().__init__(**kwargs)
        if dim < 2 or dim % 2:
            raise ConfigError(f"`dim` must be even and >= 2. Received: dim={dim}")
        self.dim = dim
        self.max_period = max_period

    def call(self, timesteps):
        half = self.dim // 2
        exponents = ops.arange(half, dtype="float32") / half
        frequencies = ops.exp(-math.log(self.max_period) * exponents)
        angles = ops.cast(ops.reshape(timesteps, (-1, 1)), "float32") * frequencies
        embedding = ops.concatenate([ops.sin(angles), ops.cos(angles)], axis=-1)
        return ops.cast(embedding, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.dim)

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "max_period": self.max_period}


@keras.saving.register_keras_serializable(package="ddpm_keras")
class ResidualBlock(layers.Layer):
    """GroupNorm-swish-conv twice, with the timestep embedding added between.

    Called on `[features, time_embedding]`. A 1x1 convolution matches the
    shortcut's channels when they change.

    Args:
        filters: Output channels.
        groups: Groups of the GroupNormalization layers.
        dropout: Dropout rate before the second convolution (Ho et al. 2020).
    """

    def __init__(self, filters, groups=8, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.groups = groups
        self.dropout_rate = float(dropout)
        self.norm1 = GroupNorm(groups, epsilon=1e-5, **_sublayer_kwargs(self))
        self.conv1 = layers.Conv2D(filters, 3, padding="same", **_sublayer_kwargs(self))
        self.time_projection = layers.Dense(filters, **_sublayer_kwargs(self))
        self.norm2 = GroupNorm(groups, epsilon=1e-5, **_sublayer_kwargs(self))
        # Zero-initialised last conv: each block starts as the identity.
        self.conv2 = layers.Conv2D(
            filters, 3, padding="same", kernel_initializer="zeros", **_sublayer_kwargs(self)
        )
        self.shortcut = None

    def build(self, input_shape):
        features_shape, embedding_shape = input_shape
        in_channels = features_shape[-1]
        self.norm1.build(features_shape)
        self.conv1.build(features_shape)
        self.time_projection.build(embedding_shape)
        out_shape = tuple(features_shape[:-1]) + (self.filters,)
        self.norm2.build(out_shape)
        self.conv2.build(out_shape)
        if in_channels != self.filters:
            self.shortcut = layers.Conv2D(self.filters, 1, **_sublayer_kwargs(self))
            self.shortcut.build(features_shape)

    def call(self, inputs, training=False):
        features, time_embedding = inputs
        hidden = self.conv1(ops.silu(self.norm1(features)))
        time_bias = self.time_projection(ops.silu(time_embedding))
        hidden = hidden + time_bias[:, None, None, :]
        hidden = ops.silu(self.norm2(hidden))
        if training and self.dropout_rate:
            # tf.random, not a Keras SeedGenerator: under tf.distribute each
            # replica then draws its own mask.
            hidden = tf.nn.dropout(hidden, rate=self.dropout_rate)
        hidden = self.conv2(hidden)
        residual = self.shortcut(features) if self.shortcut is not None else features
        return residual + hidden

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0][:-1]) + (self.filters,)

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "groups": self.groups,
            "dropout": self.dropout_rate,
        }


@keras.saving.register_keras_serializable(package="ddpm_keras")
class SelfAttention2D(layers.Layer):
    """Single-head self-attention over all pixels, with a residual connection.

    Args:
        groups: Groups of the GroupNormalization before attention.
    """

    def __init__(self, groups=8, **kwargs):
        super().__init__(**kwargs)
        self.groups = groups
        self.norm = GroupNorm(groups, epsilon=1e-5, **_sublayer_kwargs(self))

    def build(self, input_shape):
        channels = input_shape[-1]
        self.norm.build(input_shape)
        self.query = layers.Dense(channels, **_sublayer_kwargs(self))
        self.key = layers.Dense(channels, **_sublayer_kwargs(self))
        self.value = layers.Dense(channels, **_sublayer_kwargs(self))
        self.projection = layers.Dense(
            channels, kernel_initializer="zeros", **_sublayer_kwargs(self)
        )
        for dense in (self.query, self.key, self.value, self.projection):
            dense.build(input_shape)

    def call(self, features):
        shape = ops.shape(features)
        height, width, channels = shape[1], shape[2], features.shape[-1]
        normed = self.norm(features)
        tokens = ops.reshape(normed, (shape[0], height * width, channels))
        query, key, value = self.query(tokens), self.key(tokens), self.value(tokens)
        scores = ops.matmul(query, ops.transpose(key, (0, 2, 1)))
        weights = ops.softmax(scores * (channels**-0.5), axis=-1)
        attended = self.projection(ops.matmul(weights, value))
        return features + ops.reshape(attended, shape)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "groups": self.groups}


def build_unet(
    image_shape,
    base_channels=64,
    channel_multipliers=(1, 2, 2),
    num_res_blocks=2,
    attention=True,
    norm_groups=8,
    num_classes=None,
    dtype=None,
    name="unet",
    attention_levels=None,
    dropout=0.0,
):
    """Builds the denoising UNet as a functional Keras model.

    Inputs are `[noisy_images, timesteps]` (float `[B, H, W, C]` and int
    `[B]`), plus int `labels` `[B]` if `num_classes` is set; the output
    (predicted noise, x_0 or v) is float32, shaped like the images.

    Args:
        image_shape: `(H, W, C)`. H and W must be divisible by
            `2 ** (len(channel_multipliers) - 1)`.
        base_channels: Channels of the first level.
        channel_multipliers: Channel multiplier per level; strided convolutions
            halve the resolution between levels, transposed ones double it.
        num_res_blocks: Residual blocks per level (the decoder has one more).
        attention: Self-attention in the bottleneck (lowest resolution).
        norm_groups: Groups of every GroupNormalization.
        attention_levels: Levels (0: full resolution) where every residual
            block is followed by self-attention (`None`: none).
        dropout: Dropout rate in every residual block.
        num_classes: If set, the network also takes a class label in
            [0, num_classes], where `num_classes` itself means "no label"
            (classifier-free guidance, Ho & Salimans 2022). A learned label
            embedding is added to the timestep embedding.
        dtype: Keras dtype policy of the layers, e.g. `"mixed_float16"`
            (`None`: the global policy). The output layer is always float32.
        name: Model name.

    Returns:
        A `keras.Model`.
    """
    image_shape = tuple(int(d) for d in image_shape)
    if len(image_shape) != 3 or min(image_shape) < 1:
        raise ConfigError(
            "`image_shape` must be (height, width, channels) with positive "
            f"sizes. Received: image_shape={image_shape}"
        )
    check_network_widths(base_channels, channel_multipliers, norm_groups)
    check_attention_levels(attention_levels, channel_multipliers)
    check_field("num_res_blocks", num_res_blocks)
    check_field("dropout", dropout)
    attention_levels = set(attention_levels or ())
    check_image_size(image_shape, channel_multipliers, name="image_shape")

    if num_classes is not None and (
        isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1
    ):
        raise ConfigError(
            f"`num_classes` must be an integer >= 1 or None. Received: num_classes={num_classes!r}"
        )
    noisy_images = keras.Input(shape=image_shape, name="noisy_images")
    timesteps = keras.Input(shape=(), dtype="int32", name="timesteps")

    embedding_dim = base_channels * 4
    time_embedding = SinusoidalEmbedding(base_channels, name="time_sinusoidal", dtype=dtype)(
        timesteps
    )
    time_embedding = layers.Dense(
        embedding_dim, activation="swish", name="time_dense1", dtype=dtype
    )(time_embedding)
    time_embedding = layers.Dense(embedding_dim, name="time_dense2", dtype=dtype)(time_embedding)
    inputs = [noisy_images, timesteps]
    if num_classes is not None:
        labels = keras.Input(shape=(), dtype="int32", name="labels")
        # One row per class plus the "no label" row at index num_classes.
        label_embedding = layers.Embedding(
            num_classes + 1, embedding_dim, name="label_embedding", dtype=dtype
        )(labels)
        time_embedding = layers.Add(name="time_label_add", dtype=dtype)(
            [time_embedding, label_embedding]
        )
        inputs.append(labels)

    x = layers.Conv2D(base_channels, 3, padding="same", name="conv_in", dtype=dtype)(noisy_images)
    skips = [x]
    last_level = len(channel_multipliers) - 1
    for level, multiplier in enumerate(channel_multipliers):
        for block in range(num_res_blocks):
            x = ResidualBlock(
                base_channels * multiplier,
                norm_groups,
                dropout,
                name=f"down{level}_res{block}",
                dtype=dtype,
            )([x, time_embedding])
            if level in attention_levels:
                x = SelfAttention2D(norm_groups, name=f"down{level}_attention{block}", dtype=dtype)(
                    x
                )
            skips.append(x)
        if level != last_level:
            x = layers.Conv2D(
                x.shape[-1], 3, strides=2, padding="same", name=f"down{level}_conv", dtype=dtype
            )(x)
            skips.append(x)

    bottleneck_channels = base_channels * channel_multipliers[-1]
    x = ResidualBlock(bottleneck_channels, norm_groups, dropout, name="mid_res0", dtype=dtype)(
        [x, time_embedding]
    )
    if attention:
        x = SelfAttention2D(norm_groups, name="mid_attention", dtype=dtype)(x)
    x = ResidualBlock(bottleneck_channels, norm_groups, dropout, name="mid_res1", dtype=dtype)(
        [x, time_embedding]
    )

    for level in reversed(range(len(channel_multipliers))):
        for block in range(num_res_blocks + 1):
            x = layers.Concatenate(name=f"up{level}_concat{block}", dtype=dtype)([x, skips.pop()])
            x = ResidualBlock(
                base_channels * channel_multipliers[level],
                norm_groups,
                dropout,
                name=f"up{level}_res{block}",
                dtype=dtype,
            )([x, time_embedding])
            if level in attention_levels:
                x = SelfAttention2D(norm_groups, name=f"up{level}_attention{block}", dtype=dtype)(x)
        if level != 0:
            x = layers.Conv2DTranspose(
                x.shape[-1], 4, strides=2, padding="same", name=f"up{level}_upsample", dtype=dtype
            )(x)

    x = GroupNorm(norm_groups, epsilon=1e-5, name="norm_out", dtype=dtype)(x)
    x = layers.Activation("swish", name="swish_out", dtype=dtype)(x)
    # float32 output so that the loss stays in float32 under mixed precision.
    pred_noises = layers.Conv2D(
        image_shape[-1], 3, padding="same", dtype="float32", name="conv_out"
    )(x)
    return keras.Model(inputs, pred_noises, name=name)
