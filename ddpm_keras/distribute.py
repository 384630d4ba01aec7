"""Distribution strategies: which devices a run trains on, and who writes files.

Everything here is TensorFlow's own engine (`tf.distribute`); this module only
picks the strategy a config names and refuses combinations known to fail.
"""

from __future__ import annotations

import json
import os
import tempfile

import tensorflow as tf

from ddpm_keras.config import check_devices
from ddpm_keras.errors import ConfigError


def make_strategy(name="auto", devices=None):
    """Creates the `tf.distribute.Strategy` a run trains under.

    Create it first thing in the program: `MultiWorkerMirroredStrategy` must
    exist before TensorFlow runs any op.

    Args:
        name: `"auto"` (`MirroredStrategy` when more than one GPU is visible,
            else the default strategy), `"default"` (one device),
            `"mirrored"` (`MirroredStrategy` over `devices`, or all GPUs, or
            the CPU), `"multiworker"` (`MultiWorkerMirroredStrategy`, cluster
            read from the `TF_CONFIG` environment variable) or `"tpu"`
            (`TPUStrategy` on the TPU found by `TPUClusterResolver`).
        devices: Device names for `"mirrored"`, e.g. `["GPU:0", "GPU:1"]`.

    Returns:
        A `tf.distribute.Strategy`.
    """
    check_devices(devices, name)
    if name == "auto":
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        if devices:
            _check_devices_exist(devices)
        return tf.distribute.MirroredStrategy(devices=list(devices) if devices else None)
    if name == "multiworker":
        _check_tf_config()
        return tf.distribute.MultiWorkerMirroredStrategy()
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def _device_key(name):
    spec = tf.DeviceSpec.from_string(name)
    return (spec.device_type or "").upper(), spec.device_index


def _check_devices_exist(devices):
    """MirroredStrategy accepts any name and fails only later, inside `fit`."""
    available = [device.name for device in tf.config.list_logical_devices()]
    available_keys = {_device_key(name) for name in available}
    for device in devices:
        try:
            key = _device_key(device)
        except ValueError:
            key = None
        if key not in available_keys:
            raise ConfigError(
                f"Unknown device {device!r}; this machine has {available}. "
                f"Received: devices={list(devices)!r}"
            )


def _check_tf_config():
    raw = os.environ.get("TF_CONFIG")
    try:
        tf_config = json.loads(raw) if raw else None
    except json.JSONDecodeError:
        tf_config = None
    if not isinstance(tf_config, dict) or "cluster" not in tf_config or "task" not in tf_config:
        raise ConfigError(
            "strategy='multiworker' needs the TF_CONFIG environment variable: JSON with "
            '"cluster" (e.g. {"worker": ["host1:12345", "host2:12345"]}) and "task" '
            '(e.g. {"type": "worker", "index": 0}). '
            f"Received: TF_CONFIG={raw!r}"
        )


def check_jit_compile(strategy, jit_compile):
    """Refuses XLA where TensorFlow cannot run it.

    XLA with a strategy of several replicas on CPU devices fails inside
    `fit` (the replicated function cannot be compiled for the host); say so
    before any work is done rather than after a long traceback.
    """
    if not jit_compile or strategy.num_replicas_in_sync == 1:
        return
    devices = strategy.extended.worker_devices
    if any("CPU" in device.upper() for device in devices):
        raise ConfigError(
            "`jit_compile=True` cannot be combined with a strategy of several "
            "replicas on CPU devices; use one device, or GPUs. "
            f"Received: jit_compile=True, replica devices={list(devices)}"
        )


def is_chief(strategy):
    """Whether this process writes artifacts (True unless a non-chief worker)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or resolver is None:
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type == "chief":
        return True
    # Without a "chief" entry in the cluster, worker 0 plays that part.
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "worker" and task_id == 0 and not has_chief


def worker_backup_dir(backup_dir, strategy):
    """Where this process keeps its `BackupAndRestore` state.

    The chief uses `backup_dir`. Every other worker keeps a private copy in
    the temp dir (deterministic, so a rerun finds it): all workers must
    restore the same epoch, or their weights would silently differ.
    """
    if is_chief(strategy):
        return backup_dir
    resolver = strategy.cluster_resolver
    name = os.path.abspath(backup_dir).strip(os.sep).replace(os.sep, "_")
    return os.path.join(
        tempfile.gettempdir(), f"ddpm_keras_{name}_{resolver.task_type}{resolver.task_id}"
    )
