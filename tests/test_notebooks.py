"""Execute every notebook under notebooks/ with nbclient; any error in any cell fails the test.

Each notebook runs in a copy inside a temporary directory, so that the figures it writes (figures/*.png) do not
overwrite the committed ones; the test then checks that those figures were written and are real images. The
notebooks contain their own assertions (e.g. Nesterov's look-ahead equivalence), which run here too.

Also checks that the committed notebooks carry their outputs (they are rendered, unexecuted, by the docs site), and
that each one opens in Colab: a badge linking to it on GitHub, and a first code cell that installs optimjax from
the repository named in pyproject.toml when it is not importable, then prints the backend it runs on.
"""

from __future__ import annotations

import re
import shutil
import time
import tomllib
from pathlib import Path

import matplotlib.image
import nbformat
import pytest
from IPython.core.inputtransformer2 import TransformerManager
from nbclient import NotebookClient

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
EXPECTED = {"pathological_curvature", "nesterov_lookahead", "nadam_schedule", "flax_training", "porting_pytorch",
            "rprop_adafactor"}
PYPROJECT = tomllib.loads((NOTEBOOKS_DIR.parent / "pyproject.toml").read_text(encoding="utf-8"))
REPOSITORY = PYPROJECT["project"]["urls"]["Source"]  # https://github.com/OWNER/NAME


def test_every_expected_notebook_is_there_and_in_the_docs():
    assert EXPECTED <= {path.stem for path in NOTEBOOKS}
    docs = NOTEBOOKS[0].parents[1] / "docs" / "notebooks"
    for path in NOTEBOOKS:  # a link, not a copy that goes stale when the notebook is re-executed
        page = docs / path.name
        assert page.is_symlink() and page.resolve() == path.resolve(), f"docs/notebooks/{path.name}: not a link"
        assert f"notebooks/{path.name}" in (docs.parent / "index.md").read_text(encoding="utf-8"), path.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_notebook_has_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code, f"{path.name} has no code cells"
    not_run = [i for i, cell in enumerate(code) if cell.execution_count is None]
    assert not not_run, f"{path.name}: code cells {not_run} were never executed; re-execute and save the notebook"
    errors = [out for cell in code for out in cell.outputs if out.output_type == "error"]
    assert not errors, f"{path.name} was saved with an error output: {errors[0].ename}: {errors[0].evalue}"
    images = sum("image/png" in out.get("data", {}) for cell in code for out in cell.outputs)
    assert images >= 1, f"{path.name} was saved without its figures"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path, tmp_path):
    shutil.copy(path, tmp_path / path.name)
    notebook = nbformat.read(tmp_path / path.name, as_version=4)
    client = NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": tmp_path}})
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError, with the cell and the traceback, on any error
    print(f"{path.name}: executed in {time.perf_counter() - start:.1f} s")
    nbformat.validate(notebook)
    figures = sorted((tmp_path / "figures").glob("*.png"))
    assert figures, f"{path.name} wrote no figure under figures/"
    for figure in figures:
        assert (NOTEBOOKS_DIR / "figures" / figure.name).is_file(), f"notebooks/figures/{figure.name} is not committed"
        image = matplotlib.image.imread(figure)
        height, width = image.shape[:2]
        assert height >= 200 and width >= 300, f"{figure.name} is only {width}x{height} pixels"
        assert image.std() > 0.01, f"{figure.name} is blank"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_opens_in_colab_and_installs_optimjax_there(path):
    notebook = nbformat.read(path, as_version=4)
    github = REPOSITORY.removeprefix("https://github.com/")
    colab = f"https://colab.research.google.com/github/{github}/blob/main/notebooks/{path.name}"
    badge = "[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
    assert f"{badge}({colab})" in notebook.cells[0].source
    first = next(cell for cell in notebook.cells if cell.cell_type == "code")
    python = TransformerManager().transform_cell(first.source)  # %pip, as IPython runs it
    compile(python, f"{path.name}, first cell", "exec")
    guard = 'if importlib.util.find_spec("optimjax") is None:\n'
    install = f"get_ipython().run_line_magic('pip', 'install --quiet \"optimjax[notebooks] @ git+{REPOSITORY}\"')"
    assert guard + "    " + install in python, python
    printed = "".join(out.get("text", "") for out in first.outputs)
    assert re.search(r"^jax \S+ on (cpu|gpu|tpu|cuda|rocm): ", printed), printed  # the backend, as the run saw it


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_reads_no_file_of_the_checkout(path):
    """The notebooks run from any directory (Colab's included): no path into the repository."""
    code = "\n".join(cell.source for cell in nbformat.read(path, as_version=4).cells if cell.cell_type == "code")
    for pattern in (r"\.\./", r"sys\.path", r"os\.chdir", r"/work/", r"__file__", r"notebooks/"):
        assert not re.search(pattern, code), f"{path.name} uses a path of the checkout: {pattern}"
