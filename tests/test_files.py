import json
import os

import numpy as np
import pytest

from ddpm_keras.files import (
    atomic_path,
    ensure_writable_dir,
    save_gif,
    save_image_grid,
    tile_images,
    write_json,
)


def test_write_json_replaces_atomically(tmp_path):
    path = tmp_path / "metrics.json"
    write_json(path, [{"epoch": 1}])
    write_json(path, [{"epoch": 1}, {"epoch": 2}])
    assert json.loads(path.read_text()) == [{"epoch": 1}, {"epoch": 2}]
    assert os.listdir(tmp_path) == ["metrics.json"]


def test_failed_write_keeps_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "data.json"
    write_json(path, {"old": True})
    with pytest.raises(RuntimeError):
        with atomic_path(path) as temporary:
            with open(temporary, "w") as file:
                file.write('{"half": ')
            raise RuntimeError("killed mid-write")
    assert json.loads(path.read_text()) == {"old": True}
    assert os.listdir(tmp_path) == ["data.json"]


def test_temporary_keeps_extension(tmp_path):
    with atomic_path(tmp_path / "model.keras") as temporary:
        assert temporary.endswith(".keras")
        open(temporary, "w").close()
    assert (tmp_path / "model.keras").exists()


def test_image_grid_is_a_png(tmp_path):
    images = np.random.default_rng(0).uniform(0, 1, (10, 8, 8, 1)).astype(np.float32)
    path = tmp_path / "grid.png"
    save_image_grid(images, path, title="test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    save_image_grid(np.zeros((2, 8, 8, 3)), tmp_path / "rgb.png")
    with pytest.raises(ValueError, match="images.shape"):
        save_image_grid(np.zeros((2, 8, 8)), tmp_path / "bad.png")


def test_output_dir_checks(tmp_path):
    created = tmp_path / "a" / "b"
    assert ensure_writable_dir(created) == str(created) and created.is_dir()
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        ensure_writable_dir(a_file)
    with pytest.raises(ValueError, match="not writable"):
        ensure_writable_dir(a_file / "sub")


def test_unwritable_output_dir(unwritable_dir):
    with pytest.raises(ValueError, match="not writable"):
        ensure_writable_dir(unwritable_dir)


def test_image_grid_leaves_the_matplotlib_backend_alone(tmp_path):
    # A notebook's inline backend must survive a grid written during training.
    import matplotlib

    previous = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        save_image_grid(np.zeros((2, 4, 4, 1)), tmp_path / "grid.png", title="t")
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(previous)
    assert (tmp_path / "grid.png").read_bytes()[:4] == b"\x89PNG"


def test_tile_images_places_images_row_by_row():
    images = np.stack([np.full((2, 3, 1), value) for value in (0.0, 0.25, 0.5, 0.75, 1.5)])
    grid = tile_images(images)  # 5 images: 3 columns, 2 rows
    assert grid.shape == (4, 9, 1) and grid.dtype == np.uint8
    assert grid[0, 0, 0] == 0 and grid[0, 3, 0] == 64 and grid[0, 6, 0] == 128
    assert grid[2, 0, 0] == 191 and grid[2, 3, 0] == 255  # 1.5 clipped to 1
    assert grid[2, 6, 0] == 0  # the empty cell stays black
    assert tile_images(images, columns=5).shape == (2, 15, 1)


def test_tile_images_lays_out_rows_with_gaps():
    images = np.stack([np.full((2, 3, 1), value) for value in (0.0, 0.5, 1.0)])
    grid = tile_images(images, columns=2, padding=1)
    assert grid.shape == (2 * 3 + 1, 2 * 4 + 1, 1) and grid.dtype == np.uint8
    assert grid[1, 1, 0] == 0 and grid[1, 5, 0] == 128 and grid[4, 1, 0] == 255
    assert grid[0].max() == 0 and grid[4, 5, 0] == 0  # gaps and the empty cell stay black
    with pytest.raises(ValueError, match=r"images.shape=\(2, 3\)"):
        tile_images(np.zeros((2, 3)))


def test_save_gif_checks_its_arguments_and_writes_atomically(tmp_path):
    from PIL import Image

    frames = [np.full((4, 4, 1), value, np.uint8) for value in (0, 100, 200)]
    with pytest.raises(ValueError, match="path='x.png'"):
        save_gif(frames, "x.png")
    with pytest.raises(ValueError, match="frames=\\[\\]"):
        save_gif([], tmp_path / "a.gif")
    save_gif(frames, tmp_path / "a.gif", scale=2)
    assert os.listdir(tmp_path) == ["a.gif"]
    with Image.open(tmp_path / "a.gif") as animation:
        assert (animation.n_frames, animation.size) == (3, (8, 8))
