"""Executes the guided lab top to bottom and saves it with its outputs.

The committed notebook carries the outputs of this script with the `smoke`
preset, so that a reader sees results without running it:

    .venv/bin/python notebooks/execute_notebook.py            # smoke, in place
    .venv/bin/python notebooks/execute_notebook.py --preset cpu --output /tmp/lab.ipynb

Offline: the Fashion-MNIST files are read from $DDPM_FASHION_MNIST_DIR
(default: ../shared/data/fashion-mnist next to the repository). The run's
artifacts and the TFDS data dir ($DDPM_TFDS_DATA_DIR, if set) go to a temporary
folder, deleted afterwards.
"""

import argparse
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import nbclient
import nbformat

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOK = REPO_ROOT / "notebooks" / "diffusion_tensorflow.ipynb"

# Prepares the TFDS data dir first, so that the saved notebook shows the lab's
# outputs rather than TFDS' download and preparation progress bars.
PREPARE_DATA = """
import os, ddpm_keras
ddpm_keras.load_dataset(ddpm_keras.get_config(
    "smoke", manual_dir=os.environ["DDPM_FASHION_MNIST_DIR"], data_dir=os.environ["DDPM_TFDS_DATA_DIR"]
))
"""


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="smoke")
    parser.add_argument("--output", default=str(NOTEBOOK), help="where to write the result")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per cell")
    args = parser.parse_args(argv)

    manual_dir = os.environ.get("DDPM_FASHION_MNIST_DIR") or str(
        REPO_ROOT.parent / "shared" / "data" / "fashion-mnist"
    )
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    with tempfile.TemporaryDirectory(prefix="ddpm_notebook_") as run_dir:
        # The kernel inherits this environment (see the notebook's first cell).
        os.environ.update(
            DDPM_NOTEBOOK_PRESET=args.preset,
            DDPM_FASHION_MNIST_DIR=manual_dir,
            DDPM_TFDS_DATA_DIR=os.environ.get("DDPM_TFDS_DATA_DIR")
            or os.path.join(run_dir, "tensorflow_datasets"),
            TF_CPP_MIN_LOG_LEVEL="2",
            PYTHONPATH=os.pathsep.join(
                filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])
            ),
        )
        # Artifacts go to the default artifacts/notebook_<preset>, under run_dir.
        os.environ.pop("DDPM_NOTEBOOK_OUTPUT_DIR", None)
        subprocess.run([sys.executable, "-c", PREPARE_DATA], check=True, cwd=run_dir)
        client = nbclient.NotebookClient(
            notebook,
            timeout=args.timeout,
            kernel_name="python3",
            record_timing=False,
            resources={"metadata": {"path": run_dir}},
        )
        start = time.perf_counter()
        client.execute()
        seconds = time.perf_counter() - start
    nbformat.write(notebook, args.output)
    size = os.path.getsize(args.output)
    print(
        f"Executed with preset {args.preset!r} in {seconds:.0f} s -> {args.output} ({size / 1e6:.2f} MB)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
