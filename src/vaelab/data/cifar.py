"""CIFAR-10 from the official python-pickle batches (archive or folder; unpickled with a whitelist, so no code
runs), and the real-pixel subset cifar10-lossless (npz)."""

from __future__ import annotations

import io
import pickle
import tarfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from vaelab.core.errors import VaelabError
from vaelab.data.types import Dataset, check_labels, download_file

CIFAR_ARCHIVE = "cifar-10-python.tar.gz"


CIFAR_MD5 = "c58f30108f718f92721af3b95e74349a"


CIFAR_SIZE = 170498071  # bytes of the official cifar-10-python.tar.gz


CIFAR_URL = "https://www.cs.toronto.edu/~kriz/"


CIFAR_DIR = "cifar-10-batches-py"


CIFAR_ARCHIVES = ("cifar-10-python.tar.gz", "cifar-10-python.tar.xz", "cifar-10-python.tar.bz2", "cifar-10-python.tar")


LOSSLESS_FILE = Path("cifar10-lossless-subset") / "cifar10.npz"


CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _cifar_members(source: Path) -> Callable[[str], bytes]:
    """A reader of `cifar-10-batches-py/<name>` from the extracted folder or any tar archive."""
    if source.is_dir():

        def read(name: str) -> bytes:
            p = source / name
            if not p.is_file():
                raise VaelabError(f"{source}: missing {name}")
            return p.read_bytes()

        return read
    try:
        tar = tarfile.open(source, "r:*")
        members = {m.name: m for m in tar.getmembers() if m.isfile()}
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise VaelabError(f"{source}: not a readable tar archive ({e})") from None

    def read(name: str) -> bytes:
        m = members.get(f"{CIFAR_DIR}/{name}")
        if m is None:
            raise VaelabError(f"{source}: archive has no {CIFAR_DIR}/{name}")
        try:
            return tar.extractfile(m).read()  # type: ignore[union-attr]
        except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
            raise VaelabError(f"{source}: {name} is truncated or corrupt ({e})") from None

    return read


class _CifarUnpickler(pickle.Unpickler):
    """The CIFAR-10 python batches are pickles of dicts, lists, bytes, ints and numpy arrays. Only the numpy
    names needed to rebuild an array are resolved; any other global (os.system, eval, ...) is refused, so a
    planted batch file cannot run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
    }

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused to load {module}.{name}: a CIFAR batch holds only arrays and lists")


def _unpickle(blob: bytes, where: str) -> dict:
    try:
        d = _CifarUnpickler(io.BytesIO(blob), encoding="bytes").load()
    except Exception as e:  # a corrupt pickle raises many kinds of error
        raise VaelabError(f"{where}: not a CIFAR pickle ({type(e).__name__}: {e})") from None
    if not isinstance(d, dict):
        raise VaelabError(f"{where}: not a CIFAR pickle (got {type(d).__name__})")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}


def _cifar_batch(read: Callable[[str], bytes], name: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    d = _unpickle(read(name), f"{where}:{name}")
    try:
        x = np.asarray(d["data"], dtype=np.uint8)
        y = np.asarray(d["labels"], dtype=np.int64)
    except KeyError as e:
        raise VaelabError(f"{where}:{name}: missing key {e}") from None
    if x.ndim != 2 or x.shape[1] != 3072 or len(x) != len(y):
        raise VaelabError(f"{where}:{name}: data has shape {x.shape} with {len(y)} labels, expected (N, 3072)")
    return x.reshape(-1, 3, 32, 32), check_labels(y, 10, f"{where}:{name}")


def load_cifar(source: Path) -> Dataset:
    read = _cifar_members(source)
    meta = _unpickle(read("batches.meta"), f"{source}:batches.meta")
    classes = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in meta.get("label_names", []))
    if len(classes) != 10:
        raise VaelabError(f"{source}:batches.meta: expected 10 label names, got {len(classes)}")
    parts = [_cifar_batch(read, f"data_batch_{i}", str(source)) for i in range(1, 6)]
    x_test, y_test = _cifar_batch(read, "test_batch", str(source))
    x_train = np.concatenate([p[0] for p in parts])
    y_train = np.concatenate([p[1] for p in parts])
    return Dataset("cifar10", x_train, y_train, x_test, y_test, classes, str(source))


def load_lossless(path: Path) -> Dataset:
    try:
        with np.load(path) as z:
            arr = {k: z[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    except (OSError, KeyError, ValueError, zlib.error) as e:
        raise VaelabError(f"{path}: not a readable CIFAR-10 subset ({e})") from None
    for k in ("x_train", "x_test"):
        if arr[k].dtype != np.uint8 or arr[k].ndim != 4 or arr[k].shape[1:] != (32, 32, 3):
            raise VaelabError(f"{path}: {k} is {arr[k].dtype}{arr[k].shape}, expected uint8 (N, 32, 32, 3)")
    return Dataset(
        "cifar10-lossless",
        np.ascontiguousarray(arr["x_train"].transpose(0, 3, 1, 2)),
        check_labels(arr["y_train"], 10, str(path)),
        np.ascontiguousarray(arr["x_test"].transpose(0, 3, 1, 2)),
        check_labels(arr["y_test"], 10, str(path)),
        CIFAR_CLASSES,
        str(path),
    )


def locate_cifar(root: Path) -> Path | None:
    if (root / CIFAR_DIR / "batches.meta").is_file():
        return root / CIFAR_DIR
    for name in CIFAR_ARCHIVES:
        if (root / name).is_file():
            return root / name
    return None


def locate_lossless(root: Path) -> Path | None:
    return root / LOSSLESS_FILE if (root / LOSSLESS_FILE).is_file() else None


def download_cifar(root: Path) -> Path:
    download_file(CIFAR_URL + CIFAR_ARCHIVE, root / CIFAR_ARCHIVE, CIFAR_MD5)
    return root / CIFAR_ARCHIVE


CIFAR_PAIRS = (("automobile", "truck"), ("cat", "dog"))
