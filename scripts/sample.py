"""Sample a grid of images from a saved model.

    python scripts/sample.py --model artifacts/tensorflow_diffusion/model.keras \
        --num-images 36 --sampler ddim --steps 50 --seed 0 --output samples.png
"""

import sys

from ddpm_keras.cli import sample_main

if __name__ == "__main__":
    sys.exit(sample_main())
