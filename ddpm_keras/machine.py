"""What machine a run or a measurement ran on, for records and benchmark tables."""

from __future__ import annotations

import os


def cpu_fields():
    """The CPU's model name, family and model numbers, as `/proc/cpuinfo` gives them.

    A virtual machine may name only the vendor ("AMD EPYC"); the family and
    model numbers then tell the generation (23/49 is Zen 2, 25/1 Zen 3).
    `{}` where there is no `/proc/cpuinfo`.
    """
    fields = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as file:
            for line in file:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "cpu family", "model") and key not in fields:
                    fields[key] = value.strip()
    except OSError:
        pass
    return fields


def cpu_description():
    """One line: e.g. "AMD EPYC (family 23, model 49), 2 cores"."""
    fields = cpu_fields()
    name = fields.get("model name", "unknown CPU")
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']}, model {fields['model']})"
    return f"{name}, {os.cpu_count()} cores"
