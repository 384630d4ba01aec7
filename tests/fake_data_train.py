"""`ddpm-train` on `fakes.fake_dataset` (no TFDS): the process the reliability tests kill.

Usage: python -m tests.fake_data_train <ddpm-train flags>
"""

import sys
import types

from ddpm_keras.cli import train_main

from .fakes import use_fake_data

if __name__ == "__main__":
    # The patches of use_fake_data, made for good: this process only trains.
    use_fake_data(types.SimpleNamespace(setattr=setattr))
    sys.exit(train_main(sys.argv[1:]))
