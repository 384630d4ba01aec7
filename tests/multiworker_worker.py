"""One worker of the two-process MultiWorkerMirroredStrategy test.

Run by tests/test_multiworker.py with TF_CONFIG set:
    python multiworker_worker.py OUTPUT_DIR WEIGHTS_NPZ MANUAL_DIR DATA_DIR
Trains the smoke preset through `ddpm_keras.train` and, as a user callback
would, dumps its final network and EMA weights for the test to compare.
"""

import sys

import keras
import numpy as np

from ddpm_keras.config import get_config
from ddpm_keras.training import train


class DumpWeights(keras.callbacks.Callback):
    def __init__(self, path):
        super().__init__()
        self.path = path

    def on_train_end(self, logs=None):
        weights = self.model.network.get_weights() + self.model.ema_network.get_weights()
        np.savez(self.path, *weights, iterations=int(self.model.optimizer.iterations.numpy()))


def main(output_dir, weights_path, manual_dir, data_dir):
    config = get_config(
        "smoke",
        strategy="multiworker",
        epochs=1,
        output_dir=output_dir,
        manual_dir=manual_dir,
        data_dir=data_dir,
    )
    train(config, callbacks=[DumpWeights(weights_path)])
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
