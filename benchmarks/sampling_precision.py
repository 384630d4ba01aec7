"""Does 16-bit sampling cost quality? FID of one trained model sampled in float32 and in 16 bits.

The run's model is sampled twice with the same seed, so the same starting
noise: once as saved (float32), once rebuilt under a 16-bit dtype policy with
the same weights. Both sets are scored with the committed `fmnist` features
against the Fashion-MNIST test split, with the wall time of each.

    python benchmarks/sampling_precision.py --run-dir runs/cpu \
        --manual-dir ../shared/data/fashion-mnist --num-samples 2000

Writes `<output>` (JSON) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", required=True, help="a training run: config.json, model.keras")
    parser.add_argument(
        "--policy",
        default="mixed_bfloat16",
        choices=("mixed_bfloat16", "mixed_float16"),
        help="the 16-bit dtype policy",
    )
    parser.add_argument("--settings", nargs="+", default=["ddim:50"], help="SAMPLER:STEPS")
    parser.add_argument("--num-samples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--manual-dir", help="default: the run's")
    parser.add_argument("--data-dir", help="default: the run's")
    parser.add_argument("--output", default="sampling_precision.json")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from ddpm_keras.config import DiffusionConfig
    from ddpm_keras.data import load_split_arrays
    from ddpm_keras.evaluation import evaluate_model, markdown_table
    from ddpm_keras.features import get_feature_extractor
    from ddpm_keras.files import write_json
    from ddpm_keras.model import build_model, load_diffusion_model
    from ddpm_keras.pipeline import SamplingSettings
    from ddpm_keras.run_dir import recorded_config

    recorded = recorded_config(args.run_dir)
    if recorded is None:
        raise SystemExit(f"No config.json in {args.run_dir}: not a training run's directory")
    config = DiffusionConfig(**recorded)
    saved = load_diffusion_model(os.path.join(args.run_dir, "model.keras"))
    models = {}
    for policy in ("float32", args.policy):
        model = build_model(config.replace(precision=policy), saved.image_shape, saved.class_names)
        model.network.set_weights(saved.network.get_weights())
        model.ema_network.set_weights(saved.ema_network.get_weights())
        models[policy] = model

    reference, _, _ = load_split_arrays(
        config.dataset,
        "test",
        args.data_dir or config.data_dir,
        args.manual_dir or config.manual_dir,
    )
    reference = (reference + 1.0) / 2.0  # [-1, 1] -> [0, 1], what the extractor takes
    extractor = get_feature_extractor("fmnist", saved.image_shape)
    settings = [SamplingSettings.parse(text, seed=args.seed) for text in args.settings]
    report = {"args": vars(args), "rows": {}}
    for policy, model in models.items():
        print(f"Sampling under {policy} ...", flush=True)
        rows = evaluate_model(
            model, extractor, reference, settings, args.num_samples, seed=args.seed
        )
        report["rows"][policy] = rows
        table = markdown_table(rows, "fmnist", f"{config.dataset} test")
        print(f"\n{policy}\n{table}\n", flush=True)
    write_json(args.output, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
