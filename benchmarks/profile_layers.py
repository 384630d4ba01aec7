"""Where a training step's time goes: the UNet's layer types, TensorFlow against PyTorch.

Times forward + backward of single layers at the shapes of the `cpu` preset's
UNet (batch 64, 28x28 to 7x7), and of the whole network, in both frameworks
on the same machine, so that a slow layer type stands out. BENCHMARKS.md
quotes its output.

    python benchmarks/profile_layers.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import ddpm_keras  # noqa: E402, F401, I001 (first: it sets TensorFlow's CPU options)
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import torch  # noqa: E402

from ddpm_keras.config import get_config  # noqa: E402
from ddpm_keras.unet import GroupNorm, build_unet  # noqa: E402
from torch_twin import TorchUNet  # noqa: E402


def median_seconds(function, repeats):
    function()
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def tensorflow_layer(layer, shape, repeats):
    """Forward + backward (input and weight gradients) of one Keras layer."""
    inputs = tf.random.normal(shape)
    layer(inputs)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            loss = tf.reduce_sum(layer(inputs))
        return tape.gradient(loss, [inputs, *layer.trainable_weights])

    return median_seconds(lambda: step()[0].numpy(), repeats)


def torch_layer(module, shape, repeats):
    inputs = torch.randn(*shape, requires_grad=True)

    def step():
        module.zero_grad()
        inputs.grad = None
        module(inputs).sum().backward()

    return median_seconds(step, repeats)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args(argv)
    batch = 64
    layers = keras.layers
    nn = torch.nn
    cases = [
        # (what, Keras layer, NHWC shape, PyTorch module, NCHW shape)
        ("conv 3x3, 24->24, 28x28", layers.Conv2D(24, 3, padding="same"), (batch, 28, 28, 24),
         nn.Conv2d(24, 24, 3, padding=1), (batch, 24, 28, 28)),
        ("conv 3x3, 48->24, 28x28", layers.Conv2D(24, 3, padding="same"), (batch, 28, 28, 48),
         nn.Conv2d(48, 24, 3, padding=1), (batch, 48, 28, 28)),
        ("conv 3x3, 48->48, 14x14", layers.Conv2D(48, 3, padding="same"), (batch, 14, 14, 48),
         nn.Conv2d(48, 48, 3, padding=1), (batch, 48, 14, 14)),
        ("transposed conv 4x4/2, 48, 7->14", layers.Conv2DTranspose(48, 4, 2, padding="same"),
         (batch, 7, 7, 48), nn.ConvTranspose2d(48, 48, 4, 2, 1), (batch, 48, 7, 7)),
        ("Keras GroupNormalization, 24, 28x28", layers.GroupNormalization(8),
         (batch, 28, 28, 24), nn.GroupNorm(8, 24), (batch, 24, 28, 28)),
        ("ddpm_keras GroupNorm, 24, 28x28", GroupNorm(8), (batch, 28, 28, 24),
         nn.GroupNorm(8, 24), (batch, 24, 28, 28)),
        ("SiLU, 24, 28x28", layers.Activation("silu"), (batch, 28, 28, 24), nn.SiLU(),
         (batch, 24, 28, 28)),
    ]  # fmt: skip
    print(f"forward + backward, median of {args.repeats}, ms")
    print("| layer | TensorFlow | PyTorch | TF / PyTorch |\n|---|---|---|---|")
    for what, keras_layer, keras_shape, module, torch_shape in cases:
        tf_ms = 1e3 * tensorflow_layer(keras_layer, keras_shape, args.repeats)
        torch_ms = 1e3 * torch_layer(module, torch_shape, args.repeats)
        print(f"| {what} | {tf_ms:.1f} | {torch_ms:.1f} | {tf_ms / torch_ms:.2f} |", flush=True)

    config = get_config("cpu")
    shape_args = (
        config.base_channels,
        config.channel_multipliers,
        config.num_res_blocks,
        config.attention,
        config.norm_groups,
    )
    network = build_unet((28, 28, 1), *shape_args)
    images = tf.random.normal((batch, 28, 28, 1))
    timesteps = tf.random.uniform((batch,), 0, 1000, tf.int32)

    @tf.function
    def tensorflow_step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(network([images, timesteps], training=True) ** 2)
        return tape.gradient(loss, network.trainable_weights)

    twin = TorchUNet((28, 28, 1), *shape_args[:3], attention=config.attention,
                     norm_groups=config.norm_groups)  # fmt: skip
    torch_images = torch.from_numpy(np.array(images))
    torch_timesteps = torch.from_numpy(np.array(timesteps)).long()

    def torch_step():
        twin.zero_grad()
        (twin(torch_images, torch_timesteps) ** 2).mean().backward()

    tf_ms = 1e3 * median_seconds(lambda: tensorflow_step()[0].numpy(), args.repeats)
    torch_ms = 1e3 * median_seconds(torch_step, args.repeats)
    print(f"| whole UNet (cpu preset) | {tf_ms:.0f} | {torch_ms:.0f} | {tf_ms / torch_ms:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
