"""mkdocs hook: drop the MathJax 2 loader that mkdocs-jupyter writes into every notebook page.

mkdocs-jupyter's template loads MathJax 2 from its `custom_mathjax_url` (empty unless set, so `<script src="">`)
and configures it with a `text/x-mathjax-config` block that MathJax 3 ignores. The site loads its own MathJax 3 on
every page (extra_javascript in mkdocs.yml), so that block is removed; tests/test_browser.py checks the result.
"""

from __future__ import annotations

import re

_MATHJAX2 = re.compile(r"<!-- Load mathjax -->.*?<!-- End of mathjax configuration -->", re.S)


def on_post_page(output: str, page, config) -> str:
    return _MATHJAX2.sub("", output)
