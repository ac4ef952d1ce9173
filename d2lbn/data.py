"""Fashion-MNIST: find, verify, (if needed) download, and load the real data set.

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

import gzip
import hashlib
import http.client
import os
import struct
import tempfile
import urllib.error
import urllib.request
import zlib
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from mxnet import gluon, nd

__all__ = [
    "DataFileError", "DataNotFoundError", "FILES", "TEXT_LABELS", "DEFAULT_URL",
    "search_dirs", "find_data_dir", "download_fashion_mnist", "read_idx", "read_fashion_mnist",
    "load_fashion_mnist", "get_fashion_mnist_labels",
]

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


def _download_one(url: str, target: Path, expected_sha256: str, timeout: float) -> None:
    """Download ``url`` to ``target`` atomically, verifying the decompressed SHA-256 first."""
    from tqdm.auto import tqdm

    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=target.name + ".", suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
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


def download_fashion_mnist(target_dir: os.PathLike, base_url: Optional[str] = None,
                           timeout: float = 60.0) -> Path:
    """Download the four files into ``target_dir`` (atomically, checksum-verified); return it.

    ``base_url`` defaults to ``$D2LBN_DATA_URL`` or :data:`DEFAULT_URL`. Files already present are kept.
    """
    base_url = base_url or os.environ.get("D2LBN_DATA_URL") or DEFAULT_URL
    if not base_url.endswith("/"):
        base_url += "/"
    target = Path(target_dir).expanduser()
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
    return images, labels


def read_fashion_mnist(root: Optional[os.PathLike] = None
                       ) -> Tuple[Tuple[np.ndarray, np.ndarray], Tuple[np.ndarray, np.ndarray]]:
    """Return ``((train_images, train_labels), (test_images, test_labels))`` as uint8 NumPy arrays.

    Images: (N, 28, 28); labels: (N,), values 0..9.
    """
    folder = locate_or_download(root).resolve()
    return _read_split(folder, "train"), _read_split(folder, "t10k")


def _to_tensor(images: np.ndarray, resize: Optional[int]) -> nd.NDArray:
    """uint8 (N, 28, 28) -> float32 (N, 1, s, s) in [0, 1] on the CPU."""
    X = nd.array(images.reshape(-1, 1, *images.shape[1:]), dtype="float32") / 255
    if resize is not None:
        X = nd.contrib.BilinearResize2D(X, height=resize, width=resize)
    return X


def load_fashion_mnist(batch_size: int, resize: Optional[int] = None,
                       root: Optional[os.PathLike] = None, num_workers: int = 0,
                       ) -> Tuple[gluon.data.DataLoader, gluon.data.DataLoader]:
    """Gluon ``DataLoader``s over the real Fashion-MNIST: 60,000 training and 10,000 test images.

    Each batch is ``(X, y)`` with X: (batch, 1, 28, 28) float32 in [0, 1] (or resized to
    ``resize`` x ``resize``) and y: (batch,) int32 labels. The training loader shuffles.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int; got {batch_size!r}")
    if resize is not None and (isinstance(resize, bool) or not isinstance(resize, int) or resize <= 0):
        raise ValueError(f"resize must be None or a positive int; got {resize!r}")
    (train_X, train_y), (test_X, test_y) = read_fashion_mnist(root)
    loaders = []
    for images, labels, shuffle in ((train_X, train_y, True), (test_X, test_y, False)):
        dataset = gluon.data.ArrayDataset(_to_tensor(images, resize),
                                          nd.array(labels, dtype="int32"))
        loaders.append(gluon.data.DataLoader(dataset, batch_size, shuffle=shuffle,
                                             num_workers=num_workers))
    return loaders[0], loaders[1]


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
