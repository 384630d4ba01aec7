"""The output directory of a run: identity, progress, overwrite, and the seed's order."""

import dataclasses
import random
import re

import numpy as np
import pytest

from ddpm_keras.config import RESUMABLE_FIELDS, DiffusionConfig, get_config
from ddpm_keras.errors import ConfigError
from ddpm_keras.run_dir import (
    RunProgress,
    check_same_run,
    clear_run,
    recorded_config,
    run_artifacts,
    run_differences,
)

from .conftest import REPO_ROOT


def test_only_resumable_fields_may_differ_and_every_other_difference_is_listed(tmp_path):
    recorded = get_config("smoke", output_dir=str(tmp_path)).to_dict()
    same = get_config("smoke", output_dir=str(tmp_path / "moved"), epochs=9, sample_every=3)
    assert run_differences(recorded, same) == []
    changed = get_config("smoke", output_dir=str(tmp_path), base_channels=16, schedule="cosine")
    assert run_differences(recorded, changed) == [
        ("schedule", "linear", "cosine"),
        ("base_channels", 8, 16),
    ]
    with pytest.raises(ConfigError) as error:
        check_same_run(recorded, changed)
    message = str(error.value)
    assert "schedule 'linear' -> 'cosine', base_channels 8 -> 16" in message
    assert "--output-dir" in message and "--overwrite" in message and "\n" not in message


def test_a_field_missing_from_an_older_config_json_counts_as_its_default(tmp_path):
    config = get_config("smoke", output_dir=str(tmp_path))
    recorded = config.to_dict()
    del recorded["min_snr_gamma"]  # a field added after that run
    assert run_differences(recorded, config) == []
    assert run_differences(recorded, config.replace(min_snr_gamma=5.0)) == [
        ("min_snr_gamma", None, 5.0)
    ]


def test_the_docs_list_exactly_the_resumable_fields():
    text = (REPO_ROOT / "docs" / "reliability.md").read_text()
    section = text.split("may change when a run resumes", 1)[1].split("\n\n", 2)[1]
    listed = set(re.findall(r"`([a-z_]+)`", section))
    assert listed == set(RESUMABLE_FIELDS)
    assert RESUMABLE_FIELDS < {field.name for field in dataclasses.fields(DiffusionConfig)}


def test_an_unreadable_config_json_is_a_clear_error(tmp_path):
    assert recorded_config(tmp_path) is None
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="config.json cannot be read"):
        recorded_config(tmp_path)


def test_overwrite_deletes_the_run_and_nothing_else(tmp_path):
    config = get_config("smoke", output_dir=str(tmp_path))
    for path in run_artifacts(config):
        if path.endswith((".json", ".csv", ".png", ".keras")):
            open(path, "w").close()
        else:
            (tmp_path / path).mkdir()
            (tmp_path / path / "file").write_text("x")
    (tmp_path / "notes.txt").write_text("the user's own file")
    assert set(clear_run(config)) == {p.rsplit("/", 1)[-1] for p in run_artifacts(config)}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_progress_tells_a_finished_run_from_an_interrupted_one(tmp_path):
    config = get_config("smoke", output_dir=str(tmp_path), epochs=3)
    assert RunProgress.of(config) == RunProgress(0, False)
    (tmp_path / "backup").mkdir()
    for name in ("epoch-0001.weights.h5", "epoch-0002.weights.h5", ".epoch-0003.x.tmp.weights.h5"):
        (tmp_path / "backup" / name).write_bytes(b"")
    progress = RunProgress.of(config)
    assert progress == RunProgress(2, False) and not progress.is_complete(3)
    (tmp_path / "model.keras").write_bytes(b"")
    assert RunProgress.of(config).is_complete(2) and not RunProgress.of(config).is_complete(3)


def test_the_seed_gives_the_same_weights_whether_or_not_the_data_was_just_prepared(
    tmp_path, monkeypatch
):
    # TFDS' first preparation of a dataset draws from Python's `random` (for
    # its temporary folder names); later runs do not. Keras seeds its weight
    # initialisers from `random`, so seeding must come after the preparation.
    import ddpm_keras.training
    from ddpm_keras.model import build_model

    def weights_after_start(prepare, output_dir):
        monkeypatch.setattr(ddpm_keras.training, "prepare_data", prepare)
        config = get_config("smoke", output_dir=str(output_dir))
        ddpm_keras.training.start_run(config)
        ddpm_keras.training.unlock_output_dir(config.output_dir)
        return build_model(config, (8, 8, 1)).network.get_weights()

    first_preparation = weights_after_start(lambda config: random.random(), tmp_path / "a")
    already_prepared = weights_after_start(lambda config: None, tmp_path / "b")
    for first, later in zip(first_preparation, already_prepared, strict=True):
        np.testing.assert_array_equal(first, later)


def test_a_backup_left_by_keras_backup_and_restore_counts(tmp_path):
    # What the earlier versions' keras.callbacks.BackupAndRestore left.
    config = get_config("smoke", output_dir=str(tmp_path), epochs=3)
    (tmp_path / "backup").mkdir()
    (tmp_path / "backup" / "latest.weights.h5").write_bytes(b"")
    (tmp_path / "backup" / "training_metadata.json").write_text('{"epoch": 2, "batch": 0}')
    assert RunProgress.of(config) == RunProgress(2, False)
