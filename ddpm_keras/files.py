"""Writing artifacts safely: every file goes to a temporary name, then is renamed.

A killed process therefore leaves either the old file or the new one, never
a truncated one. The temporary file is flushed to disk (fsync) before the
rename and the directory after it, so a power cut does not undo a write
either.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import shutil
import signal
import tempfile

import numpy as np

from ddpm_keras.errors import ConfigError

# Fault injection for the reliability tests (tests/test_resume.py) and
# the soak script (scripts/soak_resume.py). Every atomic write has two write
# points, "<path>:before" (the temporary file is complete, not yet renamed)
# and "<path>:after" (renamed). "<fault>@<n>" makes the n-th write point of
# the process fail, "<fault>@<text>" the first one whose "<path>:<phase>"
# ends with <text> (e.g. "kill@backup/epoch-0002.weights.h5:before").
# <fault> is `kill` (SIGKILL, as `kill -9`), or `enospc` or `eacces` (an
# OSError, at "before" points only). With FAULT_TRACE_VARIABLE naming a
# file, each point is appended to it as it passes.
FAULT_VARIABLE = "DDPM_KERAS_INJECT_FAULT"
FAULT_TRACE_VARIABLE = "DDPM_KERAS_WRITE_TRACE"
_FAULT_ERRNOS = {"enospc": errno.ENOSPC, "eacces": errno.EACCES}
_write_points_passed = 0
# Temporary files of `atomic_path` start with this; a killed writer leaves
# one behind, which `remove_temporaries` clears when the next run starts.
TEMPORARY_PREFIX = "."


def ensure_writable_dir(path):
    """Creates `path` if needed and checks that files can be written in it.

    Raises:
        ConfigError: `path` is a file, or cannot be created or written to.
    """
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"The output directory is a file. Received: output_dir={path!r}")
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise ConfigError(
            f"The output directory is not writable ({error.strerror}). "
            f"Received: output_dir={path!r}"
        ) from error
    return path


def _write_point(path, phase):
    """Counts a write point and injects the fault `FAULT_VARIABLE` asks for there."""
    global _write_points_passed
    _write_points_passed += 1
    trace = os.environ.get(FAULT_TRACE_VARIABLE)
    if trace:
        with open(trace, "a", encoding="utf-8") as file:
            file.write(f"{_write_points_passed}\t{path}:{phase}\n")
    fault, _, at = os.environ.get(FAULT_VARIABLE, "").partition("@")
    if not fault:
        return
    if at.isdigit() and int(at) != _write_points_passed:
        return
    if not at.isdigit() and not f"{path}:{phase}".endswith(at):
        return
    if fault == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if phase == "before" and fault in _FAULT_ERRNOS:
        code = _FAULT_ERRNOS[fault]
        raise OSError(code, f"{os.strerror(code)} (injected by {FAULT_VARIABLE})", path)


def _fsync_directory(directory):
    # Makes the rename itself durable; not every platform can open a folder.
    try:
        handle = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def _fsync_file(path):
    with open(path, "rb+") as file:
        os.fsync(file.fileno())


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path beside `path`; renames it to `path` on success.

    The caller writes the whole file to the temporary path; it is then
    fsynced, renamed over `path` and the directory fsynced. The temporary
    name keeps `path`'s extension, because some writers (Keras'
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
        dir=directory,
        prefix=f"{TEMPORARY_PREFIX}{os.path.basename(path)}.",
        suffix=f".tmp{extension}",
    )
    os.close(handle)
    os.remove(temporary)  # Some writers refuse to overwrite; let them create it.
    try:
        yield temporary
        _fsync_file(temporary)
        _write_point(path, "before")
        os.replace(temporary, path)
        _fsync_directory(directory)
        _write_point(path, "after")
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def remove_temporaries(directory):
    """Deletes the temporary files killed `atomic_path` writers left under `directory`.

    Only for a directory no other process writes to (the run's lock holds
    that). Returns the number of files removed.
    """
    removed = 0
    for root, _, names in os.walk(directory):
        for name in names:
            if name.startswith(TEMPORARY_PREFIX) and ".tmp" in name:
                os.remove(os.path.join(root, name))
                removed += 1
    return removed


def check_free_space(path, needed_bytes):
    """Raises `OSError(ENOSPC)` if `path`'s disk has less than `needed_bytes` free.

    HDF5 and zip writers can crash the process when the disk fills during a
    write, so a large file is checked before it is started. The message
    says how much is needed and how much is free.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    free = shutil.disk_usage(directory).free
    if free < needed_bytes:
        raise OSError(
            errno.ENOSPC,
            f"No space left on device: writing it needs about {_megabytes(needed_bytes)}, "
            f"{_megabytes(free)} is free",
            os.fspath(path),
        )


def _megabytes(count):
    return f"{count / 1e6:.1f} MB"


def _state_bytes(model):
    # Weights and optimizer variables, as the .keras and .weights.h5 files hold them.
    variables = list(model.weights)
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None:
        variables += list(optimizer.variables)
    return sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in variables)


def model_file_bytes(model, path=None):
    """An upper estimate of a saved model's size: its state plus 10%, plus 1 MB.

    Or, if `path` exists (a previous save of the same model), that file's size
    plus 10%.
    """
    if path is not None and os.path.exists(path):
        return int(os.path.getsize(path) * 1.1)
    return int(_state_bytes(model) * 1.1) + 1_000_000


def write_json(path, data):
    """Writes `data` as indented JSON, atomically."""
    with atomic_path(path) as temporary:
        with open(temporary, "w", encoding="utf-8") as file:
            json.dump(data, file, indent=2)
            file.write("\n")


def file_sha256(path):
    """The SHA-256 of a file's bytes, as hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_text(path, text):
    """Writes `text` (UTF-8), atomically."""
    with atomic_path(path) as temporary:
        with open(temporary, "w", encoding="utf-8") as file:
            file.write(text)


def save_model(model, path):
    """`model.save(path)`, atomically. `path` must end in `.keras`."""
    if not os.fspath(path).endswith(".keras"):
        raise ConfigError(f"A model path must end in '.keras'. Received: path={path!r}")
    check_free_space(path, model_file_bytes(model, path))
    with atomic_path(path) as temporary:
        model.save(temporary)


def save_model_weights(model, path):
    """`model.save_weights(path)`, atomically. `path` must end in `.weights.h5`."""
    if not os.fspath(path).endswith(".weights.h5"):
        raise ConfigError(f"A weights path must end in '.weights.h5'. Received: path={path!r}")
    check_free_space(path, model_file_bytes(model, path))
    with atomic_path(path) as temporary:
        model.save_weights(temporary)


# Sample grids: every image is scaled up by an integer factor (nearest
# neighbour, so pixels stay sharp squares) to a tile of at most this many
# pixels a side; larger images are shown 1:1.
GRID_TILE_PIXELS = 96
# Padding between tiles (rows and columns alike) and around the grid: this
# fraction of a tile's longer side, at least 2 pixels (6 for 28x28 images at 3x).
GRID_PADDING_FRACTION = 1 / 14
GRID_LABEL_FONT_PIXELS = 14
GRID_TITLE_FONT_PIXELS = 16
_GRID_BACKGROUND = 255  # white: padding, empty cells and margins
_GRID_TEXT = 0  # black


def grid_scale(height, width):
    """The integer upscaling of `height` x `width` images in `save_image_grid`.

    The largest integer factor that keeps the longer side within
    `GRID_TILE_PIXELS` (96), at least 1: 28x28 images become 84x84 tiles (3x),
    32x32 ones 96x96 (3x), 64x64 ones stay 1:1.
    """
    return max(1, GRID_TILE_PIXELS // max(height, width))


def grid_padding(tile_height, tile_width):
    """Pixels between tiles (and around the grid) in `save_image_grid`.

    `GRID_PADDING_FRACTION` (1/14) of the tile's longer side, rounded, at
    least 2: 6 pixels between 84x84 tiles.
    """
    return max(2, round(max(tile_height, tile_width) * GRID_PADDING_FRACTION))


def _grid_font(size):
    # Matplotlib's bundled DejaVu Sans (matplotlib is a dependency), so the
    # text looks the same everywhere; Pillow's own font if it is missing.
    import matplotlib
    from PIL import ImageFont

    path = os.path.join(matplotlib.get_data_path(), "fonts", "ttf", "DejaVuSans.ttf")
    if os.path.exists(path):
        return ImageFont.truetype(path, size)
    return ImageFont.load_default(size)


def _checked_images(images):
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ConfigError(
            f"Images must be [N, H, W, C] with C = 1 or 3. Received: images.shape={images.shape}"
        )
    if images.shape[0] == 0:
        raise ConfigError(f"`images` must not be empty. Received: images.shape={images.shape}")
    return images


def save_image_grid(images, path, title=None, columns=None, row_labels=None):
    """Saves images `[N, H, W, C]` in [0, 1] as one PNG grid, atomically.

    The images are tiled by `tile_images`, each scaled up by `grid_scale(H, W)`
    (nearest neighbour: 3x for 28x28 images), with `grid_padding` white pixels
    between every two tiles, rows and columns alike, and around the grid. The
    title is centred above the grid, the row labels right-aligned left of their
    rows; the canvas grows to fit both. Grey images (C = 1) give a greyscale
    PNG, RGB ones (C = 3) an RGB PNG.

    Args:
        images: Float array in [0, 1]; C is 1 (grey) or 3 (RGB).
        path: Output `.png` path.
        title: Optional title above the grid.
        columns: Grid columns; default: the square root of N, rounded up.
        row_labels: Optional text left of each row (e.g. class names).
    """
    from PIL import Image, ImageDraw

    images = _checked_images(images)
    count, height, width, channels = images.shape
    columns = columns or math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    if row_labels is not None and len(row_labels) != rows:
        raise ConfigError(
            f"`row_labels` must have one entry per row ({rows}). Received: row_labels={row_labels!r}"
        )
    scale = grid_scale(height, width)
    tile_height, tile_width = height * scale, width * scale
    padding = grid_padding(tile_height, tile_width)
    grid = tile_images(images, columns, padding=padding, scale=scale, pad_value=_GRID_BACKGROUND)
    grid_height, grid_width = grid.shape[:2]

    # Row labels: right-aligned, `padding` from the grid's own padding and at
    # least `padding` from the left edge. Ink extents come from the font, so
    # nothing is clipped.
    left = 0
    if row_labels is not None:
        label_font = _grid_font(GRID_LABEL_FONT_PIXELS)
        labels = [str(label) for label in row_labels]
        boxes = [label_font.getbbox(label, anchor="rm") for label in labels]
        ink_left = min((box[0] for box in boxes), default=0)
        ink_right = max((box[2] for box in boxes), default=0)
        left = padding + (ink_right - ink_left) + padding
    # Title: centred over the grid, `padding` below the top edge and the
    # grid's own padding above the tiles; the canvas widens on both sides if
    # the title (plus `padding` each side) is wider than the grid.
    top, extra_right = 0, 0
    if title:
        title_font = _grid_font(GRID_TITLE_FONT_PIXELS)
        title_box = title_font.getbbox(title, anchor="ma")
        # The font's line height, not the ink's: the same margin for every title.
        title_ink_top = min(title_box[1], 0)
        top = padding + max(sum(title_font.getmetrics()), title_box[3]) - title_ink_top
        half_overhang = max(-title_box[0], title_box[2]) + padding - grid_width / 2
        if half_overhang > 0:
            overhang = math.ceil(half_overhang)
            left = max(left, overhang)
            extra_right = overhang

    canvas = Image.new(
        "L" if channels == 1 else "RGB",
        (left + grid_width + extra_right, top + grid_height),
        _GRID_BACKGROUND if channels == 1 else (_GRID_BACKGROUND,) * 3,
    )
    canvas.paste(Image.fromarray(grid[..., 0] if channels == 1 else grid), (left, top))
    draw = ImageDraw.Draw(canvas)
    fill = _GRID_TEXT if channels == 1 else (_GRID_TEXT,) * 3
    if row_labels is not None:
        anchor_x = left - padding - ink_right
        for row, label in enumerate(labels):
            centre_y = top + padding + row * (tile_height + padding) + tile_height / 2
            draw.text((anchor_x, centre_y), label, fill=fill, font=label_font, anchor="rm")
    if title:
        centre_x = left + grid_width / 2
        draw.text(
            (centre_x, padding - title_ink_top), title, fill=fill, font=title_font, anchor="ma"
        )
    with atomic_path(path) as temporary:
        canvas.save(temporary, format="PNG")


def tile_images(images, columns=None, padding=0, scale=1, pad_value=0):
    """Tiles images `[N, H, W, C]` in [0, 1] into one uint8 array.

    A plain pixel grid (no figure) of `[rows*(s*H + p) + p, columns*(s*W + p) + p, C]`
    pixels: each image scaled up `scale` (s) times by pixel repetition (nearest
    neighbour), with `padding` (p) pixels of `pad_value` between images, around
    the grid and in the empty cells of the last row.

    Args:
        images: Float array in [0, 1] (clipped); C is 1 (grey) or 3 (RGB).
        columns: Images per row; default: the square root of N, rounded up.
        padding: Pixels between tiles (rows and columns alike) and at the edges.
        scale: Integer upscaling of every image, >= 1.
        pad_value: uint8 value of the padding and the empty cells (0: black).
    """
    images = _checked_images(images)
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 1:
        raise ConfigError(f"`scale` must be an integer >= 1. Received: scale={scale!r}")
    count, height, width, channels = images.shape
    height, width = height * scale, width * scale
    columns = columns or math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    grid = np.full(
        (rows * (height + padding) + padding, columns * (width + padding) + padding, channels),
        pad_value,
        np.uint8,
    )
    pixels = np.round(np.clip(images, 0.0, 1.0) * 255).astype(np.uint8)
    if scale > 1:
        pixels = np.repeat(np.repeat(pixels, scale, axis=1), scale, axis=2)
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
        raise ConfigError(f"A GIF path must end in '.gif'. Received: path={path!r}")
    if not frames:
        raise ConfigError("`frames` must not be empty. Received: frames=[]")
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
