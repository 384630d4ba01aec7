"""Which Keras dtype policy a run uses: `precision="auto"` resolved for the devices at hand.

`auto` picks 16-bit mixed precision only where the devices compute in
16 bits; elsewhere 16-bit policies are emulated and slower than float32
(BENCHMARKS.md measures both). The rule, for the devices a run trains on:

- TPUs: `mixed_bfloat16`;
- GPUs of compute capability 8.0 or newer (bfloat16 tensor cores):
  `mixed_bfloat16`, which needs no loss scaling; GPUs of compute capability
  7.x (float16 tensor cores): `mixed_float16`; older GPUs, or GPUs whose
  capability TensorFlow does not report: `float32`. With several GPUs the
  oldest decides;
- CPUs with AVX512-BF16 or AMX-BF16 (x86 `/proc/cpuinfo` flags): `mixed_bfloat16`;
- any other CPU: `float32`.

A run resolves `auto` once, when it starts, and records the policy in its
`config.json` (see `ddpm_keras.training.start_run`).
"""

from __future__ import annotations

# /proc/cpuinfo flags of x86 CPUs that compute in bfloat16.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(cpuinfo_path="/proc/cpuinfo"):
    """The CPU's feature flags, from `/proc/cpuinfo` (empty where there is none)."""
    try:
        with open(cpuinfo_path) as file:
            for line in file:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def gpu_compute_capabilities():
    """`(major, minor)` compute capability of each visible GPU (`None` where unreported)."""
    import tensorflow as tf

    capabilities = []
    for gpu in tf.config.list_physical_devices("GPU"):
        capability = tf.config.experimental.get_device_details(gpu).get("compute_capability")
        capabilities.append(tuple(capability) if capability else None)
    return capabilities


def device_type(devices):
    """`"TPU"`, `"GPU"` or `"CPU"`: what a list of device names (e.g. a strategy's) runs on."""
    names = " ".join(devices).upper()
    for kind in ("TPU", "GPU"):
        if kind in names:
            return kind
    return "CPU"


def resolve_precision(precision, devices=None, gpu_capabilities=None, flags=None):
    """The dtype policy `precision` stands for on `devices`, and why.

    Args:
        precision: A config's `precision`: a Keras dtype policy name, or
            `"auto"`.
        devices: Device names the run trains on, e.g. a strategy's
            `extended.worker_devices` (`None`: the visible GPUs, else the CPU).
        gpu_capabilities: Compute capabilities of the GPUs (`None`: the
            visible ones).
        flags: The CPU's feature flags (`None`: this machine's).

    Returns:
        `(policy, reason)`: the policy name, and for `"auto"` a short reason
        (else an empty string).
    """
    if precision != "auto":
        return precision, ""
    if devices is None:
        if gpu_capabilities is None:
            gpu_capabilities = gpu_compute_capabilities()
        kind = "GPU" if gpu_capabilities else "CPU"
    else:
        kind = device_type(devices)
    if kind == "TPU":
        return "mixed_bfloat16", "TPUs compute in bfloat16"
    if kind == "GPU":
        if gpu_capabilities is None:
            gpu_capabilities = gpu_compute_capabilities()
        if not gpu_capabilities or None in gpu_capabilities:
            return "float32", "GPUs whose compute capability is not reported"
        oldest = min(gpu_capabilities)
        version = f"{oldest[0]}.{oldest[1]}"
        if oldest >= (8, 0):
            return "mixed_bfloat16", f"GPUs of compute capability {version} (bfloat16 units)"
        if oldest >= (7, 0):
            return "mixed_float16", f"GPUs of compute capability {version} (float16 units)"
        return "float32", f"GPUs of compute capability {version}, without 16-bit units"
    found = sorted(set(BF16_CPU_FLAGS) & (cpu_flags() if flags is None else flags))
    if found:
        return "mixed_bfloat16", f"the CPU has {' and '.join(found)}"
    return "float32", "the CPU has neither AVX512-BF16 nor AMX-BF16"
