"""The types every dataset source shares (Dataset, Split, DatasetSpec) and the helpers they use: the cache folder,
source fingerprints, fixed held-out splits, label checks and checked downloads."""

from __future__ import annotations

import hashlib
import io
import os
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from vaelab.core.errors import VaelabError
from vaelab.core.store import atomic_write_bytes

SPLIT_SEED = 20240607  # fixed, independent of the training seed: every run sees the same validation set


VERIFIED, CORRUPT, UNVERIFIED = "verified", "corrupt", "unverified"


@dataclass
class Dataset:
    """Decoded images as uint8 NCHW arrays with integer labels; the test split is for final evaluation only."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: tuple[str, ...]
    source: str = ""
    # factor datasets (shapes2d, dsprites): the generating factors' classes per image, (N, n_factors) int64
    factors_train: np.ndarray | None = None
    factors_test: np.ndarray | None = None
    factor_names: tuple[str, ...] = ()

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]


@dataclass
class Split:
    """One split held as tensors on the training device: x uint8 (N, C, H, W), y int64 (N,)."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return self.x.shape[0]


@dataclass(frozen=True)
class DatasetSpec:
    """Everything vaelab knows about a dataset without loading it: where it comes from, and the facts the rest of
    the package reads (shape, classes, chance level, pixel levels, how its reference classifier trains)."""

    name: str
    shape: tuple[int, int, int]
    what: str  # what to put where, for the offline message
    locate: Callable[[Path], Path | None]  # root -> the source inside it, or None
    load: Callable[[Path], Dataset]
    download: Callable[[Path], Path] | None
    classes: tuple[str, ...] = ()
    levels: int = 256  # pixel values 0..levels-1: the bins of the discrete likelihoods and of bits/dim
    # class pairs whose centroid difference `vaelab explore` draws as an attribute vector (e.g. sneaker -> boot)
    attribute_pairs: tuple[tuple[str, str], ...] = ()
    mirror: bool = True  # horizontal flips are a valid augmentation for its reference classifier
    classifier_epochs: int = 10
    cache: bool = True  # keep a decoded copy (formats that are slow to decode)
    generate: Callable[[Path], Path] | None = None  # made here, not downloaded: renders into the folder it gets
    factor_names: tuple[str, ...] = ()  # a factor dataset's generating factors (the disentanglement metrics)
    binarize: bool = False  # dynamically binarized: training images drawn as Bernoulli(intensity) at every use

    @property
    def chance(self) -> float:
        """Accuracy of guessing on its test set, whose classes are balanced (1000 per class in all three)."""
        return 1.0 / len(self.classes)

    @property
    def n_dims(self) -> int:
        return self.shape[0] * self.shape[1] * self.shape[2]


def cache_dir() -> Path:
    if os.environ.get("VAELAB_CACHE"):
        return Path(os.environ["VAELAB_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vaelab"


def source_key(source: Path) -> str:
    """Identify the source files by path, size and mtime, so a changed file invalidates the cache."""
    files = sorted(p for p in source.rglob("*") if p.is_file()) if source.is_dir() else [source]
    h = hashlib.sha1()
    for p in files:
        st = p.stat()
        h.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def held_out(n: int, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices, sorted, for a source without a test split: a fixed `share` of n images (at least one
    when n > 1) by a permutation that only `seed` decides, so the carved split never moves."""
    n_test = max(1, int(round(share * n))) if n > 1 else 0
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def find_file(folder: Path, name: str) -> Path | None:
    for cand in (folder / name, folder / name.removesuffix(".gz")):
        if cand.is_file():
            return cand
    return None


def check_labels(y: np.ndarray, n_classes: int, where: str) -> np.ndarray:
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        raise VaelabError(f"{where}: labels outside 0..{n_classes - 1}")
    return y.astype(np.int64)


def download_file(url: str, dest: Path, md5: str) -> None:
    try:
        with urllib.request.urlopen(url, timeout=20) as r:
            total = int(r.headers.get("Content-Length") or 0)
            buf = io.BytesIO()
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=None) as bar:
                while chunk := r.read(1 << 20):
                    buf.write(chunk)
                    bar.update(len(chunk))
    except OSError as e:
        raise ConnectionError(f"{url}: {getattr(e, 'reason', e)}") from None
    data = buf.getvalue()
    got = hashlib.md5(data).hexdigest()
    if got != md5:
        raise VaelabError(f"{url}: checksum mismatch (md5 {got}, expected {md5}); not saved")
    atomic_write_bytes(dest, data)
