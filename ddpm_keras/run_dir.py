"""The output directory of a training run: its lock, its identity and its progress.

One run owns one output directory. `ddpm_keras.training.start_run` uses
these functions before anything is written:

- `lock_output_dir`: an OS lock (`flock`) on `<output_dir>/.lock`, held by the
  process for the run's whole life and released by the OS when it dies, so
  a `kill -9` leaves no stale lock. A second run on the directory is refused
  and told which process holds it.
- `run_differences`: the requested config against the directory's
  `config.json`. Only `config.RESUMABLE_FIELDS` may differ; any other
  difference is a different run and is refused (`check_same_run`).
- `RunProgress`: how many epochs the backups hold and whether `model.keras`
  exists, which tells a finished run from an interrupted one.
- `clear_run`: what `--overwrite` deletes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

from ddpm_keras.callbacks.checkpoints import backup_states
from ddpm_keras.config import RESUMABLE_FIELDS, DiffusionConfig
from ddpm_keras.errors import ConfigError

LOCK_NAME = ".lock"

# File descriptors of the locks this process holds, by real path.
_held_locks: dict[str, int] = {}


def lock_output_dir(output_dir):
    """Takes the run lock of `output_dir` for this process (kept until it exits).

    Taking a lock this process already holds does nothing, so one process
    (a notebook, say) may train in the same directory twice.

    Raises:
        ConfigError: Another live process holds the lock; names its PID.
    """
    import fcntl

    key = os.path.realpath(output_dir)
    if key in _held_locks:
        return
    path = os.path.join(output_dir, LOCK_NAME)
    handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(handle, 64).decode(errors="replace").strip() or "unknown"
        os.close(handle)
        raise ConfigError(
            f"Another run (process {holder}) is using this output directory. Wait for it "
            "to finish, stop it (re-running the same command then resumes it), or pass "
            f"another --output-dir. Received: output_dir={os.fspath(output_dir)!r}"
        ) from None
    # The holder's PID, for the message above; the lock itself is the flock.
    os.ftruncate(handle, 0)
    os.write(handle, f"{os.getpid()}\n".encode())
    _held_locks[key] = handle


def unlock_output_dir(output_dir):
    """Releases the run lock `lock_output_dir` took (no-op if not held)."""
    handle = _held_locks.pop(os.path.realpath(output_dir), None)
    if handle is not None:
        os.close(handle)  # closing the last descriptor releases a flock


def recorded_config(output_dir):
    """The `config.json` of `output_dir` as a dict, or `None` if there is none.

    Raises:
        ConfigError: The file exists but is not a JSON object.
    """
    path = os.path.join(output_dir, "config.json")
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as file:
            recorded = json.load(file)
    except (OSError, ValueError) as error:
        raise ConfigError(
            f"The run's config.json cannot be read ({error}). Restore it, or start anew "
            f"with --overwrite or another --output-dir. Received: path={path!r}"
        ) from error
    if not isinstance(recorded, dict):
        raise ConfigError(f"The run's config.json is not a JSON object. Received: path={path!r}")
    return recorded


def run_differences(recorded: dict, config: DiffusionConfig):
    """The fields that make `config` a different run from the `recorded` one.

    Returns:
        `(name, recorded_value, requested_value)` for each field outside
        `RESUMABLE_FIELDS` whose value differs. A field missing from an older
        `config.json` counts as its default.
    """
    requested = config.to_dict()
    differences = []
    for field in dataclasses.fields(DiffusionConfig):
        if field.name in RESUMABLE_FIELDS:
            continue
        old = recorded.get(field.name, field.default)
        if old != requested[field.name]:
            differences.append((field.name, old, requested[field.name]))
    return differences


def check_same_run(recorded: dict, config: DiffusionConfig):
    """Refuses `config` if it is a different run from the one in its output directory.

    Raises:
        ConfigError: Listing every differing field with its recorded and
            requested values, and the two ways on.
    """
    differences = run_differences(recorded, config)
    if not differences:
        return
    listed = ", ".join(f"{name} {old!r} -> {new!r}" for name, old, new in differences)
    raise ConfigError(
        f"The output directory holds a different run: {listed} (recorded in its "
        "config.json -> requested). Nothing was changed. To resume that run, drop "
        "these flags; to start a new one, pass another --output-dir, or --overwrite "
        f"to delete this run first. Received: output_dir={config.output_dir!r}"
    )


# What a run writes under its output directory (see `training.train`); all
# that `--overwrite` deletes. Other files there are left alone.
def run_artifacts(config: DiffusionConfig):
    """The paths of the files and folders a run of `config` writes."""
    return [
        os.path.join(config.output_dir, "config.json"),
        config.checkpoint_dir,
        config.backup_dir,
        config.samples_dir,
        config.tensorboard_dir,
        config.image_cache_dir,
        config.metrics_path,
        config.history_path,
        config.samples_path,
        config.model_path,
    ]


def clear_run(config: DiffusionConfig):
    """Deletes the run in `config.output_dir` (`--overwrite`). Returns what it deleted."""
    deleted = []
    for path in run_artifacts(config):
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)
        else:
            continue
        deleted.append(os.path.basename(path))
    return deleted


@dataclasses.dataclass(frozen=True)
class RunProgress:
    """How far the run in an output directory got.

    Attributes:
        completed_epochs: Epochs of the newest backup (0: none).
        has_model: `model.keras` exists: training ran to its end once.
    """

    completed_epochs: int
    has_model: bool

    @classmethod
    def of(cls, config: DiffusionConfig, backup_dir=None) -> RunProgress:
        """The progress of `config`'s run (its backups in `backup_dir`, default `config.backup_dir`)."""
        states = backup_states(backup_dir or config.backup_dir)
        return cls(states[0][0] if states else 0, os.path.exists(config.model_path))

    def is_complete(self, epochs):
        """Training to `epochs` epochs is done and its model saved."""
        return self.has_model and self.completed_epochs >= epochs
