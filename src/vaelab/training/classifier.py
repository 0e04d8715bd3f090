"""Reference classifiers (a small CNN per dataset, trained once and cached) and generation scores built on them."""

from __future__ import annotations

import hashlib
import math
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg
from torch import nn
from tqdm.auto import tqdm

from vaelab import data as vdata
from vaelab.core.device import resolve_device
from vaelab.core.errors import VaelabError
from vaelab.core.store import load_tree, save_tree
from vaelab.training.optim import fused_optimizer

VERSION = 2  # bump when the network or its training recipe changes: old cache entries are then ignored
# Reference classifiers shipped with vaelab, trained by the recipe below on the data whose content key names the
# file (the official Fashion-MNIST, the CIFAR-10 stand-in): a newcomer's first `make demo` skips 8-13 minutes of
# training, as FID ships its Inception network. Used only when the data's content matches exactly; safetensors.
SHIPPED = Path(__file__).parent / "reference"
# Sized for a 2-core CPU (channels-last): Fashion-MNIST 90.6 % in 301 s, CIFAR-10 stand-in 76.2 % in 483 s (README).
WIDTHS = (32, 64, 128)  # conv channels per stage, every dataset; a cached model records its own


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class SmallCNN(nn.Module):
    """Three conv stages (BatchNorm, ReLU, max-pool between), global average pool: features, then 10 logits."""

    def __init__(self, channels: int, n_classes: int = 10, widths: tuple[int, int, int] = WIDTHS):
        super().__init__()
        a, b, c = widths
        self.net = nn.Sequential(
            _block(channels, a),
            nn.MaxPool2d(2),
            _block(a, b),
            nn.MaxPool2d(2),
            _block(b, c),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(c, n_classes)
        self.widths = tuple(widths)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x: images in [0, 1], (B, C, H, W)."""
        return self.net((x * 2 - 1).contiguous(memory_format=torch.channels_last))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def random_crop(x: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Per-image random translation by up to `pad` pixels (zero padding, then crop back to size)."""
    b, _, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    oy, ox = torch.randint(0, 2 * pad + 1, (2, b), generator=generator, device=x.device)
    rows = (oy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (B, 1, H, 1)
    cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (B, 1, 1, W)
    return xp[
        torch.arange(b, device=x.device)[:, None, None, None],
        torch.arange(x.shape[1], device=x.device)[None, :, None, None],
        rows,
        cols,
    ]


@torch.no_grad()
def predict(model: SmallCNN, x: torch.Tensor, batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, features) for images in [0, 1]."""
    model.eval()
    logits, feats = [], []
    for i in range(0, len(x), batch_size):
        f = model.features(x[i : i + batch_size].float())
        feats.append(f)
        logits.append(model.head(f))
    return torch.cat(logits), torch.cat(feats)


MAX_TRAIN, MAX_TEST = 60_000, 10_000


def train_classifier(
    ds: vdata.Dataset, epochs: int, seed: int = 0, batch_size: int = 128, device: str = "cpu"
) -> tuple[SmallCNN, float]:
    """Adam + one-cycle schedule, random 2-pixel translations (and flips where the dataset's spec allows mirroring); returns the model and its
    test accuracy. Progress bar on a terminal: on a 2-core CPU this takes minutes, on a GPU seconds."""
    torch.manual_seed(seed)
    model = SmallCNN(ds.shape[0]).to(device)
    model = model.to(memory_format=torch.channels_last)
    # at most MAX_TRAIN / MAX_TEST images (Fashion-MNIST's and CIFAR-10's sizes): shapes2d's 663,552 sprites would
    # take an hour to see, for a 3-class shape classifier
    tr = vdata.subsample(np.arange(len(ds.x_train)), MAX_TRAIN, seed)
    te = vdata.subsample(np.arange(len(ds.x_test)), MAX_TEST, seed)
    x = torch.from_numpy(np.asarray(ds.x_train[tr])).to(device)
    y = torch.from_numpy(ds.y_train[tr]).to(device)
    steps = epochs * math.ceil(len(x) / batch_size)
    opt = fused_optimizer(torch.optim.Adam, model.parameters(), lr=2e-3, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=4e-3, total_steps=steps)
    g = torch.Generator(device=device).manual_seed(seed)
    bar = tqdm(total=epochs * len(x), unit="img", desc=f"reference classifier ({ds.name})", disable=None)
    for _ in range(epochs):
        model.train()
        for idx in vdata.minibatches(len(x), batch_size, g, device):
            xb = vdata.to_float(x[idx])
            if vdata.spec(ds.name).mirror:
                flip = torch.rand(len(xb), device=device, generator=g) < 0.5
                xb = torch.where(flip[:, None, None, None], xb.flip(3), xb)
            xb = random_crop(xb, 2, g)
            bar.update(len(idx))
            loss = F.cross_entropy(model(xb), y[idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    bar.close()
    logits, _ = predict(model, vdata.to_float(torch.from_numpy(np.asarray(ds.x_test[te])).to(device)))
    return model, float((logits.argmax(1).cpu() == torch.from_numpy(ds.y_test[te])).float().mean())


def content_key(ds: vdata.Dataset) -> str:
    """A fingerprint of the training images and labels themselves (not of file paths or times), for shipped
    classifiers: about 0.1 s per 50 MB."""
    h = hashlib.sha256()
    for a in (ds.x_train, ds.y_train):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def _load_classifier(path: Path, channels: int) -> tuple[SmallCNN, dict] | None:
    """A stored classifier and its info, or None when the file is absent or damaged (then it is retrained)."""
    if not path.is_file():
        return None
    try:  # safetensors: a cache entry someone planted cannot run code
        blob = load_tree(path)
        model = SmallCNN(channels, widths=tuple(blob["info"]["widths"]))
        model.load_state_dict(blob["model"])
        return model.eval(), blob["info"]
    except (VaelabError, KeyError, TypeError, RuntimeError):
        return None


def reference_classifier(
    dataset: str, data_dir=None, epochs: int | None = None, ds: vdata.Dataset | None = None, device: str = "auto"
) -> tuple[SmallCNN, dict]:
    """The dataset's reference classifier (on the CPU): loaded from the user cache, trained once when absent
    (on `device`; 'auto' takes a GPU when there is one)."""
    ds = ds if ds is not None else vdata.load(dataset, data_dir)
    epochs = epochs or vdata.spec(dataset).classifier_epochs
    key = f"{dataset}-n{len(ds.x_train)}-{vdata.source_key(Path(ds.source)) if Path(ds.source).exists() else 'mem'}"
    path = vdata.cache_dir() / "classifiers" / f"{key}-e{epochs}-v{VERSION}.safetensors"
    # the user's cache first; the shipped file's name needs the data's fingerprint, hashed only on a cache miss
    found = _load_classifier(path, ds.shape[0]) or _load_classifier(
        SHIPPED / f"{dataset}-{content_key(ds)}-e{epochs}-v{VERSION}.safetensors", ds.shape[0]
    )
    if found is not None:
        return found
    t0 = time.perf_counter()
    model, acc = train_classifier(ds, epochs, device=str(resolve_device(device)))
    info = {
        "dataset": dataset,
        "epochs": epochs,
        "widths": list(model.widths),
        "test_accuracy": acc,
        "train_seconds": time.perf_counter() - t0,
        "device": str(next(model.parameters()).device),
    }
    model = model.cpu()
    save_tree(path, {"model": model.state_dict(), "info": info})
    return model.eval(), info


def frechet_distance(feat_a: np.ndarray, feat_b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2) between Gaussians fitted to two feature sets
    (Heusel et al. 2017). Computed in the reference classifier's features, so: not Inception FID."""
    mu_a, mu_b = feat_a.mean(0), feat_b.mean(0)
    s_a, s_b = np.cov(feat_a, rowvar=False), np.cov(feat_b, rowvar=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", linalg.LinAlgWarning)
        try:
            covmean = linalg.sqrtm(s_a @ s_b)
            ok = np.isfinite(covmean).all()
        except linalg.LinAlgWarning:
            ok = False
    if not ok:  # singular product (fewer samples than features): regularise as the reference implementation does
        eps = 1e-6 * np.eye(len(s_a))
        covmean = linalg.sqrtm((s_a + eps) @ (s_b + eps))
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a + s_b - 2 * covmean.real))
