"""The package as a user gets it: what `import optimjax` pulls in, `__all__`, the version, and the built wheel.

The build test builds the sdist and the wheel from a copy of the sources (the checkout is left untouched), checks
them with `twine check`, installs the wheel into a fresh virtual environment (`--no-deps`: the test environment's
jax, optax and numpy are reached through a .pth file placed after the venv's own site-packages, so nothing is
downloaded), and there imports the installed copy, builds the fused kernel from its `_kernels/fused_step.cc` and
takes one AdamW step, compared with the closed form of AdamW's first step.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import textwrap
import tomllib
import zipfile
from pathlib import Path

import pytest

import optimjax

# Its module fixture runs once per worker that runs one of its tests: keep them on one worker (conftest.py).
pytestmark = pytest.mark.xdist_group("built_dist")

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def run_python(code: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=300, cwd=ROOT, **kwargs)


def test_import_needs_only_the_required_dependencies():
    result = run_python("""
        import sys, optimjax
        print(" ".join(sorted({name.split(".")[0] for name in sys.modules})))
    """)
    assert result.returncode == 0, result.stderr
    imported = set(result.stdout.split())
    assert {"jax", "optax", "numpy", "optimjax"} <= imported
    optional = {"flax", "orbax", "torch", "sklearn", "matplotlib", "haiku", "equinox", "tensorstore"}
    assert not imported & optional, f"import optimjax imports optional packages: {sorted(imported & optional)}"
    required = {r.split(">")[0].split("=")[0].split("[")[0] for r in PYPROJECT["project"]["dependencies"]}
    assert required == {"jax", "jaxlib", "optax", "numpy"}


def test_checkpoint_without_orbax_names_the_extra():
    result = run_python("""
        import sys
        sys.modules["orbax"] = None  # as if orbax-checkpoint were not installed
        import optimjax.checkpoint
    """)
    assert result.returncode != 0
    assert "ImportError: optimjax.checkpoint needs Orbax" in result.stderr
    assert "pip install 'optimjax[checkpoint]'" in result.stderr


def test_all_lists_exactly_the_names_imported_as_public():
    tree = ast.parse((ROOT / "optimjax" / "__init__.py").read_text(encoding="utf-8"))
    imported_as = {alias.asname for node in tree.body if isinstance(node, ast.ImportFrom)
                   for alias in node.names if alias.asname and not alias.asname.startswith("_")}
    assert "adamw" in imported_as and "fused" in imported_as
    assert sorted(optimjax.__all__) == optimjax.__all__
    assert set(optimjax.__all__) == imported_as
    namespace = {}
    exec("from optimjax import *", namespace)
    assert set(namespace) - {"__builtins__"} == imported_as


def test_one_version_and_a_changelog_entry_for_it():
    assert "version" not in PYPROJECT["project"] and PYPROJECT["project"]["dynamic"] == ["version"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "optimjax.__version__"}
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert "## [Unreleased]" in changelog
    assert f"## [{optimjax.__version__}]" in changelog
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    assert "Apache License" in (ROOT / "LICENSE").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    """The sdist and the wheel, built without build isolation from a copy of the sources."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md", "MANIFEST.in"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "optimjax", source / "optimjax", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "tests", source / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("dist")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}  # else setuptools warns about it
    result = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(source)],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    log = result.stdout + result.stderr
    warnings = [line for line in log.splitlines() if "warning" in line.lower()]
    assert not warnings, "python -m build warned:\n" + "\n".join(warnings)
    (sdist,) = out.glob("*.tar.gz")
    (wheel,) = out.glob("*.whl")
    return sdist, wheel


def test_twine_check_passes(dist):
    result = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", *map(str, dist)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("PASSED") == 2


def test_archives_hold_the_package_and_its_licence(dist):
    sdist, wheel = dist
    version = optimjax.__version__
    assert wheel.name == f"optimjax-{version}-py3-none-any.whl"
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("optimjax/py.typed", "optimjax/_kernels/fused_step.cc", "optimjax/examples/haiku_training.py",
                 f"optimjax-{version}.dist-info/licenses/LICENSE"):
        assert name in names
    assert not any(name.startswith("tests/") for name in names)
    metadata = zipfile.ZipFile(wheel).read(f"optimjax-{version}.dist-info/METADATA").decode()
    assert "License-Expression: Apache-2.0" in metadata
    assert "Classifier: Typing :: Typed" in metadata and "Project-URL: Source" in metadata
    for extra in ("flax", "checkpoint", "demo", "notebooks", "docs", "test"):
        assert f"Provides-Extra: {extra}" in metadata
    members = {member.split("/", 1)[1] for member in tarfile.open(sdist).getnames() if "/" in member}
    assert {"LICENSE", "CHANGELOG.md", "README.md", "pyproject.toml", "optimjax/py.typed"} <= members
    # the tests read the notebooks, docs and bench of a checkout: they are not shipped half-way in the sdist
    assert not any(member.startswith("tests") for member in members)


def test_installed_wheel_imports_builds_the_kernel_and_steps(dist, tmp_path):
    _, wheel = dist
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                              "--no-index", "--quiet", str(wheel)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stdout + install.stderr
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    here = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "zz_test_environment.pth").write_text("\n".join(sorted(here)) + "\n")  # after the venv's own packages
    code = """
        import importlib.metadata, sys
        import jax, jax.numpy as jnp, numpy as np
        import optimjax

        assert optimjax.__file__.startswith(sys.prefix), optimjax.__file__  # the installed copy, not the checkout
        assert importlib.metadata.version("optimjax") == optimjax.__version__
        assert optimjax.fused.unavailable_reason() is None, optimjax.fused.unavailable_reason()
        opt = optimjax.fused.of(optimjax.adamw(learning_rate=1e-2, weight_decay=0.1))
        params = {"w": jnp.linspace(-1.0, 1.0, 64, dtype=jnp.float32)}
        grads = {"w": jnp.cos(3.0 * params["w"])}
        step = jax.jit(opt.step)
        assert optimjax.fused.TARGET in step.lower(grads, opt.init(params), params).as_text()
        new, state = step(grads, opt.init(params), params)
        # AdamW's first step: p - lr * (g / (|g| + eps) + wd * p), written out in float64
        p, g = np.asarray(params["w"], np.float64), np.asarray(grads["w"], np.float64)
        np.testing.assert_allclose(new["w"], p - 1e-2 * (g / (np.abs(g) + 1e-8) + 0.1 * p), rtol=0, atol=1e-6)
        print("kernel built from", optimjax.fused.__file__)
    """
    env = dict(os.environ, OPTIMJAX_CACHE_DIR=str(tmp_path / "kernel-cache"), JAX_PLATFORMS="cpu")
    result = subprocess.run([str(python), "-c", textwrap.dedent(code)], capture_output=True, text=True,
                            timeout=300, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"kernel built from {site}" in result.stdout
    assert list((tmp_path / "kernel-cache").glob("fused_step-*.so")), "the kernel was not compiled"


def test_the_repository_address_is_written_alike_everywhere():
    """pyproject.toml's `Source` URL is the project's address; the notebooks' Colab badges derive from it
    (tests/test_notebooks.py) and every other place that writes it must agree, so that moving the repository is one
    edit that these tests follow."""
    source = PYPROJECT["project"]["urls"]["Source"]
    owner, name = source.removeprefix("https://github.com/").split("/")
    urls = PYPROJECT["project"]["urls"]
    assert urls["Issues"] == f"{source}/issues" and urls["Changelog"] == f"{source}/blob/main/CHANGELOG.md"
    mkdocs = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    assert f"repo_url: {source}\n" in mkdocs and f"repo_name: {owner}/{name}\n" in mkdocs
    assert f"site_url: https://{owner}.github.io/{name}/\n" in mkdocs
    assert f"[Unreleased]: {source}/compare/" in (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    for page in ("README.md", "docs/index.md"):
        assert f"git+{source}\"" in (ROOT / page).read_text(encoding="utf-8"), page
    written = {
        url.rstrip(".,)\"'`")
        for path in [ROOT / "README.md", ROOT / "CHANGELOG.md", ROOT / "mkdocs.yml", *(ROOT / "docs").glob("*.md")]
        for url in re.findall(r"https://github\.com/[\w.-]+/[\w.-]+", path.read_text(encoding="utf-8"))
    }
    ours = {url for url in written if "optimjax" in url.lower()}  # other projects' repositories may be linked too
    assert ours, "no page links to the repository"
    assert all(url == source for url in ours), f"written differently from pyproject's {source}: {sorted(ours)}"
