"""`precision="auto"`: the rule that picks a dtype policy for the hardware."""

import pytest

from ddpm_keras import precision
from ddpm_keras.config import get_config
from ddpm_keras.model import build_model
from ddpm_keras.precision import cpu_flags, device_type, resolve_precision

CPU = ["/job:localhost/replica:0/task:0/device:CPU:0"]


@pytest.mark.parametrize("policy", ["float32", "mixed_float16", "mixed_bfloat16"])
def test_named_policies_are_kept_whatever_the_hardware(policy):
    assert resolve_precision(policy, ["TPU:0"], [(8, 0)], flags={"amx_bf16"}) == (
        policy,
        "",
    )


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ({"avx2", "fma"}, "float32"),
        ({"avx512f", "avx512_vnni"}, "float32"),
        ({"avx512f", "avx512_bf16"}, "mixed_bfloat16"),
        ({"amx_bf16", "amx_tile"}, "mixed_bfloat16"),
    ],
)
def test_auto_on_cpus_uses_bfloat16_only_where_the_cpu_computes_in_it(flags, expected):
    policy, reason = resolve_precision("auto", CPU, gpu_capabilities=[], flags=flags)
    assert policy == expected
    assert reason


@pytest.mark.parametrize(
    ("capabilities", "expected"),
    [
        ([(8, 6)], "mixed_bfloat16"),
        ([(7, 5)], "mixed_float16"),
        ([(6, 1)], "float32"),
        # The oldest GPU decides: every replica must run the same policy.
        ([(9, 0), (7, 0)], "mixed_float16"),
        # A GPU TensorFlow reports no capability for: no guess.
        ([None], "float32"),
    ],
)
def test_auto_on_gpus_follows_the_oldest_gpus_tensor_cores(capabilities, expected):
    # The GPUs decide, whatever the CPU has; so do they when the devices
    # are left to what is visible.
    for devices in (["GPU:0", "GPU:1"], None):
        assert resolve_precision("auto", devices, capabilities, flags={"amx_bf16"})[0] == expected


def test_auto_follows_the_devices_the_run_trains_on():
    # A run on the CPU of a machine with a GPU gets the CPU's rule.
    assert resolve_precision("auto", CPU, [(8, 0)], flags={"avx2"})[0] == "float32"
    assert resolve_precision("auto", ["/device:TPU:0"], [], flags={"avx2"})[0] == "mixed_bfloat16"
    assert [device_type(d) for d in (CPU, ["GPU:0"], ["TPU:3"])] == ["CPU", "GPU", "TPU"]


def test_cpu_flags_reads_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu avx2 avx512_bf16\n\n"
        "processor\t: 1\nflags\t\t: fpu avx2 avx512_bf16\n"
    )
    assert cpu_flags(str(cpuinfo)) == {"fpu", "avx2", "avx512_bf16"}
    assert cpu_flags(str(tmp_path / "missing")) == frozenset()


def test_build_model_builds_the_policy_auto_resolves_to(monkeypatch):
    monkeypatch.setattr(precision, "gpu_compute_capabilities", lambda: [])
    config = get_config("smoke", precision="auto")

    def policies():
        model = build_model(config, (8, 8, 1))
        return model.dtype_policy.name, model.network.get_layer("conv_in").dtype_policy.name

    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"amx_bf16"}))
    assert policies() == ("mixed_bfloat16", "mixed_bfloat16")
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2"}))
    assert policies() == ("float32", "float32")
