"""The guided lab notebook runs top to bottom (smoke preset, offline)."""

import pytest

from .conftest import REPO_ROOT

NOTEBOOK = REPO_ROOT / "notebooks" / "diffusion_tensorflow.ipynb"


def test_notebook_is_committed_without_outputs():
    nbformat = pytest.importorskip("nbformat")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code_cells
    for cell in code_cells:
        assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]


@pytest.mark.slow
def test_notebook_runs_top_to_bottom(manual_dir, tfds_data_dir, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    output_dir = tmp_path / "run"
    # The kernel inherits this environment: the smoke preset, offline data.
    monkeypatch.setenv("DDPM_NOTEBOOK_PRESET", "smoke")
    monkeypatch.setenv("DDPM_NOTEBOOK_OUTPUT_DIR", str(output_dir))
    monkeypatch.setenv("DDPM_FASHION_MNIST_DIR", manual_dir)
    monkeypatch.setenv("DDPM_TFDS_DATA_DIR", tfds_data_dir)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()  # raises CellExecutionError, with the cell and traceback, on failure

    figures = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if "image/png" in output.get("data", {})
    ]
    # Forward process (2), loss curves, sampler comparison, DDIM steps.
    assert len(figures) >= 5
    for name in ("model.keras", "metrics.json", "notebook_ddim.png", "notebook_ddpm.png"):
        assert (output_dir / name).is_file(), name
    assert any((output_dir / "tensorboard" / "train").iterdir())
