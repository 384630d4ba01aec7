"""Writing artifacts safely: every file goes to a temporary name, then is renamed.

A killed process therefore leaves either the old file or the new one, never
a truncated one.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile

import numpy as np


def ensure_writable_dir(path):
    """Creates `path` if needed and checks that files can be written in it.

    Raises:
        ValueError: `path` is a file, or cannot be created or written to.
    """
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"The output directory is a file. Received: output_dir={path!r}")
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise ValueError(
            f"The output directory is not writable ({error.strerror}). "
            f"Received: output_dir={path!r}"
        ) from error
    return path


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path beside `path`; renames it to `path` on success.

    The temporary name keeps `path`'s extension, because some writers (Keras'
    `model.save`, matplotlib) choose the format from it. On error the
    temporary file is removed and `path` is untouched.
    """
    path = os.fspath(path)
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    _, extension = os.path.splitext(path)
    if path.endswith(".weights.h5"):  # Keras' save_weights insists on the double suffix
        extension = ".weights.h5"
    handle, temporary = tempfile.mkstemp(
        dir=directory, prefix=f".{os.path.basename(path)}.", suffix=f".tmp{extension}"
    )
    os.close(handle)
    os.remove(temporary)  # Some writers refuse to overwrite; let them create it.
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def write_json(path, data):
    """Writes `data` as indented JSON, atomically."""
    with atomic_path(path) as temporary:
        with open(temporary, "w", encoding="utf-8") as file:
            json.dump(data, file, indent=2)
            file.write("\n")
            file.flush()
            os.fsync(file.fileno())


def write_text(path, text):
    """Writes `text` (UTF-8), atomically."""
    with atomic_path(path) as temporary:
        with open(temporary, "w", encoding="utf-8") as file:
            file.write(text)


def save_model(model, path):
    """`model.save(path)`, atomically. `path` must end in `.keras`."""
    if not os.fspath(path).endswith(".keras"):
        raise ValueError(f"A model path must end in '.keras'. Received: path={path!r}")
    with atomic_path(path) as temporary:
        model.save(temporary)


def save_model_weights(model, path):
    """`model.save_weights(path)`, atomically. `path` must end in `.weights.h5`."""
    if not os.fspath(path).endswith(".weights.h5"):
        raise ValueError(f"A weights path must end in '.weights.h5'. Received: path={path!r}")
    with atomic_path(path) as temporary:
        model.save_weights(temporary)


def save_image_grid(images, path, title=None, columns=None, row_labels=None):
    """Saves images `[N, H, W, C]` in [0, 1] as one PNG grid, atomically.

    Args:
        images: Float array in [0, 1]; C is 1 (grey) or 3 (RGB).
        path: Output `.png` path.
        title: Optional figure title.
        columns: Grid columns; default: the square root of N, rounded up.
        row_labels: Optional text left of each row (e.g. class names).
    """
    # A bare Figure draws without pyplot, so the caller's backend (e.g. a
    # notebook's inline plots) is left alone.
    from matplotlib.figure import Figure

    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(
            f"Images must be [N, H, W, C] with C = 1 or 3. Received: images.shape={images.shape}"
        )
    count = images.shape[0]
    columns = columns or math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    if row_labels is not None and len(row_labels) != rows:
        raise ValueError(
            f"`row_labels` must have one entry per row ({rows}). Received: row_labels={row_labels!r}"
        )
    label_width = 1.2 if row_labels is not None else 0.0
    title_height = 0.4 if title else 0.0
    figure = Figure(figsize=(columns * 1.0 + label_width, rows * 1.0 + title_height))
    axes = figure.subplots(rows, columns, squeeze=False)
    for axis, label in zip(axes[:, 0], row_labels or (), strict=False):
        axis.text(-0.08, 0.5, label, transform=axis.transAxes, ha="right", va="center", fontsize=8)
    for index, axis in enumerate(axes.flat):
        axis.axis("off")
        if index < count:
            image = images[index]
            if image.shape[-1] == 1:
                axis.imshow(image[..., 0], cmap="gray", vmin=0.0, vmax=1.0)
            else:
                axis.imshow(np.clip(image, 0.0, 1.0))
    if title:
        figure.suptitle(title, fontsize=9)
    # Keep the title's strip free: tight_layout alone lets the images cover it.
    figure.tight_layout(pad=0.2, rect=(0, 0, 1, 1 - title_height / figure.get_figheight()))
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=100)


def tile_images(images, columns=None, padding=0):
    """Tiles images `[N, H, W, C]` in [0, 1] into one uint8 `[rows*H, columns*W, C]` array.

    A plain pixel grid (no figure), with `padding` black pixels between images.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(
            f"Images must be [N, H, W, C] with C = 1 or 3. Received: images.shape={images.shape}"
        )
    count, height, width, channels = images.shape
    columns = columns or math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    grid = np.zeros(
        (rows * (height + padding) + padding, columns * (width + padding) + padding, channels),
        np.uint8,
    )
    pixels = np.round(np.clip(images, 0.0, 1.0) * 255).astype(np.uint8)
    for index in range(count):
        top = padding + (index // columns) * (height + padding)
        left = padding + (index % columns) * (width + padding)
        grid[top : top + height, left : left + width] = pixels[index]
    return grid


def save_gif(frames, path, frame_ms=80, last_frame_ms=1500, scale=3):
    """Saves uint8 frames `[H, W, C]` (C = 1 or 3) as a looping animated GIF, atomically.

    Args:
        frames: Sequence of equally shaped uint8 arrays, e.g. from `tile_images`.
        path: Output `.gif` path.
        frame_ms: Display time of each frame but the last.
        last_frame_ms: Display time of the last frame (the final samples).
        scale: Integer upscaling (nearest neighbour): 28x28 images are tiny.
    """
    from PIL import Image

    if not os.fspath(path).endswith(".gif"):
        raise ValueError(f"A GIF path must end in '.gif'. Received: path={path!r}")
    if not frames:
        raise ValueError("`frames` must not be empty. Received: frames=[]")
    pictures = []
    for frame in frames:
        frame = np.repeat(np.repeat(np.asarray(frame), scale, axis=0), scale, axis=1)
        pictures.append(Image.fromarray(frame[..., 0] if frame.shape[-1] == 1 else frame))
    durations = [frame_ms] * (len(pictures) - 1) + [last_frame_ms]
    with atomic_path(path) as temporary:
        pictures[0].save(
            temporary,
            save_all=True,
            append_images=pictures[1:],
            duration=durations,
            loop=0,
        )
