"""Figures: image grids (Pillow) and matplotlib plots of runs and studies, in one consistent style."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .store import atomic_write_bytes


def to_uint8_images(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """(N, C, H, W) floats in [0, 1] or uint8 -> (N, H, W, C) uint8."""
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if a.dtype != np.uint8:
        a = (np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8)
    return a.transpose(0, 2, 3, 1)


def image_grid(x, nrow: int, pad: int = 2, scale: int = 2, pad_value: int = 255) -> Image.Image:
    """Tile images row-major into a grid with white gutters, upscaled (nearest) so small images stay legible."""
    imgs = to_uint8_images(x)
    n, h, w, c = imgs.shape
    ncol = nrow
    nrows = -(-n // ncol)
    grid = np.full((nrows * (h + pad) + pad, ncol * (w + pad) + pad, c), pad_value, np.uint8)
    for i in range(n):
        r, q = divmod(i, ncol)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + q * (w + pad): pad + q * (w + pad) + w] = imgs[i]
    img = Image.fromarray(grid[..., 0] if c == 1 else grid)
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST) if scale > 1 else img


def save_image(img: Image.Image, path: str | Path) -> Path:
    import io

    buf = io.BytesIO()
    img.save(buf, format="PNG")
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)
