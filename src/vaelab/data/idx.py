"""Fashion-MNIST and MNIST from the official IDX files (gzip or not), located, verified by content hashes, and
MNIST's binarized form (test images drawn once with a fixed seed; training images at every use, by the trainer)."""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from vaelab.core.errors import VaelabError
from vaelab.data.types import Dataset, check_labels, download_file, find_file

FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


FASHION_FILES = {  # official file -> md5 (zalandoresearch release)
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}


# SHA-256 and size of each file's decompressed bytes (the IDX content), so that a re-compressed copy such as
# Debian's dataset-fashion-mnist package, whose .gz bytes differ from the release's, still verifies.
FASHION_CONTENT = {
    "train-images-idx3-ubyte.gz": ("c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888", 47040016),
    "train-labels-idx1-ubyte.gz": ("bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9", 60008),
    "t10k-images-idx3-ubyte.gz": ("5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b", 7840016),
    "t10k-labels-idx1-ubyte.gz": ("0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34", 10008),
}


FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"


def _open_maybe_gz(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
        return gzip.decompress(raw) if path.suffix == ".gz" else raw
    except (OSError, EOFError, zlib.error) as e:
        raise VaelabError(f"{path}: cannot read, truncated or corrupt ({e})") from None


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """Parse an IDX file (LeCun's MNIST format): magic 0x0000 08 ndim (unsigned byte), big-endian dims."""
    data = _open_maybe_gz(path)
    if len(data) < 4 + 4 * ndim:
        raise VaelabError(f"{path}: truncated IDX header")
    zero, dtype, nd = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08 or nd != ndim:
        raise VaelabError(f"{path}: bad IDX magic {data[:4].hex()} (expected 000008{ndim:02x})")
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = data[4 + 4 * ndim :]
    if len(body) != int(np.prod(dims)):
        raise VaelabError(f"{path}: IDX body has {len(body)} bytes, header says {int(np.prod(dims))} (truncated?)")
    return np.frombuffer(body, dtype=np.uint8).reshape(dims).copy()


MNIST_CLASSES = tuple(str(d) for d in range(10))


# SHA-256 and size of each MNIST file's decompressed bytes (LeCun's IDX files; the same names as Fashion-MNIST's), so
# that any gzip of them verifies, with or without a SHA256SUMS beside it
MNIST_CONTENT = {
    "train-images-idx3-ubyte.gz": ("ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db", 47040016),
    "train-labels-idx1-ubyte.gz": ("65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5", 60008),
    "t10k-images-idx3-ubyte.gz": ("0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7", 7840016),
    "t10k-labels-idx1-ubyte.gz": ("ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2", 10008),
}


# The fixed draw of binarized MNIST's held-out images (test; validation in data.make_splits): every model is scored on
# the same bits. Training images are drawn anew at every use (dynamic binarization, Burda et al. 2016, section 5).
BINARIZE_SEED = 20161231


def binarize_fixed(x: np.ndarray, seed: int) -> np.ndarray:
    """Each pixel drawn once as Bernoulli(intensity / 255) from a generator only `seed` decides: uint8 0 or 255."""
    u = np.random.default_rng(seed).random(x.shape, dtype=np.float32)
    return ((u * 255.0 < x).astype(np.uint8)) * np.uint8(255)


def load_idx_dataset(folder: Path, name: str, classes: tuple[str, ...]) -> Dataset:
    """The four IDX files of an MNIST-layout dataset (train/t10k images and labels) in `folder`."""
    paths = {}
    for file in FASHION_FILES:
        p = find_file(folder, file)
        if p is None:
            raise VaelabError(f"{folder}: missing {file}")
        paths[file] = p
    arrays = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        x = read_idx(paths[f"{prefix}-images-idx3-ubyte.gz"], 3)
        y = read_idx(paths[f"{prefix}-labels-idx1-ubyte.gz"], 1)
        if x.shape[1:] != (28, 28):
            raise VaelabError(f"{paths[f'{prefix}-images-idx3-ubyte.gz']}: images are {x.shape[1:]}, expected 28x28")
        if len(x) != len(y):
            raise VaelabError(f"{folder}: {split} has {len(x)} images but {len(y)} labels")
        arrays[split] = (x[:, None], check_labels(y, 10, str(paths[f"{prefix}-labels-idx1-ubyte.gz"])))
    return Dataset(name, *arrays["train"], *arrays["test"], classes, str(folder))


def load_fashion(folder: Path) -> Dataset:
    return load_idx_dataset(folder, "fashion-mnist", FASHION_CLASSES)


def load_mnist(folder: Path) -> Dataset:
    return load_idx_dataset(folder, "mnist", MNIST_CLASSES)


def load_binarized_mnist(folder: Path) -> Dataset:
    """MNIST with its test images binarized once (BINARIZE_SEED); training images stay intensities for the trainer's
    draw at every use."""
    ds = load_idx_dataset(folder, "binarized-mnist", MNIST_CLASSES)
    ds.x_test = binarize_fixed(ds.x_test, BINARIZE_SEED)
    return ds


def locate_mnist(root: Path) -> Path | None:
    """root/mnist only: its files have Fashion-MNIST's names, so the folder's name tells them apart."""
    folder = root / "mnist"
    return folder if all(find_file(folder, n) for n in FASHION_FILES) else None


def locate_fashion(root: Path) -> Path | None:
    for folder in (root / "fashion-mnist", root):
        if all(find_file(folder, n) for n in FASHION_FILES):
            return folder
    return None


def download_fashion(root: Path) -> Path:
    folder = root / "fashion-mnist"
    for name, md5 in FASHION_FILES.items():
        if not (folder / name).is_file():
            download_file(FASHION_URL + name, folder / name, md5)
    return folder
