"""The built documentation site, read offline in a real headless browser (Debian's chromium, which .ci/run installs).

The site is built once (`mkdocs build --strict`, into a temporary directory) and every page is opened from disk
(file://, no server, no network). Chromium is driven through the DevTools protocol over a pipe (its
`--remote-debugging-pipe`: JSON messages ended by a NUL byte on file descriptors 3 and 4), so no extra package is
needed. For each page the test checks that:

- nothing the page loads fails (a missing image, script or stylesheet shows up as `Network.loadingFailed`), and a
  click on a notebook's figure shows it at full size (docs/assets/javascripts/zoom.js);
- every link to a page of the site leads to a file, and its #fragment to an element of that page;
- the maths is typeset by the shipped MathJax: every `arithmatex` element (Markdown pages, docstrings) holds an
  `mjx-container` and no MathJax error, and no `$...$` is left as text in the notebooks' Markdown cells;
- a notebook page and an API page have maths at all (the pages the issue named), and mkdocs-jupyter's empty
  MathJax 2 `<script src="">` is gone.

Where chromium is not installed the test is skipped, saying so (CI installs it: see .ci/run).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import time
import tomllib
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = next(filter(None, (shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome"))), None)
pytestmark = [pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium on PATH (apt-get install chromium; .ci/run installs it): the built docs "
    "are not checked in a browser"), pytest.mark.xdist_group("built_site")]  # one build of the site per session

# Evaluated in each page once it has loaded: waits for MathJax's first typesetting, then reports what it sees.
PAGE_REPORT = """
(async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) await MathJax.startup.promise;
  const arithmatex = [...document.querySelectorAll(".arithmatex")];
  const markdownCells = [...document.querySelectorAll(".jp-MarkdownOutput")].map((cell) => {
    const copy = cell.cloneNode(true);
    copy.querySelectorAll("mjx-container, pre, code").forEach((e) => e.remove());
    return copy.textContent;
  });
  // a click on a figure (not a link) opens it at full size over the page, a second click closes it
  const figure = [...document.querySelectorAll(".md-typeset img")].find((img) => !img.closest("a"));
  let zoom = null;
  if (figure) {
    figure.click();
    const large = document.querySelector(".optimjax-zoom img");
    zoom = !!large && large.src === figure.src;
    document.body.click();
    zoom = zoom && !document.querySelector(".optimjax-zoom");
  }
  return {
    zoom,
    mathjax: !!(window.MathJax && MathJax.version),
    typeset: document.querySelectorAll("mjx-container").length,
    errors: document.querySelectorAll("mjx-merror, [data-mjx-error]").length,
    arithmatex: arithmatex.length,
    arithmatexTypeset: arithmatex.filter((e) => e.querySelector("mjx-container")).length,
    rawDollars: markdownCells.filter((text) => /\\$[^$\\s][^$]*\\$/.test(text)).length,
    emptyScripts: [...document.querySelectorAll("script[src]")].filter((s) => s.getAttribute("src") === "").length,
    links: [...document.querySelectorAll("a[href]")].map((a) => a.href),
    images: [...document.querySelectorAll("img")].map((img) => [img.currentSrc || img.src, img.naturalWidth]),
    ids: [...document.querySelectorAll("[id]")].map((e) => e.id),
  };
})()
"""


def _above_four(fd: int) -> int:
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return high


class Chromium:
    """A headless chromium driven over --remote-debugging-pipe; `page(url)` loads a page and reports on it."""

    def __init__(self, user_data_dir: Path):
        to_browser_read, self._to_browser = os.pipe()
        self._from_browser, from_browser_write = os.pipe()
        # bash below moves the browser's ends to 3 and 4: first put them above, where that cannot clobber them
        to_browser_read, from_browser_write = (_above_four(fd) for fd in (to_browser_read, from_browser_write))
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--remote-debugging-pipe",
                 "--allow-file-access-from-files", f"--user-data-dir={user_data_dir}", "about:blank"]
        command = " ".join([CHROMIUM, *flags]) + f" 3<&{to_browser_read} 4>&{from_browser_write}"
        self.process = subprocess.Popen(["bash", "-c", "exec " + command], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, pass_fds=(to_browser_read, from_browser_write))
        os.close(to_browser_read)
        os.close(from_browser_write)
        self._buffer = b""
        self._next_id = 0

    def _send(self, method, params=None, session=None):
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        return self._next_id

    def _receive(self, deadline):
        while b"\0" not in self._buffer:
            if time.monotonic() > deadline:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed its DevTools pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method, params=None, session=None, events=None, timeout=60.0):
        """Send a command and return its result; the events that arrive meanwhile are appended to `events`."""
        wanted = self._send(method, params, session)
        deadline = time.monotonic() + timeout
        while True:
            message = self._receive(deadline)
            if message.get("id") == wanted:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]
            if events is not None and "method" in message:
                events.append(message)

    def page(self, url: str, timeout: float = 60.0) -> tuple[dict, list[str]]:
        """Open `url` in a new tab, wait for its load event, and return (PAGE_REPORT, failed requests)."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        events: list[dict] = []
        for domain in ("Page.enable", "Network.enable", "Runtime.enable"):
            self.call(domain, session=session, events=events)
        self.call("Page.navigate", {"url": url}, session=session, events=events)
        deadline = time.monotonic() + timeout
        while not any(e["method"] == "Page.loadEventFired" and e.get("sessionId") == session for e in events):
            message = self._receive(deadline)
            if "method" in message:
                events.append(message)
        result = self.call("Runtime.evaluate", {"expression": PAGE_REPORT, "awaitPromise": True,
                                                "returnByValue": True}, session=session, events=events)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{url}: {result['exceptionDetails']}")
        # this tab's events only: a request of the previous tab can fail after that tab is closed, and its event
        # then arrives among this tab's (its URL was in the previous tab's events: it would read "?" here)
        events = [e for e in events if e.get("sessionId") == session]
        requests = {e["params"]["requestId"]: e["params"]["request"]["url"] for e in events
                    if e["method"] == "Network.requestWillBeSent"}
        failed = [f"{requests.get(e['params']['requestId'], '?')}: {e['params']['errorText']}" for e in events
                  if e["method"] == "Network.loadingFailed"]
        assert url in requests.values(), f"{url}: none of the tab's requests were seen (the page's own included)"
        self.call("Target.closeTarget", {"targetId": target})
        return result["result"]["value"], failed

    def close(self):
        try:
            self.call("Browser.close", timeout=10)
        except Exception:  # noqa: BLE001 - it may close the pipe before answering
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)


@pytest.fixture(scope="module")
def site(built_site):
    return built_site  # tests/conftest.py: built once for the session


@pytest.fixture(scope="module")
def reports(site, tmp_path_factory):
    """Every page of the site, opened from disk in chromium: {page path relative to the site: (report, failed)}."""
    browser = Chromium(tmp_path_factory.mktemp("chromium-profile"))
    try:
        pages = sorted(p for p in site.rglob("index.html"))
        return {page.relative_to(site).as_posix(): browser.page(page.as_uri()) for page in pages}
    finally:
        browser.close()


def test_the_whole_site_was_opened(reports):
    expected = {"index.html", "api/adam/index.html", "notebooks/nadam_schedule/index.html", "frameworks/index.html"}
    assert expected <= set(reports)


def test_nothing_a_page_loads_is_missing(reports):
    # Offline, only the site's own files can load: the Colab badge and the repository's star count (the header's
    # link to GitHub) are the only requests that leave the site, and they fail here without harm.
    local = {page: [f for f in failed if f.startswith("file:")] for page, (_, failed) in reports.items()}
    failures = {page: failed for page, failed in local.items() if failed}
    assert not failures, f"requests that failed: {failures}"
    elsewhere = {f.split(":")[0] + ":" + f.split(":")[1] for _, failed in reports.values() for f in failed}
    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text(encoding="utf-8"))
    repository = pyproject["project"]["urls"]["Source"].removeprefix("https://github.com/")
    allowed = ("https://colab.research.google.com/", f"https://api.github.com/repos/{repository}")
    assert all(url.startswith(allowed) for url in elsewhere), f"the site loads from elsewhere: {sorted(elsewhere)}"
    for page, (report, _) in reports.items():
        local = [src for src, width in report["images"] if not src.startswith("http")]
        broken = [src[:80] for src, width in report["images"] if width == 0 and not src.startswith("http")]
        assert not broken, f"{page}: images that did not load: {broken}"
        assert all(width > 0 for src, width in report["images"] if src.startswith("data:")), page
        if page.startswith("notebooks/"):
            notebook = Path(__file__).resolve().parent.parent / "docs" / f"{page[:-len('/index.html')]}.ipynb"
            figures = notebook.read_text().count('"image/png"')
            assert figures >= 1 and len(local) >= figures, f"{page}: {len(local)} of the notebook's {figures} figures"
            assert report["zoom"], f"{page}: a click on a figure does not show it at full size"


def test_every_local_link_leads_to_a_page_and_an_anchor(site, reports):
    ids = {(site / page).resolve(): set(report["ids"]) for page, (report, _) in reports.items()}
    broken = []
    for page, (report, _) in reports.items():
        for link in report["links"]:
            parts = urlsplit(link)
            if parts.scheme != "file":
                continue
            target = Path(unquote(parts.path))
            if target.is_dir():
                target = target / "index.html"
            if not target.is_file():
                broken.append(f"{page} -> {link}")
            elif parts.fragment and target.resolve() in ids and unquote(parts.fragment) not in ids[target.resolve()]:
                broken.append(f"{page} -> {link} (no element with that id)")
    assert not broken, "broken local links:\n" + "\n".join(broken)


def test_maths_is_typeset_offline_on_every_page(reports):
    for page, (report, _) in reports.items():
        assert report["mathjax"], f"{page}: MathJax did not load"
        assert report["emptyScripts"] == 0, f'{page}: a <script src=""> is left'
        assert report["errors"] == 0, f"{page}: {report['errors']} MathJax errors"
        assert report["arithmatexTypeset"] == report["arithmatex"], f"{page}: maths left as TeX source"
        assert report["rawDollars"] == 0, f"{page}: $...$ left as text in {report['rawDollars']} Markdown cells"
    # the two kinds of page the maths comes from: a notebook's Markdown cells and a docstring (adam_scalars)
    assert reports["notebooks/nadam_schedule/index.html"][0]["typeset"] >= 10
    assert reports["notebooks/pathological_curvature/index.html"][0]["typeset"] >= 5
    assert reports["notebooks/rprop_adafactor/index.html"][0]["typeset"] >= 10  # its \begin{cases} included
    adam = reports["api/adam/index.html"][0]
    assert adam["arithmatex"] >= 5 and adam["typeset"] >= 5
    for family in ("sgd", "nadam", "rmsprop", "adagrad", "adadelta"):  # each family's update, on its page
        assert reports[f"api/{family}/index.html"][0]["typeset"] >= 1, family
