"""Turn a trained run's model into a released one (its EMA weights only).

    python scripts/export_pretrained.py --model runs/release/model.keras --name fashion-mnist

The name must be an entry of `ddpm_keras.pretrained.PRETRAINED`; the file goes
to `ddpm_keras/assets/pretrained/<name>.keras`.
"""

import argparse
import sys

from ddpm_keras.cli import user_errors_exit
from ddpm_keras.pretrained import export_pretrained


@user_errors_exit
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="model.keras of a training run")
    parser.add_argument("--name", required=True, help="the released model's name")
    parser.add_argument("--directory", help="where to write it (default: the package's)")
    args = parser.parse_args(argv)
    path, size = export_pretrained(args.model, args.name, args.directory)
    print(f"Wrote {path} ({size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
