"""Rules on single values, each raising `ConfigError("... Received: name=value")`.

`config.FIELD_RULES` gives every `DiffusionConfig` field one of these; the
parts check their arguments through `config.check_field`, so a rule is
written once.
"""

from __future__ import annotations

import math

import numpy as np

from ddpm_keras.errors import ConfigError


def fail(name, value, requirement):
    """Raises `ConfigError("`name` requirement. Received: name=value")`."""
    raise ConfigError(f"`{name}` {requirement}. Received: {name}={value!r}")


class Integer:
    """An integer >= `minimum` (or `None`, if `optional`)."""

    def __init__(self, minimum, optional=False):
        self.minimum, self.optional = minimum, optional

    def check(self, name, value):
        if value is None and self.optional:
            return
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            fail(name, value, "must be an integer")
        if value < self.minimum:
            fail(name, value, f"must be >= {self.minimum}")


class Number:
    """A finite number in [low, high], or with `low_open` / `high_open` excluding that end
    (or `None`, if `optional`)."""

    def __init__(self, low, high, low_open=False, optional=False, high_open=False):
        self.low, self.high, self.low_open, self.optional = low, high, low_open, optional
        self.high_open = high_open

    def check(self, name, value):
        if value is None and self.optional:
            return
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            fail(name, value, "must be a number")
        if not math.isfinite(value):
            fail(name, value, "must be finite")
        too_low = value <= self.low if self.low_open else value < self.low
        too_high = value >= self.high if self.high_open else value > self.high
        if too_low or too_high:
            interval = (
                f"{'(' if self.low_open else '['}{self.low}, {self.high}"
                f"{')' if self.high_open else ']'}"
            )
            fail(name, value, f"must be in {interval}")


class Choice:
    """One of `choices` (or `None`, if `optional`)."""

    def __init__(self, choices, optional=False):
        self.choices, self.optional = tuple(choices), optional

    def check(self, name, value):
        if value is None and self.optional:
            return
        if isinstance(value, bool) or value not in self.choices:
            fail(name, value, f"must be one of {list(self.choices)}")


class Flag:
    """`True` or `False`."""

    def check(self, name, value):
        if not isinstance(value, bool):
            fail(name, value, "must be True or False")


class Text:
    """A non-empty string (or `None`, if `optional`)."""

    def __init__(self, optional=False):
        self.optional = optional

    def check(self, name, value):
        if value is None and self.optional:
            return
        if not isinstance(value, str) or not value:
            fail(name, value, "must be a non-empty string")


class Sequence:
    """A non-empty tuple of integers >= `minimum` or of non-empty strings (or `None`, if
    `optional`)."""

    def __init__(self, item_type, optional=False, minimum=1):
        self.item_type, self.optional, self.minimum = item_type, optional, minimum

    def _valid(self, item):
        if self.item_type is int:
            return isinstance(item, int) and not isinstance(item, bool) and item >= self.minimum
        return isinstance(item, str) and bool(item)

    def check(self, name, value):
        if value is None and self.optional:
            return
        if not isinstance(value, tuple) or not value or not all(map(self._valid, value)):
            kind = (
                ("positive integers" if self.minimum == 1 else f"integers >= {self.minimum}")
                if self.item_type is int
                else "non-empty strings"
            )
            fail(name, value, f"must be a non-empty sequence of {kind}")
