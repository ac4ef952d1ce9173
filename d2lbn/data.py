"""Fashion-MNIST: find, verify, download and load it; in-memory arrays and a loader (every chapter).

The four IDX files are looked for, in this order, in

1. the ``root`` argument,
2. the folder named by the environment variable ``D2LBN_DATA``,
3. MXNet's own cache, ``~/.mxnet/datasets/fashion-mnist``,
4. Debian's ``dataset-fashion-mnist`` package, ``/usr/share/datasets/fashion-mnist``.

If no folder holds all four, they are downloaded over https into the first of ``root``,
``$D2LBN_DATA`` or MXNet's cache, with a progress bar. Each download is written to a temporary
file, its decompressed content checked against a SHA-256 digest, and only then renamed into place,
so an interrupted or corrupted download never leaves a file that a later run would trust.
"""
from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import http.client
import os
import signal
import struct
import sys
import tempfile
import threading
import urllib.error
import urllib.request
import zlib
from functools import lru_cache
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import mxnet as mx
from mxnet import gluon, nd

from .checks import check_int

__all__ = [
    "DataFileError", "DataNotFoundError", "FILES", "TEXT_LABELS", "DEFAULT_URL",
    "search_dirs", "find_data_dir", "download_fashion_mnist", "read_idx", "read_fashion_mnist",
    "load_fashion_mnist", "get_fashion_mnist_labels", "TrainBatchSampler", "training_loader",
    "NUM_CLASSES", "fashion_arrays", "ArrayLoader",
]

#: Labels are 0..NUM_CLASSES-1.
NUM_CLASSES = 10

TEXT_LABELS = ["t-shirt", "trouser", "pullover", "dress", "coat",
               "sandal", "shirt", "sneaker", "bag", "ankle boot"]

#: file name -> SHA-256 of the *decompressed* IDX content (compression differs between mirrors).
FILES: Dict[str, str] = {
    "train-images-idx3-ubyte.gz": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte.gz": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte.gz": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte.gz": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}

#: The official Fashion-MNIST files, served over https from Zalando Research's repository.
DEFAULT_URL = "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"

MXNET_CACHE = Path("~/.mxnet/datasets/fashion-mnist")
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")

_IDX_MAGIC = {1: 2049, 3: 2051}  # rank -> magic number of unsigned-byte IDX files


class DataNotFoundError(FileNotFoundError):
    """No folder holds the data set and it could not be downloaded."""


class DataFileError(ValueError):
    """A data file exists but is truncated, corrupt, or inconsistent with its partner file."""


def search_dirs(root: Optional[os.PathLike] = None) -> List[Path]:
    """The folders searched for the data, in order (see the module docstring)."""
    dirs: List[Path] = []
    if root is not None:
        dirs.append(Path(root).expanduser())
    if os.environ.get("D2LBN_DATA"):
        dirs.append(Path(os.environ["D2LBN_DATA"]).expanduser())
    dirs += [MXNET_CACHE.expanduser(), DEBIAN_DIR]
    return dirs


def _has_all(folder: Path) -> bool:
    return all((folder / name).is_file() for name in FILES)


def find_data_dir(root: Optional[os.PathLike] = None) -> Optional[Path]:
    """The first searched folder that holds all four files, or ``None``."""
    for folder in search_dirs(root):
        if _has_all(folder):
            return folder
    return None


def _sha256_of_gzip(path: Path) -> str:
    digest = hashlib.sha256()
    with gzip.open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def _sigterm_raises():
    """While downloading in the main thread with SIGTERM's default action (die at once), make SIGTERM
    raise ``SystemExit(143)`` instead, so that ``finally`` clauses remove the temporary file."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL):
        yield
        return

    def handler(signum, frame):
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _download_one(url: str, target: Path, expected_sha256: str, timeout: float) -> None:
    """Download ``url`` to ``target`` atomically, verifying the decompressed SHA-256 first; the
    temporary ``*.part`` file is removed whatever happens, SIGTERM included."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with _sigterm_raises():
        fd, tmp_name = tempfile.mkstemp(prefix=target.name + ".", suffix=".part", dir=target.parent)
        tmp = Path(tmp_name)
        _fetch_verified(url, fd, tmp, target, expected_sha256, timeout)


def _fetch_verified(url: str, fd: int, tmp: Path, target: Path, expected_sha256: str,
                    timeout: float) -> None:
    """Write ``url`` into ``fd`` (the file ``tmp``), check it, rename it to ``target``; delete ``tmp``
    on any failure."""
    from tqdm.auto import tqdm
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=target.name) as bar:
                for chunk in iter(lambda: response.read(1 << 16), b""):
                    out.write(chunk)
                    bar.update(len(chunk))
            if total is not None and out.tell() != total:
                raise DataFileError(f"download of {url} stopped after {out.tell()} of {total} bytes")
        try:
            actual = _sha256_of_gzip(tmp)
        except (OSError, EOFError, zlib.error) as err:
            raise DataFileError(f"download of {url} is not a complete gzip file ({err})") from None
        if actual != expected_sha256:
            raise DataFileError(f"download of {url} failed its checksum: SHA-256 of the content is "
                                f"{actual}, expected {expected_sha256}")
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


#: The lock file a download holds in its folder (``fcntl.flock``) while it writes there.
LOCK_NAME = ".fashion-mnist.lock"


@contextlib.contextmanager
def download_lock(folder: os.PathLike):
    """Hold the exclusive download lock of ``folder`` (an ``flock`` on :data:`LOCK_NAME` inside it);
    another process that downloads into the same folder waits until it is released (saying so once
    on stderr). The kernel releases it when the holder dies, however it dies; the holder removes
    the file when done, and a waiter checks that the file it locked is still the one in the folder.
    Without ``fcntl`` (Windows), or on a file system without locks, nothing is locked."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    path = Path(folder) / LOCK_NAME
    announced = False
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not announced:
                    print(f"waiting for another process downloading Fashion-MNIST into {folder}",
                          file=sys.stderr, flush=True)
                    announced = True
                fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as err:
            os.close(fd)
            if err.errno not in (errno.ENOLCK, errno.EINVAL, errno.EOPNOTSUPP):
                raise
            fd = None                           # a file system without locks: download unlocked
            with contextlib.suppress(OSError):
                os.unlink(path)
            break
        except BaseException:
            os.close(fd)
            raise
        try:
            mine, current = os.fstat(fd), os.stat(path)
            locked = (mine.st_dev, mine.st_ino) == (current.st_dev, current.st_ino)
        except FileNotFoundError:               # the holder we waited for removed it
            locked = False
        if locked:
            break
        os.close(fd)
    try:
        yield
    finally:
        if fd is not None:
            try:
                os.unlink(path)                 # while still holding the lock
            except OSError:
                pass
            os.close(fd)


def remove_stale_parts(folder: os.PathLike) -> List[Path]:
    """Delete the temporary ``<file>.*.part`` downloads a killed run (SIGTERM, SIGKILL, power loss)
    left in ``folder``; return what was removed. A finished download is renamed, never a ``.part``.
    Call it only while holding :func:`download_lock` (as :func:`download_fashion_mnist` does): every
    download writes its parts under that lock, so the parts found then have no living writer."""
    removed = []
    folder = Path(folder)
    if folder.is_dir():
        for name in FILES:
            for part in folder.glob(f"{name}.*.part"):
                try:
                    part.unlink()
                    removed.append(part)
                except OSError:
                    pass
    return removed


def download_fashion_mnist(target_dir: os.PathLike, base_url: Optional[str] = None,
                           timeout: float = 60.0) -> Path:
    """Download the four files into ``target_dir`` (atomically, checksum-verified); return it.

    ``base_url`` defaults to ``$D2LBN_DATA_URL`` or :data:`DEFAULT_URL`. Files already present are
    kept; partial downloads a killed earlier run left behind are removed first. Several processes
    may call it on one folder at once: each holds :func:`download_lock` while it works there, so the
    first downloads and the others then find the files present.
    """
    base_url = base_url or os.environ.get("D2LBN_DATA_URL") or DEFAULT_URL
    if not base_url.endswith("/"):
        base_url += "/"
    target = Path(target_dir).expanduser()
    target.mkdir(parents=True, exist_ok=True)
    with _sigterm_raises(), download_lock(target):
        remove_stale_parts(target)
        for name, sha in FILES.items():
            if not (target / name).is_file():
                _download_one(base_url + name, target / name, sha, timeout)
    return target


def _not_found_message(searched: Sequence[Path], download_error: Optional[BaseException]) -> str:
    lines = ["Fashion-MNIST was not found. Looked for " + ", ".join(FILES) + " in:"]
    lines += [f"  - {folder}" + ("" if folder.is_dir() else " (no such folder)") for folder in searched]
    if download_error is not None:
        lines.append(f"and the download failed: {download_error}")
    lines += [
        "Fix it in one of these ways:",
        "  * Debian/Ubuntu: sudo apt-get install dataset-fashion-mnist",
        "  * put the four .gz files in a folder and set D2LBN_DATA=/that/folder (or pass root=...)",
        "  * connect to the internet: d2lbn downloads them (and verifies them) on first use",
    ]
    return "\n".join(lines)


def locate_or_download(root: Optional[os.PathLike] = None) -> Path:
    """Return a folder holding all four files, downloading them if no searched folder has them."""
    found = find_data_dir(root)
    if found is not None:
        return found
    searched = search_dirs(root)
    target = searched[0] if (root is not None or os.environ.get("D2LBN_DATA")) else MXNET_CACHE.expanduser()
    try:
        return download_fashion_mnist(target)
    except (urllib.error.URLError, http.client.HTTPException, OSError, DataFileError) as err:
        raise DataNotFoundError(_not_found_message(searched, err)) from None


def read_idx(path: os.PathLike, rank: int) -> np.ndarray:
    """Read a gzip-compressed unsigned-byte IDX file of the given rank (1: labels, 3: images).

    Raises :class:`DataFileError` naming the file if it is truncated, not gzip, or not IDX.
    """
    path = Path(path)
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise DataNotFoundError(f"{path}: no such file") from None
    except (OSError, EOFError, zlib.error) as err:
        raise DataFileError(f"{path} is truncated or not a gzip file ({err}); delete it and "
                            "reinstall or re-download the data") from None
    header_size = 4 + 4 * rank
    if len(raw) < header_size:
        raise DataFileError(f"{path} is too short to be an IDX file ({len(raw)} bytes)")
    magic, *dims = struct.unpack(f">{1 + rank}I", raw[:header_size])
    if magic != _IDX_MAGIC[rank]:
        raise DataFileError(f"{path} has IDX magic number {magic}, expected {_IDX_MAGIC[rank]} "
                            f"(a rank-{rank} unsigned-byte IDX file); is it the right file?")
    expected = int(np.prod(dims))
    if dims[0] == 0:
        raise DataFileError(f"{path} holds 0 {'images' if rank == 3 else 'labels'} (header dimensions "
                            f"{tuple(dims)}); it is empty: reinstall or re-download the data")
    if len(raw) - header_size != expected:
        raise DataFileError(f"{path} holds {len(raw) - header_size} data bytes, but its header "
                            f"promises {expected} for dimensions {tuple(dims)}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header_size).reshape(dims)


@lru_cache(maxsize=4)
def _read_split(folder: Path, prefix: str) -> Tuple[np.ndarray, np.ndarray]:
    images_path = folder / f"{prefix}-images-idx3-ubyte.gz"
    labels_path = folder / f"{prefix}-labels-idx1-ubyte.gz"
    images = read_idx(images_path, 3)
    labels = read_idx(labels_path, 1)
    if len(images) != len(labels):
        raise DataFileError(f"{images_path} holds {len(images)} images but {labels_path} holds "
                            f"{len(labels)} labels; one of them is from another data set")
    if labels.max() >= NUM_CLASSES:
        bad = int(np.argmax(labels >= NUM_CLASSES))
        raise DataFileError(f"{labels_path} holds label {int(labels[bad])} (at index {bad}); "
                            f"Fashion-MNIST labels are 0..{NUM_CLASSES - 1}: is it the right file?")
    return images, labels


def read_fashion_mnist(root: Optional[os.PathLike] = None
                       ) -> Tuple[Tuple[np.ndarray, np.ndarray], Tuple[np.ndarray, np.ndarray]]:
    """Return ``((train_images, train_labels), (test_images, test_labels))`` as uint8 NumPy arrays.

    Images: (N, 28, 28); labels: (N,), values 0..9.
    """
    folder = locate_or_download(root).resolve()
    train, test = _read_split(folder, "train"), _read_split(folder, "t10k")
    if train[0].shape[1:] != test[0].shape[1:]:
        raise DataFileError(f"the training images in {folder} are {train[0].shape[1]}x{train[0].shape[2]} "
                            f"but the test images are {test[0].shape[1]}x{test[0].shape[2]}; both "
                            f"files must come from one data set")
    return train, test


def _to_tensor(images: np.ndarray) -> nd.NDArray:
    """uint8 (N, 28, 28) -> float32 (N, 1, 28, 28) in [0, 1] on the CPU."""
    return nd.array(images.reshape(-1, 1, *images.shape[1:]), dtype="float32") / 255


class ResizeBatch:
    """A DataLoader ``batchify_fn``: stack the examples, then resize the images to ``size`` x ``size``.

    Resizing per batch keeps memory bounded (resizing all 60,000 images to 224 x 224 up front would
    take 12 GB and break MXNet's 2^31-element limit)."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, samples):
        X, y = gluon.data.dataloader.default_batchify_fn(samples)
        return nd.contrib.BilinearResize2D(X, height=self.size, width=self.size), y


def load_fashion_mnist(batch_size: int, resize: Optional[int] = None,
                       root: Optional[os.PathLike] = None, num_workers: int = 0,
                       ) -> Tuple[gluon.data.DataLoader, gluon.data.DataLoader]:
    """Gluon ``DataLoader``s over the real Fashion-MNIST: 60,000 training and 10,000 test images.

    Each batch is ``(X, y)`` with X: (batch, 1, 28, 28) float32 in [0, 1] (or resized to
    ``resize`` x ``resize``, batch by batch) and y: (batch,) int32 labels. The training loader
    shuffles and never ends an epoch on a batch of one example (:class:`TrainBatchSampler`).
    The files are checked: no empty file, labels 0..9, training and test images of one size.
    """
    batch_size = check_int("batch_size", batch_size)
    if resize is not None:
        resize = check_int("resize", resize, what="None or a positive int")
    num_workers = check_int("num_workers", num_workers, minimum=0)
    if resize is not None and batch_size * resize * resize >= 2 ** 31:
        raise ValueError(f"batch_size {batch_size} with resize={resize} gives batches of "
                         f"{batch_size * resize * resize} values, more than MXNet's 2^31 - 1 per array; "
                         f"use a smaller batch_size or resize")
    (train_X, train_y), (test_X, test_y) = read_fashion_mnist(root)
    batchify = {} if resize is None else {"batchify_fn": ResizeBatch(resize)}
    datasets = [gluon.data.ArrayDataset(_to_tensor(images), nd.array(labels, dtype="int32"))
                for images, labels in ((train_X, train_y), (test_X, test_y))]
    return (training_loader(datasets[0], batch_size, num_workers=num_workers, **batchify),
            gluon.data.DataLoader(datasets[1], batch_size, shuffle=False, num_workers=num_workers,
                                  **batchify))


class TrainBatchSampler(gluon.data.Sampler):
    """Mini-batches of indices for *training*: like ``last_batch='keep'``, except that a final batch
    of one example is dropped (that example is left out of this epoch; with shuffling it is a
    different one each time).

    A batch-norm layer in training mode refuses a batch of one (its variance is 0), so 129 examples
    in batches of 128 would stop the epoch at its last batch; the layer's own refusal stays for
    direct calls. ``len()`` counts the batches actually yielded.
    """

    def __init__(self, length: int, batch_size: int, shuffle: bool = True):
        self.length = check_int("length", length, minimum=0)
        self.batch_size = check_int("batch_size", batch_size)
        self.shuffle = shuffle

    def __iter__(self):
        order = np.random.permutation(self.length) if self.shuffle else np.arange(self.length)
        for b in range(len(self)):
            yield order[b * self.batch_size:(b + 1) * self.batch_size].tolist()

    def __len__(self) -> int:
        full, rest = divmod(self.length, self.batch_size)
        return full + (1 if rest > 1 else 0)


def training_loader(dataset, batch_size: int, num_workers: int = 0, **kwargs) -> gluon.data.DataLoader:
    """A shuffling ``DataLoader`` over ``dataset`` whose final batch is never a single example
    (:class:`TrainBatchSampler`)."""
    return gluon.data.DataLoader(dataset, batch_sampler=TrainBatchSampler(len(dataset), batch_size),
                                 num_workers=num_workers, **kwargs)


def get_fashion_mnist_labels(indices) -> List[str]:
    """Text labels for numeric labels 0..9 (an int, a list, a NumPy array or an NDArray)."""
    if isinstance(indices, nd.NDArray):
        indices = indices.asnumpy()
    values = np.asarray(indices).reshape(-1)
    result = []
    for value in values:
        if float(value) != int(value) or not 0 <= int(value) < len(TEXT_LABELS):
            raise ValueError(f"labels must be integers in 0..9; got {value!r}")
        result.append(TEXT_LABELS[int(value)])
    return result


# ---- the data as in-memory arrays, and a loader over them (ch06, ch07, ch08, ch09, ch10) ----------

def fashion_arrays(train_limit: Optional[int] = None, test_limit: Optional[int] = None,
                   flatten: bool = False, ctx: mx.Context = mx.cpu()
                   ) -> Tuple[nd.NDArray, nd.NDArray, nd.NDArray, nd.NDArray]:
    """Fashion-MNIST as four arrays on ``ctx``: ``(train_X, train_y, test_X, test_y)``.

    X: (n, 1, 28, 28) float32 in [0, 1], or (n, 784) with ``flatten=True``; y: (n,) float32 labels.
    ``train_limit``/``test_limit`` keep the first n examples of each split (all when None).
    """
    (train_X, train_y), (test_X, test_y) = read_fashion_mnist()
    out = []
    for images, labels, limit, name in ((train_X, train_y, train_limit, "train_limit"),
                                        (test_X, test_y, test_limit, "test_limit")):
        if limit is not None:
            limit = check_int(name, limit, what="a positive int or None")
            images, labels = images[:limit], labels[:limit]
        shape = (len(images), 784) if flatten else (len(images), 1, 28, 28)
        out.append(nd.array(images.reshape(shape), ctx=ctx, dtype="float32") / 255)
        out.append(nd.array(labels, ctx=ctx, dtype="float32"))
    return out[0], out[1], out[2], out[3]


class ArrayLoader:
    """Mini-batches ``(X[i:i+b], y[i:i+b])`` of in-memory arrays, a drop-in for a ``DataLoader``.

    With ``shuffle=True`` each pass draws a new permutation from NumPy's global generator (so
    ``set_seed`` makes it repeat). ``len()`` is the number of batches; the last one may be smaller,
    but a shuffled (training) loader drops a last batch of one example, which batch norm in training
    mode refuses (``d2lbn.data.TrainBatchSampler`` does the same for ``DataLoader``\ s).
    Much faster than ``gluon.data.DataLoader`` for small batches (one ``take`` per batch).
    """

    def __init__(self, X: nd.NDArray, y: nd.NDArray, batch_size: int, shuffle: bool = False):
        batch_size = check_int("batch_size", batch_size)
        if X.shape[0] != y.shape[0]:
            raise ValueError(f"X and y must have as many rows; got {X.shape[0]} and {y.shape[0]}")
        self.X, self.y, self.batch_size, self.shuffle = X, y, batch_size, shuffle

    def __len__(self) -> int:
        full, rest = divmod(self.X.shape[0], self.batch_size)
        return full + (1 if rest > 1 or (rest == 1 and not self.shuffle) else 0)

    def __iter__(self) -> Iterator[Tuple[nd.NDArray, nd.NDArray]]:
        n = self.X.shape[0]
        if self.shuffle:
            order = nd.array(np.random.permutation(n), ctx=self.X.context)
            X, y = self.X.take(order), self.y.take(order)
        else:
            X, y = self.X, self.y
        for b in range(len(self)):
            start, stop = b * self.batch_size, (b + 1) * self.batch_size
            yield X[start:stop], y[start:stop]

