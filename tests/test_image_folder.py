"""Image folders: layout and labels, the hold-out, the scan, decoding and the cache."""

import os

import numpy as np
import pytest

from ddpm_keras.errors import ConfigError, DataUnavailableError
from ddpm_keras.image_folder import (
    decode_folder,
    find_images,
    holdout_split,
    scan_images,
    target_shape,
)
from tests.fakes import write_image, write_solid_folder

GREY = np.full((6, 6), 100, np.uint8)


def test_class_subfolders_give_sorted_class_names_and_labels(tmp_path):
    write_image(tmp_path / "dog" / "a.png", GREY)
    write_image(tmp_path / "cat" / "b.jpg", GREY)
    write_image(tmp_path / "cat" / "nested" / "c.PNG", GREY)  # recursive, any case
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    write_image(tmp_path / "cat" / ".hidden.png", GREY)
    files = find_images(str(tmp_path))
    assert files.class_names == ("cat", "dog")
    assert [os.path.relpath(path, tmp_path) for path in files.paths] == [
        "cat/b.jpg",
        "cat/nested/c.PNG",
        "dog/a.png",
    ]
    np.testing.assert_array_equal(files.labels, [0, 0, 1])


def test_a_flat_folder_is_unlabelled(tmp_path):
    for name in ("b.gif", "a.bmp"):
        write_image(tmp_path / name, GREY)
    files = find_images(str(tmp_path))
    assert files.labels is None and files.class_names is None
    assert [os.path.basename(path) for path in files.paths] == ["a.bmp", "b.gif"]


def test_bad_layouts_are_refused_with_what_is_wrong(tmp_path):
    with pytest.raises(DataUnavailableError, match="does not exist"):
        find_images(str(tmp_path / "missing"))
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(ConfigError, match="is a file"):
        find_images(str(tmp_path / "file.png"))
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "readme.txt").write_text("x")
    with pytest.raises(ConfigError, match="holds no images"):
        find_images(str(empty))
    mixed = tmp_path / "mixed"
    write_image(mixed / "top.png", GREY)
    write_image(mixed / "cat" / "a.png", GREY)
    with pytest.raises(ConfigError, match="mixes the two layouts: 1 images at its top level"):
        find_images(str(mixed))
    hollow = tmp_path / "hollow"
    write_image(hollow / "cat" / "a.png", GREY)
    (hollow / "dog").mkdir()
    with pytest.raises(ConfigError, match="dog holds none"):
        find_images(str(hollow))


def test_holdout_split_is_seeded_disjoint_and_at_least_a_batch():
    train, val = holdout_split(100, 0.05, 8, seed=3)
    assert len(val) == 8 and len(train) == 92  # 5% is 5, less than a batch
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(100))
    again_train, again_val = holdout_split(100, 0.05, 8, seed=3)
    np.testing.assert_array_equal(val, again_val)
    np.testing.assert_array_equal(train, again_train)
    assert not np.array_equal(val, holdout_split(100, 0.05, 8, seed=4)[1])
    assert len(holdout_split(1000, 0.1, 8, seed=0)[1]) == 100
    with pytest.raises(ConfigError, match="needs at least 16"):
        holdout_split(15, 0.05, 8, seed=0)


def test_scan_names_unreadable_files_and_tells_grey_from_colour(tmp_path):
    write_image(tmp_path / "grey.png", GREY)
    write_image(tmp_path / "grey_as_rgb.jpg", np.stack([GREY] * 3, -1))
    colour = np.zeros((4, 5, 3), np.uint8)
    colour[..., 0] = 255
    write_image(tmp_path / "red.bmp", colour)
    write_image(tmp_path / "valid.png", GREY)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes((tmp_path / "valid.png").read_bytes()[:40])
    (tmp_path / "text.jpg").write_text("not a JPEG")
    paths = [str(tmp_path / name) for name in sorted(os.listdir(tmp_path))]
    scan = scan_images(paths, show_progress=False)
    names = [os.path.basename(paths[i]) for i in scan.readable]
    assert names == ["grey.png", "grey_as_rgb.jpg", "red.bmp", "valid.png"]
    assert sorted(os.path.basename(path) for path in scan.skipped) == ["text.jpg", "truncated.png"]
    assert scan.colour.tolist() == [False, False, True, False]
    assert scan.sizes[2] == (4, 5)
    with pytest.raises(ConfigError, match=r"6x6 \(3\), 4x5 \(1\).*--image-size"):
        target_shape(scan, None, None)
    assert target_shape(scan, (8, 8), None) == (8, 8, 3)  # one colour image: RGB
    grey_only = scan_images([paths[i] for i in (0, 1, 3)], show_progress=False)
    assert target_shape(grey_only, None, None) == (6, 6, 1)


def test_a_gif_gives_its_first_frame(tmp_path):
    from PIL import Image

    frames = [Image.fromarray(np.full((4, 4), level, np.uint8)) for level in (30, 220)]
    path = str(tmp_path / "animated.gif")
    frames[0].save(path, save_all=True, append_images=frames[1:])
    decoded = decode_folder([path], channels=1, show_progress=False)
    np.testing.assert_allclose(decoded.images, 30, atol=1)


def test_over_the_memory_budget_images_go_to_a_cache_file_that_is_reused(tmp_path, capsys):
    folder = write_solid_folder(str(tmp_path / "images"), per_class=4)
    paths = find_images(folder).paths
    cache_dir = str(tmp_path / "cache")
    in_memory = decode_folder(paths, (8, 8), 1, memory_cache_mb=1, cache_dir=cache_dir)
    assert in_memory.location == "memory" and not os.path.exists(cache_dir)
    on_disk = decode_folder(paths, (8, 8), 1, memory_cache_mb=0, cache_dir=cache_dir)
    assert on_disk.location.startswith(cache_dir) and isinstance(on_disk.images, np.memmap)
    np.testing.assert_array_equal(on_disk.images, in_memory.images)
    modified = os.path.getmtime(on_disk.location)
    capsys.readouterr()
    again = decode_folder(paths, (8, 8), 1, memory_cache_mb=0, cache_dir=cache_dir)
    assert again.location == on_disk.location and os.path.getmtime(again.location) == modified
    assert "Reusing the decoded images" in capsys.readouterr().out
    # Another shape is another cache; the old one is removed.
    other = decode_folder(paths, (4, 4), 1, memory_cache_mb=0, cache_dir=cache_dir)
    assert sorted(os.listdir(cache_dir)) == sorted(
        os.path.basename(other.location[: -len(".npy")]) + suffix for suffix in (".json", ".npy")
    )
