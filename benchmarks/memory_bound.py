"""What the UNet's memory-bound layers cost, and what each way of fusing GroupNorm saves.

Part 1 times forward + backward of GroupNorm alone at the `cpu` preset's
shapes (batch 64), for each candidate implementation, with its largest
difference from the current one. Part 2 times the whole UNet's forward +
backward, with the variants interleaved in one process (each repeat runs
every variant once, in alternating order) so that the machine's drift hits
them alike:

- `current`: the UNet as `ddpm_keras.unet` builds it;
- `autodiff GroupNorm`: GroupNorm's forward as now, its gradient by
  automatic differentiation;
- `no GroupNorm`, `no SiLU`, `neither`: those layers replaced by the
  identity, which bounds what any faster kernel for them could save (the
  SiLUs of the residual blocks and the output; the timestep MLP's swish
  stays, it is tiny).

    python benchmarks/memory_bound.py
    python benchmarks/memory_bound.py --repeats 30 --part 2

BENCHMARKS.md quotes its output.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import ddpm_keras  # noqa: E402, F401, I001 (first: it sets TensorFlow's CPU options)
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from ddpm_keras import unet  # noqa: E402
from ddpm_keras.config import get_config  # noqa: E402

BATCH = 64
GROUPS = 8
SHAPES = [(BATCH, 28, 28, 24), (BATCH, 14, 14, 48), (BATCH, 7, 7, 48), (BATCH, 28, 28, 48)]


def autodiff_group_norm(features, gamma, beta, groups, epsilon):
    """GroupNorm's forward as `unet.group_norm`, differentiated automatically."""
    centered = features - unet._group_means(tf.reduce_mean(features, axis=(1, 2)), groups)
    variance = unet._group_means(tf.reduce_mean(tf.square(centered), axis=(1, 2)), groups)
    return centered * (tf.math.rsqrt(variance + epsilon) * gamma) + beta


def fused_batch_norm_group_norm(features, gamma, beta, groups, epsilon):
    """GroupNorm through one `FusedBatchNormV3` kernel on a `[1, HW, C/G, B*G]` view.

    Batch norm normalizes each channel over N, H and W; transposing so that
    each (sample, group) pair is one channel turns it into group norm. The
    transposes there and back are two extra passes.
    """
    batch, height, width, channels = features.shape
    per_group = channels // groups
    view = tf.reshape(features, (batch, height * width, groups, per_group))
    view = tf.reshape(tf.transpose(view, (1, 3, 0, 2)), (1, height * width, per_group, -1))
    ones = tf.ones((batch * groups,))
    zeros = tf.zeros((batch * groups,))
    normed, _, _ = tf.compat.v1.nn.fused_batch_norm(
        view, ones, zeros, epsilon=epsilon, data_format="NHWC", is_training=True
    )
    normed = tf.reshape(normed, (height * width, per_group, batch, groups))
    normed = tf.reshape(tf.transpose(normed, (2, 0, 3, 1)), (batch, height, width, channels))
    return normed * gamma + beta


def xla_group_norm(features, gamma, beta, groups, epsilon):
    """The current GroupNorm compiled by XLA on its own (convolutions stay outside)."""
    return _xla_group_norm(features, gamma, beta, groups=groups, epsilon=epsilon)


_xla_group_norm = tf.function(unet.group_norm, jit_compile=True)


def xla_group_norm_silu(features, gamma, beta, groups, epsilon):
    """GroupNorm and the SiLU after it as one XLA cluster."""
    return _xla_pair(features, gamma, beta, groups=groups, epsilon=epsilon)


_xla_pair = tf.function(
    lambda features, gamma, beta, groups, epsilon: tf.nn.silu(
        unet.group_norm(features, gamma, beta, groups, epsilon)
    ),
    jit_compile=True,
)

CANDIDATES = {
    "current (written-out gradient)": unet.group_norm,
    "autodiff gradient": autodiff_group_norm,
    "FusedBatchNormV3 view": fused_batch_norm_group_norm,
    "XLA GroupNorm": xla_group_norm,
}


def median_ms(function, repeats):
    function()
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def layer_step(function, features, gamma, beta, upstream):
    """Forward + backward of one normalization, as a compiled function."""

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            tape.watch([features, gamma, beta])
            loss = tf.reduce_sum(function(features, gamma, beta, GROUPS, 1e-5) * upstream)
        return tape.gradient(loss, [features, gamma, beta])

    return lambda: step()[0].numpy()


def part_one(repeats):
    rng = np.random.default_rng(0)
    names = [*CANDIDATES, "XLA GroupNorm + SiLU", "SiLU alone"]
    print(f"GroupNorm forward + backward, batch {BATCH}, median of {repeats}, ms")
    print("| shape | " + " | ".join(names) + " |\n" + "|---" * (len(names) + 1) + "|")
    for shape in SHAPES:
        features = tf.constant(1.0 + 3.0 * rng.standard_normal(shape), tf.float32)
        upstream = tf.constant(rng.standard_normal(shape), tf.float32)
        gamma = tf.constant(1.0 + rng.standard_normal(shape[-1]), tf.float32)
        beta = tf.constant(rng.standard_normal(shape[-1]), tf.float32)
        reference = unet.group_norm(features, gamma, beta, GROUPS, 1e-5)
        cells = []
        for function in CANDIDATES.values():
            error = float(
                tf.reduce_max(tf.abs(function(features, gamma, beta, GROUPS, 1e-5) - reference))
            )
            milliseconds = median_ms(layer_step(function, features, gamma, beta, upstream), repeats)
            cells.append(f"{milliseconds:.2f} ({error:.0e})")
        for function in (xla_group_norm_silu, lambda f, g, b, groups, epsilon: tf.nn.silu(f)):
            cells.append(
                f"{median_ms(layer_step(function, features, gamma, beta, upstream), repeats):.2f}"
            )
        print(f"| {'x'.join(map(str, shape[1:]))} | " + " | ".join(cells) + " |", flush=True)
    print("(in brackets: largest difference of the output from the current implementation)\n")


def whole_unet_steps():
    """One compiled forward + backward of the `cpu` preset's UNet per variant."""
    config = get_config("cpu")
    images = tf.random.normal((BATCH, 28, 28, 1), seed=0)
    timesteps = tf.random.uniform((BATCH,), 0, config.timesteps, tf.int32, seed=0)
    variants = {
        "current": {},
        "autodiff GroupNorm": {"group_norm": autodiff_group_norm},
        "no GroupNorm": {"group_norm": lambda features, gamma, beta, groups, epsilon: features},
        "no SiLU": {"silu": lambda features: features},
        "neither": {
            "group_norm": lambda features, gamma, beta, groups, epsilon: features,
            "silu": lambda features: features,
        },
    }
    steps = {}
    originals = {"group_norm": unet.group_norm, "silu": unet.ops.silu}
    for name, replacements in variants.items():
        network = unet.build_unet(
            (28, 28, 1),
            config.base_channels,
            config.channel_multipliers,
            config.num_res_blocks,
            config.attention,
            config.norm_groups,
        )
        if "silu" in replacements:
            network.get_layer("swish_out").activation = replacements["silu"]

        @tf.function
        def step(network=network):
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.square(network([images, timesteps], training=True)))
            return tape.gradient(loss, network.trainable_weights)

        # The replacements apply while the step is traced, so only to this
        # network. `unet.ops` is keras.ops itself: the patch is global until
        # restored.
        unet.group_norm = replacements.get("group_norm", originals["group_norm"])
        unet.ops.silu = replacements.get("silu", originals["silu"])
        try:
            step()[0].numpy()
        finally:
            unet.group_norm, unet.ops.silu = originals["group_norm"], originals["silu"]
        steps[name] = lambda step=step: step()[0].numpy()
    return steps


def part_two(repeats):
    steps = whole_unet_steps()
    times = {name: [] for name in steps}
    for step in steps.values():
        step()
    for repeat in range(repeats):
        order = list(steps) if repeat % 2 == 0 else list(steps)[::-1]
        for name in order:
            start = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - start)
    current = times["current"]
    print(
        f"Whole UNet (cpu preset) forward + backward, batch {BATCH}, {repeats} interleaved repeats"
    )
    print(
        "| variant | median ms | min ms | median per-repeat ratio to current |\n|---|---|---|---|"
    )
    for name, values in times.items():
        ratio = statistics.median(v / c for v, c in zip(values, current, strict=True))
        print(
            f"| {name} | {1e3 * statistics.median(values):.1f} | {1e3 * min(values):.1f} | {ratio:.3f} |"
        )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--part", type=int, choices=(1, 2), help="only this part")
    args = parser.parse_args(argv)
    if args.part in (None, 1):
        part_one(args.repeats)
    if args.part in (None, 2):
        part_two(args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
