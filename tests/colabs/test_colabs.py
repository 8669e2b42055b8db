"""Runs every notebook in colabs/ top to bottom, so that none of them can rot.

Each notebook executes in a fresh Jupyter kernel started from this interpreter (`sys.executable`,
through a kernel spec written to a temporary directory, so a `python3` kernel installed elsewhere on
the machine is never picked up). JAXTOK_COLAB_TINY=1 tells the notebooks to use their tiny settings,
TMPDIR keeps what they write under pytest's temporary directory, and the kernel sees one CPU device
(the 8 fake devices of tests/conftest.py are for the sharding tests and would only slow the
notebooks down). A cell that raises fails the test (nbclient raises
CellExecutionError with the cell's source and traceback).
"""
import json
import os
import pathlib
import sys

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

COLABS = pathlib.Path(__file__).resolve().parents[2] / "colabs"
NOTEBOOKS = sorted(COLABS.glob("*.ipynb"))
CELL_TIMEOUT_S = 300
KERNEL = "jaxtok-test"


def test_notebooks_are_found():
  assert NOTEBOOKS, f"no notebooks in {COLABS}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_stored_without_outputs(path):
  nb = nbformat.read(path, as_version=4)
  nbformat.validate(nb)
  dirty = [i for i, c in enumerate(nb.cells)
           if c.cell_type == "code" and (c.get("outputs") or c.get("execution_count") is not None)]
  assert not dirty, f"{path.name}: cells {dirty} have outputs; clear them before committing"
  assert nb.cells[0].cell_type == "markdown", f"{path.name} must open with a markdown cell"


@pytest.fixture(scope="module")
def kernel_spec_manager(tmp_path_factory):
  root = tmp_path_factory.mktemp("kernels")
  spec_dir = root / KERNEL
  spec_dir.mkdir()
  spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
          "display_name": "jaxtok tests", "language": "python"}
  (spec_dir / "kernel.json").write_text(json.dumps(spec))
  return KernelSpecManager(kernel_dirs=[str(root)])


@pytest.fixture(scope="module")
def kernel_tmpdir(tmp_path_factory):
  # The kernels' TMPDIR: their workdirs and the XLA compilation cache the notebooks keep there (shared
  # by the notebooks this process runs, so a program compiled by one is read back by the next).
  return tmp_path_factory.mktemp("kernel_tmp")


def _kernel_env(tmp: pathlib.Path) -> dict[str, str]:
  env = dict(os.environ)
  env["TMPDIR"] = str(tmp)
  flags = [f for f in env.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  env["XLA_FLAGS"] = " ".join(flags)
  env["JAX_PLATFORMS"] = "cpu"
  env["JAXTOK_COLAB_TINY"] = "1"
  env["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
  return env


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, kernel_spec_manager, kernel_tmpdir):
  nb = nbformat.read(path, as_version=4)
  km = KernelManager(kernel_name=KERNEL, kernel_spec_manager=kernel_spec_manager)
  client = NotebookClient(nb, km=km, timeout=CELL_TIMEOUT_S, kernel_name=KERNEL,
                          resources={"metadata": {"path": str(COLABS)}})
  client.execute(env=_kernel_env(kernel_tmpdir))
  errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if o.get("output_type") == "error"]
  assert not errors, errors
