"""Strict JAX semantics for every test: silent rank promotion (a broadcasting bug) raises. Also the built docs site,
shared by the tests that read it."""

import os
import subprocess
import sys
import time
from pathlib import Path

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture(scope="session")
def built_site(tmp_path_factory):
    """The documentation site, built once per session, strictly (any warning is an error), into a temporary
    directory (the repository is left untouched); tests/test_docs.py and tests/test_browser.py read it."""
    site_dir = tmp_path_factory.mktemp("site")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--clean", "--site-dir", str(site_dir)],
        cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True, timeout=600, env=env,
    )
    print(f"mkdocs build: {time.perf_counter() - start:.1f} s")
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    return site_dir


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """Make `pytest.mark.xdist_group` work under `--dist loadgroup` (pyproject's addopts) with pytest >= 9.2.

    pytest-xdist (3.8) tells its controller a test's group by appending `@group` to the test's node id, which it
    writes to `item._nodeid`; pytest 9.2 reads node ids from `item._id`, so the suffix was lost and every worker
    built the docs site and ran each grouped module's subprocess fixture again. This hook runs after xdist's and
    puts the suffix where the running pytest reads it (no-op where xdist's own write already took effect)."""
    if not getattr(config.option, "loadgroup", False) and getattr(config.option, "dist", "no") != "loadgroup":
        return
    for item in items:
        suffixed = getattr(item, "_nodeid", None)
        if isinstance(suffixed, str) and "@" in suffixed and item.nodeid != suffixed and hasattr(item, "_id"):
            from _pytest.nodeid import coerce_node_id

            item._id = coerce_node_id(suffixed)
