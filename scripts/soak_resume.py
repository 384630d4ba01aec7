"""Soak test of resuming: kill -9 a training run at many moments, resume each, check.

Each trial starts a fresh run in its own output directory, kills it with
SIGKILL, then re-runs the same command to the end and checks that the run
took the optimizer steps of an uninterrupted run and recorded every epoch
once in `metrics.json` and `history.csv`.

- By default the kills come at random moments (uniform over the length of an
  uninterrupted run, which is timed first).
- `--all-write-points` instead kills once at every write point of the run
  (each atomic write, before and after its rename; see
  `ddpm_keras.files.FAULT_VARIABLE`).

Not part of the test suite (it takes tens of minutes). Example, with the
smoke preset on Fashion-MNIST:

    python scripts/soak_resume.py --kills 30 -- --preset smoke \\
        --manual-dir ../shared/data/fashion-mnist
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from ddpm_keras.files import FAULT_TRACE_VARIABLE, FAULT_VARIABLE


def train(flags, output_dir, env=None, kill_after=None):
    """Runs ddpm-train; with `kill_after`, sends SIGKILL after that many seconds."""
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train.py")
    command = [sys.executable, script, *flags, "--output-dir", output_dir]
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **(env or {}))
    with open(os.path.join(os.path.dirname(output_dir), "log.txt"), "a") as log:
        process = subprocess.Popen(command, env=environment, stdout=log, stderr=log)
        if kill_after is not None:
            try:
                process.wait(timeout=kill_after)
            except subprocess.TimeoutExpired:
                process.send_signal(signal.SIGKILL)
        return process.wait()


def check_run(output_dir, expected_steps, epochs):
    """A list of what is wrong with a finished run (empty: all good)."""
    problems = []
    try:
        from ddpm_keras.model import load_diffusion_model

        model = load_diffusion_model(os.path.join(output_dir, "model.keras"))
        steps = int(model.optimizer.iterations.numpy())
        if steps != expected_steps:
            problems.append(f"{steps} optimizer steps, not {expected_steps}")
    except Exception as error:
        problems.append(f"model.keras: {type(error).__name__}: {error}")
    try:
        with open(os.path.join(output_dir, "metrics.json")) as file:
            metrics_epochs = [record["epoch"] for record in json.load(file)]
        with open(os.path.join(output_dir, "history.csv"), newline="") as file:
            history_epochs = [int(row["epoch"]) for row in csv.DictReader(file)]
        for name, recorded in (("metrics.json", metrics_epochs), ("history.csv", history_epochs)):
            if recorded != list(range(1, epochs + 1)):
                problems.append(f"{name} epochs {recorded}")
    except Exception as error:
        problems.append(f"records: {type(error).__name__}: {error}")
    return problems


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=30, help="random-moment trials")
    parser.add_argument("--all-write-points", action="store_true")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--work-dir", help="default: a new temporary directory")
    parser.add_argument("--report", help="also write the summary as JSON here")
    parser.add_argument("flags", nargs="*", help="ddpm-train flags, after --")
    args = parser.parse_args(argv)
    work_dir = args.work_dir or tempfile.mkdtemp(prefix="soak_resume_")

    # The uninterrupted run: its length, step count, epochs and write points.
    reference = os.path.join(work_dir, "reference", "run")
    os.makedirs(os.path.dirname(reference), exist_ok=True)
    trace = os.path.join(work_dir, "reference", "writes.tsv")
    start = time.perf_counter()
    if train(args.flags, reference, env={FAULT_TRACE_VARIABLE: trace}) != 0:
        sys.exit(f"The uninterrupted run failed; see {os.path.dirname(reference)}/log.txt")
    duration = time.perf_counter() - start
    from ddpm_keras.model import load_diffusion_model

    with open(os.path.join(reference, "config.json")) as file:
        epochs = json.load(file)["epochs"]
    model = load_diffusion_model(os.path.join(reference, "model.keras"))
    expected_steps = int(model.optimizer.iterations.numpy())
    with open(trace) as file:
        points = [line.split("\t", 1)[1].strip() for line in file]
    print(
        f"Uninterrupted: {duration:.1f} s, {epochs} epochs, {expected_steps} steps, "
        f"{len(points)} write points. Work dir: {work_dir}",
        flush=True,
    )

    if args.all_write_points:
        trials = [(f"kill at write point {n} ({point})", {"env": {FAULT_VARIABLE: f"kill@{n}"}})
                  for n, point in enumerate(points, 1)]  # fmt: skip
    else:
        rng = random.Random(args.seed)
        moments = sorted(rng.uniform(0.5, duration) for _ in range(args.kills))
        trials = [(f"kill after {moment:.2f} s", {"kill_after": moment}) for moment in moments]

    failures = []
    for index, (label, kill) in enumerate(trials, 1):
        output_dir = os.path.join(work_dir, f"trial_{index:03d}", "run")
        os.makedirs(os.path.dirname(output_dir))
        code = train(args.flags, output_dir, **kill)
        killed = code == -signal.SIGKILL
        resumed = train(args.flags, output_dir)
        problems = [] if resumed == 0 else [f"resume exited with {resumed}"]
        problems += check_run(output_dir, expected_steps, epochs) if resumed == 0 else []
        status = "ok" if not problems else "FAILED: " + "; ".join(problems)
        note = "" if killed else f" (the run ended by itself, exit {code}, before the kill)"
        print(f"[{index}/{len(trials)}] {label}{note}: {status}", flush=True)
        if problems:
            failures.append({"trial": index, "kill": label, "problems": problems})
        else:
            shutil.rmtree(os.path.dirname(output_dir))

    summary = {
        "trials": len(trials),
        "resumed": len(trials) - len(failures),
        "expected_steps": expected_steps,
        "epochs": epochs,
        "write_points": len(points),
        "failures": failures,
        "flags": args.flags,
    }
    print(
        f"{summary['resumed']} of {summary['trials']} resumed to {expected_steps} steps "
        "with every epoch recorded once."
    )
    if args.report:
        with open(args.report, "w") as file:
            json.dump(summary, file, indent=2)
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
