"""The errors a user can fix: bad settings and unavailable data.

The command-line tools print these as one line (`ddpm_keras.cli`); any other
exception is a bug and keeps its traceback.
"""


class ConfigError(ValueError):
    """A setting, flag or argument is out of range or inconsistent with another.

    A subclass of `ValueError`, so `except ValueError` keeps working.
    """


class DataUnavailableError(RuntimeError):
    """The dataset could be neither downloaded nor read from `manual_dir`."""


class MissingFileError(ConfigError, FileNotFoundError):
    """A file the user named (a saved model, say) does not exist.

    Both a `ConfigError` (the CLI prints it as one line) and a
    `FileNotFoundError` (what Python code expects of a missing file).
    """
