"""Image folders as datasets: `folder:PATH`, one sub-folder per class (flat: unlabelled), resized, decoded once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from vaelab.core.errors import VaelabError
from vaelab.data.npz import FOLDER, carve
from vaelab.data.types import Dataset, DatasetSpec, source_key

MODES = ("auto", "grey", "rgb")
GREY_MODES = ("1", "L", "LA", "I", "I;16", "F", "P;L")  # Pillow modes with one intensity per pixel
_SPECS: dict[tuple[str, str], object] = {}  # (name, contents key) -> DatasetSpec: a folder is scanned once


@dataclass(frozen=True)
class FolderOptions:
    """What `folder:PATH?size=N&mode=grey|rgb&skip_bad=1` asks for; the options ride in the dataset's name, so every
    command that reads a run (evaluate, report, explore) decodes the same images."""

    path: Path
    size: int = 0  # square side in pixels; 0 = the median of the images' shorter sides, rounded to a multiple of 4
    mode: str = "auto"  # grey or rgb; auto = grey when every image is
    skip_bad: bool = False  # leave out files that do not decode (else the first one is an error naming it)


def parse(name: str) -> FolderOptions:

    body = name[len(FOLDER) :]
    path, _, query = body.partition("?")
    if not path:
        raise VaelabError(f"dataset '{name}': give the folder, e.g. folder:photos")
    opts: dict = {}
    for part in filter(None, query.split("&")):
        key, eq, value = part.partition("=")
        if key == "size" and eq:
            if not value.isdigit() or not 8 <= int(value) <= 1024 or int(value) % 4:
                raise VaelabError(f"dataset '{name}': size must be a multiple of 4 from 8 to 1024, got {value!r}")
            opts["size"] = int(value)
        elif key == "mode" and eq:
            if value not in MODES:
                raise VaelabError(f"dataset '{name}': mode must be one of {', '.join(MODES)}, got {value!r}")
            opts["mode"] = value
        elif key == "skip_bad" and eq:
            if value not in ("0", "1"):
                raise VaelabError(f"dataset '{name}': skip_bad must be 0 or 1, got {value!r}")
            opts["skip_bad"] = value == "1"
        else:
            raise VaelabError(f"dataset '{name}': unknown option '{part}' (known: size=N, mode=grey|rgb, skip_bad=1)")
    return FolderOptions(Path(path).expanduser(), **opts)


def with_options(name: str, size: int | None = None, mode: str | None = None, skip_bad: bool = False) -> str:
    """The dataset name with options set (what `--image-size`, `--image-mode` and `--skip-bad-images` do)."""

    if not name.startswith(FOLDER):
        raise VaelabError(
            f"--image-size, --image-mode and --skip-bad-images apply to folder:PATH datasets, not '{name}'"
        )
    o = parse(name)
    parts = {
        "size": str(size if size is not None else o.size or ""),
        "mode": mode or o.mode,
        "skip_bad": "1" if (skip_bad or o.skip_bad) else "",
    }
    query = "&".join(f"{k}={v}" for k, v in parts.items() if v and not (k == "mode" and v == "auto"))
    out = f"{FOLDER}{name[len(FOLDER) :].partition('?')[0]}" + (f"?{query}" if query else "")
    parse(out)  # the values are checked here
    return out


def scan(path: Path) -> tuple[list[Path], list[int], tuple[str, ...]]:
    """Image files (by the extensions Pillow reads) with their labels: sub-folders are classes (sorted names), a
    flat folder is one class. Other files are ignored; hidden ones too."""
    if not path.is_dir():
        raise VaelabError(f"{path}: not a folder (folder:PATH wants a folder of images, or of class sub-folders)")
    exts = set(Image.registered_extensions())

    def images(d: Path, recursive: bool) -> list[Path]:
        found = d.rglob("*") if recursive else d.iterdir()
        return sorted(
            f
            for f in found
            if f.is_file()
            and f.suffix.lower() in exts
            and not any(p.startswith(".") for p in f.relative_to(path).parts)
        )

    top = images(path, False)
    subdirs = [d for d in sorted(path.iterdir()) if d.is_dir() and not d.name.startswith(".") and images(d, True)]
    if top and subdirs:
        raise VaelabError(
            f"{path}: mixes {len(top)} images at its top level (e.g. {top[0].name}) with class "
            f"sub-folders ({subdirs[0].name}, …); move them into a sub-folder"
        )
    if subdirs:
        files, labels = [], []
        for k, d in enumerate(subdirs):
            got = images(d, True)
            files += got
            labels += [k] * len(got)
        return files, labels, tuple(d.name for d in subdirs)
    if not top:
        raise VaelabError(f"{path}: no image files (extensions Pillow reads, e.g. .png, .jpg, .bmp, .gif, .tiff)")
    return top, [0] * len(top), ("all",)


def _bad_message(f: Path, e: Exception) -> str:
    return (
        f"{f}: not a readable image ({type(e).__name__}: {e}); fix or remove it, or skip unreadable files "
        "with --skip-bad-images (?skip_bad=1)"
    )


def _headers(files: list[Path], skip_bad: bool) -> list[tuple[Path, tuple[int, int], str]]:
    """(file, (width, height), mode) of every image whose header reads; the pixels are not decoded here."""
    out = []
    for f in files:
        try:
            with Image.open(f) as im:
                out.append((f, im.size, im.mode))
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            if not skip_bad:
                raise VaelabError(_bad_message(f, e)) from None
    return out


def folder_spec(name: str):

    o = parse(name)
    files, labels, classes = scan(o.path)
    key = (name, source_key(o.path))
    if key in _SPECS:
        return _SPECS[key]
    heads = _headers(files, o.skip_bad)
    if not heads:
        raise VaelabError(f"{o.path}: none of its {len(files)} image files could be read")
    size = o.size or max(8, int(round(np.median([min(wh) for _, wh, _ in heads]) / 4)) * 4)
    grey = o.mode == "grey" or (o.mode == "auto" and all(m in GREY_MODES for _, _, m in heads))
    spec = DatasetSpec(
        name,
        (1 if grey else 3, size, size),
        f"image files in {o.path}",
        lambda root: o.path,
        lambda source: load_folder(name),
        None,
        classes,
        mirror=False,
    )  # nothing says a user's images may be mirrored
    _SPECS[key] = spec
    return spec


def load_folder(name: str):
    """Decode every image: converted to grey or RGB, the shorter side resized to `size` (bicubic) and the centre
    cropped square; a fixed tenth carved off as the test split."""

    o = parse(name)
    spec = folder_spec(name)
    c, s, _ = spec.shape
    files, labels, classes = scan(o.path)
    x = np.empty((len(files), c, s, s), np.uint8)
    keep = []
    for i, f in enumerate(files):
        try:
            with Image.open(f) as im:
                im = ImageOps.exif_transpose(im).convert("L" if c == 1 else "RGB")
                arr = np.asarray(ImageOps.fit(im, (s, s), method=Image.BICUBIC))
        except (OSError, ValueError, Image.DecompressionBombError) as e:  # a truncated file fails only here
            if not o.skip_bad:
                raise VaelabError(_bad_message(f, e)) from None
            continue
        x[i] = arr[None] if c == 1 else arr.transpose(2, 0, 1)
        keep.append(i)
    if len(keep) < 2:
        raise VaelabError(f"{o.path}: {len(keep)} readable image; need at least 2 to carve a test split")
    y = np.asarray(labels, np.int64)[keep]
    return Dataset(name, *carve(x[keep], y, str(o.path)), classes, str(o.path))
