"""Users' own images as datasets: `npz:PATH` (uint8 arrays) and `folder:PATH` (image files), validated, test split carved."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from vaelab.core.errors import VaelabError
from vaelab.data.types import (  # SPLIT_SEED: the carved test split never moves
    SPLIT_SEED,
    Dataset,
    DatasetSpec,
    held_out,
)

PREFIX = "npz:"
FOLDER = "folder:"
TEST_SHARE = 0.1  # the test split carved from x when the file brings no x_test


def is_user_dataset(name: str) -> bool:
    return isinstance(name, str) and name.startswith((PREFIX, FOLDER))


def path_of(name: str) -> Path:
    path = Path(name[len(PREFIX) :]).expanduser()
    if not name[len(PREFIX) :]:
        raise VaelabError(f"dataset '{name}': give the file, e.g. npz:images.npz")
    return path


def _header_shape(path: Path, key: str) -> tuple[tuple[int, ...], np.dtype] | None:
    """An array's shape and dtype from its .npy header inside the npz, without reading the data."""
    try:
        with zipfile.ZipFile(path) as z:
            if f"{key}.npy" not in z.namelist():
                return None
            with z.open(f"{key}.npy") as f:
                version = np.lib.format.read_magic(f)
                shape, _, dtype = (
                    np.lib.format.read_array_header_1_0(f)
                    if version == (1, 0)
                    else np.lib.format.read_array_header_2_0(f)
                )
                return tuple(shape), dtype
    except (OSError, zipfile.BadZipFile, ValueError) as e:
        raise VaelabError(f"{path}: not a readable .npz file ({e})") from None


def _image_shape(path: Path, key: str) -> tuple[int, int, int] | None:
    """(C, H, W) of an image array stored as (N, H, W) or (N, H, W, C) uint8, C 1 or 3; None if absent."""
    found = _header_shape(path, key)
    if found is None:
        return None
    shape, dtype = found
    if dtype != np.uint8 or len(shape) not in (3, 4) or (len(shape) == 4 and shape[3] not in (1, 3)):
        raise VaelabError(
            f"{path}: '{key}' is {dtype}{list(shape)}; expected uint8 images (N, H, W) or (N, H, W, C) with C = 1 or 3"
        )
    if shape[0] < 1 or shape[1] < 1 or shape[2] < 1:
        raise VaelabError(f"{path}: '{key}' holds no images ({list(shape)})")
    return (shape[3] if len(shape) == 4 else 1, shape[1], shape[2])


def _labels(path: Path, z, key: str, n: int) -> np.ndarray:
    if key not in z.files:
        return np.zeros(n, np.int64)  # unlabelled: one class
    y = z[key]
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer) or (n and y.min() < 0):
        raise VaelabError(f"{path}: '{key}' must be {n} non-negative integer labels, got {y.dtype}{list(y.shape)}")
    return y.astype(np.int64)


def _x_shape(path: Path) -> tuple[int, int, int]:
    shape = _image_shape(path, "x")
    if shape is None:
        raise VaelabError(
            f"{path}: no array 'x' (expected x: uint8 images (N, H, W[, C]), optional y, x_test, y_test, classes)"
        )
    return shape


def _n_labels(labels: list[np.ndarray]) -> int:
    """How many classes the labels imply: one more than the largest (one class when there are none)."""
    return max((int(y.max()) for y in labels if y.size), default=0) + 1


def _classes(path: Path, z, n_labels: int) -> tuple[str, ...]:
    if "classes" in z.files:
        names = tuple(str(c) for c in z["classes"].tolist())
        if len(names) < n_labels:
            raise VaelabError(f"{path}: 'classes' names {len(names)} classes but the labels go up to {n_labels - 1}")
        return names
    return tuple(str(k) for k in range(max(n_labels, 1)))


def load_npz(path: Path):
    """The file's arrays as a Dataset (NCHW uint8), carving a deterministic test split when it has no x_test."""
    path = Path(path)
    shape = _x_shape(path)
    test_shape = _image_shape(path, "x_test")
    if test_shape is not None and test_shape != shape:
        raise VaelabError(f"{path}: x_test images are {test_shape} (C, H, W) but x images are {shape}")
    try:
        z = np.load(path, allow_pickle=False)  # no pickle: a dataset file cannot run code
    except (OSError, ValueError) as e:
        raise VaelabError(f"{path}: not a readable .npz file ({e})") from None
    with z:

        def nchw(a: np.ndarray) -> np.ndarray:
            return np.ascontiguousarray(a[:, None] if a.ndim == 3 else a.transpose(0, 3, 1, 2))

        x = nchw(z["x"])
        y = _labels(path, z, "y", len(x))
        if test_shape is not None:
            x_test = nchw(z["x_test"])
            y_test = _labels(path, z, "y_test", len(x_test))
        else:
            x, y, x_test, y_test = carve(x, y, f"{path} (or give x_test)")
        classes = _classes(path, z, _n_labels([y, y_test]))
    return Dataset(f"{PREFIX}{path}", x, y, x_test, y_test, classes, str(path))


def carve(x: np.ndarray, y: np.ndarray, where: str):
    """A fixed tenth of the images as the test split (the same every time): x, y, x_test, y_test."""
    if len(x) < 2:
        raise VaelabError(f"{where}: {len(x)} image; need at least 2 to carve a test split")
    train, test = held_out(len(x), TEST_SHARE, SPLIT_SEED)
    return x[train], y[train], x[test], y[test]


def spec(name: str):
    """A DatasetSpec for `npz:PATH`, from the file's headers (its shape) and labels (its classes)."""
    path = path_of(name)
    if not path.is_file():
        raise VaelabError(f"dataset '{name}': {path} is not a file")
    shape = _x_shape(path)
    with np.load(path, allow_pickle=False) as z:  # labels only: the images stay on disk
        classes = _classes(path, z, _n_labels([z[k] for k in ("y", "y_test") if k in z.files]))
    return DatasetSpec(
        name,
        shape,
        str(path),
        lambda root: path,
        load_npz,
        None,
        classes,
        mirror=False,  # nothing says a user's images may be mirrored
        cache=False,
    )  # arrays already: loading is as fast as a cache
