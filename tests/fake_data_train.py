"""`ddpm-train` on `fakes.fake_dataset` (no TFDS): the process the reliability tests kill.

Usage: python -m tests.fake_data_train <ddpm-train flags>
"""

import sys

import ddpm_keras.training
from ddpm_keras.cli import train_main

from .fakes import fake_dataset

ddpm_keras.training.load_dataset = fake_dataset
ddpm_keras.training.class_names = lambda config: None
ddpm_keras.training.prepare_data = lambda config: None

if __name__ == "__main__":
    sys.exit(train_main(sys.argv[1:]))
