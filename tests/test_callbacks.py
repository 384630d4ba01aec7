import csv
import json
import pathlib

import keras
import numpy as np
import pytest

from ddpm_keras.callbacks import (
    AtomicBackupAndRestore,
    FIDCallback,
    MetricsJSON,
    ModelCheckpoints,
    NonFiniteLossError,
    NonFiniteLossGuard,
    SampleGrid,
    default_callbacks,
)
from ddpm_keras.config import get_config
from ddpm_keras.errors import ConfigError
from ddpm_keras.features import FeatureExtractor
from ddpm_keras.files import tile_images
from ddpm_keras.metrics import FeatureStatistics, frechet_distance, kernel_inception_distance
from ddpm_keras.model import load_diffusion_model


@pytest.fixture
def images():
    return np.random.default_rng(0).uniform(-1, 1, (32, 8, 8, 1)).astype(np.float32)


def test_our_callbacks_beside_plain_keras_ones(tiny_model, images, tmp_path):
    tiny_model.compile(optimizer=keras.optimizers.Adam(1e-3))
    seen_epochs = []
    callbacks = [
        ModelCheckpoints(tmp_path / "checkpoints"),
        MetricsJSON(tmp_path / "metrics.json"),
        SampleGrid(tmp_path / "samples", tmp_path / "final.png", every=2, num_images=4, steps=3),
        keras.callbacks.CSVLogger(str(tmp_path / "keras_history.csv")),
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=10),
        keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: seen_epochs.append(epoch)),
    ]
    tiny_model.fit(
        images,
        validation_data=images[:16],
        batch_size=16,
        epochs=3,
        callbacks=callbacks,
        verbose=0,
    )
    assert seen_epochs == [0, 1, 2]

    records = json.loads((tmp_path / "metrics.json").read_text())
    assert [r["epoch"] for r in records] == [1, 2, 3]
    for record in records:
        assert {"loss", "val_loss", "learning_rate", "time_s"} <= set(record)
        assert record["learning_rate"] == pytest.approx(1e-3)
        assert record["time_s"] > 0
    with open(tmp_path / "keras_history.csv") as file:
        assert len(list(csv.DictReader(file))) == 3

    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == ["epoch_002.png"]
    assert (tmp_path / "final.png").read_bytes()[:4] == b"\x89PNG"

    best_val = min(r["val_loss"] for r in records)
    last = load_diffusion_model(tmp_path / "checkpoints" / "last.keras")
    best = load_diffusion_model(tmp_path / "checkpoints" / "best.keras")
    assert callbacks[0].best == pytest.approx(best_val)
    for saved, current in zip(
        last.ema_network.get_weights(), tiny_model.ema_network.get_weights(), strict=True
    ):
        np.testing.assert_array_equal(saved, current)
    assert best.image_shape == (8, 8, 1)


def read_events(directory):
    """{tag: [(step, value proto), ...]} from the TensorBoard event files in `directory`."""
    import tensorflow as tf

    events = {}
    for path in sorted(pathlib.Path(directory).glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                events.setdefault(value.tag, []).append((event.step, value))
    return events


def test_tensorboard_gets_scalars_and_sample_grids(tiny_model, images, tmp_path):
    import tensorflow as tf

    tiny_model.compile(optimizer=keras.optimizers.Adam(1e-3))
    log_dir = tmp_path / "tensorboard"
    callbacks = [
        SampleGrid(
            tmp_path / "samples", every=1, num_images=4, steps=2, seed=5, tensorboard_dir=log_dir
        ),
        keras.callbacks.TensorBoard(str(log_dir)),
    ]
    tiny_model.fit(
        images, validation_data=images[:16], batch_size=16, epochs=2, callbacks=callbacks, verbose=0
    )
    train = read_events(log_dir / "train")
    validation = read_events(log_dir / "validation")
    samples = read_events(log_dir / "samples")
    for events, tag in (
        (train, "epoch_loss"),
        (train, "epoch_learning_rate"),
        (validation, "epoch_loss"),
    ):
        assert [step for step, _ in events[tag]] == [0, 1], tag
        assert all(np.isfinite(tf.make_ndarray(value.tensor)) for _, value in events[tag])
    assert tf.make_ndarray(train["epoch_learning_rate"][0][1].tensor) == pytest.approx(1e-3)

    assert [step for step, _ in samples["samples"]] == [0, 1]
    width, height, png = tf.make_ndarray(samples["samples"][1][1].tensor)
    grid = tf.io.decode_png(png).numpy()
    assert (int(width), int(height)) == (16, 16) and grid.shape == (16, 16, 1)
    # The logged image is the plain tiling of that epoch's samples (the PNG
    # draws the same samples with a title and padding). The last epoch's
    # weights are the final ones, so the same settings and seed sample them
    # again; the PNG in the event keeps the uint8 pixels exactly.
    samples_again = tiny_model.generate(4, steps=2, sampler="ddim", eta=0.0, seed=5)
    np.testing.assert_array_equal(grid, tile_images(samples_again))


def test_metrics_json_and_history_csv_continue_a_resumed_run(tiny_model, tmp_path):
    tiny_model.compile(optimizer=keras.optimizers.Adam(2e-4))
    path = tmp_path / "metrics.json"
    callback = MetricsJSON(path, csv_path=tmp_path / "history.csv")
    callback.set_model(tiny_model)
    for epoch in range(3):  # first run: epochs 1-3 recorded
        callback.on_epoch_begin(epoch)
        callback.on_epoch_end(epoch, {"loss": 1.0 / (epoch + 1)})
    for epoch in (1, 2):  # resumed from the end of epoch 1: 2 and 3 again
        callback.on_epoch_begin(epoch)
        callback.on_epoch_end(epoch, {"loss": 5.0})
    records = json.loads(path.read_text())
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert [r["loss"] for r in records] == [1.0, 5.0, 5.0]
    with open(tmp_path / "history.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert list(rows[0]) == ["epoch", "learning_rate", "loss", "time_s"]
    assert [(int(r["epoch"]), float(r["loss"])) for r in rows] == [(1, 1.0), (2, 5.0), (3, 5.0)]


def test_default_callbacks_follow_the_config(tmp_path):
    config = get_config("smoke", output_dir=str(tmp_path))
    callbacks = default_callbacks(config)
    kinds = [type(c) for c in callbacks]
    # The backup last: an epoch is "done" only after all else recorded it.
    assert kinds == [
        NonFiniteLossGuard,
        ModelCheckpoints,
        MetricsJSON,
        SampleGrid,
        AtomicBackupAndRestore,
    ]
    assert callbacks[0].checkpoint_hint == callbacks[1].last_path
    assert callbacks[2].csv_path == config.history_path
    assert callbacks[-1].backup_dir == config.backup_dir
    grid = callbacks[3]
    assert grid.settings.steps == config.sample_steps and grid.every == config.sample_every
    assert grid.tensorboard_dir is None
    with pytest.raises(ValueError, match="every=-1"):
        SampleGrid(tmp_path, every=-1)


def test_default_callbacks_with_tensorboard(tmp_path):
    config = get_config("smoke", output_dir=str(tmp_path), tensorboard=True)
    callbacks = default_callbacks(config)
    kinds = [type(c) for c in callbacks]
    assert kinds[-2:] == [keras.callbacks.TensorBoard, AtomicBackupAndRestore]
    assert callbacks[-2].log_dir == config.tensorboard_dir == str(tmp_path / "tensorboard")
    assert callbacks[3].tensorboard_dir == config.tensorboard_dir


def test_checkpoints_keep_the_best_across_a_resume(tiny_model, tmp_path):
    def fit_epochs(start, values):
        checkpoints = ModelCheckpoints(tmp_path)
        checkpoints.set_model(tiny_model)
        checkpoints.on_train_begin()
        for epoch, value in enumerate(values, start):
            checkpoints.on_epoch_begin(epoch)
            checkpoints.on_epoch_end(epoch, {"val_loss": value})
        return json.loads((tmp_path / "best.json").read_text())

    assert fit_epochs(0, [0.5, 0.3]) == {"epoch": 2, "monitor": "val_loss", "value": 0.3}
    best_mtime = (tmp_path / "best.keras").stat().st_mtime_ns
    # Resumed at epoch 3: a worse value does not replace the best model.
    assert fit_epochs(2, [0.4])["epoch"] == 2
    assert (tmp_path / "best.keras").stat().st_mtime_ns == best_mtime
    assert fit_epochs(3, [0.2])["epoch"] == 4
    # A run from epoch 1 in the same folder starts anew.
    assert fit_epochs(0, [0.9]) == {"epoch": 1, "monitor": "val_loss", "value": 0.9}


def test_default_callbacks_score_fid_before_recording_the_logs(tmp_path):
    config = get_config(
        "smoke", output_dir=str(tmp_path), fid_every=2, fid_num_samples=40, sample_steps=8
    )
    callbacks = default_callbacks(config)
    kinds = [type(c) for c in callbacks]
    assert kinds[:4] == [NonFiniteLossGuard, FIDCallback, ModelCheckpoints, MetricsJSON]
    fid = callbacks[1]
    assert (fid.every, fid.num_samples) == (2, 40)
    assert (fid.settings.steps, fid.settings.sampler) == (8, "ddim")
    assert fid.extractor.name == "fmnist"
    with pytest.raises(
        ValueError, match="needs dataset='fashion_mnist', not 'mnist'.*Received: fid_every=1"
    ):
        get_config("smoke", dataset="mnist", fid_every=1)


class PoisonWeights(keras.callbacks.Callback):
    """Sets one weight to NaN before a chosen step, as a diverging run would."""

    def __init__(self, epoch, batch):
        super().__init__()
        self.target = (epoch, batch)
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if (self.epoch, batch) == self.target:
            weight = self.model.network.trainable_weights[0]
            weight.assign(np.full(weight.shape, np.nan, np.float32))


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tiny_model, images, tmp_path):
    tiny_model.compile(optimizer=keras.optimizers.Adam(1e-3))
    checkpoints = tmp_path / "checkpoints"
    callbacks = [
        NonFiniteLossGuard(checkpoint_hint=str(checkpoints / "last.keras")),
        ModelCheckpoints(checkpoints),
        MetricsJSON(tmp_path / "metrics.json"),
        PoisonWeights(epoch=1, batch=1),
    ]
    with pytest.raises(NonFiniteLossError, match=r"at epoch 2, step 2\..*last\.keras"):
        tiny_model.fit(images, batch_size=8, epochs=3, callbacks=callbacks, verbose=0)
    # Epoch 1's checkpoint is intact, finite and the only one recorded.
    saved = load_diffusion_model(checkpoints / "last.keras")
    assert all(np.all(np.isfinite(w)) for w in saved.get_weights())
    assert [r["epoch"] for r in json.loads((tmp_path / "metrics.json").read_text())] == [1]


def toy_extractor():
    """A fixed random projection of 8x8 images: features without a trained network."""
    keras.utils.set_random_seed(1)
    projection = keras.Sequential(
        [keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(6, activation="tanh")]
    )
    return FeatureExtractor(projection, "toy")


def test_fid_callback_feeds_checkpoint_metrics_json_and_history(tiny_model, tmp_path):
    reference = np.random.default_rng(3).uniform(0, 1, (40, 8, 8, 1)).astype(np.float32)
    extractor = toy_extractor()
    fid = FIDCallback(extractor, reference, num_samples=12, steps=2, seed=4, kid_subsets=3)
    best_path = tmp_path / "best_fid.keras"
    callbacks = [
        fid,
        keras.callbacks.ModelCheckpoint(
            str(best_path), monitor="val_fid", mode="min", save_best_only=True
        ),
        MetricsJSON(tmp_path / "metrics.json"),
    ]
    tiny_model.compile(optimizer=keras.optimizers.Adam(3e-3))
    images = np.random.default_rng(0).uniform(-1, 1, (32, 8, 8, 1)).astype(np.float32)
    history = tiny_model.fit(images, batch_size=16, epochs=2, callbacks=callbacks, verbose=0)

    records = json.loads((tmp_path / "metrics.json").read_text())
    fids = [r["val_fid"] for r in records]
    assert fids == pytest.approx(history.history["val_fid"])
    assert all(np.isfinite(fids)) and all(np.isfinite([r["val_kid"] for r in records]))
    assert callbacks[1].best == pytest.approx(min(fids))
    assert best_path.is_file()

    # The logged values are what the metrics give on the same samples.
    samples = tiny_model.generate(12, steps=2, seed=4)
    assert fids[-1] == pytest.approx(frechet_distance(extractor(samples), extractor(reference)))
    kid = kernel_inception_distance(
        extractor(samples), extractor(reference), num_subsets=3, subset_size=12, seed=4
    )
    assert records[-1]["val_kid"] == pytest.approx(kid[0])


def test_fid_callback_with_statistics_and_an_interval(tiny_model):
    extractor = toy_extractor()
    reference = np.random.default_rng(3).uniform(0, 1, (40, 8, 8, 1)).astype(np.float32)
    statistics = FeatureStatistics.from_features(extractor(reference))
    fid = FIDCallback(extractor, statistics, num_samples=6, every=2, steps=2)
    fid.set_model(tiny_model)
    logs = {"loss": 1.0}
    fid.on_epoch_end(0, logs)  # epoch 1 of every 2: skipped
    assert logs == {"loss": 1.0}
    fid.on_epoch_end(1, logs)
    assert np.isfinite(logs["val_fid"]) and "val_kid" not in logs  # no images, no KID


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_samples": 1}, "num_samples=1"),
        ({"every": 0}, "every=0"),
        ({"reference": np.zeros((8, 8, 1))}, r"shape \(8, 8, 1\)"),
    ],
)
def test_fid_callback_rejects_bad_arguments(kwargs, message):
    arguments = {"extractor": None, "reference": np.zeros((4, 8, 8, 1))} | kwargs
    with pytest.raises(ValueError, match=message):
        FIDCallback(**arguments)


def test_backup_falls_back_to_the_previous_state_when_the_newest_is_unreadable(
    tiny_model, images, tmp_path, capsys
):
    from ddpm_keras.callbacks.checkpoints import backup_path, backup_states
    from ddpm_keras.files import save_model_weights

    tiny_model.compile(optimizer=keras.optimizers.Adam(1e-3))
    backup = AtomicBackupAndRestore(tmp_path)
    tiny_model.fit(images, batch_size=16, epochs=2, callbacks=[backup], verbose=0)
    # Kept after training, for an extension: the final state only.
    assert [epoch for epoch, _ in backup_states(tmp_path)] == [2]
    after_epoch_2 = [w.copy() for w in tiny_model.get_weights()]
    backup.on_train_end()  # nothing more to delete
    # An extension to 3 epochs resumes after epoch 2; then state 2 is put back
    # beside state 3 (as a kill before the final pruning leaves them), and
    # state 3 is damaged.
    tiny_model.fit(images, batch_size=16, epochs=3, callbacks=[backup], verbose=0)
    assert int(tiny_model.optimizer.iterations.numpy()) == 3 * 2
    tiny_model.set_weights(after_epoch_2)
    save_model_weights(tiny_model, backup_path(tmp_path, 2))
    with open(backup_path(tmp_path, 3), "r+b") as file:
        file.truncate(100)
    capsys.readouterr()

    restored = AtomicBackupAndRestore(tmp_path)
    restored.set_model(tiny_model)
    restored.on_train_begin()
    out = capsys.readouterr()
    assert "could not read the newest backup" in out.err and "epoch-0002" in out.err
    assert tiny_model._initial_epoch == 2 and "Resuming after epoch 2" in out.out
    for restored_weight, expected in zip(tiny_model.get_weights(), after_epoch_2, strict=True):
        np.testing.assert_array_equal(restored_weight, expected)

    # When no backup can be read: a one-line ConfigError, never a silent restart.
    with open(backup_path(tmp_path, 2), "r+b") as file:
        file.truncate(100)
    with pytest.raises(ConfigError, match="No backup .* can be read.*--overwrite"):
        restored.on_train_begin()


def test_a_run_interrupted_under_keras_backup_and_restore_resumes(tiny_model, images, tmp_path):
    # Earlier versions backed up with keras.callbacks.BackupAndRestore.
    class StopAtEpoch2(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 2:
                raise RuntimeError("interrupted")

    tiny_model.compile(optimizer=keras.optimizers.Adam(1e-3))
    old_backup = keras.callbacks.BackupAndRestore(str(tmp_path))
    with pytest.raises(RuntimeError, match="interrupted"):
        tiny_model.fit(
            images, batch_size=16, epochs=4, callbacks=[old_backup, StopAtEpoch2()], verbose=0
        )
    history = tiny_model.fit(
        images, batch_size=16, epochs=4, callbacks=[AtomicBackupAndRestore(tmp_path)], verbose=0
    )
    assert len(history.history["loss"]) == 2  # epochs 3 and 4 only
    assert int(tiny_model.optimizer.iterations.numpy()) == 4 * 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-0004.weights.h5"]
