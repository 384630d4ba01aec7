"""The guided lab notebook: committed executed (smoke preset), and it runs top to bottom."""

import ast
import base64

import pytest

from .conftest import REPO_ROOT

NOTEBOOK = REPO_ROOT / "notebooks" / "diffusion_tensorflow.ipynb"
MAX_NOTEBOOK_BYTES = 1_500_000
# Forward process (2), loss curves, loss per timestep, sampler comparison,
# DDIM steps and solvers, DDIM convergence.
MIN_FIGURES = 7


def read_notebook():
    nbformat = pytest.importorskip("nbformat")
    return nbformat.read(NOTEBOOK, as_version=4)


def code_cells(notebook):
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def figures(notebook):
    return [
        output
        for cell in code_cells(notebook)
        for output in cell.outputs
        if "image/png" in output.get("data", {})
    ]


def stdout_of(cell):
    return "".join(
        output.text
        for output in cell.outputs
        if output.output_type == "stream" and output.name == "stdout"
    )


def test_notebook_is_committed_executed_with_the_smoke_preset():
    notebook = read_notebook()
    cells = code_cells(notebook)
    assert cells
    # Executed top to bottom in one kernel: every cell, in order, no errors.
    assert [cell.execution_count for cell in cells] == list(range(1, len(cells) + 1))
    for cell in cells:
        assert not [o for o in cell.outputs if o.output_type == "error"], cell.source[:60]
    # The outputs are the smoke preset's, and a markdown cell near the top says so.
    assert "PRESET='smoke'" in stdout_of(cells[0])
    top_markdown = [cell.source for cell in notebook.cells[:3] if cell.cell_type == "markdown"]
    assert any("outputs saved in this file come from the `smoke` preset" in s for s in top_markdown)
    assert len(figures(notebook)) >= MIN_FIGURES


def test_committed_outputs_are_small():
    assert NOTEBOOK.stat().st_size < MAX_NOTEBOOK_BYTES
    notebook = read_notebook()
    for figure in figures(notebook):
        png = base64.b64decode(figure["data"]["image/png"])
        assert len(png) < 400_000
    for cell in code_cells(notebook):
        for output in cell.outputs:
            if output.output_type == "stream":
                # Compact logs: no progress bars (training prints one line an epoch).
                assert len(output.text) < 5_000, cell.source[:60]
                assert "\r" not in output.text and "\x1b[A" not in output.text, cell.source[:60]


def test_exercises_ask_for_a_prediction_left_blank_then_check_it():
    notebook = read_notebook()
    cells = notebook.cells
    predictions = [
        index
        for index, cell in enumerate(cells)
        if cell.cell_type == "code" and cell.source.lstrip().startswith("my_prediction =")
    ]
    assert len(predictions) >= 2
    for index in predictions:
        assert cells[index - 1].cell_type == "markdown"
        assert "**Predict:**" in cells[index - 1].source
        assert "Write your answer" in cells[index - 1].source
        # The committed guess is blank (None, or a dict of Nones), for the reader to fill in.
        namespace = {}
        exec(compile(ast.parse(cells[index].source), "prediction", "exec"), namespace)
        guess = namespace["my_prediction"]
        assert guess is None or (isinstance(guess, dict) and set(guess.values()) == {None})
        # The next cell checks the guess, and ran with the blank one.
        check = cells[index + 1]
        assert check.cell_type == "code" and "my_prediction" in check.source
        assert stdout_of(check), check.source[:60]


def test_the_printed_strategy_is_the_one_training_uses():
    sources = "\n".join(cell.source for cell in code_cells(read_notebook()))
    assert sources.count("make_strategy(") == 1
    assert "make_strategy(config.strategy, config.devices)" in sources
    assert "ddpm_keras.train(config, callbacks=[EpochLog()], strategy=strategy)" in sources


@pytest.mark.slow
def test_notebook_runs_top_to_bottom(manual_dir, tfds_data_dir, tmp_path, monkeypatch):
    nbclient = pytest.importorskip("nbclient")
    output_dir = tmp_path / "run"
    # The kernel inherits this environment: the smoke preset, offline data.
    monkeypatch.setenv("DDPM_NOTEBOOK_PRESET", "smoke")
    monkeypatch.setenv("DDPM_NOTEBOOK_OUTPUT_DIR", str(output_dir))
    monkeypatch.setenv("DDPM_FASHION_MNIST_DIR", manual_dir)
    monkeypatch.setenv("DDPM_TFDS_DATA_DIR", tfds_data_dir)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))

    notebook = read_notebook()
    for cell in code_cells(notebook):  # run from a clean slate, not the saved outputs
        cell.outputs, cell.execution_count = [], None
    client = nbclient.NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()  # raises CellExecutionError, with the cell and traceback, on failure

    assert len(figures(notebook)) >= MIN_FIGURES
    printed = "\n".join(stdout_of(cell) for cell in code_cells(notebook))
    # The exercises' checks ran with the blank predictions.
    assert "The loss is largest at" in printed
    assert "Fewest steps within" in printed
    assert printed.count("(no guess)") == 4
    for name in ("model.keras", "metrics.json", "notebook_ddim.png", "notebook_ddpm.png"):
        assert (output_dir / name).is_file(), name
    assert any((output_dir / "tensorboard" / "train").iterdir())
