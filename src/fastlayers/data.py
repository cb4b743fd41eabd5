"""Datasets: the IDX file format, MNIST and Fashion-MNIST, and a small bundled subset.

``load_fashion_mnist`` and ``load_mnist`` look for the four official IDX files (raw or
``.gz``) in, in order:

1. ``data_dir``, when given;
2. ``$FASTLAYERS_DATA/<dataset>`` and ``$FASTLAYERS_DATA`` itself;
3. the download cache, ``$FASTLAYERS_CACHE/<dataset>`` (default ``~/.cache/fastlayers``);
4. for Fashion-MNIST, ``/usr/share/datasets/fashion-mnist`` (Debian's
   ``dataset-fashion-mnist`` package).

``<dataset>`` is ``fashion-mnist`` or ``mnist``. With ``download=True`` missing files are
fetched from the official mirror into the cache and checked against the SHA-256 of the
official files. ``load_bundled()`` needs neither: it splits the Fashion-MNIST test set
shipped inside the package (10,000 images) into 8,000 training and 2,000 test examples.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import importlib.resources
import math
import os
import tempfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np

__all__ = [
    "DatasetError",
    "CLASS_NAMES",
    "MNIST_CLASS_NAMES",
    "MIRRORS",
    "SHA256",
    "RAW_SHA256",
    "parse_idx",
    "load_idx",
    "load_dir",
    "load_fashion_mnist",
    "load_mnist",
    "load_bundled",
    "bundled_path",
    "cache_dir",
]


class DatasetError(ValueError):
    """A data file is missing, malformed, or fails its checksum; or a download failed."""


CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
MNIST_CLASS_NAMES = tuple(str(d) for d in range(10))

MIRRORS = {
    "fashion-mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
}
_MIRROR_ENV = {"fashion-mnist": "FASTLAYERS_FASHION_MNIST_MIRROR", "mnist": "FASTLAYERS_MNIST_MIRROR"}

# SHA-256 of the official gzip files as served by the mirrors above. Fashion-MNIST's
# project README publishes MD5s only (train-images 8d4fb7e6c68d591d4c3dfef9ec88bf0d,
# train-labels 25c81989df183df01b3e8a0aad5dffbe, t10k-images bef4ecab320f06d8554ea6380940ec79,
# t10k-labels bb300cfdad3c16e7a12a480ee83cd310); these are the SHA-256s of those same files.
SHA256 = {
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
    },
    "mnist": {
        "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    },
}

# SHA-256 of the decompressed IDX files. Repackagers (Debian among them) recompress the
# gzip files, which changes the bytes above but not these.
RAW_SHA256 = {
    "fashion-mnist": {
        "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
    "mnist": {
        "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
}

SYSTEM_DIRS = {
    "fashion-mnist": ("/usr/share/datasets/fashion-mnist",),
    "mnist": (),
}

_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

_IDX_TYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"
_DOWNLOAD_TIMEOUT_S = 60.0
_BUNDLED_TRAIN_PER_CLASS = 800


# --------------------------------------------------------------------------- IDX format

def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decodes uncompressed IDX bytes into a native-endian array; ``name`` labels errors."""
    try:
        data = memoryview(data).cast("B")
    except TypeError:
        raise TypeError(f"parse_idx: data must be bytes-like, got {type(data).__name__}") from None
    if len(data) >= 2 and bytes(data[:2]) == _GZIP_MAGIC:
        raise DatasetError(
            f"{name}: this looks gzip-compressed (it starts with the gzip magic bytes 1f 8b), "
            "not raw IDX; rename it to end in .gz or decompress it"
        )
    if len(data) < 4:
        raise DatasetError(f"{name}: IDX header too short: expected at least 4 bytes, got {len(data)}")
    if data[0] != 0 or data[1] != 0:
        raise DatasetError(
            f"{name}: not an IDX file: the first two bytes must be 00 00, got {data[0]:02x} {data[1]:02x}"
        )
    code, ndim = data[2], data[3]
    if code not in _IDX_TYPES:
        known = ", ".join(f"0x{c:02X}" for c in _IDX_TYPES)
        raise DatasetError(f"{name}: unknown IDX type code 0x{code:02X}; expected one of {known}")
    if ndim == 0:
        raise DatasetError(f"{name}: IDX header declares 0 dimensions; expected at least 1")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(
            f"{name}: IDX header too short: {ndim} dimensions need {header} header bytes, "
            f"the file has {len(data)}"
        )
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = _IDX_TYPES[code]
    expected = math.prod(shape) * dtype.itemsize
    actual = len(data) - header
    if actual != expected:
        what = "truncated" if actual < expected else f"{actual - expected} trailing bytes"
        raise DatasetError(
            f"{name}: IDX payload size mismatch ({what}): shape {shape} of {dtype.name} needs "
            f"{expected} bytes after the {header}-byte header, found {actual}"
        )
    array = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=header).reshape(shape)
    # A copy either way: the result must be writable and not pin the file's bytes.
    return array.astype(dtype.newbyteorder("="), copy=True)


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read: {exc.strerror or exc}") from exc


def _decompress(data: bytes, name: str) -> bytes:
    if data[:2] != _GZIP_MAGIC:
        raise DatasetError(
            f"{name}: named .gz but not gzip-compressed (expected the magic bytes 1f 8b, "
            f"got {data[:2].hex(' ') or 'an empty file'}); drop the .gz suffix if it is raw IDX"
        )
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetError(f"{name}: corrupt or truncated gzip data: {exc}") from exc


def _decode(data: bytes, name: str) -> np.ndarray:
    if name.endswith(".gz"):
        data = _decompress(data, name)
    return parse_idx(data, name)


def load_idx(path) -> np.ndarray:
    """Reads an IDX file, gunzipping it when its name ends in ``.gz``."""
    path = Path(path)
    return _decode(_read_bytes(path), str(path))


# --------------------------------------------------------------------------- images + labels

def _to_examples(images: np.ndarray, labels: np.ndarray, images_name: str, labels_name: str,
                 flatten: bool) -> tuple[np.ndarray, np.ndarray]:
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DatasetError(
            f"{images_name}: expected a 3-D unsigned-byte image array (N, rows, cols), "
            f"got shape {images.shape} of {images.dtype}"
        )
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise DatasetError(
            f"{labels_name}: expected a 1-D unsigned-byte label array, "
            f"got shape {labels.shape} of {labels.dtype}"
        )
    if images.shape[0] != labels.shape[0]:
        raise DatasetError(
            f"image/label count mismatch: {images.shape[0]} images in {images_name} "
            f"but {labels.shape[0]} labels in {labels_name}"
        )
    if labels.size and labels.max() > 9:
        raise DatasetError(f"{labels_name}: labels must lie in 0..9, found {int(labels.max())}")
    n, rows, cols = images.shape
    x = np.empty(images.shape, dtype=np.float32)
    np.divide(images, np.float32(255), out=x)
    x = x.reshape((n, rows * cols) if flatten else (n, 1, rows, cols))
    return x, labels.astype(np.int64)


def _find_file(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _load_split_from(directory: Path, split: str, flatten: bool) -> tuple[np.ndarray, np.ndarray] | None:
    images_stem, labels_stem = _FILES[split]
    images_path = _find_file(directory, images_stem)
    labels_path = _find_file(directory, labels_stem)
    if images_path is None or labels_path is None:
        return None
    return _to_examples(load_idx(images_path), load_idx(labels_path),
                        str(images_path), str(labels_path), flatten)


def _check_split(split: str) -> str:
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return split


def load_dir(path, flatten: bool = False):
    """Loads ``((x_train, t_train), (x_test, t_test))`` from a directory of the four IDX files."""
    directory = Path(path)
    result = []
    for split in ("train", "test"):
        loaded = _load_split_from(directory, split, flatten)
        if loaded is None:
            wanted = " and ".join(f"{stem}[.gz]" for stem in _FILES[split])
            raise DatasetError(f"{directory}: missing the {split} files; expected {wanted}")
        result.append(loaded)
    return tuple(result)


# --------------------------------------------------------------------------- search + download

def cache_dir() -> Path:
    """Root of the download cache: ``$FASTLAYERS_CACHE``, else ``~/.cache/fastlayers``."""
    root = os.environ.get("FASTLAYERS_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "fastlayers"


def _search_dirs(dataset: str, data_dir) -> list[Path]:
    dirs = []
    if data_dir is not None:
        dirs.append(Path(data_dir))
    env = os.environ.get("FASTLAYERS_DATA")
    if env:
        dirs += [Path(env) / dataset, Path(env)]
    dirs.append(cache_dir() / dataset)
    dirs += [Path(d) for d in SYSTEM_DIRS.get(dataset, ())]
    return dirs


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download(url: str, dest: Path, expected_sha256: str) -> None:
    # Same directory as the destination so os.replace is an atomic rename: a reader never
    # sees a partial or unverified file under the real name.
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    except OSError as exc:
        raise DatasetError(
            f"cannot write to the download cache {dest.parent}: {exc.strerror or exc} "
            "(set FASTLAYERS_CACHE to a writable directory)"
        ) from exc
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response:
                    for block in iter(lambda: response.read(1 << 20), b""):
                        digest.update(block)
                        out.write(block)
            except urllib.error.HTTPError as exc:
                exc.close()
                raise DatasetError(f"download failed: HTTP {exc.code} {exc.reason} for {url}") from exc
            except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                raise DatasetError(f"download failed for {url}: {reason}") from exc
        actual = digest.hexdigest()
        if actual != expected_sha256:
            raise DatasetError(
                f"checksum mismatch for {url}: expected sha256 {expected_sha256}, got {actual}; "
                "the file was discarded"
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _mirror_for(dataset: str, mirror: str | None) -> str:
    base = mirror or os.environ.get(_MIRROR_ENV[dataset]) or MIRRORS[dataset]
    return base if base.endswith("/") else base + "/"


def _load(dataset: str, split: str, data_dir, download: bool, flatten: bool,
          mirror: str | None, checksums: dict | None):
    _check_split(split)
    dirs = _search_dirs(dataset, data_dir)
    for directory in dirs:
        loaded = _load_split_from(directory, split, flatten)
        if loaded is not None:
            return loaded
    target = cache_dir() / dataset
    if download:
        base = _mirror_for(dataset, mirror)
        table = SHA256[dataset] if checksums is None else checksums
        for stem in _FILES[split]:
            name = f"{stem}.gz"
            if _find_file(target, stem) is not None:
                continue
            if name not in table:
                raise DatasetError(f"no SHA-256 checksum known for {name}; cannot verify a download")
            _download(base + name, target / name, table[name])
        loaded = _load_split_from(target, split, flatten)
        if loaded is not None:
            return loaded
    wanted = " and ".join(f"{stem}[.gz]" for stem in _FILES[split])
    looked = "\n".join(f"  {d}" for d in dirs)
    how = [f"pass download=True to fetch them into {target}",
           "set FASTLAYERS_DATA or data_dir to a directory holding them"]
    if dataset == "fashion-mnist":
        how.append("on Debian/Ubuntu: apt-get install dataset-fashion-mnist")
        how.append("or use load_bundled() for the 10,000-image subset shipped with fastlayers")
    raise DatasetError(
        f"{dataset} {split} files ({wanted}) not found; looked in:\n{looked}\nTo get them: "
        + "; ".join(how)
    )


def load_fashion_mnist(split: str = "train", data_dir=None, download: bool = False,
                       flatten: bool = False, mirror: str | None = None, checksums: dict | None = None):
    """Fashion-MNIST ``(x, t)``: x float32 in [0, 1], (N, 1, 28, 28) or (N, 784); t int64.

    ``mirror`` (or ``$FASTLAYERS_FASHION_MNIST_MIRROR``) replaces the download base URL;
    ``checksums`` maps file names to the SHA-256 a download must have.
    """
    return _load("fashion-mnist", split, data_dir, download, flatten, mirror, checksums)


def load_mnist(split: str = "train", data_dir=None, download: bool = False,
               flatten: bool = False, mirror: str | None = None, checksums: dict | None = None):
    """MNIST ``(x, t)``, as :func:`load_fashion_mnist` (mirror variable ``$FASTLAYERS_MNIST_MIRROR``)."""
    return _load("mnist", split, data_dir, download, flatten, mirror, checksums)


# --------------------------------------------------------------------------- bundled subset

def bundled_path():
    """The package directory holding the bundled Fashion-MNIST test files (a Traversable)."""
    return importlib.resources.files("fastlayers") / "_data" / "fashion-mnist"


def load_bundled(flatten: bool = False, seed: int = 0):
    """The bundled 10,000 Fashion-MNIST test images as ``((x_train, t_train), (x_test, t_test))``.

    A split stratified by class: 800 training and 200 test examples of each class
    (8,000 / 2,000), fixed by ``seed``.
    """
    root = bundled_path()
    arrays = []
    for stem in _FILES["test"]:
        name = f"{stem}.gz"
        arrays.append(_decode((root / name).read_bytes(), f"<bundled>/{name}"))
    x, t = _to_examples(arrays[0], arrays[1], "<bundled> images", "<bundled> labels", flatten)
    rng = np.random.default_rng(seed)
    train_idx, test_idx = [], []
    for label in range(len(CLASS_NAMES)):
        members = rng.permutation(np.flatnonzero(t == label))
        train_idx.append(members[:_BUNDLED_TRAIN_PER_CLASS])
        test_idx.append(members[_BUNDLED_TRAIN_PER_CLASS:])
    # Shuffle across classes so a sequential minibatch sees every class.
    train = rng.permutation(np.concatenate(train_idx))
    test = rng.permutation(np.concatenate(test_idx))
    return (x[train], t[train]), (x[test], t[test])
