"""Training on a folder of images: find them, check the layout, decode once, cache, split.

    DIR/cat/0001.png, DIR/dog/0002.jpg, ...   labelled: one subfolder per class
    DIR/0001.png, DIR/0002.jpg, ...           unlabelled: a flat folder

The images are decoded with `tf.io.decode_image` in a `tf.data` pipeline,
once per run, not with `keras.utils.image_dataset_from_directory`: that
loader decodes every file again every epoch, so a corrupt file stops training
mid-epoch, and with inferred labels it silently ignores images at the top
level. Here a first pass (`scan_images`) decodes every file, names and skips
the unreadable ones and collects sizes and colour, so a mixed layout or mixed
sizes are refused before any training; a second pass (`decode_images`) crops,
resizes and converts each image and writes it as uint8 to one array, in
memory or in a file (`open_cache`). Training batches then gather rows of that
array: no decoding during training.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import math
import os

import numpy as np
import tensorflow as tf

from ddpm_keras.errors import ConfigError, DataUnavailableError
from ddpm_keras.files import atomic_path, check_free_space, write_json
from ddpm_keras.transforms import fit_image

IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")
# Bump when the decoded bytes of a file would change, so old caches are not reused.
CACHE_FORMAT = 1


@dataclasses.dataclass(frozen=True)
class ImageFiles:
    """The images of a folder, in a fixed order (sorted by path).

    Attributes:
        root: The folder.
        paths: The image files under it, sorted by their path below `root`.
        labels: int32 class id per path, for a labelled folder (`None`: flat).
        class_names: The class subfolders' names, sorted (`None`: flat).
    """

    root: str
    paths: tuple[str, ...]
    labels: np.ndarray | None
    class_names: tuple[str, ...] | None


def _is_image(name):
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def _images_below(folder):
    """Image files under `folder`, recursively, skipping hidden files and folders; sorted."""
    found = []
    for directory, subfolders, names in os.walk(folder, followlinks=True):
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
        found.extend(os.path.join(directory, name) for name in sorted(names) if _is_image(name))
    return sorted(found, key=lambda path: os.path.relpath(path, folder))


def find_images(image_dir) -> ImageFiles:
    """The images under `image_dir` and, from class subfolders, their labels.

    Raises:
        DataUnavailableError: the folder does not exist.
        ConfigError: it is a file, holds no images, mixes images at its top
            level with class subfolders, or has a class subfolder without images.
    """
    received = f"Received: image_dir={image_dir!r}"
    if os.path.isfile(image_dir):
        raise ConfigError(f"`image_dir` is a file; it must be a folder of images. {received}")
    if not os.path.isdir(image_dir):
        raise DataUnavailableError(f"`image_dir` does not exist. {received}")
    entries = sorted(name for name in os.listdir(image_dir) if not name.startswith("."))
    top_images = [name for name in entries if _is_image(name)]
    subfolders = [name for name in entries if os.path.isdir(os.path.join(image_dir, name))]
    per_class = {name: _images_below(os.path.join(image_dir, name)) for name in subfolders}
    nested = sum(len(paths) for paths in per_class.values())
    if not top_images and not nested:
        raise ConfigError(
            "`image_dir` holds no images (PNG, JPEG, BMP or GIF, found recursively). " + received
        )
    if top_images and nested:
        with_images = [name for name, paths in per_class.items() if paths]
        raise ConfigError(
            f"`image_dir` mixes the two layouts: {len(top_images)} images at its top level "
            f"and {nested} in subfolders ({', '.join(with_images[:5])}"
            f"{', ...' if len(with_images) > 5 else ''}). Put every image in a class "
            "subfolder (labelled), or every image at the top level (unlabelled). " + received
        )
    if top_images:
        paths = tuple(os.path.join(image_dir, name) for name in top_images)
        return ImageFiles(image_dir, paths, None, None)
    empty = [name for name, paths in per_class.items() if not paths]
    if empty:
        raise ConfigError(
            f"Every class subfolder of `image_dir` must hold images; {', '.join(empty)} "
            "holds none. Remove it or add its images. " + received
        )
    paths, labels = [], []
    for label, name in enumerate(subfolders):
        paths.extend(per_class[name])
        labels.extend([label] * len(per_class[name]))
    return ImageFiles(image_dir, tuple(paths), np.asarray(labels, np.int32), tuple(subfolders))


def holdout_split(num_images, val_fraction, batch_size, seed):
    """Train and validation indices: a seeded permutation, `val_fraction` held out.

    The validation share is at least one batch; the same arguments give the
    same split, so a resumed run holds out the same images.

    Returns:
        `(train_indices, val_indices)`, each sorted.

    Raises:
        ConfigError: too few images for a training batch and a validation batch.
    """
    num_val = max(math.ceil(num_images * val_fraction), batch_size)
    if num_images - num_val < batch_size:
        raise ConfigError(
            f"{num_images} images: too few to hold out {num_val} for "
            f"validation (val_fraction={val_fraction}, at least one batch) and train on "
            f"batches of {batch_size}. It needs at least {2 * batch_size}; lower "
            f"--batch-size or add images. Received: batch_size={batch_size}"
        )
    order = np.random.default_rng(seed).permutation(num_images)
    return np.sort(order[num_val:]), np.sort(order[:num_val])


def _decode(path):
    """The file's first frame as uint8 `[H, W, C]` (C: 1 grey, 2 grey+alpha, 3, 4 RGBA)."""
    return tf.io.decode_image(tf.io.read_file(path), channels=0, expand_animations=False)


def _is_colour(image):
    """True if any pixel has unequal red, green and blue (a grey RGB file is grey)."""
    if image.shape[-1] is not None and image.shape[-1] < 3:
        return tf.constant(False)
    rgb = tf.cast(image[..., :3], tf.int32)
    return tf.logical_and(
        tf.shape(image)[-1] >= 3,
        tf.reduce_any(tf.not_equal(rgb[..., :1], rgb)),
    )


@dataclasses.dataclass(frozen=True)
class Scan:
    """What `scan_images` found: per readable file its size and colour, and the unreadable files.

    Attributes:
        readable: Indices (into the scanned paths) of the files that decode.
        sizes: `(height, width)` of each readable file.
        colour: Whether each readable file has colour.
        skipped: Paths of the files that do not decode (corrupt, truncated, not images).
    """

    readable: np.ndarray
    sizes: list
    colour: np.ndarray
    skipped: tuple[str, ...]


def _decoded_batches(paths, function, label, show_progress):
    """Yields batches of `function(index, path)` over `paths`, decoded in parallel by tf.data.

    A file whose decoding fails is left out (`ignore_errors`); the indices
    that come out say which files did.
    """
    import keras

    dataset = (
        tf.data.Dataset.from_tensor_slices((np.arange(len(paths)), list(paths)))
        .map(function, num_parallel_calls=tf.data.AUTOTUNE)
        .ignore_errors()
        .batch(256)
    )
    progbar = None
    if show_progress:
        print(f"{label} {len(paths)} images:")
        progbar = keras.utils.Progbar(len(paths), unit_name="image")
    done = 0
    for batch in dataset.as_numpy_iterator():
        done += len(batch[0])
        if progbar is not None:
            progbar.update(done)
        yield batch
    if progbar is not None and done < len(paths):
        progbar.update(len(paths))  # the files left out, to close the bar


def scan_images(paths, show_progress=True) -> Scan:
    """Decodes every file once, keeping only its size and whether it has colour."""
    paths = list(paths)

    def scan(index, path):
        image = _decode(path)
        return index, tf.shape(image)[:2], _is_colour(image)

    indices, sizes, colour = [], [], []
    for batch_indices, batch_sizes, batch_colour in _decoded_batches(
        paths, scan, "Checking", show_progress
    ):
        indices.extend(batch_indices.tolist())
        sizes.extend(tuple(size) for size in batch_sizes.tolist())
        colour.extend(batch_colour.tolist())
    missing = sorted(set(range(len(paths))) - set(indices))
    return Scan(
        np.asarray(indices, np.int64),
        sizes,
        np.asarray(colour, bool),
        tuple(paths[index] for index in missing),
    )


def report_skipped(skipped, total):
    """Prints the files that could not be read (all of them, up to 20)."""
    if not skipped:
        return
    print(f"Skipped {len(skipped)} of {total} files that could not be decoded as images:")
    for path in skipped[:20]:
        print(f"  {path}")
    if len(skipped) > 20:
        print(f"  ... and {len(skipped) - 20} more")


def target_shape(scan, image_size, channels):
    """`(H, W, C)` of the decoded images: the flags', else the data's own.

    Raises:
        ConfigError: the images differ in size and `image_size` is not set.
    """
    if image_size is None:
        counts = collections.Counter(scan.sizes)
        if len(counts) > 1:
            common = ", ".join(f"{h}x{w} ({n})" for (h, w), n in counts.most_common(5))
            more = f" and {len(counts) - 5} more sizes" if len(counts) > 5 else ""
            raise ConfigError(
                f"The images differ in size: {common}{more} (height x width, count). Pass "
                "--image-size N (square) or --image-size H W (Python: image_size=) to crop "
                f"and resize every image to one size. Received: image_size={image_size}"
            )
        image_size = next(iter(counts))
    if channels is None:
        channels = 3 if scan.colour.any() else 1
    return (int(image_size[0]), int(image_size[1]), int(channels))


def available_memory_bytes():
    """Memory the OS can give without swapping (Linux `MemAvailable`), or `None` if unknown."""
    try:
        with open("/proc/meminfo") as file:
            for line in file:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def cache_key(paths, shape):
    """A digest of the files (path, size, modification time) and the decoded shape."""
    digest = hashlib.sha256(json.dumps([CACHE_FORMAT, list(shape)]).encode())
    for path in paths:
        stat = os.stat(path)
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:20]


def decode_images(paths, shape, out, show_progress=True):
    """Decodes, crops, resizes and converts `paths` into rows of `out` (uint8 `[N, *shape]`).

    Raises:
        DataUnavailableError: a file that decoded in the scan no longer does.
    """
    paths = list(paths)
    image_size, channels = shape[:2], shape[2]

    def load(index, path):
        return index, fit_image(_decode(path), image_size, channels)

    written = 0
    for indices, images in _decoded_batches(paths, load, "Decoding", show_progress):
        out[indices] = images
        written += len(indices)
    if written != len(paths):
        raise DataUnavailableError(
            f"{len(paths) - written} images changed while they were read (they decoded a "
            "moment before). Re-run the same command."
        )


@dataclasses.dataclass(frozen=True)
class DecodedFolder:
    """Decoded images of a folder and where they came from.

    Attributes:
        images: uint8 `[N, H, W, C]`, in memory or a read-only memory map.
        file_indices: For each row, its index into the folder's paths.
        skipped: Files that could not be read.
        location: `"memory"`, or the cache file's path.
    """

    images: np.ndarray
    file_indices: np.ndarray
    skipped: tuple[str, ...]
    location: str


def decode_folder(
    paths, image_size=None, channels=None, memory_cache_mb=1024, cache_dir=None, show_progress=True
):
    """Decodes `paths` once, in memory if they fit the budget, else into a cache file.

    Args:
        paths: The image files.
        image_size: `(H, W)` to crop and resize to (`None`: their own, one size).
        channels: 1 or 3 (`None`: 1 if every image is grey, else 3).
        memory_cache_mb: The memory budget: the decoded images stay in memory
            if they take at most this many MB and at most half the
            available memory.
        cache_dir: Where a cache file goes when they do not fit; a complete
            cache file of the same files and shape is reused.
        show_progress: Progress bars for the passes.

    Returns:
        A `DecodedFolder`.
    """
    scan = scan_images(paths, show_progress)
    report_skipped(scan.skipped, len(paths))
    if not len(scan.readable):
        raise ConfigError(
            f"None of the {len(paths)} image files could be decoded. Received: {paths[0]!r}, ..."
        )
    shape = target_shape(scan, image_size, channels)
    readable = [paths[index] for index in scan.readable]
    num_bytes = len(readable) * math.prod(shape)
    available = available_memory_bytes()
    budget = memory_cache_mb * 10**6
    if available is not None:
        budget = min(budget, available // 2)
    size = f"{len(readable)} images of {shape[0]}x{shape[1]}x{shape[2]}, {num_bytes / 1e6:.1f} MB"
    if num_bytes > budget and cache_dir is None:
        raise ConfigError(
            f"The decoded images ({size}) exceed the memory budget of {budget / 1e6:.0f} "
            "MB and no cache folder was given. Received: cache_dir=None"
        )
    if num_bytes <= budget:
        images = np.empty((len(readable), *shape), np.uint8)
        decode_images(readable, shape, images, show_progress)
        print(f"Cached {size} in memory (budget {budget / 1e6:.0f} MB).")
        return DecodedFolder(images, scan.readable, scan.skipped, "memory")
    path = os.path.join(cache_dir, f"images-{cache_key(readable, shape)}.npy")
    index_path = path[: -len(".npy")] + ".json"
    if not (os.path.isfile(path) and os.path.isfile(index_path)):
        _remove_old_caches(cache_dir)
        check_free_space(path, num_bytes + 2**20)
        with atomic_path(path) as temporary:
            images = np.lib.format.open_memmap(
                temporary, mode="w+", dtype=np.uint8, shape=(len(readable), *shape)
            )
            decode_images(readable, shape, images, show_progress)
            images.flush()
            del images
        # Written after the array, so its presence means the array is complete.
        write_json(index_path, {"file_indices": scan.readable.tolist()})
        print(f"Cached {size} in {path} (over the memory budget of {budget / 1e6:.0f} MB).")
    else:
        print(f"Reusing the decoded images ({size}) cached in {path}.")
    images = np.load(path, mmap_mode="r")
    return DecodedFolder(images, scan.readable, scan.skipped, path)


def _remove_old_caches(cache_dir):
    """Deletes the cache files of other files or shapes: one run keeps one cache."""
    if not os.path.isdir(cache_dir):
        return
    for name in os.listdir(cache_dir):
        if name.startswith("images-") and name.endswith((".npy", ".json")):
            os.remove(os.path.join(cache_dir, name))
