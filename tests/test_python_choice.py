"""Which Python `make` builds .venv with (tools/find_python.sh, tools/make_venv.sh), under fake PATHs.

mxnet 1.9.1 needs numpy<1.24, which has wheels for Python 3.8-3.11 only. The scripts take $PYTHON, else
the first 3.8-3.11 on PATH, else provision Python 3.11 with uv, else print the ways out. Each test runs
the real script with a PATH holding only the pythons it names. A "Python 3.12" here is a two-line shell
script that answers the scripts' version probe with 3.12 (this machine has no usable 3.12 on PATH, and
CI's container has none at all); the 3.11 is the interpreter running these tests.
"""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIND = ROOT / "tools" / "find_python.sh"
MAKE_VENV = ROOT / "tools" / "make_venv.sh"
BASH = shutil.which("bash")
REAL = os.path.realpath(sys.executable)          # this test run's interpreter, outside any venv
WAYS_OUT = ["PYTHON=/path/to/python3.11", "uv python install 3.11", "pyenv install 3.11",
            "conda create", "deadsnakes"]

pytestmark = pytest.mark.skipif(
    BASH is None or not (3, 8) <= sys.version_info[:2] <= (3, 11),
    reason="needs bash, and a Python 3.8-3.11 running the tests to stand for the 3.11 on PATH")


def write_exe(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


def fake_python(folder: Path, name: str, version: str = "3.12") -> Path:
    """A `name` that reports `version` to the version probe and runs the real interpreter otherwise."""
    return write_exe(folder / name, "#!/bin/sh\n"
                     f'case "$*" in *version_info*) echo {version}; exit 0;; esac\n'
                     f'exec "{REAL}" "$@"\n')


def real_python(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).symlink_to(REAL)
    return folder / name


def tools_dir(tmp_path: Path) -> Path:
    """The few commands make_venv.sh runs besides Python (no python in this folder)."""
    folder = tmp_path / "coreutils"
    folder.mkdir(exist_ok=True)
    for cmd in ("rm", "mkdir", "ln"):
        if not (folder / cmd).exists():
            (folder / cmd).symlink_to(shutil.which(cmd))
    return folder


def run(script: Path, *args: str, path: list[Path], **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items()          # keeps proxy and certificate settings
               if k not in ("PYTHON", "VIRTUAL_ENV", "PYTHONHOME", "PYTHONPATH") and not k.startswith("UV_")}
    environ["PATH"] = os.pathsep.join(map(str, path))
    environ.update(env)
    return subprocess.run([BASH, str(script), *args], env=environ, capture_output=True, text=True,
                          timeout=600)


# ---- tools/find_python.sh: the choice -------------------------------------------------------------

def test_finds_python311_ahead_of_a_python3_that_is_312(tmp_path):
    bin_ = tmp_path / "bin"
    fake_python(bin_, "python3")
    fake_python(bin_, "python3.12")
    py311 = real_python(bin_, "python3.11")
    result = run(FIND, path=[bin_])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(py311)


def test_takes_python3_when_it_is_the_311(tmp_path):
    bin_ = tmp_path / "bin"
    py3 = real_python(bin_, "python3")
    result = run(FIND, path=[bin_])
    assert (result.returncode, result.stdout.strip()) == (0, str(py3))


def test_skips_a_pyenv_shim_that_does_not_run(tmp_path):
    """pyenv puts a python3.11 shim on PATH even when 3.11 is not selected; it exits 127."""
    shims, usr = tmp_path / "shims", tmp_path / "usr"
    write_exe(shims / "python3.11", "#!/bin/sh\necho 'pyenv: python3.11: command not found' >&2\nexit 127\n")
    good = real_python(usr, "python3.11")
    result = run(FIND, path=[shims, usr])
    assert (result.returncode, result.stdout.strip()) == (0, str(good))


def test_only_312_and_313_found_means_none(tmp_path):
    bin_ = tmp_path / "bin"
    fake_python(bin_, "python3")
    fake_python(bin_, "python3.12")
    fake_python(bin_, "python", "3.13")
    result = run(FIND, path=[bin_])
    assert (result.returncode, result.stdout) == (1, "")


def test_no_python_at_all_means_none(tmp_path):
    (tmp_path / "empty").mkdir()
    result = run(FIND, path=[tmp_path / "empty"])
    assert (result.returncode, result.stdout) == (1, "")


def test_PYTHON_is_used_even_off_PATH(tmp_path):
    py = real_python(tmp_path / "elsewhere", "python3.11")
    fake_python(tmp_path / "bin", "python3")
    result = run(FIND, path=[tmp_path / "bin"], PYTHON=str(py))
    assert (result.returncode, result.stdout.strip()) == (0, str(py))


def test_PYTHON_312_is_refused_with_a_reason(tmp_path):
    real_python(tmp_path / "bin", "python3.11")          # even with a good one on PATH
    py312 = fake_python(tmp_path / "elsewhere", "python3.12")
    result = run(FIND, path=[tmp_path / "bin"], PYTHON=str(py312))
    assert result.returncode == 2 and result.stdout == ""
    assert "is Python 3.12" in result.stderr and "3.8-3.11" in result.stderr


def test_makefile_creates_venv_through_make_venv_sh():
    make = shutil.which("make")
    if make is None:
        pytest.skip("no make")
    dry = subprocess.run([make, "-n", "-B", "VENV=/nonexistent/v", "PYTHON=/x/python3.11",
                          "/nonexistent/v/.installed"], cwd=ROOT, capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr
    assert "PYTHON='/x/python3.11' tools/make_venv.sh /nonexistent/v" in dry.stdout


# ---- tools/make_venv.sh: the uv route and its failure --------------------------------------------

def test_nothing_to_work_with_lists_every_way_out(tmp_path):
    """No python, no uv on PATH: one message naming every fix, and no venv."""
    (tmp_path / "empty").mkdir()
    result = run(MAKE_VENV, str(tmp_path / "v"), path=[tmp_path / "empty", tools_dir(tmp_path)],
                 D2LBN_UV_HOME=str(tmp_path / "boot"))
    assert result.returncode == 1
    for way in WAYS_OUT:
        assert way in result.stderr, (way, result.stderr)
    assert not (tmp_path / "v").exists()


def managed_311(folder: Path) -> Path:
    """Lay this machine's Python 3.11 out as uv lays out a CPython it installed itself
    (`uv python install 3.11`), so uv finds a 3.11 with none on PATH and needs no download."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("the managed-Python layout below is written for glibc Linux")
    arch = {"amd64": "x86_64", "arm64": "aarch64"}.get(platform.machine().lower(), platform.machine())
    home = folder / f"cpython-{platform.python_version()}-linux-{arch}-gnu"
    home.mkdir(parents=True)
    for part in ("bin", "lib", "include", "share"):
        if (Path(sys.base_prefix) / part).is_dir():
            (home / part).symlink_to(Path(sys.base_prefix) / part)
    return home


@pytest.fixture(scope="module")
def uv_route(tmp_path_factory):
    """make_venv.sh on a machine whose python3 is 3.12 and which has no uv: it installs uv from PyPI
    into a bootstrap folder with that python3, and uv builds the venv from a 3.11 it finds locally."""
    tmp = tmp_path_factory.mktemp("uv_route")
    bin_ = tmp / "bin"
    fake_python(bin_, "python3")
    fake_python(bin_, "python3.12")
    managed = managed_311(tmp / "managed")
    venv = tmp / "venv"
    result = run(MAKE_VENV, str(venv), path=[bin_, tools_dir(tmp)], D2LBN_UV_HOME=str(tmp / "boot"),
                 UV_PYTHON_INSTALL_DIR=str(tmp / "managed"), UV_PYTHON_DOWNLOADS="never",
                 UV_CACHE_DIR=str(tmp / "uv-cache"))
    return tmp, venv, managed, result


def test_uv_route_creates_a_311_venv(uv_route):
    tmp, venv, managed, result = uv_route
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "No Python 3.8-3.11 on PATH (python3 is Python 3.12)" in out
    assert "Installing uv from PyPI" in out and "uv installed in" in out
    assert f"Python {platform.python_version()} ready in {venv} via uv" in out
    cfg = (venv / "pyvenv.cfg").read_text()
    assert "uv =" in cfg and str(managed) in cfg, cfg
    probe = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import sys, pip; print('%d.%d' % sys.version_info[:2], sys.prefix)"],
                           capture_output=True, text=True)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.split() == ["%d.%d" % sys.version_info[:2], str(venv)]


def test_uv_on_PATH_but_no_311_to_find_or_download(uv_route, tmp_path):
    """uv is on PATH (the one bootstrapped above) but no python is, downloads are off (as with no network)
    and uv has installed no 3.11: the message lists the ways out."""
    boot_uv = uv_route[0] / "boot" / "bin" / "uv"
    assert boot_uv.exists(), uv_route[3].stdout + uv_route[3].stderr
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "uv").symlink_to(boot_uv)
    (tmp_path / "managed").mkdir()
    result = run(MAKE_VENV, str(tmp_path / "v"), path=[bin_, tools_dir(tmp_path)],
                 D2LBN_UV_HOME=str(tmp_path / "boot"), UV_PYTHON_INSTALL_DIR=str(tmp_path / "managed"),
                 UV_PYTHON_DOWNLOADS="never", UV_CACHE_DIR=str(tmp_path / "uv-cache"))
    assert result.returncode == 1, result.stdout
    assert "Installing uv" not in result.stdout          # the uv on PATH was used
    for way in WAYS_OUT:
        assert way in result.stderr, (way, result.stderr)
    assert not (tmp_path / "boot").exists()
