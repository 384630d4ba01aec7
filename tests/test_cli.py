"""The scripts and console entry points, end to end and on bad input."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ddpm_keras.cli import sample_main, train_main
from ddpm_keras.files import tile_images
from ddpm_keras.model import load_diffusion_model
from ddpm_keras.training import generate_samples

from .conftest import REPO_ROOT
from .fakes import use_fake_data, write_image, write_solid_folder

ARTIFACTS = [
    "config.json",
    "metrics.json",
    "model.keras",
    "ddpm_samples.png",
    "checkpoints/last.keras",
    "checkpoints/best.keras",
    "samples/epoch_001.png",
    "samples/epoch_002.png",
]


def run_script(name, *args):
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / name), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


@pytest.mark.slow
def test_smoke_preset_end_to_end_through_scripts(manual_dir, tfds_data_dir, tmp_path):
    output_dir = tmp_path / "run"
    result = run_script(
        "train.py",
        "--preset",
        "smoke",
        "--output-dir",
        str(output_dir),
        "--manual-dir",
        manual_dir,
        "--data-dir",
        tfds_data_dir,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for artifact in ARTIFACTS:
        assert (output_dir / artifact).is_file(), artifact
    records = json.loads((output_dir / "metrics.json").read_text())
    assert [r["epoch"] for r in records] == [1, 2]
    assert all(np.isfinite(r["loss"]) and np.isfinite(r["val_loss"]) for r in records)
    # Keras' progress bar is shown.
    assert "Epoch 1/2" in result.stdout and "val_loss" in result.stdout
    leftovers = [p.name for p in output_dir.rglob("*") if ".tmp" in p.name]
    assert leftovers == []

    grid = tmp_path / "grid.png"
    result = run_script(
        "sample.py",
        "--model",
        str(output_dir / "model.keras"),
        "--num-images",
        "9",
        "--steps",
        "5",
        "--sampler",
        "ddim",
        "--eta",
        "0.5",
        "--seed",
        "3",
        "--output",
        str(grid),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert grid.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_console_entry_point_and_python_api(manual_dir, tfds_data_dir, tmp_path):
    output_dir = tmp_path / "api"
    code = train_main(
        [
            "--preset",
            "smoke",
            "--epochs",
            "1",
            "--max-train-examples",
            "64",
            "--output-dir",
            str(output_dir),
            "--manual-dir",
            manual_dir,
            "--data-dir",
            tfds_data_dir,
        ]
    )
    assert code == 0
    assert (output_dir / "model.keras").is_file()
    config = json.loads((output_dir / "config.json").read_text())
    assert config["epochs"] == 1 and config["preset"] == "smoke"

    from ddpm_keras.config import DiffusionConfig

    images = generate_samples(
        DiffusionConfig(**config),
        num_images=4,
        output_path=str(tmp_path / "api.png"),
        steps=3,
        seed=5,
    )
    assert images.shape == (4, 28, 28, 1)
    assert (tmp_path / "api.png").is_file()
    assert (
        sample_main(
            [
                "--model",
                str(output_dir / "model.keras"),
                "--num-images",
                "2",
                "--steps",
                "2",
                "--output",
                str(tmp_path / "cli.png"),
            ]
        )
        == 0
    )


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--epochs", "-1"], "epochs=-1"),
        (["--batch-size", "0"], "batch_size=0"),
        (["--learning-rate", "0"], "learning_rate=0.0"),
        (["--max-train-examples", "0"], "max_train_examples=0"),
        (["--devices", "CPU:0"], "applies only to strategy='mirrored'"),
        (["--strategy", "multiworker"], "TF_CONFIG"),
        (
            ["--strategy", "mirrored", "--devices", "CPU:0", "CPU:1", "--jit-compile"],
            "jit_compile=True",
        ),
    ],
)
def test_train_rejects_bad_values_without_traceback(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    code = train_main(["--preset", "smoke", "--output-dir", str(tmp_path), *argv])
    captured = capsys.readouterr()
    assert code == 2
    assert message in captured.err and "Traceback" not in captured.err
    assert not (tmp_path / "config.json").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["--preset", "huge"],
        ["--schedule", "quadratic"],
        ["--epochs", "x"],
        ["--strategy", "gpu"],
        ["--precision", "float16"],
    ],
)
def test_train_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as info:
        train_main(argv)
    assert info.value.code == 2
    assert "invalid" in capsys.readouterr().err


def test_train_rejects_output_dir_that_is_a_file(tmp_path, capsys):
    a_file = tmp_path / "taken"
    a_file.write_text("keep me")
    assert train_main(["--preset", "smoke", "--output-dir", str(a_file)]) == 2
    assert "is a file" in capsys.readouterr().err
    assert a_file.read_text() == "keep me"


def test_train_rejects_unwritable_output_dir(unwritable_dir, capsys):
    assert train_main(["--preset", "smoke", "--output-dir", str(unwritable_dir / "run")]) == 2
    assert "not writable" in capsys.readouterr().err


def test_sample_rejects_unknown_sampler(capsys):
    with pytest.raises(SystemExit) as info:
        sample_main(["--sampler", "euler"])
    assert info.value.code == 2
    assert "invalid choice: 'euler'" in capsys.readouterr().err


def test_train_without_data_says_how_to_fix(tmp_path, capsys):
    code = train_main(
        [
            "--preset",
            "smoke",
            "--output-dir",
            str(tmp_path / "out"),
            "--manual-dir",
            str(tmp_path),
            "--data-dir",
            str(tmp_path / "tfds"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "train-images-idx3-ubyte.gz" in err and "manual_dir" in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--steps", "0"], "steps=0"),
        (["--steps", "1001"], "steps=1001"),
        (["--eta", "2"], "eta=2.0"),
        (["--num-images", "0"], "num_images=0"),
        (["--output", "grid.jpg"], "output='grid.jpg'"),
        (["--gif", "anim.png"], "gif='anim.png'"),
        (["--gif", "a.gif", "--gif-frames", "1"], "gif_frames=1"),
        (["--sampler", "dpmpp_2m", "--eta", "0.5"], "eta=0.5"),
        # tiny_model is unconditional.
        (["--per-class", "2"], "need a class-conditional model"),
        (["--unconditional"], "need a class-conditional model"),
        (["--guidance-scale", "2"], "needs a class-conditional model"),
    ],
)
def test_sample_rejects_bad_values(argv, message, tmp_path, tiny_model, capsys):
    from ddpm_keras.files import save_model

    model_path = tmp_path / "m.keras"
    save_model(tiny_model, model_path)
    code = sample_main(["--model", str(model_path), "--output", str(tmp_path / "g.png"), *argv])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "g.png").exists()


def test_sample_takes_a_model_or_a_released_name_not_both(tmp_path, capsys):
    assert sample_main(["--pretrained", "no-such-model"]) == 2
    assert "Unknown pretrained model. Known: " in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        sample_main(["--pretrained", "x", "--model", str(tmp_path / "m.keras")])
    assert info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_sample_missing_or_corrupt_model(tmp_path, capsys):
    assert sample_main(["--model", str(tmp_path / "none.keras")]) == 2
    assert "No saved model" in capsys.readouterr().err
    corrupt = tmp_path / "corrupt.keras"
    corrupt.write_bytes(b"PK\x03\x04 not really a zip")
    assert sample_main(["--model", str(corrupt)]) == 2
    assert "corrupt.keras" in capsys.readouterr().err


def test_sample_shows_progress_and_writes_the_reverse_process_gif(tmp_path, tiny_model, capsys):
    from PIL import Image

    from ddpm_keras.files import save_model

    model_path = tmp_path / "m.keras"
    save_model(tiny_model, model_path)
    common = ["--model", str(model_path), "--num-images", "5", "--batch-size", "3", "--seed", "4"]
    common += ["--sampler", "dpmpp_2m", "--steps", "6"]
    gif = tmp_path / "reverse.gif"
    argv = [*common, "--output", str(tmp_path / "a.png"), "--gif", str(gif), "--gif-frames", "4"]
    assert sample_main(argv) == 0
    out = capsys.readouterr().out
    assert "12/12" in out  # 2 batches x 6 steps on the progress bar
    with Image.open(gif) as animation:
        assert animation.n_frames == 4
        # 5 images tile 3x2 with 2-pixel gaps, upscaled 3x: (2 * 10 + 2) x (3 * 10 + 2) x 3.
        assert animation.size == (96, 66)
        animation.seek(3)
        last_frame = np.asarray(animation.convert("L"), np.float32)
    # The last frame shows the final samples: the same pixels as --no-progress makes.
    assert sample_main([*common, "--output", str(tmp_path / "b.png"), "--no-progress"]) == 0
    assert "12/12" not in capsys.readouterr().out
    model = load_diffusion_model(model_path)
    images = model.generate(5, steps=6, sampler="dpmpp_2m", seed=4, batch_size=3)
    expected = np.repeat(np.repeat(tile_images(images, padding=2)[..., 0], 3, axis=0), 3, axis=1)
    np.testing.assert_allclose(last_frame, expected, atol=1.0)


def test_sample_draws_one_class_or_a_row_per_class(tmp_path, capsys):
    from ddpm_keras.files import save_model

    from .conftest import build_tiny_conditional_model

    model_path = tmp_path / "c.keras"
    save_model(build_tiny_conditional_model(), model_path)
    common = ["--model", str(model_path), "--steps", "3", "--no-progress"]
    grid = tmp_path / "boots.png"
    argv = [*common, "--class", "ankle_boot", "--num-images", "4", "--guidance-scale", "2"]
    assert sample_main([*argv, "--output", str(grid)]) == 0
    assert grid.exists()
    per_class = tmp_path / "classes.png"
    assert sample_main([*common, "--per-class", "2", "--output", str(per_class)]) == 0
    assert "Wrote 6 samples" in capsys.readouterr().out  # 3 classes x 2
    # Without --class: guided samples, a row per class, sized by --num-images.
    for argv, count in [([], 3 * 6), (["--num-images", "7"], 3 * 2), (["--unconditional"], 36)]:
        assert sample_main([*common, *argv, "--output", str(tmp_path / "d.png")]) == 0
        assert f"Wrote {count} samples" in capsys.readouterr().out
    for argv, message in [
        (["--class", "sneaker"], "labels='sneaker'"),
        (["--class", "7"], "labels=7"),
        (["--per-class", "0"], "per_class=0"),
        (["--per-class", "2", "--class", "trouser"], "Give one of"),
        (["--unconditional", "--per-class", "2"], "Give one of"),
        (["--unconditional", "--guidance-scale", "2"], "not `--unconditional`"),
    ]:
        assert sample_main([*common, *argv, "--output", str(tmp_path / "x.png")]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_every_config_field_has_a_train_flag_with_its_doc():
    import dataclasses
    import re

    from ddpm_keras.cli import train_parser
    from ddpm_keras.config import DiffusionConfig, field_docs

    help_text = train_parser().format_help()
    flags = set(re.findall(r"--([a-z0-9-]+)", help_text))
    docs = field_docs()
    for field in dataclasses.fields(DiffusionConfig):
        assert field.name.replace("_", "-") in flags, field.name
        # The doc is the field's own: its first words appear in the help.
        first_words = " ".join(docs[field.name].split()[:3])
        assert first_words in " ".join(help_text.split()), field.name


def test_generated_flags_parse_into_the_config(tmp_path):
    from ddpm_keras.cli import config_from_args, train_parser

    argv = ["--preset", "smoke", "--channel-multipliers", "1", "2", "2", "--no-attention"]
    argv += ["--sampler", "dpmpp_2m", "--sample-steps", "7", "--eta", "0", "--norm-groups", "2"]
    argv += ["--min-snr-gamma", "5", "--output-dir", str(tmp_path)]
    config = config_from_args(train_parser().parse_args(argv))
    assert config.channel_multipliers == (1, 2, 2) and config.attention is False
    assert (config.sampler, config.sample_steps, config.norm_groups) == ("dpmpp_2m", 7, 2)
    assert config.min_snr_gamma == 5.0
    # Unset flags keep the preset's values.
    assert config.base_channels == 8 and config.epochs == 2


def load_train_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_script", REPO_ROOT / "scripts/train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_train_script_and_train_write_the_same_artifacts(tmp_path, monkeypatch):
    import ddpm_keras.training
    from ddpm_keras.config import get_config

    script = load_train_script()
    use_fake_data(monkeypatch, ddpm_keras.training, script)
    flags = {"epochs": 1, "sample_steps": 2, "num_samples": 4, "batch_size": 16}
    config = get_config("smoke", output_dir=str(tmp_path / "api"), **flags)
    ddpm_keras.training.train(config)
    argv = ["--preset", "smoke", "--output-dir", str(tmp_path / "script")]
    for name, value in flags.items():
        argv += ["--" + name.replace("_", "-"), str(value)]
    assert script.main(argv) == 0

    def artifacts(run):
        root = tmp_path / run
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())

    assert artifacts("api") == artifacts("script")
    assert {"history.csv", "metrics.json", "model.keras", "config.json"} <= set(artifacts("api"))
    api = json.loads((tmp_path / "api" / "metrics.json").read_text())
    from_script = json.loads((tmp_path / "script" / "metrics.json").read_text())
    # The same config and seed on one machine: the same losses.
    np.testing.assert_allclose(
        [r["loss"] for r in api], [r["loss"] for r in from_script], rtol=1e-6
    )
    history = (tmp_path / "api" / "history.csv").read_text().splitlines()
    assert history[0].startswith("epoch") and len(history) == 2


def test_a_callback_bug_inside_fit_keeps_its_traceback_and_a_bad_flag_is_one_line(
    tmp_path, monkeypatch, capsys
):
    import keras

    import ddpm_keras.training
    from ddpm_keras.cli import config_from_args, train_parser, user_errors_exit

    use_fake_data(monkeypatch)

    class BuggyCallback(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            raise ValueError("a bug in the user's callback")

    @user_errors_exit
    def main(argv):
        config = config_from_args(train_parser().parse_args(argv))
        ddpm_keras.training.train(config, callbacks=[BuggyCallback()])
        return 0

    argv = ["--preset", "smoke", "--output-dir", str(tmp_path), "--epochs", "1"]
    with pytest.raises(ValueError, match="a bug in the user's callback"):
        main([*argv, "--batch-size", "16"])
    assert main([*argv, "--batch-size", "0"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == (
        "error: `batch_size` must be >= 1. Received: batch_size=0"
    )


@pytest.mark.parametrize(
    "error, expected",
    [
        (OSError(28, "No space left on device", "/run/model.keras"), "No space left"),
        (PermissionError(13, "Permission denied", "/run/config.json"), "Permission denied"),
        (MemoryError(), "Out of memory. Lower --batch-size"),
    ],
)
def test_disk_full_permission_and_memory_errors_are_one_line(error, expected, capsys):
    from ddpm_keras.cli import user_errors_exit

    @user_errors_exit
    def main(argv):
        raise error

    assert main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {expected}") and len(err.strip().splitlines()) == 1
    if error.__class__ is not MemoryError:
        assert repr(error.filename) in err


def test_out_of_memory_in_tensorflow_is_one_line(capsys):
    import tensorflow as tf

    from ddpm_keras.cli import user_errors_exit

    @user_errors_exit
    def main(argv):
        raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")

    assert main([]) == 2
    assert "Out of memory" in capsys.readouterr().err


def test_other_os_errors_are_bugs_and_keep_their_traceback():
    from ddpm_keras.cli import user_errors_exit

    @user_errors_exit
    def main(argv):
        raise FileNotFoundError(2, "No such file or directory", "/internal/asset.npz")

    with pytest.raises(FileNotFoundError):
        main([])


def test_ctrl_c_is_one_line_saying_how_to_resume(capsys):
    from ddpm_keras.cli import user_errors_exit

    @user_errors_exit
    def main(argv):
        raise KeyboardInterrupt

    assert main([]) == 130
    err = capsys.readouterr().err.strip()
    assert err.startswith("Interrupted. Re-run the same command to resume")
    assert "after the last completed epoch" in err and "after the last scored row" in err


def test_overwrite_is_a_flag_of_the_run_not_a_config_field():
    from ddpm_keras.cli import config_from_args, train_parser

    args = train_parser().parse_args(["--preset", "smoke", "--overwrite"])
    assert args.overwrite is True
    assert "overwrite" not in config_from_args(args).to_dict()


@pytest.mark.slow
def test_a_labelled_image_folder_trains_then_samples_a_class_in_new_processes(tmp_path):
    folder = write_solid_folder(str(tmp_path / "images"), ("cat", "dog"), 24, size=(20, 30))
    output_dir = tmp_path / "run"
    result = run_script(
        "train.py",
        *("--preset", "smoke", "--image-dir", folder, "--image-size", "32", "--channels", "3"),
        *("--class-conditional", "--epochs", "1", "--batch-size", "8"),
        *("--output-dir", str(output_dir)),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Found 48 images" in result.stdout and "2 classes (cat, dog)" in result.stdout
    grid = tmp_path / "dogs.png"
    result = run_script(
        "sample.py",
        *("--model", str(output_dir / "model.keras"), "--class", "dog", "--num-images", "4"),
        *("--steps", "3", "--no-progress", "--output", str(grid)),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert grid.read_bytes()[:4] == b"\x89PNG"
    model = load_diffusion_model(output_dir / "model.keras")
    assert model.image_shape == (32, 32, 3) and model.class_names == ["cat", "dog"]
    images = model.generate(2, steps=3, seed=0, labels="cat")
    assert images.shape == (2, 32, 32, 3) and np.isfinite(images).all()


def test_a_flat_folder_trains_and_evaluates_against_its_held_out_images(tmp_path, capsys):
    from ddpm_keras.cli import evaluate_main

    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    for index in range(40):
        write_image(folder / f"{index:02d}.jpg", rng.integers(0, 256, (10, 10, 3)))
    output_dir = tmp_path / "run"
    argv = ["--preset", "smoke", "--image-dir", str(folder), "--image-size", "8"]
    argv += ["--epochs", "1", "--batch-size", "8", "--output-dir", str(output_dir)]
    assert train_main(argv) == 0
    model_path = str(output_dir / "model.keras")
    assert load_diffusion_model(model_path).image_shape == (8, 8, 3)
    common = ["--model", model_path, "--settings", "ddim:2", "--num-samples", "8"]
    common += ["--output-dir", str(tmp_path / "evaluation")]
    capsys.readouterr()
    assert evaluate_main(common) == 2
    assert "--extractor inception" in capsys.readouterr().err
    assert evaluate_main([*common, "--extractor", "fmnist"]) == 0
    report = json.loads((tmp_path / "evaluation" / "evaluation.json").read_text())
    assert report["reference_examples"] == 8  # 5% of 40 is 2: one batch of 8 held out
    assert report["data"] == str(folder) and [row["source"] for row in report["rows"]] == [
        "real",
        "model",
    ]
    moved = tmp_path / "moved"
    folder.rename(moved)
    assert evaluate_main([*common, "--extractor", "fmnist", "--image-dir", str(moved)]) == 0
    moved_report = json.loads((tmp_path / "evaluation" / "evaluation.json").read_text())
    assert moved_report["rows"][0]["fid"] == report["rows"][0]["fid"]  # the same images
