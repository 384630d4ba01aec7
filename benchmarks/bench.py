"""Training-step and sampling throughput of the project's UNet, per variant.

Each variant (precision x XLA) runs in a fresh Python process, so that its
peak resident memory is its own and one variant's compiled graphs cannot
speed up another. Data are synthetic and in memory: this measures the model,
not the input pipeline.

    python benchmarks/bench.py                       # cpu preset, all variants
    python benchmarks/bench.py --steps 30 --precisions float32 mixed_bfloat16
    python benchmarks/bench.py --smoke               # seconds; what CI runs

Prints a Markdown table and writes it, with the raw numbers, as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu", help="network and batch of this preset")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--sample-images", type=int, default=64)
    parser.add_argument("--sample-steps", type=int, default=50, help="DDIM steps")
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    parser.add_argument("--jit-compile", nargs="+", default=["false", "true"])
    parser.add_argument("--output", default="benchmark_results.json")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script runs")
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # internal: one child run
    args = parser.parse_args(argv)
    if args.smoke:
        args.preset, args.steps, args.warmup = "smoke", 2, 1
        args.sample_images, args.sample_steps = 4, 2
        args.precisions, args.jit_compile = ["float32"], ["false"]
    for name in ("steps", "warmup", "sample_images", "sample_steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def measure_variant(args, precision, jit_compile):
    """Runs in the child process: times training steps and one DDIM sampling."""
    import keras
    import numpy as np
    import tensorflow as tf

    from ddpm_keras.config import get_config
    from ddpm_keras.model import build_model

    config = get_config(args.preset, precision=precision, jit_compile=jit_compile)
    keras.utils.set_random_seed(0)
    image_shape = (28, 28, 1)
    model = build_model(config, image_shape)
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate), jit_compile=jit_compile)
    images = np.random.default_rng(0).uniform(-1, 1, (config.batch_size,) + image_shape)
    dataset = tf.data.Dataset.from_tensors(images.astype("float32")).repeat()

    step_ends = []

    class StepTimer(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            step_ends.append(time.perf_counter())

    start = time.perf_counter()
    model.fit(
        dataset,
        steps_per_epoch=args.warmup + args.steps,
        epochs=1,
        verbose=0,
        callbacks=[StepTimer()],
    )
    first_step = step_ends[0] - start  # tracing (and XLA compilation) included
    step_times = np.diff(step_ends[args.warmup - 1 :])

    model.generate(args.sample_images, steps=args.sample_steps, seed=0)  # compile once
    start = time.perf_counter()
    model.generate(args.sample_images, steps=args.sample_steps, seed=1)
    sampling_seconds = time.perf_counter() - start
    return {
        "precision": precision,
        "jit_compile": jit_compile,
        "batch_size": config.batch_size,
        "parameters": model.network.count_params(),
        "first_step_s": first_step,
        "step_s_median": statistics.median(step_times),
        "step_s_min": float(min(step_times)),
        "step_s_max": float(max(step_times)),
        "train_images_per_s": config.batch_size / statistics.median(step_times),
        "ddim_images_per_s": args.sample_images / sampling_seconds,
        # Linux reports ru_maxrss in KiB.
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def run_child(precision, jit_compile, argv):
    command = [sys.executable, __file__, *argv, "--variant", f"{precision},{jit_compile}"]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.stderr.write(result.stderr[-3000:])
        raise SystemExit(f"variant {precision}, jit_compile={jit_compile} failed")
    return json.loads(result.stdout.strip().splitlines()[-1])


def markdown_table(results):
    lines = [
        "| precision | XLA | train img/s | step s (median, min-max) | first step s "
        "| DDIM img/s | peak RSS MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['precision']} | {'on' if r['jit_compile'] else 'off'} "
            f"| {r['train_images_per_s']:.1f} "
            f"| {r['step_s_median']:.3f} ({r['step_s_min']:.3f}-{r['step_s_max']:.3f}) "
            f"| {r['first_step_s']:.1f} | {r['ddim_images_per_s']:.1f} "
            f"| {r['peak_rss_mib']:.0f} |"
        )
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.variant:
        precision, jit_compile = args.variant.split(",")
        print(json.dumps(measure_variant(args, precision, jit_compile == "True")))
        return 0
    results = []
    for precision in args.precisions:
        for jit in args.jit_compile:
            results.append(run_child(precision, jit.lower() == "true", argv))
            print(markdown_table(results[-1:]).splitlines()[-1], flush=True)
    table = markdown_table(results)
    print(f"\n{args.preset} preset, {args.steps} timed steps; {platform.processor() or ''}")
    print(f"{os.cpu_count()} CPUs\n\n{table}")
    from ddpm_keras.files import write_json

    write_json(args.output, {"args": vars(args), "results": results, "table": table})
    return 0


if __name__ == "__main__":
    sys.exit(main())
