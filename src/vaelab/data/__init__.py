"""Datasets: the registry of built-in sources (Fashion-MNIST IDX, CIFAR-10 pickle batches, the real-pixel CIFAR-10
subset, factor grids) and users' own (npz:PATH, folder:PATH); finding, verifying, decoding and caching them; splits
and batching. Each source is one module of this package; the types they share live in `types`."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from vaelab.core.errors import VaelabError
from vaelab.core.store import atomic_write_bytes, atomic_write_json, read_json
from vaelab.data.checksums import check_file, verify
from vaelab.data.cifar import (
    CIFAR_ARCHIVE,
    CIFAR_CLASSES,
    CIFAR_DIR,
    CIFAR_PAIRS,
    LOSSLESS_FILE,
    download_cifar,
    load_cifar,
    load_lossless,
    locate_cifar,
    locate_lossless,
)
from vaelab.data.factors import (
    DSPRITES_FILE,
    FACTOR_NAMES,
    SHAPES,
    SHAPES2D_FILE,
    FactorGrid,
    generate_into,
    halved,
    locate_dsprites,
    locate_shapes2d,
)
from vaelab.data.factors import load_npz as load_factor_npz
from vaelab.data.folder import folder_spec
from vaelab.data.idx import (
    BINARIZE_SEED,
    FASHION_CLASSES,
    FASHION_FILES,
    MNIST_CLASSES,
    MNIST_CONTENT,
    binarize_fixed,
    download_fashion,
    load_binarized_mnist,
    load_fashion,
    load_mnist,
    locate_fashion,
    locate_mnist,
    read_idx,
)
from vaelab.data.npz import FOLDER, is_user_dataset
from vaelab.data.npz import spec as npz_spec
from vaelab.data.types import (
    CORRUPT,
    SPLIT_SEED,
    UNVERIFIED,
    VERIFIED,
    Dataset,
    DatasetSpec,
    Split,
    cache_dir,
    held_out,
    source_key,
)

# what the rest of vaelab reads from the package, besides what is defined below
__all__ = [
    "Dataset",
    "DatasetSpec",
    "Split",
    "FactorGrid",
    "held_out",
    "read_idx",
    "cache_dir",
    "source_key",
    "SPLIT_SEED",
    "FASHION_CLASSES",
    "MNIST_CLASSES",
    "CIFAR_CLASSES",
    "FACTOR_NAMES",
    "SHAPES",
    "DATASETS",
    "load",
    "locate",
    "spec",
    "status",
    "verify",
    "VERIFIED",
    "UNVERIFIED",
    "MNIST_CONTENT",
    "check_file",
    "split_indices",
    "test_indices",
    "subsample",
    "to_split",
    "make_splits",
    "minibatches",
    "to_float",
    "binarize",
    "binarized",
    "binarize_fixed",
    "BINARIZE_SEED",
    "search_roots",
    "is_user_dataset",
]


# what MNIST and its binarized form share: the same files, found in mnist/ (their names are Fashion-MNIST's)
_MNIST = dict(
    shape=(1, 28, 28),
    what="mnist/{" + ",".join(FASHION_FILES) + "}",
    locate=locate_mnist,
    download=None,
    classes=MNIST_CLASSES,
    mirror=False,  # digits are not mirror-symmetric
    classifier_epochs=5,
)

DATASETS: dict[str, DatasetSpec] = {
    # Fashion-MNIST's shoes all point left and its garments sit centred: mirroring adds no useful variety there.
    "fashion-mnist": DatasetSpec(
        "fashion-mnist",
        (1, 28, 28),
        "fashion-mnist/{" + ",".join(FASHION_FILES) + "}",
        locate_fashion,
        load_fashion,
        download_fashion,
        FASHION_CLASSES,
        attribute_pairs=(("Sneaker", "Ankle boot"), ("T-shirt/top", "Shirt")),
        mirror=False,
        classifier_epochs=10,
    ),
    # MNIST (LeCun et al. 1998), the dataset of the VAE likelihood tables; binarized-mnist is its dynamically
    # binarized form (Burda et al. 2016; Tomczak & Welling 2018): training images drawn as Bernoulli(intensity) at
    # every use, validation and test images once with a fixed seed (BINARIZE_SEED). Digits are not mirror-symmetric.
    "mnist": DatasetSpec("mnist", load=load_mnist, **_MNIST),
    "binarized-mnist": DatasetSpec("binarized-mnist", load=load_binarized_mnist, binarize=True, **_MNIST),
    "cifar10": DatasetSpec(
        "cifar10",
        (3, 32, 32),
        f"{CIFAR_ARCHIVE} (or the extracted {CIFAR_DIR}/)",
        locate_cifar,
        load_cifar,
        download_cifar,
        CIFAR_CLASSES,
        attribute_pairs=CIFAR_PAIRS,
        classifier_epochs=15,
    ),
    # 5,000 images: more epochs for the classifier to see as many steps
    "cifar10-lossless": DatasetSpec(
        "cifar10-lossless",
        (3, 32, 32),
        str(LOSSLESS_FILE),
        locate_lossless,
        load_lossless,
        None,
        CIFAR_CLASSES,
        attribute_pairs=CIFAR_PAIRS,
        classifier_epochs=30,
    ),
    # Factor datasets (the disentanglement issue): binary 64x64 sprites, the shape as class. shapes2d is rendered
    # here on first use; a real dSprites file is read where it is put.
    "shapes2d": DatasetSpec(
        "shapes2d",
        (1, 64, 64),
        f"shapes2d/{SHAPES2D_FILE} (rendered on first use)",
        locate_shapes2d,
        lambda p: load_factor_npz(p, "shapes2d"),
        None,
        SHAPES,
        classifier_epochs=2,
        generate=generate_into,
        factor_names=FACTOR_NAMES,
    ),
    # shapes2d at 32x32 (2x2 means): a quarter of the pixels, so the disentanglement study trains 3.5x more steps
    # in the same time (conv4, 2026-12-01, 2-core CPU: 36 ms against 125 ms a step of 64)
    "shapes2d-32": DatasetSpec(
        "shapes2d-32",
        (1, 32, 32),
        f"shapes2d/{SHAPES2D_FILE} (rendered on first use), halved",
        locate_shapes2d,
        lambda p: halved(load_factor_npz(p, "shapes2d"), "shapes2d-32"),
        None,
        SHAPES,
        classifier_epochs=2,
        generate=generate_into,
        factor_names=FACTOR_NAMES,
    ),
    "dsprites": DatasetSpec(
        "dsprites",
        (1, 64, 64),
        f"dsprites/{DSPRITES_FILE}",
        locate_dsprites,
        lambda p: load_factor_npz(p, "dsprites"),
        None,
        SHAPES,
        classifier_epochs=2,
        factor_names=FACTOR_NAMES,
    ),
}


def search_roots(data_dir: str | Path | None = None) -> list[Path]:
    """Where to look, in order: the explicit folder alone if given; else $VAELAB_DATA, the user cache, Debian's."""
    if data_dir is not None:
        return [Path(data_dir)]
    roots = []
    if os.environ.get("VAELAB_DATA"):
        roots.append(Path(os.environ["VAELAB_DATA"]))
    roots += [cache_dir() / "data", Path("/usr/share/datasets")]
    return roots


def spec(name: str) -> DatasetSpec:
    """What vaelab knows about a dataset: a built-in one, or a user's `npz:PATH` (read from the file's headers)."""
    if name in DATASETS:
        return DATASETS[name]
    if is_user_dataset(name):  # folder:PATH scans its image files; npz:PATH reads the file's headers
        return folder_spec(name) if name.startswith(FOLDER) else npz_spec(name)
    raise VaelabError(
        f"unknown dataset '{name}' (known: {', '.join(DATASETS)}, or npz:PATH or folder:PATH for your own images)"
    )


def locate(name: str, data_dir: str | Path | None = None) -> Path | None:
    return _locate(spec(name), data_dir)


def _locate(the_spec: DatasetSpec, data_dir: str | Path | None) -> Path | None:
    for root in search_roots(data_dir):
        found = the_spec.locate(root)
        if found is not None:
            return found
    return None


_ARRAYS = ("x_train", "y_train", "x_test", "y_test")


_FACTOR_ARRAYS = ("factors_train", "factors_test")


def _cached_load(spec: DatasetSpec, source: Path) -> Dataset:
    if not spec.cache:
        ds = spec.load(source)
        return dataclasses.replace(ds, name=spec.name)
    # a user's dataset is named by its path (and options): a file-name-safe stem plus a hash of the whole name
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", spec.name)[-60:]
    if stem != spec.name:
        stem += "-" + hashlib.sha1(spec.name.encode()).hexdigest()[:8]
    folder = cache_dir() / "decoded" / f"{stem}-{source_key(source)}"
    meta_path = folder / "meta.json"
    if meta_path.is_file():  # meta.json is written last: its presence means every array is complete
        try:
            meta = read_json(meta_path)
            # memory-mapped: a run reads only the rows its splits take (shapes2d's grid is 3 GB)
            arrays = [np.load(folder / f"{k}.npy", mmap_mode="r") for k in _ARRAYS]
            factors = [np.load(folder / f"{k}.npy") for k in _FACTOR_ARRAYS] if meta.get("factor_names") else [None] * 2
            return Dataset(
                spec.name,
                *arrays,
                tuple(meta["classes"]),
                meta["source"],
                *factors,
                tuple(meta.get("factor_names", ())),
            )
        except (OSError, ValueError, KeyError, VaelabError):
            pass  # a damaged cache is rebuilt from the source
    ds = spec.load(source)
    if ds.shape != spec.shape:
        raise VaelabError(f"{source}: images are {ds.shape}, expected {spec.shape}")
    try:
        for k in _ARRAYS + (_FACTOR_ARRAYS if ds.factor_names else ()):
            buf = io.BytesIO()
            np.save(buf, getattr(ds, k))
            atomic_write_bytes(folder / f"{k}.npy", buf.getvalue())
        atomic_write_json(
            meta_path, {"classes": list(ds.classes), "source": ds.source, "factor_names": list(ds.factor_names)}
        )
    except OSError:
        pass  # an unwritable cache only costs speed
    return ds


def load(name: str, data_dir: str | Path | None = None, download: bool = True) -> Dataset:
    """Load a dataset by name, searching the usual places, downloading only when it is nowhere."""
    the_spec = spec(name)  # once: for a user's npz it reads the file's headers and labels
    source = _locate(the_spec, data_dir)
    if source is None and the_spec.generate is not None:  # rendered, not downloaded: into the user cache
        source = the_spec.locate(cache_dir() / "data") or the_spec.generate(cache_dir() / "data")
    if source is None:
        roots = search_roots(data_dir)
        where = ", ".join(str(r) for r in roots)
        if download and data_dir is None and the_spec.download is not None and not os.environ.get("VAELAB_NO_DOWNLOAD"):
            try:
                source = the_spec.download(cache_dir() / "data")
            except ConnectionError as e:
                raise VaelabError(
                    f"{name}: not found in {where} and download failed ({e}); "
                    f"put {the_spec.what} in $VAELAB_DATA or pass --data-dir"
                ) from None
        else:
            raise VaelabError(
                f"{name}: not found in {where}; put {the_spec.what} there, set $VAELAB_DATA or pass --data-dir"
            )
    status_, why = verify(source)
    if status_ == CORRUPT:
        raise VaelabError(f"{source}: corrupt ({why}); replace the file with a fresh copy")
    return _cached_load(the_spec, source)


def status(data_dir: str | Path | None = None) -> list[dict]:
    """For `vaelab datasets`: where each dataset was found, or where it is expected."""
    rows = []
    for name, spec in DATASETS.items():
        found = locate(name, data_dir)
        if spec.generate is not None:  # rendered here: no hash to check, and nothing to fetch when absent
            found = found or (spec.locate(cache_dir() / "data") if data_dir is None else None)
            state, why = ("generated", "rendered by vaelab") if found else ("not yet rendered", "")
            expected = "rendered into the user cache on first use"
        else:
            state, why = verify(found) if found else ("missing", "")
            expected = f"expected {spec.what} in one of: " + ", ".join(str(r) for r in search_roots(data_dir))
        rows.append(
            {
                "dataset": name,
                "shape": "x".join(map(str, spec.shape)),
                "status": state,
                "why": why,
                "where": str(found) if found else expected,
            }
        )
    return rows


def _subset(n: int, size: int, seed: int) -> np.ndarray:
    idx = np.random.default_rng(seed).permutation(n)
    return np.sort(idx[:size] if size else idx)


def subsample(idx: np.ndarray, size: int, seed: int = 0) -> np.ndarray:
    """A fixed subset of at most `size` of `idx` (all of it when size is 0 or larger), in the original order."""
    return idx if not size or size >= len(idx) else idx[_subset(len(idx), size, seed)]


def split_indices(n_train: int, val_size: int, train_size: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic train/validation indices: validation carved from train by a fixed permutation."""
    if val_size >= n_train:
        raise VaelabError(f"val_size {val_size} leaves no training images (the split has {n_train})")
    perm = np.random.default_rng(SPLIT_SEED).permutation(n_train)
    val, rest = perm[:val_size], perm[val_size:]
    if train_size:
        if train_size > len(rest):
            raise VaelabError(f"train_size {train_size} is more than the {len(rest)} training images available")
        rest = rest[:train_size]
    return np.sort(rest), np.sort(val)


def test_indices(n_test: int, test_size: int = 0) -> np.ndarray:
    if test_size > n_test:
        raise VaelabError(f"test_size {test_size} is more than the {n_test} test images available")
    return _subset(n_test, test_size, SPLIT_SEED + 1)


def to_split(x: np.ndarray, y: np.ndarray, device: torch.device | str) -> Split:
    return Split(_tensor(x).to(device), _tensor(y).to(device))


def _tensor(a: np.ndarray) -> torch.Tensor:
    """A tensor of its own: a read-only array (a loaded dataset's, shared by every split taken whole) is copied, as
    torch cannot guard one and warns."""
    a = np.ascontiguousarray(a)
    return torch.from_numpy(a if a.flags.writeable else a.copy())


def binarized(name: str) -> bool:
    """Whether a dataset is dynamically binarized: its training images are drawn anew at every use (`binarize`)."""
    return name in DATASETS and DATASETS[name].binarize


def binarize(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Dynamic binarization: each pixel drawn as Bernoulli(intensity / 255), uint8 0 or 255, from `generator`."""
    u = torch.rand(x.shape, generator=generator, device=x.device)
    return (u * 255.0 < x).to(torch.uint8) * 255


def make_splits(
    ds: Dataset, val_size: int, train_size: int, test_size: int, device: torch.device | str = "cpu"
) -> dict[str, Split]:
    tr, va = split_indices(len(ds.x_train), val_size, train_size)
    te = test_indices(len(ds.x_test), test_size)
    x_val = ds.x_train[va]
    if binarized(ds.name):  # validation is scored on one fixed draw, as the test set is (idx.BINARIZE_SEED)
        x_val = binarize_fixed(x_val, BINARIZE_SEED + 1)
    return {
        "train": to_split(ds.x_train[tr], ds.y_train[tr], device),
        "val": to_split(x_val, ds.y_train[va], device),
        "test": to_split(ds.x_test[te], ds.y_test[te], device),
    }


def minibatches(
    n: int,
    batch_size: int,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    shuffle: bool = True,
) -> Iterator[torch.Tensor]:
    """Index tensors over a random permutation made on the data's device (no per-item DataLoader)."""
    idx = torch.randperm(n, generator=generator, device=device) if shuffle else torch.arange(n, device=device)
    for i in range(0, n, batch_size):
        yield idx[i : i + batch_size]


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float in [0, 1]."""
    return x.float().div_(255.0)
