"""Which Keras dtype policy a run uses: `precision="auto"` resolved for the hardware at hand.

`auto` picks 16-bit mixed precision only where the hardware computes in
16 bits; on other hardware 16-bit policies are emulated and slower than
float32 (BENCHMARKS.md measures both). The rule:

- a GPU of compute capability 8.0 or newer (bfloat16 tensor cores):
  `mixed_bfloat16`, which needs no loss scaling;
- an older GPU of compute capability 7.0 or newer (float16 tensor cores):
  `mixed_float16`;
- a CPU with AVX512-BF16 or AMX-BF16: `mixed_bfloat16`;
- anything else: `float32`.
"""

from __future__ import annotations

# /proc/cpuinfo flags of CPUs that compute in bfloat16.
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
    """`(major, minor)` compute capability of each visible GPU."""
    import tensorflow as tf

    capabilities = []
    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu)
        if "compute_capability" in details:
            capabilities.append(tuple(details["compute_capability"]))
    return capabilities


def resolve_precision(precision, gpu_capabilities=None, flags=None):
    """The dtype policy `precision` stands for here, and why.

    Args:
        precision: A config's `precision`: a Keras dtype policy name, or
            `"auto"`.
        gpu_capabilities: Compute capabilities of the GPUs (`None`: the
            visible ones).
        flags: The CPU's feature flags (`None`: this machine's).

    Returns:
        `(policy, reason)`: the policy name, and for `"auto"` a short reason
        (else an empty string).
    """
    if precision != "auto":
        return precision, ""
    if gpu_capabilities is None:
        gpu_capabilities = gpu_compute_capabilities()
    if gpu_capabilities:
        oldest = min(gpu_capabilities)
        if oldest >= (8, 0):
            return "mixed_bfloat16", f"GPUs of compute capability {oldest[0]}.{oldest[1]}+"
        if oldest >= (7, 0):
            return "mixed_float16", f"GPUs of compute capability {oldest[0]}.{oldest[1]}"
        return "float32", "GPUs without 16-bit tensor cores"
    found = sorted(set(BF16_CPU_FLAGS) & (cpu_flags() if flags is None else flags))
    if found:
        return "mixed_bfloat16", f"the CPU has {' and '.join(found)}"
    return "float32", "no GPU, and the CPU has neither AVX512-BF16 nor AMX-BF16"
