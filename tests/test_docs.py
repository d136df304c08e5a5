"""The documentation: `mkdocs build --strict` succeeds and documents every public name; docstring examples run.

The site is built into a temporary directory (the repository is left untouched). The doctests are the `Examples:`
sections of the docstrings in optimjax/*.py, run with the standard `doctest` module; their expected values come
from closed forms written next to them.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import re
from pathlib import Path

import pytest

import optimjax

pytestmark = pytest.mark.xdist_group("built_site")  # one build of the site per session

ROOT = Path(__file__).resolve().parent.parent
MODULES = sorted(info.name for info in pkgutil.iter_modules(optimjax.__path__))
# Modules whose docstrings carry Examples: a test that finds none there has silently stopped running them.
MODULES_WITH_EXAMPLES = {"adam", "nadam", "rmsprop", "sgd", "weight_decay"}


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(f"optimjax.{name}")
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    results = doctest.testmod(module, optionflags=flags, verbose=False, report=True)
    assert results.failed == 0, f"{results.failed} of {results.attempted} doctest examples failed in {name}"
    if name in MODULES_WITH_EXAMPLES:
        assert results.attempted > 0, f"optimjax.{name} lost its docstring examples"


@pytest.fixture(scope="module")
def site(built_site):
    return built_site  # tests/conftest.py: built once for the session


def test_every_public_name_has_an_api_entry(site):
    html = "\n".join(path.read_text(encoding="utf-8") for path in (site / "api").rglob("*.html"))
    public = [name for name in dir(optimjax) if not name.startswith("_") and callable(getattr(optimjax, name))]
    assert "adamw" in public and "ScaleByAdamState" in public
    # Each family page renders its module, so the heading of optimjax.adamw has the id "optimjax.adam.adamw".
    ids = {name: f'id="{getattr(optimjax, name).__module__}.{name}"' for name in public}
    missing = [name for name, anchor in ids.items() if anchor not in html]
    assert not missing, f"no API entry (mkdocstrings heading) for: {missing}"
    duplicated = [name for name, anchor in ids.items() if html.count(anchor) > 1]
    assert not duplicated, f"documented twice: {duplicated}"


def test_api_pages_render_the_equations_and_arguments(site):
    adam = (site / "api" / "adam" / "index.html").read_text(encoding="utf-8")
    assert "m_t = b1 * m_{t-1} + (1 - b1) * g_t" in adam  # the equations of the docstring, verbatim
    assert "Kingma" in adam and "Loshchilov" in adam  # the papers
    assert "dtype to store m in" in adam and "dtype to store v in" in adam  # the Args section


def test_notebooks_are_rendered_with_their_outputs(site):
    for notebook in ("pathological_curvature", "nesterov_lookahead", "nadam_schedule", "flax_training",
                     "porting_pytorch", "rprop_adafactor"):
        page = (site / "notebooks" / notebook / "index.html").read_text(encoding="utf-8")
        assert page.count("data:image/png;base64") >= 2, f"{notebook}: figures missing from the rendered page"
        assert "Traceback" not in page


DOC_PAGES_WITH_CODE = sorted(p for p in (ROOT / "docs").rglob("*.md") if "```python" in p.read_text(encoding="utf-8"))


@pytest.mark.parametrize("page", DOC_PAGES_WITH_CODE, ids=[p.name for p in DOC_PAGES_WITH_CODE])
def test_code_examples_in_the_docs_run(page):
    text = page.read_text(encoding="utf-8")
    # pymdownx.snippets: a line `--8<-- "path"` stands for the file at path (relative to the repository root)
    text = re.sub(r'^--8<-- "([^"]+)"$', lambda m: (ROOT / m.group(1)).read_text(encoding="utf-8"), text, flags=re.M)
    blocks = text.split("```python\n")[1:]
    assert blocks
    for block in blocks:
        exec(compile(block.split("```")[0], str(page), "exec"), {})
