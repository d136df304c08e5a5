"""optimjax.fused's kernel cache: nothing but the library this user's build wrote is ever loaded, and nothing in
the cache can crash a process.

Every scenario runs in a fresh Python process with its own cache directory and temporary directory (so neither
the real cache nor the real private fallback is touched). The C++ compiler is replaced by a script that copies a
library built once by this session (the real one) to its `-o` argument and logs its command line, so that a
rebuild costs no compile. A "planted" library is a small shared object whose constructor creates a marker file:
loading it at all is the attack, whether or not optimjax would then find its symbol.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import warnings
from pathlib import Path

import pytest

import optimjax as oj

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="POSIX owners and modes, /proc")

NOBODY = 65534
CHECK = "import optimjax; print('REASON:', optimjax.fused.unavailable_reason())"
PLANTED_SOURCE = r"""
#include <stdio.h>
#include <stdlib.h>
__attribute__((constructor)) static void planted(void) {
  FILE* marker = fopen(getenv("PLANTED_MARKER"), "w");
  if (marker) fclose(marker);
}
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """A copy of the kernel library this machine builds (the real cache's, built now if it is not yet)."""
    if not oj.fused.available():
        pytest.skip(f"the kernel cannot be built here: {oj.fused.unavailable_reason()}")
    fd, path = oj.fused._library()
    os.close(fd)
    copy = tmp_path_factory.mktemp("built") / "kernel.so"
    shutil.copyfile(path, copy)
    return copy


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> Path:
    """A shared library whose constructor creates the file named by $PLANTED_MARKER."""
    directory = tmp_path_factory.mktemp("planted")
    (directory / "planted.c").write_text(PLANTED_SOURCE)
    compiler = shutil.which("cc") or shutil.which("gcc") or pytest.skip("no C compiler for the planted library")
    subprocess.run([compiler, "-shared", "-fPIC", "-o", str(directory / "planted.so"), str(directory / "planted.c")],
                   check=True, capture_output=True)
    return directory / "planted.so"


class Scenario:
    """A cache directory, a private temporary directory and a fake compiler; `load` runs the cache's logic in this
    process with them, `start` / `run` a fresh Python process that loads the kernel."""

    def __init__(self, root: Path, built: Path, monkeypatch, cxx_arguments: str = "", cache: Path | None = None):
        self.root, self.built = root, built
        self.cache = cache or root / "cache"
        self.tmp = root / "tmp"
        self.tmp.mkdir()
        self.log, self.marker = root / "compiles.jsonl", root / "planted-constructor-ran"
        compiler = root / "fake-c++"
        compiler.write_text(textwrap.dedent(f"""\
            #!{sys.executable}
            import json, os, shutil, sys, time
            with open({str(self.log)!r}, "a") as log:
                log.write(json.dumps(sys.argv[1:]) + "\\n")
            time.sleep(float(os.environ.get("FAKE_CXX_SLEEP", "0")))
            shutil.copyfile({str(built)!r}, sys.argv[sys.argv.index("-o") + 1])
        """))
        compiler.chmod(0o755)
        self.env = {"OPTIMJAX_CACHE_DIR": str(self.cache), "TMPDIR": str(self.tmp),
                    "CXX": f"{compiler} {cxx_arguments}".strip(), "PLANTED_MARKER": str(self.marker)}
        for name, value in self.env.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setattr(tempfile, "tempdir", str(self.tmp))
        self.name = oj.fused._library_name()
        self.fallback = self.tmp / f"optimjax-{os.getuid()}"

    def install(self, directory: Path, library: Path, digest_of: Path) -> Path:
        """Put `library` under the cached name in `directory`, with the digest of `digest_of` recorded next to it."""
        target = directory / self.name
        shutil.copyfile(library, target)
        target.with_name(target.name + ".sha256").write_text(hashlib.sha256(digest_of.read_bytes()).hexdigest() + "\n")
        return target

    def load(self) -> tuple[str, str]:
        """Load the kernel in this process as `unavailable_reason` does: the error's text ("" if it loaded the
        kernel) and the warnings' texts."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                error = "" if hasattr(oj.fused._load_library(), "OptimjaxFusedStep") else "another library loaded"
            except Exception as exception:  # noqa: BLE001 - the reason the fused path would give
                error = str(exception)
        return error, "\n".join(str(w.message) for w in caught)

    def start(self, **env) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", CHECK], env={**os.environ, "OPTIMJAX_FUSED": "1", **env},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def run(self, **env) -> tuple[str, str]:
        process = self.start(**env)
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, f"exit {process.returncode}:\n{err}"
        return out, err

    def compiles(self) -> list[list[str]]:
        return [json.loads(line) for line in self.log.read_text().splitlines()] if self.log.exists() else []


@pytest.fixture
def scenario(tmp_path, built, monkeypatch) -> Scenario:
    return Scenario(tmp_path, built, monkeypatch)


def test_a_truncated_library_is_rebuilt_not_loaded(scenario, built):
    """In a fresh process, as the issue found it: loading the truncated file was a Bus error in every process."""
    scenario.cache.mkdir(mode=0o700)
    library = scenario.install(scenario.cache, built, digest_of=built)
    os.truncate(library, 4096)
    out, err = scenario.run()
    assert "REASON: None" in out
    assert "not the file its build wrote" in err
    assert len(scenario.compiles()) == 1
    assert library.read_bytes() == built.read_bytes()


def test_a_library_that_differs_from_its_recorded_digest_is_never_loaded(scenario, built, planted):
    scenario.cache.mkdir(mode=0o700)
    scenario.install(scenario.cache, planted, digest_of=built)  # this user's files, modes fine: content replaced
    error, warned = scenario.load()
    assert not scenario.marker.exists(), "the replaced library was loaded"
    assert error == "" and "not the file its build wrote" in warned
    assert (scenario.cache / scenario.name).read_bytes() == built.read_bytes()


def _chown_nobody(*paths: Path) -> None:
    if os.getuid() != 0:
        pytest.skip("giving a file to another user needs root")
    for path in paths:
        os.chown(path, NOBODY, NOBODY)


@pytest.mark.parametrize("where", ["cache directory", "private fallback"])
def test_a_library_planted_by_another_user_in_a_world_writable_directory_is_never_loaded(tmp_path, built, planted,
                                                                                       monkeypatch, where):
    """The issue's attack: a world-writable directory, a library of another user, mode 666, its digest recorded
    beside it (by the attacker). In the cache directory: built in the private fallback instead. In the private
    fallback (the cache directory being unwritable): the XLA path, with the reason."""
    cache = Path("/proc") if where == "private fallback" else None
    scenario = Scenario(tmp_path, built, monkeypatch, cache=cache)
    directory = scenario.cache if where == "cache directory" else scenario.fallback
    directory.mkdir()
    directory.chmod(0o777)
    library = scenario.install(directory, planted, digest_of=planted)
    digest = library.with_name(library.name + ".sha256")
    for path in (library, digest):
        path.chmod(0o666)
    _chown_nobody(library, digest)
    error, warned = scenario.load()
    assert not scenario.marker.exists(), "the planted library was loaded"
    assert f"not using the cache directory {scenario.cache}" in warned
    if where == "cache directory":
        assert error == "" and "writable by other users (mode 777)" in warned
        assert (scenario.fallback / scenario.name).read_bytes() == built.read_bytes()
    else:
        assert error.startswith("no private cache directory") and "writable by other users (mode 777)" in error


@pytest.mark.parametrize("owner,mode,problem", [
    ("nobody", 0o644, f"belongs to uid {NOBODY}"), ("this user", 0o666, "writable by other users (mode 666)"),
    ("this user", 0o620, "writable by other users (mode 620)"),
])
def test_a_library_another_user_could_have_written_in_a_private_directory_is_rebuilt(scenario, built, planted,
                                                                                   owner, mode, problem):
    scenario.cache.mkdir(mode=0o700)
    library = scenario.install(scenario.cache, planted, digest_of=planted)
    library.chmod(mode)
    if owner == "nobody":
        _chown_nobody(library)
    error, warned = scenario.load()
    assert not scenario.marker.exists(), "the planted library was loaded"
    assert error == "" and problem in warned
    info = library.stat()
    assert info.st_uid == os.getuid() and info.st_mode & 0o022 == 0
    assert library.read_bytes() == built.read_bytes()


def test_a_cache_directory_another_user_owns_is_not_used(scenario, built):
    scenario.cache.mkdir(mode=0o755)
    scenario.install(scenario.cache, built, digest_of=built)
    _chown_nobody(scenario.cache)
    error, warned = scenario.load()
    assert error == "" and f"belongs to uid {NOBODY}" in warned
    assert (scenario.fallback / scenario.name).exists()


def test_an_existing_unwritable_cache_directory_uses_the_private_fallback(tmp_path, built, monkeypatch):
    # /proc exists, and no one can create files in it, not even root
    scenario = Scenario(tmp_path, built, monkeypatch, cache=Path("/proc"))
    error, warned = scenario.load()
    assert error == "" and "not using the cache directory /proc" in warned
    assert (scenario.fallback / scenario.name).read_bytes() == built.read_bytes()
    assert scenario.fallback.stat().st_mode & 0o077 == 0


def test_cxx_with_arguments_is_split_like_a_shell_would(tmp_path, built, monkeypatch):
    scenario = Scenario(tmp_path, built, monkeypatch, cxx_arguments="--wrapper-flag 'two words'")
    assert scenario.load() == ("", "")
    (arguments,) = scenario.compiles()
    assert arguments[:2] == ["--wrapper-flag", "two words"] and "-shared" in arguments


def test_a_missing_compiler_is_named_with_its_arguments(scenario, monkeypatch):
    monkeypatch.setenv("CXX", "/nonexistent/ccache c++")
    assert scenario.load()[0].startswith("no C++ compiler: `/nonexistent/ccache c++` cannot be run")


CONCURRENT = """
import os, optimjax
children = []
for _ in range(4):  # forked after the import (no XLA backend started yet): four processes load at once
    pid = os.fork()
    if pid == 0:
        try:
            os._exit(0 if hasattr(optimjax.fused._load_library(), "OptimjaxFusedStep") else 3)
        except BaseException as error:
            print("ERROR:", error, flush=True)
            os._exit(4)
    children.append(pid)
print("EXIT CODES:", [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children])
"""


def test_concurrent_processes_build_once_and_all_load_it(scenario, built):
    process = subprocess.run([sys.executable, "-c", CONCURRENT], env={**os.environ, "FAKE_CXX_SLEEP": "1"},
                             capture_output=True, text=True, timeout=300)
    assert "EXIT CODES: [0, 0, 0, 0]" in process.stdout, process.stdout + process.stderr
    assert len(scenario.compiles()) == 1, "each process compiled the kernel"
    library = scenario.cache / scenario.name
    assert library.read_bytes() == built.read_bytes()
    left = {p.name for p in scenario.cache.iterdir()}
    assert left == {library.name, library.name + ".sha256", f".{library.name}.lock"}, "temporary files left"
