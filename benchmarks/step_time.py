"""Training-step time of preset variants, to size a recipe to a wall-time budget.

Each variant is a preset plus train flags; all are built in one process and
timed in interleaved rounds (variant order reversed every round), on one
in-memory batch, so the machine's noise hits them alike. Prints the median
seconds per step of each and the steps that fit a budget.

    python benchmarks/step_time.py --budget-hours 2 \\
        --variant "--preset cpu" \\
        --variant "--preset cpu --attention-levels 1" \\
        --variant "--preset cpu --base-channels 32"
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def build(flags):
    import keras
    import numpy as np

    from ddpm_keras.cli import config_from_args, train_parser
    from ddpm_keras.model import build_model
    from ddpm_keras.training import build_optimizer

    config = config_from_args(train_parser().parse_args(flags))
    model = build_model(config, (28, 28, 1))
    model.compile(optimizer=build_optimizer(config, steps_per_epoch=1000))
    images = np.random.default_rng(0).uniform(-1, 1, (config.batch_size, 28, 28, 1))
    batch = keras.ops.convert_to_tensor(images.astype("float32"))
    model.make_train_function()
    return model, batch, model.network.count_params()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", action="append", required=True, help="train flags")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--budget-hours", type=float, default=2.0)
    args = parser.parse_args(argv)
    variants = [(text, *build(shlex.split(text))) for text in args.variant]
    times = {text: [] for text in args.variant}
    for _, model, batch, _ in variants:
        for _ in range(args.warmup):
            model.train_function(iter([batch]))
    for round_index in range(args.rounds):
        order = variants if round_index % 2 == 0 else variants[::-1]
        for text, model, batch, _ in order:
            start = time.perf_counter()
            for _ in range(args.steps):
                logs = model.train_function(iter([batch]))
            float(logs["loss"])  # waits for the last step
            times[text].append((time.perf_counter() - start) / args.steps)
    from ddpm_keras.machine import cpu_description

    print(f"CPU: {cpu_description()}; {args.rounds} rounds of {args.steps} steps")
    print(f"| variant | parameters | s / step (median) | steps in {args.budget_hours:g} h |")
    print("|---|---|---|---|")
    for text, _, _, parameters in variants:
        median = statistics.median(times[text])
        steps = int(args.budget_hours * 3600 / median)
        print(f"| `{text}` | {parameters:,} | {median:.3f} | {steps:,} |")


if __name__ == "__main__":
    main()
