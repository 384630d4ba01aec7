"""Exports a TFDS image dataset to a folder of PNG files, one subfolder per class.

    python scripts/export_image_folder.py --dataset fashion_mnist --split train \
        --manual-dir ../shared/data/fashion-mnist --image-size 32 --per-class 2000 \
        --output ../fashion-mnist-png

gives DIR/<class name>/<index>.png (a "/" in a class name becomes "_"), a
folder `ddpm-train --image-dir DIR` trains on. Images are cropped and resized
as `--image-size` does in training (antialiased). Existing files are kept, so
an interrupted export continues where it stopped.
"""

import argparse
import os
import sys

import numpy as np
from PIL import Image

import ddpm_keras  # noqa: F401  (first: TensorFlow's CPU settings)
from ddpm_keras.checks import Integer
from ddpm_keras.data import load_split_arrays


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion_mnist", help="TFDS dataset")
    parser.add_argument("--split", default="train")
    parser.add_argument("--manual-dir", help="folder of the dataset's original files (offline)")
    parser.add_argument("--data-dir", help="TFDS data directory")
    parser.add_argument("--image-size", type=int, nargs="+", help="N or H W (default: as stored)")
    parser.add_argument(
        "--per-class", type=int, help="the first N images of each class (default: all)"
    )
    parser.add_argument("--output", required=True, help="the folder to write")
    args = parser.parse_args(argv)
    Integer(1, optional=True).check("per_class", args.per_class)
    image_size = None if args.image_size is None else (args.image_size * 2)[:2]
    images, labels, names = load_split_arrays(
        args.dataset, args.split, args.data_dir, args.manual_dir, image_size=image_size
    )
    if labels is None:
        labels, names = np.zeros(len(images), np.int64), None
    pixels = np.round((images + 1.0) * 127.5).astype(np.uint8)
    written = kept = 0
    for label in np.unique(labels):
        folder = (
            args.output
            if names is None
            else os.path.join(args.output, names[label].replace("/", "_"))
        )
        os.makedirs(folder, exist_ok=True)
        indices = np.flatnonzero(labels == label)[: args.per_class]
        for index in indices:
            path = os.path.join(folder, f"{index:05d}.png")
            if os.path.exists(path):
                kept += 1
                continue
            temporary = os.path.join(folder, f".{index:05d}.tmp.png")
            Image.fromarray(
                pixels[index].squeeze(-1) if pixels.shape[-1] == 1 else pixels[index]
            ).save(temporary)
            os.replace(temporary, path)
            written += 1
    print(f"Wrote {written} PNG files to {args.output} ({kept} were there already).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
