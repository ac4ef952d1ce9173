"""Fashion-MNIST loading: the real files, the search order, clear errors, atomic verified downloads."""
import gzip
import hashlib
import http.server
import struct
import threading
from pathlib import Path

import numpy as np
import pytest
from mxnet import nd

from d2lbn import data
from d2lbn import data as DATA
import d2lbn


def write_idx(path: Path, array: np.ndarray) -> bytes:
    """Write ``array`` (uint8) as a gzip IDX file; return the decompressed bytes."""
    magic = {1: 2049, 3: 2051}[array.ndim]
    raw = struct.pack(f">{1 + array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()
    with gzip.open(path, "wb") as f:
        f.write(raw)
    return raw


def make_fake_set(folder: Path, n_train=12, n_test=5, seed=0):
    """Four small, valid IDX files; returns {name: sha256 of decompressed content}."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    digests = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        for kind, arr in (("images-idx3", rng.integers(0, 256, (n, 28, 28))),
                          ("labels-idx1", rng.integers(0, 10, n))):
            name = f"{prefix}-{kind}-ubyte.gz"
            digests[name] = hashlib.sha256(write_idx(folder / name, arr)).hexdigest()
    return digests


@pytest.fixture
def no_system_data(monkeypatch, tmp_path):
    """Hide every real copy: $D2LBN_DATA unset, MXNet cache and Debian folder pointed at empty dirs."""
    monkeypatch.delenv("D2LBN_DATA", raising=False)
    monkeypatch.setattr(data, "MXNET_CACHE", tmp_path / "mxnet-cache")
    monkeypatch.setattr(data, "DEBIAN_DIR", tmp_path / "debian")
    data._read_split.cache_clear()
    yield
    data._read_split.cache_clear()


# ---- the real data set ---------------------------------------------------------------------------

def test_real_fashion_mnist():
    train_iter, test_iter = data.load_fashion_mnist(batch_size=1000)
    assert len(train_iter._dataset) == 60000 and len(test_iter._dataset) == 10000
    X, y = next(iter(test_iter))
    assert X.shape == (1000, 1, 28, 28) and X.dtype == np.float32
    assert 0.0 == X.min().asscalar() and X.max().asscalar() == 1.0
    assert y.dtype == np.int32 and set(np.unique(y.asnumpy())) == set(range(10))
    (train_X, train_y), (test_X, test_y) = data.read_fashion_mnist()
    # the test loader does not shuffle: its first batch is the first 1000 test images, scaled by 1/255
    np.testing.assert_allclose(X.asnumpy()[:, 0], test_X[:1000] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(np.bincount(train_y), [6000] * 10)   # balanced classes


def test_real_files_match_published_checksums():
    folder = data.find_data_dir()
    assert folder is not None
    for name, sha in data.FILES.items():
        assert data._sha256_of_gzip(folder / name) == sha, name


def test_resize():
    _, test_iter = data.load_fashion_mnist(batch_size=8, resize=32)
    X, _ = next(iter(test_iter))
    assert X.shape == (8, 1, 32, 32)


def test_train_loader_shuffles():
    train_iter, _ = data.load_fashion_mnist(batch_size=64)
    first = next(iter(train_iter))[1].asnumpy()
    second = next(iter(train_iter))[1].asnumpy()
    assert not np.array_equal(first, second)


# ---- search order ---------------------------------------------------------------------------------

def test_search_order(monkeypatch, tmp_path, no_system_data):
    root, env = tmp_path / "root", tmp_path / "env"
    make_fake_set(env, n_train=7, seed=1)
    monkeypatch.setenv("D2LBN_DATA", str(env))
    assert data.search_dirs(root) == [root, env, data.MXNET_CACHE, data.DEBIAN_DIR]
    assert data.find_data_dir(root) == env          # root is empty, so $D2LBN_DATA wins
    make_fake_set(root, n_train=9, seed=2)
    assert data.find_data_dir(root) == root         # root first once it holds the files
    (train_X, _), _ = data.read_fashion_mnist(root)
    assert len(train_X) == 9


def test_loader_from_custom_root(tmp_path, no_system_data):
    make_fake_set(tmp_path / "d", n_train=12, n_test=5)
    train_iter, test_iter = data.load_fashion_mnist(batch_size=4, root=tmp_path / "d")
    assert sum(X.shape[0] for X, _ in train_iter) == 12
    assert sum(X.shape[0] for X, _ in test_iter) == 5


# ---- errors that name the problem ----------------------------------------------------------------

def test_nothing_anywhere_and_no_network(monkeypatch, tmp_path, no_system_data):
    monkeypatch.setenv("D2LBN_DATA_URL", "http://127.0.0.1:9/")   # discard port: connection refused
    with pytest.raises(data.DataNotFoundError) as info:
        data.load_fashion_mnist(32)
    message = str(info.value)
    for place in (data.MXNET_CACHE, data.DEBIAN_DIR):
        assert str(place) in message
    assert "apt-get install dataset-fashion-mnist" in message and "D2LBN_DATA" in message
    assert "download failed" in message


def test_truncated_file_is_named(tmp_path, no_system_data):
    make_fake_set(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(data.DataFileError, match="train-images-idx3-ubyte.gz is truncated"):
        data.read_fashion_mnist(tmp_path)


def test_wrong_magic_is_named(tmp_path, no_system_data):
    make_fake_set(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros((5, 28, 28)))  # images where labels belong
    with pytest.raises(data.DataFileError, match="t10k-labels-idx1-ubyte.gz has IDX magic number 2051"):
        data.read_fashion_mnist(tmp_path)


def test_count_mismatch_is_named(tmp_path, no_system_data):
    make_fake_set(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(11))
    with pytest.raises(data.DataFileError, match="holds 12 images but .* holds 11 labels"):
        data.read_fashion_mnist(tmp_path)


@pytest.mark.parametrize("bad", [0, -3, 2.5, None])
def test_bad_batch_size(bad):
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        data.load_fashion_mnist(bad)


def test_text_labels():
    assert data.get_fashion_mnist_labels([0, 9, 3]) == ["t-shirt", "ankle boot", "dress"]
    assert data.get_fashion_mnist_labels(nd.array([1, 8])) == ["trouser", "bag"]
    with pytest.raises(ValueError, match="labels must be integers in 0..9"):
        data.get_fashion_mnist_labels([10])


# ---- downloads: verified, atomic --------------------------------------------------------------------

@pytest.fixture
def file_server(tmp_path):
    """Serve a folder on 127.0.0.1; yields (folder, base_url)."""
    served = tmp_path / "served"
    served.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(served), **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def test_download_verified_and_atomic(monkeypatch, tmp_path, no_system_data, file_server):
    served, url = file_server
    digests = make_fake_set(served)
    monkeypatch.setattr(data, "FILES", digests)
    monkeypatch.setenv("D2LBN_DATA_URL", url)
    target = tmp_path / "target"
    (train_X, _), (test_X, _) = data.read_fashion_mnist(target)
    assert len(train_X) == 12 and len(test_X) == 5
    assert sorted(p.name for p in target.iterdir()) == sorted(digests)   # no temp files left


def test_corrupt_download_leaves_nothing(monkeypatch, tmp_path, no_system_data, file_server):
    served, url = file_server
    digests = make_fake_set(served)
    monkeypatch.setattr(data, "FILES", digests)
    # the server's copy differs from what the checksum promises: altered content, valid gzip
    write_idx(served / "train-labels-idx1-ubyte.gz", np.ones(12))
    target = tmp_path / "target"
    with pytest.raises(data.DataFileError, match="failed its checksum"):
        data.download_fashion_mnist(target, base_url=url)
    assert not (target / "train-labels-idx1-ubyte.gz").exists()
    assert not any(p.name.endswith(".part") for p in target.iterdir())
    # once the server is fixed, a retry completes the set
    make_fake_set(served)
    data.download_fashion_mnist(target, base_url=url)
    assert sorted(p.name for p in target.iterdir()) == sorted(digests)


def test_interrupted_download_leaves_nothing_and_retry_succeeds(monkeypatch, tmp_path, no_system_data):
    """The server promises the whole file, sends half, and hangs up: no file is trusted afterwards."""
    served = tmp_path / "served"
    digests = make_fake_set(served)
    monkeypatch.setattr(data, "FILES", digests)
    state = {"cut": True}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = (served / self.path.lstrip("/")).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2] if state["cut"] else body)
            self.close_connection = True

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("D2LBN_DATA_URL", f"http://127.0.0.1:{server.server_address[1]}/")
        target = tmp_path / "target"
        with pytest.raises(data.DataNotFoundError, match="download failed"):
            data.read_fashion_mnist(target)
        assert [p.name for p in target.iterdir()] == []          # no half file, no temp file
        state["cut"] = False
        (train_X, _), _ = data.read_fashion_mnist(target)         # the retry completes
        assert len(train_X) == 12
    finally:
        server.shutdown()


def test_default_download_uses_https():
    assert data.DEFAULT_URL.startswith("https://")


def test_found_from_any_working_directory(tmp_path):
    """A notebook run from another folder imports d2lbn (installed, no sys.path tricks) and finds the data."""
    import subprocess
    import sys
    code = "import d2lbn.data as d; print(d.find_data_dir())"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == str(data.find_data_dir())


# ---- concurrent first use (issue 25) ---------------------------------------------------------------

CONCURRENT_DOWNLOAD = """
import json, os, sys, time
from d2lbn import data
from d2lbn import data as DATA
import d2lbn
data.FILES = json.loads(sys.argv[3])
go = sys.argv[4]
while not os.path.exists(go):                 # start together: imports take different times
    time.sleep(0.01)
data.download_fashion_mnist(sys.argv[1], base_url=sys.argv[2], timeout=30)
print("done", flush=True)
"""


def test_three_processes_downloading_into_one_folder_all_succeed(tmp_path):
    """Before the fix each download began by deleting every `*.part` in the folder, including the
    ones the other processes were still writing, and two of three failed."""
    import json
    import os
    import subprocess
    import sys
    import time
    served = tmp_path / "served"
    digests = make_fake_set(served, n_train=40, n_test=20)

    class Slow(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = (served / self.path.lstrip("/")).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            for i in range(0, len(body), 2048):     # about half a second per file
                self.wfile.write(body[i:i + 2048])
                self.wfile.flush()
                time.sleep(0.03)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    target, go = tmp_path / "target", tmp_path / "go"
    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=root)
    procs = []
    try:
        procs = [subprocess.Popen([sys.executable, "-c", CONCURRENT_DOWNLOAD, str(target),
                                   f"http://127.0.0.1:{server.server_address[1]}/", json.dumps(digests),
                                   str(go)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env=env) for _ in range(3)]
        time.sleep(0.5)
        go.touch()
        results = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        server.shutdown()
    failed = [err[-600:] for p, (out, err) in zip(procs, results) if p.returncode != 0]
    assert failed == [], failed
    assert sorted(p.name for p in target.iterdir()) == sorted(digests)    # no .part, no lock left
    for name, sha in digests.items():
        assert data._sha256_of_gzip(target / name) == sha


def test_a_part_being_written_survives_another_process_and_a_dead_lock_does_not_block(tmp_path):
    """While this process holds the download lock (a writer at work), another download into the
    folder waits and leaves the writer's `.part` alone; a lock file whose holder is gone (SIGKILL)
    blocks nothing."""
    import os
    import subprocess
    import sys
    import time
    folder = tmp_path / "d"
    make_fake_set(folder)
    part = folder / "train-images-idx3-ubyte.gz.abc123.part"
    code = ("import sys\nfrom d2lbn import data\n"
            "data.download_fashion_mnist(sys.argv[1], base_url='http://127.0.0.1:9/')\nprint('done')")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    with data.download_lock(folder):
        part.write_bytes(b"being written")
        other = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, env=env)
        lines = []
        reader = threading.Thread(target=lambda: lines.extend(other.stderr), daemon=True)
        reader.start()
        try:
            deadline = time.monotonic() + 60
            while not lines and other.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            assert lines and "waiting for another process downloading Fashion-MNIST" in lines[0], lines
            time.sleep(0.5)
            assert other.poll() is None and part.exists()        # it waits; the part is untouched
        except BaseException:
            other.kill()
            other.wait()
            raise
    out = other.stdout.read()
    other.wait(timeout=60)
    reader.join(timeout=5)
    assert other.returncode == 0 and out.strip() == "done", lines
    assert not part.exists()                                  # its writer is gone now: stale
    # a lock file left by a killed holder is only a file: the next download proceeds and removes it
    (folder / data.LOCK_NAME).write_text("")
    part.write_bytes(b"left by a killed run")
    data.download_fashion_mnist(folder, base_url="http://127.0.0.1:9/")     # all present: no request
    assert sorted(p.name for p in folder.iterdir()) == sorted(data.FILES)


# ---- tools/ensure_data.sh: make test gets the data itself (issue 25) --------------------------------
# The script runs under a PATH of fakes: `id` (root or not), `sudo` (passwordless or not), `apt-get`
# (whose `install dataset-fashion-mnist` writes four files into the Debian folder the script is
# pointed at, or fails until `apt-get update`, or always fails), each logging its arguments. The real
# data set stays installed on this machine; HOME and the Debian folder are temporary folders.

ENSURE = Path(__file__).resolve().parents[1] / "tools" / "ensure_data.sh"
FAKE_ID = '#!/bin/sh\n[ "$1" = -u ] && { echo "$FAKE_UID"; exit 0; }\nexit 1\n'
FAKE_SUDO = ('#!/bin/sh\necho "sudo $*" >>"$FAKE_LOG"\n[ "$FAKE_SUDO" = yes ] || exit 1\n'
             '[ "$1" = -n ] && shift\nexec "$@"\n')
FAKE_APT = """#!/bin/sh
echo "apt-get $*" >>"$FAKE_LOG"
case "$*" in
  update*) [ "$FAKE_APT" = needs-update ] && touch "$FAKE_STATE/updated"; exit 0 ;;
  *install*dataset-fashion-mnist*)
    if [ "$FAKE_APT" = works ] || { [ "$FAKE_APT" = needs-update ] && [ -e "$FAKE_STATE/updated" ]; }; then
      mkdir -p "$ENSURE_DATA_DEBIAN_DIR"
      for f in train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz \\
               t10k-labels-idx1-ubyte.gz; do echo fake >"$ENSURE_DATA_DEBIAN_DIR/$f"; done
      exit 0
    fi
    echo "E: Unable to locate package dataset-fashion-mnist" >&2; exit 100 ;;
esac
exit 1
"""


def run_ensure(tmp_path, *args, uid="0", sudo="no", apt="works", env=None):
    """Run tools/ensure_data.sh under the fakes; returns (CompletedProcess, the fakes' log lines)."""
    import os
    import shutil
    import subprocess
    bin_ = tmp_path / "bin"
    if not bin_.exists():
        bin_.mkdir()
        for name, text in (("id", FAKE_ID), ("sudo", FAKE_SUDO), ("apt-get", FAKE_APT)):
            (bin_ / name).write_text(text)
            (bin_ / name).chmod(0o755)
        for tool in ("sh", "mkdir", "touch", "mktemp", "tail", "rm", "cat", "true"):
            (bin_ / tool).symlink_to(shutil.which(tool))
    (tmp_path / "state").mkdir(exist_ok=True)
    (tmp_path / "home").mkdir(exist_ok=True)
    log = tmp_path / "log"
    log.touch()
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("D2LBN_", "PYTHON"))}
    environ.update(PATH=str(bin_), HOME=str(tmp_path / "home"), FAKE_UID=uid, FAKE_SUDO=sudo,
                   FAKE_APT=apt, FAKE_LOG=str(log), FAKE_STATE=str(tmp_path / "state"),
                   ENSURE_DATA_DEBIAN_DIR=str(tmp_path / "debian"), **(env or {}))
    run = subprocess.run([shutil.which("bash"), str(ENSURE), *args], capture_output=True, text=True,
                         timeout=300, env=environ)
    return run, log.read_text().splitlines()


def debian_files(tmp_path):
    folder = tmp_path / "debian"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_ensure_data_does_nothing_when_a_folder_holds_the_data(tmp_path):
    make_fake_set(tmp_path / "mine")
    run, log = run_ensure(tmp_path, env={"D2LBN_DATA": str(tmp_path / "mine")})
    assert run.returncode == 0 and f"found in {tmp_path / 'mine'}" in run.stdout, run.stderr
    assert log == [] and debian_files(tmp_path) == []


@pytest.mark.parametrize("uid, sudo, apt, calls", [
    ("0", "no", "works", ["apt-get install -y -q dataset-fashion-mnist"]),
    ("0", "no", "needs-update", ["apt-get install -y -q dataset-fashion-mnist", "apt-get update -q",
                                 "apt-get install -y -q dataset-fashion-mnist"]),
    ("1000", "yes", "works", ["sudo -n true", "sudo -n apt-get install -y -q dataset-fashion-mnist",
                              "apt-get install -y -q dataset-fashion-mnist"]),
])
def test_ensure_data_installs_debians_package_as_root_or_with_sudo(tmp_path, uid, sudo, apt, calls):
    run, log = run_ensure(tmp_path, uid=uid, sudo=sudo, apt=apt)
    assert run.returncode == 0, run.stdout + run.stderr
    assert log == calls
    assert debian_files(tmp_path) == sorted(data.FILES)
    assert f"installed in {tmp_path / 'debian'}" in run.stdout
    assert "Unable to locate" not in run.stderr           # the first try's error is not shown


@pytest.mark.parametrize("uid, sudo, apt", [("1000", "no", "works"), ("0", "no", "fails")])
def test_ensure_data_without_a_way_says_how(tmp_path, uid, sudo, apt):
    """No root, no passwordless sudo (or an apt-get that cannot install), no Python to download with:
    a message saying how, and a non-zero status, so `make test` stops before the tests that need it."""
    run, log = run_ensure(tmp_path, uid=uid, sudo=sudo, apt=apt)
    assert run.returncode == 1
    assert "sudo apt-get install dataset-fashion-mnist" in run.stderr and "D2LBN_DATA" in run.stderr
    assert debian_files(tmp_path) == []
    if apt == "fails":
        assert "Unable to locate package" in run.stderr       # apt-get's own reason is shown
    else:
        assert not [call for call in log if call.startswith("apt-get")]


def test_ensure_data_downloads_with_d2lbn_when_it_cannot_install(tmp_path):
    """No root and no sudo, a Python with d2lbn given: it downloads (here from 127.0.0.1, serving the
    real files of this machine, so the real checksums are checked) into ~/.mxnet."""
    import sys
    real = data.find_data_dir()
    assert real is not None

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(real), **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        run, log = run_ensure(tmp_path, sys.executable, uid="1000", sudo="no",
                              env={"D2LBN_DATA_URL": url})
    finally:
        server.shutdown()
    assert run.returncode == 0, run.stdout + run.stderr[-2000:]
    cache = tmp_path / "home" / ".mxnet" / "datasets" / "fashion-mnist"
    assert sorted(p.name for p in cache.iterdir()) == sorted(data.FILES)
    assert not [call for call in log if call.startswith("apt-get")]


def test_ensure_data_download_failing_offline_says_how(tmp_path):
    import sys
    run, _ = run_ensure(tmp_path, sys.executable, uid="1000", sudo="no",
                        env={"D2LBN_DATA_URL": "http://127.0.0.1:9/"})
    assert run.returncode == 1
    assert "download failed" in run.stderr and "sudo apt-get install dataset-fashion-mnist" in run.stderr


def test_make_test_gets_the_data_before_the_tests():
    """`make test` (and `make test-numpy126`) run tools/ensure_data.sh with the venv's Python first."""
    import re
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    for target, python in (("test", "$(BIN)/python"), ("test-numpy126", "$(VENV126)/bin/python")):
        recipe = re.search(rf"^{re.escape(target)}:[^\n]*\n((?:\t[^\n]*\n)+)", makefile, re.M).group(1)
        first = recipe.splitlines()[0].strip()
        assert first == f"tools/ensure_data.sh {python}", recipe


def test_a_folder_without_file_locks_still_downloads(monkeypatch, tmp_path):
    """On a file system that refuses flock (ENOLCK, some network mounts) the lock is skipped, not fatal."""
    import errno
    import fcntl

    def refuse(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    make_fake_set(tmp_path)
    monkeypatch.setattr(fcntl, "flock", refuse)
    with data.download_lock(tmp_path):
        pass
    data.download_fashion_mnist(tmp_path, base_url="http://127.0.0.1:9/")   # all present: no request
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(data.FILES)


def test_array_loader_visits_every_example_once_per_pass():
    X = nd.arange(10).reshape((10, 1))
    y = nd.arange(10)
    d2lbn.set_seed(0)
    loader = DATA.ArrayLoader(X, y, 4, shuffle=True)
    assert len(loader) == 3
    seen = np.concatenate([yb.asnumpy() for _, yb in loader])
    assert sorted(seen) == list(range(10)) and list(seen) != list(range(10))
    for Xb, yb in loader:
        np.testing.assert_array_equal(Xb.asnumpy()[:, 0], yb.asnumpy())   # rows stay paired
    with pytest.raises(ValueError, match="batch_size"):
        DATA.ArrayLoader(X, y, 0)
