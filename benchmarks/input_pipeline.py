"""How fast each input pipeline feeds the model: images per second, against the training step.

Times, in one process:

- the two passes that decode an image folder once (`scan_images`, then
  `decode_images`: crop, resize, convert);
- one epoch of training batches from the folder's decoded images in memory,
  and from the same images in a cache file (a memory map);
- one epoch of the TFDS Fashion-MNIST pipeline of the `cpu` preset (its
  first epoch decodes and caches, later ones read the cache; both are timed).

Each epoch is iterated to the end, batches touched (`.numpy()`), as `fit`
would. Compare with the training step: the `cpu` preset's step takes a
batch of 64 in about half a second on 2 cores (BENCHMARKS.md), i.e. about
120 images per second.

    python scripts/export_image_folder.py --manual-dir ../shared/data/fashion-mnist \
        --image-size 32 --per-class 2000 --output ../fashion-mnist-png32
    python benchmarks/input_pipeline.py --image-dir ../fashion-mnist-png32 \
        --manual-dir ../shared/data/fashion-mnist

BENCHMARKS.md quotes its output.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import ddpm_keras  # noqa: E402, F401, I001 (first: it sets TensorFlow's CPU options)
import numpy as np  # noqa: E402

from ddpm_keras.config import get_config  # noqa: E402
from ddpm_keras.data import array_datasets, load_dataset  # noqa: E402
from ddpm_keras.image_folder import (  # noqa: E402
    decode_folder,
    decode_images,
    find_images,
    scan_images,
    target_shape,
)


def images_per_second(dataset):
    """Iterates one epoch; returns (images, seconds)."""
    start, count = time.perf_counter(), 0
    for batch in dataset:
        images = batch[0] if isinstance(batch, tuple) else batch
        count += int(images.numpy().shape[0])
    return count, time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-dir", required=True)
    parser.add_argument("--manual-dir", help="Fashion-MNIST's original files, for the TFDS row")
    parser.add_argument("--data-dir", help="TFDS data directory")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--output", help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    rows = []

    def report(name, count, seconds):
        rows.append({"pipeline": name, "images": count, "seconds": seconds})
        print(f"{name}: {count} images in {seconds:.2f} s, {count / seconds:,.0f} images/s")

    paths = list(find_images(args.image_dir).paths)
    start = time.perf_counter()
    scan = scan_images(paths, show_progress=False)
    report("scan (decode, size and colour)", len(paths), time.perf_counter() - start)
    shape = target_shape(scan, None, None)
    decoded = np.empty((len(paths), *shape), np.uint8)
    start = time.perf_counter()
    decode_images(paths, shape, decoded, show_progress=False)
    report(f"decode to {shape[0]}x{shape[1]}x{shape[2]}", len(paths), time.perf_counter() - start)

    rows_all = np.arange(len(paths))
    train_ds, _ = array_datasets(decoded, None, rows_all, rows_all[:1], args.batch_size, 0)
    report("folder, epoch from memory", *images_per_second(train_ds))
    with tempfile.TemporaryDirectory() as cache_dir:
        on_disk = decode_folder(paths, memory_cache_mb=0, cache_dir=cache_dir, show_progress=False)
        train_ds, _ = array_datasets(
            on_disk.images, None, rows_all, rows_all[:1], args.batch_size, 0
        )
        report("folder, epoch from the cache file", *images_per_second(train_ds))
    if args.manual_dir:
        config = get_config(
            "cpu", manual_dir=args.manual_dir, data_dir=args.data_dir, batch_size=args.batch_size
        )
        train_ds, _, _ = load_dataset(config)
        report("TFDS fashion_mnist, first epoch (decode + cache)", *images_per_second(train_ds))
        report("TFDS fashion_mnist, next epoch (from its cache)", *images_per_second(train_ds))
    if args.output:
        with open(args.output, "w") as file:
            json.dump(rows, file, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
