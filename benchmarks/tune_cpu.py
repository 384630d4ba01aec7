"""Recipe trials for the `cpu` preset: train under one budget, score by FID.

Each trial trains `scripts/train.py --preset cpu` with some flags changed,
then scores the saved model with `scripts/evaluate.py` (fmnist features,
Fashion-MNIST test split). Trials run one after another, never side by side,
so that each has both cores. Everything a trial did goes to
`<root>/<name>/trial.json`; `--summarize` prints the Markdown table of all
trials under `<root>`, as in BENCHMARKS.md.

    python benchmarks/tune_cpu.py --root runs/tune --name lr2e-3-cosine \\
        --manual-dir ../shared/data/fashion-mnist -- \\
        --epochs 4 --learning-rate 2e-3 --learning-rate-schedule cosine
    python benchmarks/tune_cpu.py --root runs/tune --summarize
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_SETTINGS = ("ddim:25", "ddim:50")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", required=True, help="folder holding one subfolder per trial")
    parser.add_argument("--name", help="trial name (its subfolder)")
    parser.add_argument("--manual-dir", help="folder of the Fashion-MNIST .gz files (offline)")
    parser.add_argument("--data-dir", help="TFDS data directory")
    parser.add_argument("--settings", nargs="+", default=list(DEFAULT_SETTINGS))
    parser.add_argument("--num-samples", type=int, default=256, help="samples per FID row")
    parser.add_argument("--summarize", action="store_true", help="print the table and exit")
    parser.add_argument("train_flags", nargs=argparse.REMAINDER, help="-- then train.py flags")
    args = parser.parse_args(argv)
    if args.train_flags[:1] == ["--"]:
        args.train_flags = args.train_flags[1:]
    if not args.summarize and not args.name:
        parser.error("--name is required unless --summarize is given")
    return args


def run(command):
    """Runs a command with the repository on PYTHONPATH; returns its wall time."""
    env = dict(os.environ, PYTHONPATH=REPO)
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env)
    return time.perf_counter() - start


def run_trial(args):
    trial_dir = os.path.join(args.root, args.name)
    data_flags = []
    if args.manual_dir:
        data_flags += ["--manual-dir", args.manual_dir]
    if args.data_dir:
        data_flags += ["--data-dir", args.data_dir]
    train_command = [
        sys.executable,
        os.path.join(REPO, "scripts", "train.py"),
        "--preset",
        "cpu",
        "--output-dir",
        trial_dir,
        *data_flags,
        *args.train_flags,
    ]
    train_seconds = run(train_command)
    evaluation_dir = os.path.join(trial_dir, "evaluation")
    evaluate_seconds = run(
        [
            sys.executable,
            os.path.join(REPO, "scripts", "evaluate.py"),
            "--model",
            os.path.join(trial_dir, "model.keras"),
            "--num-samples",
            str(args.num_samples),
            "--floor-split",
            "none",
            "--settings",
            *args.settings,
            "--output-dir",
            evaluation_dir,
            *data_flags,
        ]
    )
    with open(os.path.join(trial_dir, "metrics.json")) as f:
        epochs = json.load(f)
    with open(os.path.join(evaluation_dir, "evaluation.json")) as f:
        evaluation = json.load(f)
    record = {
        "name": args.name,
        "train_flags": args.train_flags,
        "train_command_s": round(train_seconds, 1),
        "epoch_time_s": sum(e["time_s"] for e in epochs),
        "final_loss": epochs[-1].get("loss"),
        "final_val_loss": epochs[-1].get("val_loss"),
        "evaluate_command_s": round(evaluate_seconds, 1),
        "num_samples": args.num_samples,
        "rows": evaluation["rows"],
    }
    with open(os.path.join(trial_dir, "trial.json"), "w") as f:
        json.dump(record, f, indent=2)
    print(json.dumps(record, indent=2))


def _setting(row):
    return f"{row['sampler']}:{row['steps']}"


def summarize(root):
    trials = []
    for path in sorted(glob.glob(os.path.join(root, "*", "trial.json"))):
        with open(path) as f:
            trials.append(json.load(f))
    if not trials:
        raise SystemExit(f"No trial.json under {root}")
    settings = [_setting(row) for row in trials[0]["rows"]]
    header = ["trial", "flags", "train min", "val loss"] + [f"FID {s}" for s in settings]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for trial in trials:
        fids = {_setting(row): row["fid"] for row in trial["rows"]}
        cells = [
            trial["name"],
            "`" + " ".join(trial["train_flags"]) + "`",
            f"{trial['epoch_time_s'] / 60:.1f}",
            f"{trial['final_val_loss']:.4f}",
        ] + [f"{fids[s]:.2f}" if s in fids else "-" for s in settings]
        lines.append("| " + " | ".join(cells) + " |")
    print("\n".join(lines))


def main(argv=None):
    args = parse_args(argv)
    if args.summarize:
        summarize(args.root)
    else:
        run_trial(args)


if __name__ == "__main__":
    main()
