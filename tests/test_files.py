import json
import os

import numpy as np
import pytest

from ddpm_keras.files import (
    atomic_path,
    ensure_writable_dir,
    grid_padding,
    grid_scale,
    save_gif,
    save_image_grid,
    tile_images,
    write_json,
)


def read_png(path):
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image)


def exact_images(count, height, width, channels, seed=0):
    # Multiples of 1/255, so the expected uint8 pixels are exact.
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (count, height, width, channels)) / 255.0


def runs(mask):
    """Lengths of the runs of equal values in a 1-D boolean array."""
    edges = np.flatnonzero(np.diff(mask.astype(np.int8))) + 1
    return np.diff(np.concatenate([[0], edges, [len(mask)]])).tolist()


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


def test_grid_scale_and_padding_rules():
    assert grid_scale(28, 28) == 3 and grid_padding(84, 84) == 6  # Fashion-MNIST: 84-px tiles
    assert grid_scale(32, 32) == 3 and grid_scale(8, 8) == 12 and grid_scale(28, 14) == 3
    assert grid_scale(64, 64) == 1 and grid_scale(200, 100) == 1  # never below 1:1
    assert grid_padding(96, 96) == 7 and grid_padding(10, 10) == 2


def test_tile_images_scales_by_pixel_repetition_and_pads_with_pad_value():
    images = exact_images(3, 2, 3, 1)
    grid = tile_images(images, columns=2, padding=1, scale=2, pad_value=200)
    assert grid.shape == (2 * (4 + 1) + 1, 2 * (6 + 1) + 1, 1) and grid.dtype == np.uint8
    pixels = np.round(images * 255).astype(np.uint8)
    for index, (top, left) in enumerate([(1, 1), (1, 8), (6, 1)]):
        expected = np.repeat(np.repeat(pixels[index], 2, axis=0), 2, axis=1)
        np.testing.assert_array_equal(grid[top : top + 4, left : left + 6], expected)
    assert (grid[6:10, 8:14] == 200).all()  # the empty cell
    assert (grid[[0, 5, 10]] == 200).all() and (grid[:, [0, 7, 14]] == 200).all()  # padding
    # scale=1 is the old tiling.
    np.testing.assert_array_equal(
        tile_images(images, 2, padding=1, scale=1), tile_images(images, 2, 1)
    )
    with pytest.raises(ValueError, match="scale=0"):
        tile_images(images, scale=0)
    with pytest.raises(ValueError, match="scale=1.5"):
        tile_images(images, scale=1.5)
    with pytest.raises(ValueError, match=r"images.shape=\(0, 2, 3, 1\)"):
        tile_images(np.zeros((0, 2, 3, 1)))


@pytest.mark.parametrize("channels", [1, 3])
def test_image_grid_shows_the_tiles_pixel_exact_at_the_integer_scale(tmp_path, channels):
    images = exact_images(5, 28, 28, channels)
    save_image_grid(images, tmp_path / "grid.png", columns=3)
    png = read_png(tmp_path / "grid.png")
    # 3x nearest neighbour, 6 px of white padding, nothing else (no title, no labels).
    assert png.shape == ((2 * 90 + 6, 3 * 90 + 6) if channels == 1 else (186, 276, 3))
    png = png.reshape(png.shape[:2] + (channels,))
    pixels = np.round(images * 255).astype(np.uint8)
    for index in range(5):
        top, left = 6 + (index // 3) * 90, 6 + (index % 3) * 90
        expected = np.repeat(np.repeat(pixels[index], 3, axis=0), 3, axis=1)
        np.testing.assert_array_equal(png[top : top + 84, left : left + 84], expected)
    assert (png[96:180, 186:270] == 255).all()  # the empty cell is background
    np.testing.assert_array_equal(png, tile_images(images, 3, padding=6, scale=3, pad_value=255))


def test_image_grid_pads_rows_and_columns_alike(tmp_path):
    # Black, non-square images (28x20 -> 84x60 tiles): white padding stands out.
    save_image_grid(np.zeros((6, 28, 20, 1)), tmp_path / "grid.png", columns=3)
    black = read_png(tmp_path / "grid.png") == 0
    assert runs(black.any(axis=1)) == [6, 84, 6, 84, 6]  # rows
    assert runs(black.any(axis=0)) == [6, 60, 6, 60, 6, 60, 6]  # columns


def test_row_labels_shift_the_grid_right_by_a_label_margin(tmp_path):
    images = exact_images(6, 28, 28, 1)
    save_image_grid(images, tmp_path / "plain.png", columns=3)
    labels = ["T-shirt/top", "Ankle boot"]
    save_image_grid(images, tmp_path / "labelled.png", columns=3, row_labels=labels)
    plain, labelled = read_png(tmp_path / "plain.png"), read_png(tmp_path / "labelled.png")
    margin = labelled.shape[1] - plain.shape[1]
    assert labelled.shape[0] == plain.shape[0] and margin > 60
    np.testing.assert_array_equal(labelled[:, margin:], plain)
    strip = labelled[:, :margin] < 128
    # Each label is inside its own row's band, and no ink touches the edges:
    # the text is not clipped.
    for row in range(2):
        band = strip[6 + row * 90 : 6 + row * 90 + 84]
        assert band.sum() > 50
    assert strip.sum() == sum(strip[6 + row * 90 : 90 + row * 90].sum() for row in range(2))
    assert not strip[:, :6].any() and not strip[:, -6:].any()
    # Right-aligned: both labels end in the same column (to a pixel of the glyphs).
    ends = [np.flatnonzero(strip[6 + r * 90 : 90 + r * 90].any(axis=0)).max() for r in range(2)]
    assert abs(ends[0] - ends[1]) <= 1
    # A short label gives a narrower margin.
    save_image_grid(images, tmp_path / "short.png", columns=3, row_labels=["a", "b"])
    assert read_png(tmp_path / "short.png").shape[1] - plain.shape[1] < margin
    with pytest.raises(ValueError, match="one entry per row"):
        save_image_grid(images, tmp_path / "bad.png", columns=3, row_labels=["a"])


def title_ink(png, top):
    ink = png[:top] < 128
    columns = np.flatnonzero(ink.any(axis=0))
    return ink, columns


def test_a_title_adds_a_top_margin_and_is_centred(tmp_path):
    images = exact_images(6, 28, 28, 3)
    save_image_grid(images, tmp_path / "plain.png", columns=3)
    save_image_grid(images, tmp_path / "titled.png", title="epoch 3, ddim", columns=3)
    plain, titled = read_png(tmp_path / "plain.png"), read_png(tmp_path / "titled.png")
    top = titled.shape[0] - plain.shape[0]
    assert titled.shape[1] == plain.shape[1] and top > 12
    np.testing.assert_array_equal(titled[top:], plain)
    ink, columns = title_ink(titled.min(axis=-1), top)
    assert ink.sum() > 50 and not ink[:3].any()  # there, and not clipped at the top
    assert abs((columns.min() + columns.max()) / 2 - plain.shape[1] / 2) <= 2
    # The margin depends on the font, not on the title's letters.
    save_image_grid(images, tmp_path / "other.png", title="gypsy, jog", columns=3)
    assert read_png(tmp_path / "other.png").shape == titled.shape


def test_a_wide_title_widens_the_canvas_and_stays_centred_over_the_grid(tmp_path):
    images = exact_images(2, 8, 8, 1)  # 12x: two 96-px tiles, a 206-px grid
    title = "ankle_boot: ddim, 50 steps, seed 0, guidance 3"
    save_image_grid(images, tmp_path / "plain.png", columns=1)
    save_image_grid(images, tmp_path / "wide.png", title=title, columns=1, row_labels=["a", "b"])
    plain, wide = read_png(tmp_path / "plain.png"), read_png(tmp_path / "wide.png")
    top = wide.shape[0] - plain.shape[0]
    ink, columns = title_ink(wide, top)
    assert columns.min() >= 4 and columns.max() <= wide.shape[1] - 5  # not clipped
    # The grid is where the title is centred.
    left = round((columns.min() + columns.max()) / 2 - plain.shape[1] / 2)
    for offset in (left - 2, left - 1, left, left + 1, left + 2):
        if np.array_equal(wide[top:, offset : offset + plain.shape[1]], plain):
            break
    else:
        raise AssertionError("The grid is not under the title's centre.")
    labels = wide[top:, :offset] < 128
    assert labels.any() and not labels[:, :4].any()


def test_a_model_save_checks_the_free_space_first_and_says_how_much(tiny_model, tmp_path):
    import errno

    from ddpm_keras.files import check_free_space, model_file_bytes

    needed = model_file_bytes(tiny_model)
    parameters = sum(int(np.prod(w.shape)) for w in tiny_model.weights)
    assert 4 * parameters < needed < 4 * parameters * 1.1 + 1_000_001
    with pytest.raises(OSError) as error:
        check_free_space(tmp_path / "model.keras", 10**18)
    assert error.value.errno == errno.ENOSPC
    assert error.value.filename == str(tmp_path / "model.keras")
    assert "needs about 1000000000000.0 MB" in error.value.strerror
    check_free_space(tmp_path / "model.keras", 1)  # enough: no error


def test_write_points_are_traced_and_an_injected_error_leaves_the_old_file(tmp_path, monkeypatch):
    from ddpm_keras.files import FAULT_TRACE_VARIABLE, FAULT_VARIABLE, remove_temporaries

    trace = tmp_path / "trace.tsv"
    monkeypatch.setenv(FAULT_TRACE_VARIABLE, str(trace))
    write_json(tmp_path / "a.json", {"version": 1})
    points = [line.split("\t")[1] for line in trace.read_text().splitlines()]
    assert points == [f"{tmp_path / 'a.json'}:before", f"{tmp_path / 'a.json'}:after"]
    monkeypatch.setenv(FAULT_VARIABLE, "eacces@a.json:before")
    with pytest.raises(PermissionError) as error:
        write_json(tmp_path / "a.json", {"version": 2})
    assert error.value.filename == str(tmp_path / "a.json")
    assert json.loads((tmp_path / "a.json").read_text()) == {"version": 1}
    # A killed writer's temporary file is cleared by the next run.
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / ".model.keras.abc.tmp.keras").write_bytes(b"partial")
    (tmp_path / ".lock").write_text("1")
    assert remove_temporaries(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.rglob("*")) == [".lock", "a.json", "sub", "trace.tsv"]
