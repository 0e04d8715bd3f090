"""Factor datasets: shapes2d (a dSprites-like grid rendered here) and real dSprites, with their factor labels."""

from __future__ import annotations

import dataclasses
import io
import zipfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from vaelab.core.errors import VaelabError
from vaelab.core.store import atomic_write_bytes
from vaelab.data.types import SPLIT_SEED, Dataset, held_out

SHAPES2D_FILE, DSPRITES_FILE = "shapes2d_64x64.npz", "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"
SHAPES, FACTOR_NAMES = ("square", "ellipse", "heart"), ("shape", "scale", "orientation", "pos_x", "pos_y")

# dSprites' layout (Matthey et al. 2017): every combination of the factors once, in C order of latents_classes,
# whose first column (colour) has one value. shapes2d renders the same grid: 3 x 6 x 40 x 32 x 32 = 737,280.
FACTOR_SIZES = (3, 6, 40, 32, 32)
SIZE = 64  # images are SIZE x SIZE, one channel, exactly binary (0 or 255)
SPRITE = 32  # sprites are drawn on a SPRITE x SPRITE canvas and pasted at 32 integer offsets: exact translations
TEST_SHARE = 0.1  # neither dataset has a test split: a fixed tenth of the grid is carved off


def _outline(shape: int, n: int = 96) -> np.ndarray:
    """The shape's outline as (n, 2) points within the unit disc, pointing up at orientation 0."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    if shape == 0:  # square: corners on the unit circle
        return np.array([[1, 1], [-1, 1], [-1, -1], [1, -1]]) / np.sqrt(2)
    if shape == 1:  # ellipse: 2:1, so orientation is visible (up to a half turn)
        return np.stack([0.5 * np.cos(t), np.sin(t)], 1)
    # heart: the classic parametric curve, centred and scaled into the unit disc
    x, y = 16 * np.sin(t) ** 3, 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
    pts = np.stack([x, y], 1)
    pts -= (pts.max(0) + pts.min(0)) / 2
    return pts / np.linalg.norm(pts, axis=1).max()


def sprite(shape: int, scale: int, orientation: int, sizes: tuple[int, ...] = FACTOR_SIZES) -> np.ndarray:
    """One binary SPRITE x SPRITE sprite, centred on pixel (16, 16); Pillow without anti-aliasing, so exactly 0/1.
    Scale runs over [0.5, 1] of a 14-pixel radius, orientation over a full turn."""
    s = 0.5 + 0.5 * scale / max(sizes[1] - 1, 1)
    a = 2 * np.pi * orientation / sizes[2]
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    pts = _outline(shape) @ rot.T * (14.0 * s)
    img = Image.new("1", (SPRITE, SPRITE), 0)
    ImageDraw.Draw(img).polygon([(16 + px, 16 - py) for px, py in pts], fill=1, outline=1)
    return np.asarray(img, dtype=np.uint8)


def render(classes: np.ndarray, sizes: tuple[int, ...] = FACTOR_SIZES) -> np.ndarray:
    """Factor classes (N, 5) -> images (N, 64, 64) of 0/1: the sprite of (shape, scale, orientation) pasted with
    its centre at pixel (16 + pos_x * 31 / (n_x - 1), 16 + pos_y * ...), rows downward."""
    classes = np.asarray(classes)
    out = np.zeros((len(classes), SIZE, SIZE), np.uint8)
    span = SIZE - SPRITE - 1  # 31: the offsets reach from 0 to 31
    cache: dict[tuple[int, int, int], np.ndarray] = {}
    for i, (sh, sc, o, px, py) in enumerate(classes.tolist()):
        key = (sh, sc, o)
        if key not in cache:
            cache[key] = sprite(sh, sc, o, sizes)
        ox = round(px * span / max(sizes[3] - 1, 1))
        oy = round(py * span / max(sizes[4] - 1, 1))
        out[i, oy : oy + SPRITE, ox : ox + SPRITE] = cache[key]
    return out


def grid(sizes: tuple[int, ...] = FACTOR_SIZES) -> np.ndarray:
    """Every factor combination in C order: (prod(sizes), len(sizes)) int64."""
    return np.stack(np.unravel_index(np.arange(int(np.prod(sizes))), sizes), 1).astype(np.int64)


def generate(folder: Path, sizes: tuple[int, ...] | None = None) -> Path:
    """Render shapes2d into folder/shapes2d/shapes2d_64x64.npz in dSprites' layout (atomically) and return the
    folder. Deterministic: the same sizes give the same bytes. The full grid takes about 30 s and 3 GB."""
    sizes = tuple(sizes or FACTOR_SIZES)
    if len(sizes) != 5 or min(sizes) < 1 or sizes[0] > len(SHAPES):
        raise VaelabError(f"shapes2d sizes must be 5 positive counts with at most {len(SHAPES)} shapes, got {sizes}")
    classes = grid(sizes)
    imgs = render(classes, sizes)
    latents = np.concatenate([np.zeros((len(classes), 1), np.int64), classes], 1)  # colour: one value, as dSprites
    buf = io.BytesIO()
    np.savez(buf, imgs=imgs, latents_classes=latents)
    out = Path(folder) / "shapes2d"
    atomic_write_bytes(out / SHAPES2D_FILE, buf.getvalue())
    return out


def locate_shapes2d(root: Path) -> Path | None:
    p = root / "shapes2d" / SHAPES2D_FILE
    return p if p.is_file() else None


def locate_dsprites(root: Path) -> Path | None:
    for p in (root / "dsprites" / DSPRITES_FILE, root / DSPRITES_FILE):
        if p.is_file():
            return p
    return None


def load_npz(path: Path, name: str) -> Dataset:
    """A dSprites-layout file -> Dataset with factor labels (the shape is the class), a fixed tenth held out.
    Validated: binary uint8 64x64 images, one row of latents per image, and every factor combination exactly once
    (the metrics look images up by their factors)."""
    try:
        with np.load(path, allow_pickle=False) as z:  # dSprites' 'metadata' is a pickle: never read
            if "imgs" not in z.files or "latents_classes" not in z.files:
                raise VaelabError(f"{path}: needs the arrays 'imgs' and 'latents_classes' (dSprites' layout)")
            imgs, latents = z["imgs"], z["latents_classes"]
    except (OSError, ValueError, zipfile.BadZipFile, zlib.error, EOFError) as e:
        raise VaelabError(f"{path}: not a readable dSprites-layout .npz ({e})") from None
    if imgs.dtype != np.uint8 or imgs.ndim != 3 or imgs.shape[1:] != (SIZE, SIZE):
        raise VaelabError(f"{path}: imgs is {imgs.dtype}{list(imgs.shape)}, expected uint8 (N, 64, 64)")
    if imgs.size and imgs.max() > 1:
        raise VaelabError(f"{path}: imgs must be binary (0 or 1), found {int(imgs.max())}")
    if latents.ndim != 2 or latents.shape != (len(imgs), 6) or not np.issubdtype(latents.dtype, np.integer):
        raise VaelabError(
            f"{path}: latents_classes is {latents.dtype}{list(latents.shape)}, expected integers ({len(imgs)}, 6)"
        )
    classes = latents[:, 1:].astype(np.int64)
    if classes.min(initial=0) < 0:
        raise VaelabError(f"{path}: negative factor classes")
    sizes = tuple(int(v) + 1 for v in classes.max(0))
    if len(imgs) != int(np.prod(sizes)) or len(np.unique(np.ravel_multi_index(classes.T, sizes))) != len(imgs):
        raise VaelabError(f"{path}: the factors do not form a complete grid {sizes} (each combination once)")
    if sizes[0] > len(SHAPES):
        raise VaelabError(f"{path}: {sizes[0]} shapes; the layout has {len(SHAPES)}")
    tr, te = held_out(len(imgs), TEST_SHARE, SPLIT_SEED + 2)
    x = imgs[:, None]
    x *= 255  # in place: 0/1 -> 0/255, the pixel values every other dataset uses
    return Dataset(
        name,
        x[tr],
        classes[tr, 0],
        x[te],
        classes[te, 0],
        SHAPES[: sizes[0]],
        str(path),
        factors_train=classes[tr],
        factors_test=classes[te],
        factor_names=FACTOR_NAMES,
    )


def halved(ds: Dataset, name: str) -> Dataset:
    """ds at half the resolution, each pixel the rounded mean of a 2x2 block (grey levels 0, 64, 128, 191, 255).
    Averaging keeps the factors visible: shapes2d's 32 positions span 31 pixels at 64x64, and a one-pixel shift
    there still changes the grey levels along the sprite's edges at 32x32; of the full grid's 437,248 distinct
    64x64 images 436,736 stay distinct (small sprites turned by a few degrees merge). A Bernoulli decoder fits the
    grey levels as soft targets, as disentanglement_lib does for its grey-scale datasets."""
    return dataclasses.replace(ds, name=name, x_train=_pool2(ds.x_train), x_test=_pool2(ds.x_test))


def _pool2(x: np.ndarray, chunk: int = 65536) -> np.ndarray:
    n, c, h, w = x.shape
    out = np.empty((n, c, h // 2, w // 2), np.uint8)
    for i in range(0, n, chunk):  # in chunks: the whole grid's sums as uint16 would be 1.5 GB at once
        block = x[i : i + chunk].astype(np.uint16).reshape(-1, c, h // 2, 2, w // 2, 2)
        out[i : i + chunk] = (block.sum((3, 5)) + 2) // 4
    return out


class FactorGrid:
    """A factor dataset as its grid: draw factor values, look up the image of any combination (both splits hold the
    grid between them, as disentanglement_lib's ground-truth data does)."""

    def __init__(self, ds):
        if ds.factors_train is None:
            raise VaelabError(
                f"{ds.name} has no factor labels: disentanglement metrics need a factor dataset (shapes2d or dsprites)"
            )
        self.names = tuple(ds.factor_names)
        f = np.concatenate([ds.factors_train, ds.factors_test])
        self.sizes = tuple(int(v) + 1 for v in f.max(0))
        self._x = (ds.x_train, ds.x_test)
        n_train = len(ds.factors_train)
        self._where = np.empty(int(np.prod(self.sizes)), np.int64)  # grid index -> row of train ++ test
        self._where[np.ravel_multi_index(f.T, self.sizes)] = np.arange(len(f))
        self._n_train = n_train

    def sample_factors(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return np.stack([rng.integers(0, s, n) for s in self.sizes], 1)

    def images(self, factors: np.ndarray) -> np.ndarray:
        """uint8 (N, 1, H, W) for factor classes (N, 5)."""
        rows = self._where[np.ravel_multi_index(np.asarray(factors).T, self.sizes)]
        out = np.empty((len(rows), *self._x[0].shape[1:]), np.uint8)
        is_train = rows < self._n_train
        for part, mask, offset in ((0, is_train, 0), (1, ~is_train, self._n_train)):
            if mask.any():
                r = rows[mask] - offset
                order = np.argsort(r)  # sorted reads from a memory-mapped cache
                got = np.empty((len(r), *out.shape[1:]), np.uint8)
                got[order] = self._x[part][r[order]]
                out[mask] = got
        return out


def generate_into(root: Path) -> Path:
    """Render shapes2d into root (the registry's `generate`): the path of the rendered file."""
    generate(root)
    return locate_shapes2d(root)
