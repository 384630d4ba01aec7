"""A hand-written PyTorch training loop for the twin: what `fit` and our callbacks do, by hand.

It trains `TorchUNet` on Fashion-MNIST read straight from the original .gz
files, with the project's recipe (epsilon loss at uniform t, Adam, EMA), and
writes what ddpm-keras writes: a per-epoch `metrics.json` and a checkpoint
that a re-run resumes from. docs/tensorflow_vs_pytorch.md compares the two.

    python benchmarks/torch_loop.py --manual-dir ../shared/data/fashion-mnist \
        --max-train-examples 512 --epochs 2 --output-dir artifacts/torch_loop
"""

from __future__ import annotations

import argparse
import copy
import gzip
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_twin import TorchNoiseSchedule, TorchUNet, training_loss  # noqa: E402


def read_images(manual_dir, max_examples):
    """Fashion-MNIST training images from the IDX file, as float32 NHWC in [-1, 1]."""
    with gzip.open(os.path.join(manual_dir, "train-images-idx3-ubyte.gz")) as file:
        pixels = np.frombuffer(file.read(), np.uint8, offset=16)
    images = pixels.reshape(-1, 28, 28, 1)[:max_examples]
    return torch.from_numpy(images.astype(np.float32) / 127.5 - 1.0)


def atomic_save(write, path):
    """Writes through `write(temporary_path)` and renames: a kill leaves the old file whole."""
    temporary = f"{path}.tmp"
    write(temporary)
    os.replace(temporary, path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manual-dir", required=True)
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--max-train-examples", type=int, default=60_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--ema-decay", type=float, default=0.995)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    os.makedirs(args.output_dir, exist_ok=True)
    images = read_images(args.manual_dir, args.max_train_examples)
    # The cpu preset's network.
    network = TorchUNet((28, 28, 1), 24, (1, 2, 2), 1, attention=True, norm_groups=8)
    ema_network = copy.deepcopy(network).requires_grad_(False)
    schedule = TorchNoiseSchedule("linear", 1000)
    optimizer = torch.optim.Adam(network.parameters(), lr=args.learning_rate, eps=1e-7)

    # Resume: everything fit's BackupAndRestore restores, saved and loaded by hand.
    checkpoint_path = os.path.join(args.output_dir, "checkpoint.pt")
    metrics_path = os.path.join(args.output_dir, "metrics.json")
    first_epoch, records = 0, []
    if os.path.exists(checkpoint_path):
        state = torch.load(checkpoint_path, weights_only=False)
        network.load_state_dict(state["network"])
        ema_network.load_state_dict(state["ema_network"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        first_epoch, records = state["epoch"], state["records"]
        print(f"Resumed after epoch {first_epoch}")

    steps_per_epoch = len(images) // args.batch_size
    for epoch in range(first_epoch, args.epochs):
        start, loss_sum = time.perf_counter(), 0.0
        order = torch.randperm(len(images))
        network.train()
        for step in range(steps_per_epoch):
            x_0 = images[order[step * args.batch_size : (step + 1) * args.batch_size]]
            t = torch.randint(0, schedule.timesteps, (len(x_0),))
            loss = training_loss(network, schedule, x_0, t, torch.randn_like(x_0))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            with torch.no_grad():  # EMA, as DiffusionModel._update_ema
                for ema_weight, weight in zip(
                    ema_network.parameters(), network.parameters(), strict=True
                ):
                    ema_weight.mul_(args.ema_decay).add_(weight, alpha=1 - args.ema_decay)
            loss_sum += loss.item()
            print(
                f"\repoch {epoch + 1}/{args.epochs} step {step + 1}/{steps_per_epoch} "
                f"loss {loss_sum / (step + 1):.4f}",
                end="",
                flush=True,
            )
        records.append(
            {
                "epoch": epoch + 1,
                "loss": loss_sum / steps_per_epoch,
                "learning_rate": optimizer.param_groups[0]["lr"],
                "time_s": round(time.perf_counter() - start, 3),
            }
        )
        print()
        atomic_save(
            lambda path: json.dump(records, open(path, "w"), indent=2),  # noqa: SIM115
            metrics_path,
        )
        state = {
            "network": network.state_dict(),
            "ema_network": ema_network.state_dict(),
            "optimizer": optimizer.state_dict(),
            "rng": torch.get_rng_state(),
            "epoch": epoch + 1,
            "records": records,
        }
        atomic_save(lambda path, state=state: torch.save(state, path), checkpoint_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
