"""Datasets: find, validate, decode and cache Fashion-MNIST, CIFAR-10 and the factor datasets; splits and batching."""

from __future__ import annotations

import gzip
import dataclasses
import hashlib
import io
import os
import pickle
import re
import struct
import tarfile
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from . import VaelabError
from .store import atomic_write_bytes, atomic_write_json, read_json

FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
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
CIFAR_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR_SIZE = 170498071  # bytes of the official cifar-10-python.tar.gz
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/"
CIFAR_DIR = "cifar-10-batches-py"
CIFAR_ARCHIVES = ("cifar-10-python.tar.gz", "cifar-10-python.tar.xz", "cifar-10-python.tar.bz2", "cifar-10-python.tar")
LOSSLESS_FILE = Path("cifar10-lossless-subset") / "cifar10.npz"
SPLIT_SEED = 20240607  # fixed, independent of the training seed: every run sees the same validation set


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


# ---------------------------------------------------------------- readers with validation

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
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    body = data[4 + 4 * ndim:]
    if len(body) != int(np.prod(dims)):
        raise VaelabError(f"{path}: IDX body has {len(body)} bytes, header says {int(np.prod(dims))} (truncated?)")
    return np.frombuffer(body, dtype=np.uint8).reshape(dims).copy()


def _find_file(folder: Path, name: str) -> Path | None:
    for cand in (folder / name, folder / name.removesuffix(".gz")):
        if cand.is_file():
            return cand
    return None


def _check_labels(y: np.ndarray, n_classes: int, where: str) -> np.ndarray:
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        raise VaelabError(f"{where}: labels outside 0..{n_classes - 1}")
    return y.astype(np.int64)


def load_fashion(folder: Path) -> Dataset:
    paths = {}
    for name in FASHION_FILES:
        p = _find_file(folder, name)
        if p is None:
            raise VaelabError(f"{folder}: missing {name}")
        paths[name] = p
    arrays = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        x = read_idx(paths[f"{prefix}-images-idx3-ubyte.gz"], 3)
        y = read_idx(paths[f"{prefix}-labels-idx1-ubyte.gz"], 1)
        if x.shape[1:] != (28, 28):
            raise VaelabError(f"{paths[f'{prefix}-images-idx3-ubyte.gz']}: images are {x.shape[1:]}, expected 28x28")
        if len(x) != len(y):
            raise VaelabError(f"{folder}: {split} has {len(x)} images but {len(y)} labels")
        arrays[split] = (x[:, None], _check_labels(y, 10, str(paths[f"{prefix}-labels-idx1-ubyte.gz"])))
    return Dataset("fashion-mnist", *arrays["train"], *arrays["test"], FASHION_CLASSES, str(folder))


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

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"),
               ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
               ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer")}

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
    return x.reshape(-1, 3, 32, 32), _check_labels(y, 10, f"{where}:{name}")


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


CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def load_lossless(path: Path) -> Dataset:
    try:
        with np.load(path) as z:
            arr = {k: z[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    except (OSError, KeyError, ValueError, zlib.error) as e:
        raise VaelabError(f"{path}: not a readable CIFAR-10 subset ({e})") from None
    for k in ("x_train", "x_test"):
        if arr[k].dtype != np.uint8 or arr[k].ndim != 4 or arr[k].shape[1:] != (32, 32, 3):
            raise VaelabError(f"{path}: {k} is {arr[k].dtype}{arr[k].shape}, expected uint8 (N, 32, 32, 3)")
    return Dataset("cifar10-lossless",
                   np.ascontiguousarray(arr["x_train"].transpose(0, 3, 1, 2)), _check_labels(arr["y_train"], 10, str(path)),
                   np.ascontiguousarray(arr["x_test"].transpose(0, 3, 1, 2)), _check_labels(arr["y_test"], 10, str(path)),
                   CIFAR_CLASSES, str(path))


# ---------------------------------------------------------------- integrity

VERIFIED, CORRUPT, UNVERIFIED = "verified", "corrupt", "unverified"


def _digest(data: bytes, algo: str) -> str:
    return hashlib.new(algo, data).hexdigest()


def _sha256sums(folder: Path) -> dict[str, str]:
    """The folder's SHA256SUMS (`<hex>  <name>` lines), if it ships one."""
    path = folder / "SHA256SUMS"
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_text(errors="replace").splitlines():
        parts = line.split()
        if len(parts) == 2 and len(parts[0]) == 64:
            out[parts[1].lstrip("*")] = parts[0].lower()
    return out


def check_file(path: Path) -> tuple[str, str]:
    """(status, why) of one dataset file against every known hash: the folder's SHA256SUMS, the official MD5 of the
    download, and (Fashion-MNIST) the SHA-256 of the official decompressed content. A file that claims to be the
    official one (same name and content size) and matches none is corrupt; a file no hash speaks for (a subset,
    the CIFAR-10 stand-in) is unverified."""
    path = Path(path)
    listed = _sha256sums(path.parent).get(path.name)
    name = path.name if path.suffix == ".gz" else path.name + ".gz"
    official_md5 = FASHION_FILES.get(name) or (CIFAR_MD5 if path.name == CIFAR_ARCHIVE else None)
    if listed is None and official_md5 is None:
        return UNVERIFIED, "no known hash for this file"
    data = path.read_bytes()
    if listed is not None:
        ok = _digest(data, "sha256") == listed
        return (VERIFIED, "matches SHA256SUMS") if ok else (CORRUPT, f"SHA-256 differs from {path.parent / 'SHA256SUMS'}")
    if official_md5 is not None and path.name == name and _digest(data, "md5") == official_md5:
        return VERIFIED, "matches the official MD5"
    if name in FASHION_CONTENT:
        want, size = FASHION_CONTENT[name]
        try:
            content = gzip.decompress(data) if path.suffix == ".gz" else data
        except (OSError, EOFError, zlib.error) as e:
            return CORRUPT, f"cannot decompress ({e})"
        if _digest(content, "sha256") == want:
            return VERIFIED, "content matches the official release"
        header_n = struct.unpack(">I", content[4:8])[0] if len(content) >= 8 else -1
        official_n = 60000 if name.startswith("train") else 10000
        if len(content) == size or header_n == official_n:
            return CORRUPT, "content differs from the official release (a changed, truncated or re-packed file)"
        return UNVERIFIED, f"not the official file ({header_n} items); no known hash"
    if len(data) != CIFAR_SIZE:
        return UNVERIFIED, f"not the official download ({len(data):,} bytes); no known hash"
    return CORRUPT, "MD5 differs from the official download"


def _source_files(source: Path) -> list[Path]:
    return sorted(p for p in source.rglob("*") if p.is_file() and p.name != "SHA256SUMS") if source.is_dir() else [source]


def verify(source: Path) -> tuple[str, str]:
    """Check every file of a dataset source once; results are cached by path, size and mtime, so an unchanged
    file is never hashed twice. Returns the worst status and its reason."""
    cache_path = cache_dir() / "verified.json"
    try:
        cache = read_json(cache_path) if cache_path.is_file() else {}
        cache = cache if isinstance(cache, dict) else {}
    except VaelabError:
        cache = {}
    rank = {VERIFIED: 0, UNVERIFIED: 1, CORRUPT: 2}
    worst, why, changed = VERIFIED, "", False
    for f in _source_files(Path(source)):
        st = f.stat()
        key = str(f.resolve())
        hit = cache.get(key)
        if not (isinstance(hit, dict) and hit.get("size") == st.st_size and hit.get("mtime_ns") == st.st_mtime_ns):
            status, reason = check_file(f)
            hit = cache[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "status": status, "why": reason}
            changed = True
        if rank.get(hit["status"], 1) > rank[worst] or not why:
            worst, why = hit["status"], f"{f.name}: {hit['why']}"
    if changed:
        try:
            atomic_write_json(cache_path, cache)
        except (OSError, VaelabError):
            pass  # an unwritable cache only costs time
    return worst, why


# ---------------------------------------------------------------- registry and location

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

    @property
    def chance(self) -> float:
        """Accuracy of guessing on its test set, whose classes are balanced (1000 per class in all three)."""
        return 1.0 / len(self.classes)

    @property
    def n_dims(self) -> int:
        return self.shape[0] * self.shape[1] * self.shape[2]


def _locate_fashion(root: Path) -> Path | None:
    for folder in (root / "fashion-mnist", root):
        if all(_find_file(folder, n) for n in FASHION_FILES):
            return folder
    return None


def _locate_cifar(root: Path) -> Path | None:
    if (root / CIFAR_DIR / "batches.meta").is_file():
        return root / CIFAR_DIR
    for name in CIFAR_ARCHIVES:
        if (root / name).is_file():
            return root / name
    return None


def _locate_lossless(root: Path) -> Path | None:
    return root / LOSSLESS_FILE if (root / LOSSLESS_FILE).is_file() else None


def _download(url: str, dest: Path, md5: str) -> None:
    from tqdm import tqdm

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


def _download_fashion(root: Path) -> Path:
    folder = root / "fashion-mnist"
    for name, md5 in FASHION_FILES.items():
        if not (folder / name).is_file():
            _download(FASHION_URL + name, folder / name, md5)
    return folder


def _download_cifar(root: Path) -> Path:
    _download(CIFAR_URL + CIFAR_ARCHIVE, root / CIFAR_ARCHIVE, CIFAR_MD5)
    return root / CIFAR_ARCHIVE


_CIFAR_PAIRS = (("automobile", "truck"), ("cat", "dog"))
SHAPES2D_FILE, DSPRITES_FILE = "shapes2d_64x64.npz", "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"
SHAPES, FACTOR_NAMES = ("square", "ellipse", "heart"), ("shape", "scale", "orientation", "pos_x", "pos_y")


# The factor datasets live in factors.py (imported when used: it imports this module).
def _locate_shapes2d(root: Path) -> Path | None:
    from .factors import locate_shapes2d
    return locate_shapes2d(root)


def _locate_dsprites(root: Path) -> Path | None:
    from .factors import locate_dsprites
    return locate_dsprites(root)


def _load_factor_npz(path: Path, name: str) -> Dataset:
    from .factors import load_npz
    return load_npz(path, name)


def _generate_shapes2d(root: Path) -> Path:
    from .factors import generate, locate_shapes2d
    generate(root)
    return locate_shapes2d(root)
DATASETS: dict[str, DatasetSpec] = {
    # Fashion-MNIST's shoes all point left and its garments sit centred: mirroring adds no useful variety there.
    "fashion-mnist": DatasetSpec("fashion-mnist", (1, 28, 28), "fashion-mnist/{" + ",".join(FASHION_FILES) + "}",
                                 _locate_fashion, load_fashion, _download_fashion, FASHION_CLASSES,
                                 attribute_pairs=(("Sneaker", "Ankle boot"), ("T-shirt/top", "Shirt")),
                                 mirror=False, classifier_epochs=10),
    "cifar10": DatasetSpec("cifar10", (3, 32, 32), f"{CIFAR_ARCHIVE} (or the extracted {CIFAR_DIR}/)",
                           _locate_cifar, load_cifar, _download_cifar, CIFAR_CLASSES,
                           attribute_pairs=_CIFAR_PAIRS, classifier_epochs=15),
    # 5,000 images: more epochs for the classifier to see as many steps
    "cifar10-lossless": DatasetSpec("cifar10-lossless", (3, 32, 32), str(LOSSLESS_FILE), _locate_lossless,
                                    load_lossless, None, CIFAR_CLASSES, attribute_pairs=_CIFAR_PAIRS,
                                    classifier_epochs=30),
    # Factor datasets (the disentanglement issue): binary 64x64 sprites, the shape as class. shapes2d is rendered
    # here on first use; a real dSprites file is read where it is put.
    "shapes2d": DatasetSpec("shapes2d", (1, 64, 64), f"shapes2d/{SHAPES2D_FILE} (rendered on first use)",
                            _locate_shapes2d, lambda p: _load_factor_npz(p, "shapes2d"), None, SHAPES,
                            classifier_epochs=2, generate=_generate_shapes2d, factor_names=FACTOR_NAMES),
    "dsprites": DatasetSpec("dsprites", (1, 64, 64), f"dsprites/{DSPRITES_FILE}", _locate_dsprites,
                            lambda p: _load_factor_npz(p, "dsprites"), None, SHAPES, classifier_epochs=2,
                            factor_names=FACTOR_NAMES),
}


def cache_dir() -> Path:
    if os.environ.get("VAELAB_CACHE"):
        return Path(os.environ["VAELAB_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vaelab"


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
    from .userdata import is_user_dataset
    from .userdata import spec as user_spec

    if is_user_dataset(name):
        return user_spec(name)
    raise VaelabError(f"unknown dataset '{name}' (known: {', '.join(DATASETS)}, or npz:PATH or folder:PATH for your "
                      "own images)")


def locate(name: str, data_dir: str | Path | None = None) -> Path | None:
    return _locate(spec(name), data_dir)


def _locate(the_spec: DatasetSpec, data_dir: str | Path | None) -> Path | None:
    for root in search_roots(data_dir):
        found = the_spec.locate(root)
        if found is not None:
            return found
    return None


def _source_key(source: Path) -> str:
    """Identify the source files by path, size and mtime, so a changed file invalidates the cache."""
    files = sorted(p for p in source.rglob("*") if p.is_file()) if source.is_dir() else [source]
    h = hashlib.sha1()
    for p in files:
        st = p.stat()
        h.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


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
    folder = cache_dir() / "decoded" / f"{stem}-{_source_key(source)}"
    meta_path = folder / "meta.json"
    if meta_path.is_file():  # meta.json is written last: its presence means every array is complete
        try:
            meta = read_json(meta_path)
            # memory-mapped: a run reads only the rows its splits take (shapes2d's grid is 3 GB)
            arrays = [np.load(folder / f"{k}.npy", mmap_mode="r") for k in _ARRAYS]
            factors = [np.load(folder / f"{k}.npy") for k in _FACTOR_ARRAYS] if meta.get("factor_names") else [None] * 2
            return Dataset(spec.name, *arrays, tuple(meta["classes"]), meta["source"], *factors,
                           tuple(meta.get("factor_names", ())))
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
        atomic_write_json(meta_path, {"classes": list(ds.classes), "source": ds.source,
                                      "factor_names": list(ds.factor_names)})
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
                raise VaelabError(f"{name}: not found in {where} and download failed ({e}); "
                                  f"put {the_spec.what} in $VAELAB_DATA or pass --data-dir") from None
        else:
            raise VaelabError(f"{name}: not found in {where}; put {the_spec.what} there, "
                              f"set $VAELAB_DATA or pass --data-dir")
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
        rows.append({"dataset": name, "shape": "x".join(map(str, spec.shape)), "status": state, "why": why,
                     "where": str(found) if found else expected})
    return rows


# ---------------------------------------------------------------- splits and batching

def _subset(n: int, size: int, seed: int) -> np.ndarray:
    idx = np.random.default_rng(seed).permutation(n)
    return np.sort(idx[:size] if size else idx)


def subsample(idx: np.ndarray, size: int, seed: int = 0) -> np.ndarray:
    """A fixed subset of at most `size` of `idx` (all of it when size is 0 or larger), in the original order."""
    return idx if not size or size >= len(idx) else idx[_subset(len(idx), size, seed)]


def held_out(n: int, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices, sorted, for a source without a test split: a fixed `share` of n images (at least one
    when n > 1) by a permutation that only `seed` decides, so the carved split never moves."""
    n_test = max(1, int(round(share * n))) if n > 1 else 0
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


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
    return Split(torch.from_numpy(np.ascontiguousarray(x)).to(device), torch.from_numpy(y).to(device))


def make_splits(ds: Dataset, val_size: int, train_size: int, test_size: int,
                device: torch.device | str = "cpu") -> dict[str, Split]:
    tr, va = split_indices(len(ds.x_train), val_size, train_size)
    te = test_indices(len(ds.x_test), test_size)
    return {"train": to_split(ds.x_train[tr], ds.y_train[tr], device),
            "val": to_split(ds.x_train[va], ds.y_train[va], device),
            "test": to_split(ds.x_test[te], ds.y_test[te], device)}


def minibatches(n: int, batch_size: int, generator: torch.Generator | None = None,
                device: torch.device | str = "cpu", shuffle: bool = True) -> Iterator[torch.Tensor]:
    """Index tensors over a random permutation made on the data's device (no per-item DataLoader)."""
    idx = torch.randperm(n, generator=generator, device=device) if shuffle else torch.arange(n, device=device)
    for i in range(0, n, batch_size):
        yield idx[i:i + batch_size]


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float in [0, 1]."""
    return x.float().div_(255.0)
