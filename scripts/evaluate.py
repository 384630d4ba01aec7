"""FID and KID of a saved model for a grid of samplers and step counts.

    python scripts/evaluate.py --model artifacts/tensorflow_diffusion/model.keras \
        --manual-dir ../shared/data/fashion-mnist --num-samples 1000 \
        --settings ddim:10 ddim:50 ddim:100 ddpm:1000

Writes evaluation.json and evaluation.md (a Markdown table) to --output-dir.
"""

import sys

from ddpm_keras.cli import evaluate_main

if __name__ == "__main__":
    sys.exit(evaluate_main())
